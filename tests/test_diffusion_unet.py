"""The Flax UNet: shapes, layouts, parameter counts and the time embedding against diffusers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpoison import diffusion as D

TINY = D.UNetConfig(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                    attention_resolutions=(4,), norm_num_groups=4)


def _abstract_count(cfg):
  return D.count_params(nnx.state(nnx.eval_shape(lambda: D.UNet(cfg, rngs=nnx.Rngs(0))), nnx.Param))


def test_ddpm_cifar10_param_count_matches_diffusers():
  diffusers = pytest.importorskip("diffusers")
  assert _abstract_count(D.ddpm_cifar10_config()) == 35_746_307
  with jax.default_device(jax.devices("cpu")[0]):
    ref = diffusers.UNet2DModel(
        sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None, downsample_padding=0, norm_eps=1e-6, flip_sin_to_cos=False,
        freq_shift=1)
  assert sum(p.numel() for p in ref.parameters()) == 35_746_307


def test_shapes_and_learned_sigma_output():
  den = D.create_denoiser(TINY, D.linear_schedule(), jax.random.key(0))
  x = jnp.zeros((3, 8, 8, 3))
  assert D.unet_apply(TINY, den.params, x, jnp.arange(3)).shape == (3, 8, 8, 3)
  six = D.UNetConfig(**{**TINY.to_dict(), "out_channels": 6, "layout": "improved_diffusion",
                        "num_heads": 2, "scale_shift_norm": True, "flip_sin_to_cos": True,
                        "freq_shift": 0.0, "downsample_padding": 1, "timestep_scale": 0.25})
  den6 = D.create_denoiser(six, D.cosine_schedule(), jax.random.key(0))
  assert D.unet_apply(six, den6.params, x, jnp.arange(3)).shape == (3, 8, 8, 6)
  assert D.predict_eps(den6, x, jnp.arange(3)).shape == (3, 8, 8, 3)
  assert den6.params["down_blocks.0.resnets.0.time_emb_proj.kernel"].shape == (32, 16)


def test_improved_diffusion_cifar10_layout():
  cfg = D.improved_diffusion_cifar10_config()
  assert cfg.out_channels == 6 and cfg.eps_channels == 3
  assert [cfg.level_has_attention(i) for i in range(4)] == [False, True, True, False]
  shapes = D.param_shapes(cfg)
  # Three ResNet blocks down, four up per level; 4 heads over 256 channels.
  assert "down_blocks.0.resnets.2.conv2.kernel" in shapes
  assert "up_blocks.3.resnets.3.conv2.kernel" in shapes
  assert "up_blocks.1.attentions.3.to_q.kernel" in shapes
  assert shapes["conv_out.kernel"].shape == (3, 3, 128, 6)
  assert cfg.heads(256) == 4


@pytest.mark.parametrize("flip,shift", [(False, 1.0), (True, 0.0)])
def test_timestep_embedding_matches_diffusers(flip, shift):
  torch = pytest.importorskip("torch")
  from diffusers.models.embeddings import get_timestep_embedding
  t = np.array([0, 1, 17, 500, 999])
  ref = get_timestep_embedding(torch.tensor(t), 128, flip_sin_to_cos=flip,
                               downscale_freq_shift=shift).numpy()
  ours = np.asarray(D.timestep_embedding(t, 128, flip_sin_to_cos=flip, freq_shift=shift))
  np.testing.assert_allclose(ours, ref, atol=3e-4)  # float32 sin/cos of args up to 999


def test_config_validation_and_json_round_trip():
  with pytest.raises(ValueError, match="divisible by norm_num_groups"):
    D.UNetConfig(block_out_channels=(24, 48), norm_num_groups=32)
  with pytest.raises(ValueError, match="layout"):
    D.UNetConfig(layout="keras")
  cfg = D.improved_diffusion_cifar10_config()
  assert D.UNetConfig.from_dict(cfg.to_dict()) == cfg
  assert hash(cfg) == hash(D.UNetConfig.from_dict(cfg.to_dict()))
