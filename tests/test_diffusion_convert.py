"""Checkpoint conversion: parity with diffusers' UNet2DModel, mismatch errors, files."""

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison import diffusion as D
from jaxpoison.diffusion import convert

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

DDPM_CIFAR10 = dict(  # google/ddpm-cifar10-32's config.json
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32,
    attention_head_dim=None, time_embedding_type="positional", act_fn="silu")
TINY = dict(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)


def _compare(model, den, size, t):
  torch.manual_seed(1)
  x = torch.randn(2, 3, size, size)
  with torch.inference_mode():
    ref = model(x, torch.tensor(t)).sample.numpy()
  out = np.asarray(D.unet_apply(den.unet, den.params, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                                jnp.asarray(t))).transpose(0, 3, 1, 2)
  return np.abs(out - ref).max() / np.abs(ref).max()


@pytest.fixture(scope="module")
def ddpm_model():
  torch.manual_seed(0)
  return diffusers.UNet2DModel(**DDPM_CIFAR10).eval()


def test_ddpm_cifar10_parity(ddpm_model):
  unet = convert.unet_config_from_diffusers(dict(ddpm_model.config))
  assert unet == D.ddpm_cifar10_config()
  den = convert.convert_diffusers_state_dict(ddpm_model.state_dict(), unet)
  assert den.num_params == 35_746_307
  assert _compare(ddpm_model, den, 32, [3, 871]) <= 1e-4


def test_mismatched_state_dict_names_offending_keys(ddpm_model):
  unet = D.ddpm_cifar10_config()
  sd = dict(ddpm_model.state_dict())
  missing = dict(sd)
  del missing["down_blocks.1.attentions.0.to_q.weight"]
  with pytest.raises(D.CheckpointMismatchError, match=r"missing.*down_blocks\.1\.attentions\.0"
                                                      r"\.to_q\.kernel"):
    convert.convert_diffusers_state_dict(missing, unet)
  extra = dict(sd, **{"mid_block.extra_layer.weight": torch.zeros(3)})
  with pytest.raises(D.CheckpointMismatchError, match=r"unexpected.*mid_block\.extra_layer"):
    convert.convert_diffusers_state_dict(extra, unet)
  wrong = dict(sd, **{"conv_out.weight": torch.zeros(3, 128, 1, 1)})
  with pytest.raises(D.CheckpointMismatchError, match=r"wrong shape.*conv_out\.kernel"):
    convert.convert_diffusers_state_dict(wrong, unet)
  # The diffusers model of a different config does not fit either.
  with pytest.raises(D.CheckpointMismatchError):
    convert.convert_diffusers_state_dict(sd, D.UNetConfig(**{**unet.to_dict(),
                                                           "layers_per_block": 1}))


def test_safetensors_folder_round_trip_and_script(tmp_path):
  torch.manual_seed(2)
  model = diffusers.UNet2DModel(**TINY).eval()
  model.save_pretrained(tmp_path / "unet", safe_serialization=True)
  (tmp_path / "scheduler").mkdir()
  (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(
      {"beta_schedule": "linear", "beta_start": 2e-4, "beta_end": 0.03,
       "num_train_timesteps": 500}))
  den = convert.load_diffusers(tmp_path)
  assert den.unet.attention_resolutions == (8,) and den.unet.heads(32) == 4
  assert den.schedule == D.linear_schedule(500, 2e-4, 0.03)
  assert _compare(model, den, 16, [5, 400]) <= 1e-4
  repo = Path(__file__).resolve().parent.parent
  out = tmp_path / "converted"
  subprocess.run([sys.executable, str(repo / "scripts" / "convert_checkpoint.py"),
                  str(tmp_path), str(out)], check=True, cwd=repo, capture_output=True)
  loaded = D.load_denoiser(out)
  assert loaded.unet == den.unet and loaded.schedule == den.schedule
  for k, v in den.params.items():
    np.testing.assert_array_equal(np.asarray(loaded.params[k]), np.asarray(v))


def test_improved_diffusion_key_map_covers_every_param_once():
  cfg = D.improved_diffusion_cifar10_config()
  mapping = convert.improved_diffusion_key_map(cfg)
  assert len(set(mapping.values())) == len(mapping)
  shapes = D.param_shapes(cfg)
  modules = {n.rsplit(".", 1)[0] for n in shapes}
  covered = set()
  for v in mapping.values():
    if ".attentions." in v:
      covered |= {f"{v}.{p}" for p in ("group_norm", "to_q", "to_k", "to_v", "to_out")}
    else:
      covered.add(v)
  assert modules <= covered
  with pytest.raises(D.CheckpointMismatchError, match="missing"):
    convert.convert_improved_diffusion_state_dict({}, cfg)
  with pytest.raises(D.CheckpointMismatchError, match="unexpected.*label_emb"):
    convert.convert_improved_diffusion_state_dict({"label_emb.weight": np.zeros((10, 512))}, cfg)


def test_improved_diffusion_qkv_split():
  # A one-level model: the fused qkv rows for head h are [q_h, k_h, v_h] (legacy QKVAttention).
  cfg = D.UNetConfig(sample_size=8, block_out_channels=(8,), layers_per_block=1,
                     attention_resolutions=(8,), norm_num_groups=4, layout="improved_diffusion",
                     num_heads=2, downsample_padding=1)
  rng = np.random.default_rng(0)
  sd = {}
  for k, v in convert.improved_diffusion_key_map(cfg).items():
    for name, s in D.param_shapes(cfg).items():
      if name.rsplit(".", 1)[0] == v:
        leaf = name.rsplit(".", 1)[1]
        shape = s.shape[::-1] if leaf == "kernel" and len(s.shape) == 2 else s.shape
        if len(s.shape) == 4:
          shape = (s.shape[3], s.shape[2], s.shape[0], s.shape[1])
        sd[f"{k}.{'weight' if leaf in ('kernel', 'scale') else 'bias'}"] = rng.normal(size=shape)
  sd = {k: v for k, v in sd.items() if ".attentions." not in k}
  for prefix in ("input_blocks.1.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1"):
    sd[f"{prefix}.norm.weight"] = rng.normal(size=8)
    sd[f"{prefix}.norm.bias"] = rng.normal(size=8)
    sd[f"{prefix}.qkv.weight"] = np.arange(24 * 8, dtype=float).reshape(24, 8, 1)
    sd[f"{prefix}.qkv.bias"] = np.arange(24, dtype=float)
    sd[f"{prefix}.proj_out.weight"] = rng.normal(size=(8, 8, 1))
    sd[f"{prefix}.proj_out.bias"] = rng.normal(size=8)
  den = convert.convert_improved_diffusion_state_dict(sd, cfg, D.cosine_schedule())
  p = {k: np.asarray(v) for k, v in den.params.items()}
  # Rows 0-3: head 0's q; 4-7: its k; 8-11: its v; 12-15: head 1's q ...
  np.testing.assert_array_equal(p["mid_block.attentions.0.to_q.bias"], [0, 1, 2, 3, 12, 13, 14, 15])
  np.testing.assert_array_equal(p["mid_block.attentions.0.to_k.bias"], [4, 5, 6, 7, 16, 17, 18, 19])
  np.testing.assert_array_equal(p["mid_block.attentions.0.to_v.kernel"][:, 4], np.arange(20 * 8, 21 * 8))
