"""Forward-pass reference for the improved-diffusion UNet layout (project issue 18).

An independent PyTorch re-implementation of openai/improved-diffusion's `UNetModel` forward
pass (improved_diffusion/unet.py and nn.py), written from the facts of that code: GroupNorm32
(32 groups, ε 1e-5, computed in float32), cos-first sinusoidal time embedding with
frequencies 10000^(-i/half), time_embed Linear-SiLU-Linear, ResBlocks with
in_layers [norm, SiLU, conv], emb_layers [SiLU, linear], out_layers [norm, SiLU, dropout, conv]
and use_scale_shift_norm (norm(h)·(1 + scale) + shift, scale first), 1×1 conv skips,
AttentionBlocks with norm, a fused qkv Conv1d laid out per head as [q, k, v] (the legacy
QKVAttention split), proj_out Conv1d, Downsample = stride-2 3×3 conv (padding 1), Upsample =
nearest ×2 then 3×3 conv, out = [norm, SiLU, conv]. Module names follow improved-diffusion,
so `state_dict()` has its keys (input_blocks.1.0.in_layers.0.weight, ..., out.2.bias).

Every parameter (including those improved-diffusion zero-initializes: out_layers.3,
proj_out, out.2) is random, so every path contributes. The reference runs in float64; the
state dict is saved as float32 with torch.save, read back with jaxpoison's
`load_improved_diffusion`, and jaxpoison's float32 forward pass must match it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import jax.numpy as jnp  # noqa: E402

from jaxpoison.diffusion import convert  # noqa: E402
from jaxpoison.diffusion.model import unet_apply  # noqa: E402
from jaxpoison.diffusion.unet import improved_diffusion_cifar10_config  # noqa: E402

# Tiny improved-diffusion model: image_size 16, num_channels 32, channel_mult (1, 2, 2),
# num_res_blocks 1, attention_resolutions "2" (ds = 2, i.e. the 8×8 level), num_heads 4,
# learn_sigma, use_scale_shift_norm, dropout 0, rescale_timesteps with 4000 diffusion steps.
# Three levels so that both upsample positions occur: after an attention block
# (output_blocks.N.2.conv, 8×8 level) and right after the ResBlock (output_blocks.N.1.conv, 4×4).
IMAGE = 16
MODEL_CHANNELS = 32
CHANNEL_MULT = (1, 2, 2)
NUM_RES_BLOCKS = 1
ATTENTION_DS = (2,)
NUM_HEADS = 4
STEPS = 4000

# Deliberate deviations the reference can be switched to; each must break the comparison.
MUTATIONS = ("swap_scale_shift", "scale_without_one", "sin_first", "qkv_order_kqv",
             "no_time_rescale")


def jaxpoison_config():
  return dataclasses.replace(
      improved_diffusion_cifar10_config(learn_sigma=True, dropout=0.0), sample_size=IMAGE,
      block_out_channels=tuple(MODEL_CHANNELS * m for m in CHANNEL_MULT),
      layers_per_block=NUM_RES_BLOCKS,
      attention_resolutions=tuple(IMAGE // ds for ds in ATTENTION_DS), num_heads=NUM_HEADS,
      timestep_scale=1000.0 / STEPS)


# ----------------------------------------------------------------------------- reference


class GroupNorm32(nn.GroupNorm):
  def __init__(self, channels):
    super().__init__(32, channels, eps=1e-5)

  def forward(self, x):
    # improved-diffusion computes it in (at least) float32 and casts back.
    return super().forward(x.float() if x.dtype != torch.float64 else x).type(x.dtype)


def sinusoid(t, dim, mutation):
  half = dim // 2
  freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
  args = t.double()[:, None] * freqs[None]
  parts = [torch.sin(args), torch.cos(args)] if mutation == "sin_first" else \
      [torch.cos(args), torch.sin(args)]
  return torch.cat(parts, dim=-1)


class ResBlock(nn.Module):
  def __init__(self, cin, cout, emb, mutation):
    super().__init__()
    self.in_layers = nn.Sequential(GroupNorm32(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
    self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * cout))
    self.out_layers = nn.Sequential(GroupNorm32(cout), nn.SiLU(), nn.Dropout(0.0),
                                    nn.Conv2d(cout, cout, 3, padding=1))
    self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
    self.mutation = mutation

  def forward(self, x, emb):
    h = self.in_layers(x)
    e = self.emb_layers(emb)[:, :, None, None]
    scale, shift = torch.chunk(e, 2, dim=1)
    if self.mutation == "swap_scale_shift":
      scale, shift = shift, scale
    one = 0.0 if self.mutation == "scale_without_one" else 1.0
    h = self.out_layers[0](h) * (one + scale) + shift
    for layer in self.out_layers[1:]:
      h = layer(h)
    return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
  def __init__(self, c, heads, mutation):
    super().__init__()
    self.norm = GroupNorm32(c)
    self.qkv = nn.Conv1d(c, 3 * c, 1)
    self.proj_out = nn.Conv1d(c, c, 1)
    self.heads = heads
    self.mutation = mutation

  def forward(self, x):
    b, c, hh, ww = x.shape
    flat = x.reshape(b, c, hh * ww)
    qkv = self.qkv(self.norm(flat))  # [b, 3c, T], per head [q; k; v] blocks of c/heads rows
    d = c // self.heads
    qkv = qkv.reshape(b, self.heads, 3, d, hh * ww)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.mutation == "qkv_order_kqv":
      q, k = k, q
    w = torch.softmax(torch.einsum("bhdt,bhds->bhts", q, k) / math.sqrt(d), dim=-1)
    a = torch.einsum("bhts,bhds->bhdt", w, v).reshape(b, c, hh * ww)
    return (flat + self.proj_out(a)).reshape(b, c, hh, ww)


class Downsample(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

  def forward(self, x):
    return self.op(x)


class Upsample(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, padding=1)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Step(nn.Sequential):
  """improved-diffusion's TimestepEmbedSequential: ResBlocks also get the embedding."""

  def forward(self, x, emb):
    for layer in self:
      x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
    return x


