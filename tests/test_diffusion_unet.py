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


def test_space_to_depth_against_numpy_and_inverse():
  from jaxpoison.diffusion.unet import depth_to_space, space_to_depth
  x = np.random.default_rng(0).standard_normal((2, 8, 6, 3)).astype(np.float32)
  folded = np.asarray(space_to_depth(x, 2))
  assert folded.shape == (2, 4, 3, 12)
  for i, j in [(0, 0), (1, 2), (3, 1)]:  # Each output pixel holds its 2×2 patch, row-major.
    np.testing.assert_array_equal(folded[1, i, j], x[1, 2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel())
  np.testing.assert_array_equal(np.asarray(depth_to_space(folded, 2)), x)
  assert space_to_depth(x, 1) is x and depth_to_space(x, 1) is x


def test_patch_size_folds_the_first_level():
  cfg = D.UNetConfig(**{**TINY.to_dict(), "patch_size": 2, "attention_resolutions": (2,)})
  assert cfg.inner_size == 4 and cfg.level_has_attention(1) and not cfg.level_has_attention(0)
  den = D.create_denoiser(cfg, D.linear_schedule(), jax.random.key(0))
  assert den.params["conv_in.kernel"].shape == (3, 3, 12, 8)
  assert den.params["conv_out.kernel"].shape == (3, 3, 8, 12)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 3)), jnp.float32)
  out = D.unet_apply(cfg, den.params, x, jnp.array([3, 50]))
  assert out.shape == (2, 8, 8, 3)
  # The same as folding by hand, running a plain UNet on 4×4×12 images with the same params,
  # and unfolding its 12 output channels.
  from jaxpoison.diffusion.unet import depth_to_space, space_to_depth
  plain = D.UNetConfig(**{**TINY.to_dict(), "sample_size": 4, "in_channels": 12,
                          "out_channels": 12, "attention_resolutions": (2,)})
  by_hand = depth_to_space(D.unet_apply(plain, den.params, space_to_depth(x, 2),
                                        jnp.array([3, 50])), 2)
  np.testing.assert_allclose(np.asarray(out), np.asarray(by_hand), rtol=1e-5, atol=1e-6)
  assert D.UNetConfig.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(ValueError, match="patch_size"):
    D.UNetConfig(**{**TINY.to_dict(), "patch_size": 3})
  with pytest.raises(ValueError, match="not divisible"):
    D.UNetConfig(**{**TINY.to_dict(), "patch_size": 8})


def test_attention_implementation_rules():
  from jaxpoison.diffusion.unet import attention_implementation
  # This machine is a CPU: XLA's kernel, whatever the dtype; cuDNN's is refused with the reason.
  assert attention_implementation("auto", 64, jnp.bfloat16) == "xla"
  assert attention_implementation("auto", 64, jnp.float32) == "xla"
  assert attention_implementation("xla", 256, jnp.float32) == "xla"
  with pytest.raises(ValueError, match="not a CUDA GPU.*bf16/f16"):
    attention_implementation("cudnn", 64, jnp.float32)
  with pytest.raises(ValueError, match="attention: expected one of"):
    attention_implementation("flash", 64, jnp.float32)


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_against_numpy_softmax_attention(heads):
  from jaxpoison.diffusion.unet import Attention
  cfg = D.UNetConfig(**{**TINY.to_dict(), "num_heads": heads})
  attn = Attention(8, heads, cfg, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).standard_normal((2, 4, 4, 8)).astype(np.float32)
  out = np.asarray(attn(jnp.asarray(x)))
  # Reference: GroupNorm, then softmax(q·kᵀ/√d)·v per head, projected and added back.
  g = np.asarray(attn.group_norm(jnp.asarray(x))).reshape(2, 16, 8).astype(np.float64)
  lin = lambda layer, h: h @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])
  d = 8 // heads
  q, k, v = (lin(layer, g).reshape(2, 16, heads, d) for layer in (attn.to_q, attn.to_k,
                                                                   attn.to_v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  a = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 16, 8)
  expected = x + lin(attn.to_out, a).reshape(2, 4, 4, 8)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("one_pass", [False, True])
def test_group_norm_takes_the_targets_variance(one_pass):
  # A CPU computes flax's two-pass variance (PyTorch's); an accelerator target, traced for,
  # flax's one-pass E[x²] − μ², op for op (so bit for bit here).
  from flax import nnx
  from jaxpoison import backend
  from jaxpoison.diffusion.unet import GroupNorm
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 16)) * 3 + 1, jnp.float32)
  ours = GroupNorm(16, num_groups=4, epsilon=1e-6, use_fast_variance=False, rngs=nnx.Rngs(0))
  ref = nnx.GroupNorm(16, num_groups=4, epsilon=1e-6, use_fast_variance=one_pass,
                      rngs=nnx.Rngs(0))
  target = backend.Target("gpu", "NVIDIA H100 80GB HBM3", (9, 0)) if one_pass else None
  with backend.targeting(target or backend.default_target()):
    out = jax.jit(lambda v: ours(v))(x)
  np.testing.assert_array_equal(out, jax.jit(lambda v: ref(v))(x))
