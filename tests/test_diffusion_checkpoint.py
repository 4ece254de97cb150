"""Denoiser files: save/load round trip, mismatch errors, the embedded default denoiser."""

import json

import jax
import numpy as np
import pytest

import jaxpoison
from jaxpoison import diffusion as D

TINY = D.UNetConfig(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                    attention_resolutions=(4,), norm_num_groups=4)


def test_save_load_round_trip(tmp_path):
  den = D.create_denoiser(TINY, D.cosine_schedule(100), jax.random.key(1))
  D.save_denoiser(den, tmp_path / "d", extra={"note": "test"})
  D.save_denoiser(den, tmp_path / "d")  # overwrite in place, atomically
  assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
  loaded = D.load_denoiser(tmp_path / "d")
  assert loaded.unet == TINY and loaded.schedule == D.cosine_schedule(100)
  assert loaded.params.keys() == den.params.keys()
  for k in den.params:
    np.testing.assert_array_equal(loaded.params[k], den.params[k])
  unet, schedule, extra = D.read_denoiser_config(tmp_path / "d")
  assert unet == TINY and extra == {}


def test_mismatched_checkpoint(tmp_path):
  den = D.create_denoiser(TINY, D.linear_schedule(), jax.random.key(1))
  path = D.save_denoiser(den, tmp_path / "d")
  config = json.loads((path / "denoiser.json").read_text())
  config["unet"]["layers_per_block"] = 2
  (path / "denoiser.json").write_text(json.dumps(config))
  with pytest.raises(D.CheckpointMismatchError, match=r"missing.*resnets\.1"):
    D.load_denoiser(path)
  with pytest.raises(FileNotFoundError, match="not a denoiser directory"):
    D.load_denoiser(tmp_path)
  bad = D.Denoiser(params={**den.params, "extra.kernel": np.zeros(3)}, unet=TINY,
                   schedule=D.linear_schedule())
  with pytest.raises(D.CheckpointMismatchError, match="unexpected.*extra.kernel"):
    D.save_denoiser(bad, tmp_path / "bad")
  assert not (tmp_path / "bad").exists()


def test_default_denoiser_loads_and_denoises():
  den = jaxpoison.default_denoiser()
  assert den is jaxpoison.default_denoiser()  # loaded once
  assert den.unet.sample_size == 32 and den.num_params < 2_000_000
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  out = jaxpoison.noise_and_denoise(den, images, 0.5, jax.random.key(0))
  assert out.shape == images.shape and out.dtype == np.uint8
  # Denoising moves the noisy image towards the clean one.
  r = D.denoising_psnr(den, images.astype(np.float32) / 255, 0.5, jax.random.key(0))
  assert r["psnr_denoised"] > r["psnr_noisy"]