class RefUNet(nn.Module):
  def __init__(self, mutation=None):
    super().__init__()
    mc, emb = MODEL_CHANNELS, 4 * MODEL_CHANNELS
    self.mutation = mutation
    self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
    self.input_blocks = nn.ModuleList([Step(nn.Conv2d(3, mc, 3, padding=1))])
    chans, ch, ds = [mc], mc, 1
    for level, mult in enumerate(CHANNEL_MULT):
      for _ in range(NUM_RES_BLOCKS):
        layers = [ResBlock(ch, mult * mc, emb, mutation)]
        ch = mult * mc
        if ds in ATTENTION_DS:
          layers.append(AttentionBlock(ch, NUM_HEADS, mutation))
        self.input_blocks.append(Step(*layers))
        chans.append(ch)
      if level != len(CHANNEL_MULT) - 1:
        self.input_blocks.append(Step(Downsample(ch)))
        chans.append(ch)
        ds *= 2
    self.middle_block = Step(ResBlock(ch, ch, emb, mutation),
                             AttentionBlock(ch, NUM_HEADS, mutation),
                             ResBlock(ch, ch, emb, mutation))
    self.output_blocks = nn.ModuleList()
    for level, mult in reversed(list(enumerate(CHANNEL_MULT))):
      for i in range(NUM_RES_BLOCKS + 1):
        layers = [ResBlock(ch + chans.pop(), mult * mc, emb, mutation)]
        ch = mult * mc
        if ds in ATTENTION_DS:
          layers.append(AttentionBlock(ch, NUM_HEADS, mutation))
        if level and i == NUM_RES_BLOCKS:
          layers.append(Upsample(ch))
          ds //= 2
        self.output_blocks.append(Step(*layers))
    self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, 6, 3, padding=1))

  def forward(self, x, timesteps):
    emb = self.time_embed(sinusoid(timesteps, MODEL_CHANNELS, self.mutation).to(x.dtype))
    h, hs = x, []
    for block in self.input_blocks:
      h = block(h, emb)
      hs.append(h)
    h = self.middle_block(h, emb)
    for block in self.output_blocks:
      h = block(torch.cat([h, hs.pop()], dim=1), emb)
    return self.out(h)


def random_state_dict(seed=0):
  """improved-diffusion-named float32 weights, all random (none zero, norms not identity)."""
  gen = torch.Generator().manual_seed(seed)
  sd = {}
  for key, p in RefUNet().state_dict().items():
    if key.endswith("weight") and p.ndim == 1:  # GroupNorm γ
      v = 1.0 + 0.3 * torch.randn(p.shape, generator=gen)
    elif key.endswith("bias"):
      v = 0.2 * torch.randn(p.shape, generator=gen)
    else:
      fan_in = p[0].numel()
      v = torch.randn(p.shape, generator=gen) * (1.2 / math.sqrt(fan_in))
    sd[key] = v.float()
  return sd


def reference(sd, x_nhwc, t, mutation=None):
  model = RefUNet(mutation).double().eval()
  model.load_state_dict({k: v.double() for k, v in sd.items()}, strict=True)
  t_model = torch.as_tensor(t, dtype=torch.float64)
  if mutation != "no_time_rescale":  # GaussianDiffusion._scale_timesteps: t·1000/T
    t_model = t_model * (1000.0 / STEPS)
  with torch.no_grad():
    out = model(torch.as_tensor(x_nhwc, dtype=torch.float64).permute(0, 3, 1, 2), t_model)
  return out.permute(0, 2, 3, 1).numpy()


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  sd = random_state_dict()
  path = tmp_path_factory.mktemp("improved") / "tiny_improved_diffusion.pt"
  torch.save(sd, path)
  den = convert.load_improved_diffusion(path, jaxpoison_config())
  rng = np.random.default_rng(1)
  x = rng.standard_normal((3, IMAGE, IMAGE, 3)).astype(np.float32)
  t = np.array([0, 1234, 3999], dtype=np.int32)
  got = np.asarray(unet_apply(den.unet, den.params, jnp.asarray(x), jnp.asarray(t)))
  return sd, x, t, got


def _rel_err(got, want):
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


# float32 rounding: ~6e-8 relative per operation; through ~25 layers (convs summing up to 9·192
# terms, GroupNorms, softmaxes) the accumulated error stays a few 1e-6 of the output scale.
# 1e-4 leaves a wide margin and is still far below any of the deviations MUTATIONS make (> 1e-2).
RTOL = 1e-4


def test_reference_state_dict_has_improved_diffusion_keys():
  keys = set(RefUNet().state_dict())
  for k in ("time_embed.0.weight", "time_embed.2.bias", "input_blocks.0.0.weight",
            "input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.emb_layers.1.weight",
            "input_blocks.1.0.out_layers.3.weight", "input_blocks.2.0.op.weight",
            "input_blocks.3.0.skip_connection.weight", "input_blocks.3.1.qkv.weight",
            "input_blocks.3.1.proj_out.weight", "input_blocks.3.1.norm.weight",
            "middle_block.1.qkv.weight", "middle_block.2.out_layers.3.bias",
            "output_blocks.1.1.conv.weight", "output_blocks.3.2.conv.weight",
            "out.0.weight", "out.2.weight"):
    assert k in keys, k
  assert RefUNet().state_dict()["input_blocks.3.1.qkv.weight"].shape == (192, 64, 1)


def test_forward_matches_improved_diffusion_reference(setup):
  sd, x, t, got = setup
  want = reference(sd, x, t)
  assert got.shape == want.shape == (3, IMAGE, IMAGE, 6)
  assert np.isfinite(got).all()
  scale = float(np.max(np.abs(want)))
  assert scale > 1e-2  # the output is not trivially small
  err = _rel_err(got, want)
  assert err < RTOL, f"max |jaxpoison - reference| = {err * scale:.3g} ({err:.3g} of {scale:.3g})"
  # ε (first 3 channels) and the variance interpolation v (last 3) both match.
  for sl in (slice(0, 3), slice(3, 6)):
    assert _rel_err(got[..., sl], want[..., sl]) < RTOL


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_deliberate_deviation_is_detected(setup, mutation):
  sd, x, t, got = setup
  err = _rel_err(got, reference(sd, x, t, mutation))
  assert err > 100 * RTOL, f"{mutation}: reference deviation not detected (rel err {err:.3g})"
