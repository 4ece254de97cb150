"""The DDPM UNet in Flax NNX (NHWC), in diffusers' `UNet2DModel` and improved-diffusion layouts.

One module tree serves both layouts: diffusers' UNet2DModel (as configured for
google/ddpm-cifar10-32) and improved-diffusion's `UNetModel` build the same network up to
parameter names and a few flags (time-embedding order and shift, scale-shift norm, heads,
GroupNorm ε, time-step rescaling, symmetric or one-sided downsampling padding), which
`UNetConfig` holds. Submodule names follow diffusers (`down_blocks.1.resnets.0.conv1`), so a
diffusers state dict maps onto the params by name (see `convert.py`).

Shapes: `x` float [B, H, W, C] (images in [-1, 1] plus noise), `t` [B] time steps (float or
int, in the model's own step units), output [B, H, W, out_channels].
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import normalization as _normalization  # its statistics (GroupNorm, below)

from jaxpoison import backend, runs
from jaxpoison.backend import ATTENTION_IMPLEMENTATIONS  # noqa: F401  (re-exported)

LAYOUTS = ("diffusers", "improved_diffusion")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Architecture of a DDPM UNet (hashable: usable as a static jit argument).

  sample_size: image side in pixels; in/out_channels: image channels in, model channels out
    (6 = improved-diffusion's learned variance; ε is the first 3).
  block_out_channels: channels per resolution level (level i works at sample_size / 2^i).
  layers_per_block: ResNet blocks per level on the way down (one more on the way up).
  attention_resolutions: resolutions (in pixels, e.g. (16,) or (16, 8)) whose levels have
    self-attention after each ResNet block.
  norm_num_groups, norm_eps: GroupNorm groups and ε.
  flip_sin_to_cos, freq_shift: sinusoidal time embedding as in diffusers'
    `get_timestep_embedding` (cos-first when flipped; frequencies 10000^(-i/(half - shift))).
  dropout: dropout rate inside ResNet blocks (training only).
  layout: "diffusers" or "improved_diffusion" (which state-dict naming `convert.py` reads).
  downsample_padding: 0 = pad one pixel right/bottom then a valid stride-2 conv (diffusers'
    ddpm-cifar10-32); 1 = symmetric padding (diffusers default, improved-diffusion).
  num_heads / attention_head_dim: attention heads (a fixed count, or channels per head); both
    None = one head over all channels (ddpm-cifar10-32).
  mid_attention: self-attention in the middle block.
  scale_shift_norm: FiLM-style time conditioning, norm(h)·(1 + scale) + shift (diffusers'
    resnet_time_scale_shift="scale_shift", improved-diffusion's use_scale_shift_norm).
  timestep_scale: the network sees t·timestep_scale (improved-diffusion's rescale_timesteps
    feeds t·1000/T).
  patch_size: p > 1 folds each p×p patch into channels before the first conv (space-to-depth)
    and unfolds the output (depth-to-space), so the UNet's first level works at sample_size / p
    with p²·C input channels. Small channel counts at full resolution are memory-bound on CPUs;
    folding trades them for wider, denser convolutions (as FFDNet does for fast denoising).
    Attention resolutions count the UNet's own levels (sample_size / p / 2^i).
  """
  sample_size: int = 32
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 256, 256)
  layers_per_block: int = 2
  attention_resolutions: tuple[int, ...] = (16,)
  norm_num_groups: int = 32
  norm_eps: float = 1e-6
  flip_sin_to_cos: bool = False
  freq_shift: float = 1.0
  dropout: float = 0.0
  layout: str = "diffusers"
  downsample_padding: int = 0
  num_heads: int | None = None
  attention_head_dim: int | None = None
  mid_attention: bool = True
  scale_shift_norm: bool = False
  timestep_scale: float = 1.0
  patch_size: int = 1

  def __post_init__(self):
    # Lists from JSON become tuples so that the config stays hashable.
    object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
    object.__setattr__(self, "attention_resolutions",
                       tuple(int(r) for r in self.attention_resolutions))
    if self.layout not in LAYOUTS:
      raise ValueError(f"UNetConfig.layout: expected one of {LAYOUTS}, got {self.layout!r}")
    if not self.block_out_channels:
      raise ValueError("UNetConfig.block_out_channels: expected at least one level")
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise ValueError(
            f"UNetConfig: every entry of block_out_channels {self.block_out_channels} must be "
            f"divisible by norm_num_groups={self.norm_num_groups}")
    levels = len(self.block_out_channels)
    if self.patch_size < 1 or self.sample_size % self.patch_size:
      raise ValueError(f"UNetConfig.patch_size: expected a divisor of sample_size "
                       f"{self.sample_size}, got {self.patch_size}")
    if self.inner_size % 2 ** (levels - 1):
      raise ValueError(
          f"UNetConfig: sample_size {self.sample_size} / patch_size {self.patch_size} is not "
          f"divisible by 2^{levels - 1} ({levels} levels)")
    if self.downsample_padding not in (0, 1):
      raise ValueError(f"UNetConfig.downsample_padding: expected 0 or 1, got {self.downsample_padding}")
    if self.layers_per_block < 1:
      raise ValueError(f"UNetConfig.layers_per_block: expected >= 1, got {self.layers_per_block}")

  @property
  def eps_channels(self) -> int:
    """Channels of the ε prediction (the first ones of the output)."""
    return self.in_channels

  @property
  def inner_size(self) -> int:
    """Side of the UNet's first level (after space-to-depth)."""
    return self.sample_size // self.patch_size

  def level_has_attention(self, level: int) -> bool:
    return self.inner_size // 2 ** level in self.attention_resolutions

  def heads(self, channels: int) -> int:
    if self.num_heads is not None:
      return self.num_heads
    if self.attention_head_dim is not None:
      return channels // self.attention_head_dim
    return 1

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["block_out_channels"] = list(self.block_out_channels)
    d["attention_resolutions"] = list(self.attention_resolutions)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "UNetConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"UNetConfig: unknown fields {unknown}; expected a subset of {sorted(names)}")
    return cls(**d)


# Folders written before space-to-depth existed ran without it.
runs.register_added_settings({"patch_size": 1})


def ddpm_cifar10_config() -> UNetConfig:
  """google/ddpm-cifar10-32 (diffusers UNet2DModel, 35,746,307 parameters).

  From its config.json: block_out_channels 128/256/256/256, layers_per_block 2, down blocks
  DownBlock2D, AttnDownBlock2D, DownBlock2D, DownBlock2D (attention at 16×16; up blocks mirror
  it), downsample_padding 0, attention_head_dim null (one head), norm_num_groups 32, norm_eps
  1e-6, positional time embedding with flip_sin_to_cos false and freq_shift 1.
  """
  return UNetConfig()


def improved_diffusion_cifar10_config(*, learn_sigma: bool = True,
                                      dropout: float = 0.3) -> UNetConfig:
  """improved-diffusion's CIFAR-10 model (cifar10_uncond_50M_500K's flags).

  Flags from its README: --image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True
  --dropout 0.3 with --diffusion_steps 4000 --noise_schedule cosine; the rest are
  `model_and_diffusion_defaults()`: num_heads 4, attention_resolutions "16,8",
  use_scale_shift_norm True, rescale_timesteps True (the network sees t·1000/4000). Channel
  multipliers (1, 2, 2, 2) for 32×32 images; GroupNorm32 with PyTorch's ε = 1e-5; the time
  embedding is cos-first with frequencies 10000^(-i/half) (flip, shift 0).
  """
  return UNetConfig(
      out_channels=6 if learn_sigma else 3, block_out_channels=(128, 256, 256, 256),
      layers_per_block=3, attention_resolutions=(16, 8), norm_num_groups=32, norm_eps=1e-5,
      flip_sin_to_cos=True, freq_shift=0.0, dropout=dropout, layout="improved_diffusion",
      downsample_padding=1, num_heads=4, mid_attention=True, scale_shift_norm=True,
      timestep_scale=1000.0 / 4000.0)


def timestep_embedding(t, dim: int, *, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0):
  """Sinusoidal embedding of (possibly fractional) time steps t [B] -> float32 [B, dim]."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = jnp.asarray(t, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def space_to_depth(x, p: int):
  """[B, H, W, C] -> [B, H/p, W/p, p·p·C]: each p×p patch's pixels (row-major, then channels)."""
  if p == 1:
    return x
  b, hh, ww, c = x.shape
  x = x.reshape(b, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, hh // p, ww // p, p * p * c)


def depth_to_space(x, p: int):
  """The inverse of `space_to_depth`: [B, H, W, p·p·C] -> [B, H·p, W·p, C]."""
  if p == 1:
    return x
  b, hh, ww, c = x.shape
  c //= p * p
  x = x.reshape(b, hh, ww, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, hh * p, ww * p, c)


def _conv(cin, cout, k, rngs, *, stride=1, padding="SAME"):
  if padding == "SAME" and k == 3:
    padding = ((1, 1), (1, 1))
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=padding, rngs=rngs)


class GroupNorm(nnx.GroupNorm):
  """nnx.GroupNorm whose variance takes two passes on a CPU (E[(x − μ)²], as PyTorch computes
  it: parity, no cancellation) and one on an accelerator (`backend.resolve_one_pass_statistics`,
  decided when the program is traced, so that an AOT compile for an H100 gets the H100's
  choice). Same variables as nnx.GroupNorm; on a CPU the same computation, op for op (flax's
  own statistics and normalization functions)."""

  def __call__(self, x, *, mask=None):
    if not backend.resolve_one_pass_statistics():
      return super().__call__(x, mask=mask)
    axes = _normalization._canonicalize_axes(x.ndim, list(range(1, x.ndim - 1)) + [-1])
    scale = self.scale[...] if self.scale else None
    bias = self.bias[...] if self.bias else None
    x, scale, bias = self.promote_dtype((x, scale, bias), dtype=self.dtype)
    mean, var = _normalization._compute_stats(
        x.reshape(x.shape[:-1] + (self.num_groups, self.group_size)),
        list(axes[:-1]) + [-1], self.dtype, None, None, use_fast_variance=True)
    mean = jnp.repeat(mean, self.group_size, axis=1)
    var = jnp.repeat(var, self.group_size, axis=1)
    return _normalization._normalize(x, mean, var, scale, bias, axes[:-1],
                                     (self.feature_axis,), self.dtype, self.epsilon)


def _norm(c, cfg: UNetConfig, rngs):
  return GroupNorm(c, num_groups=cfg.norm_num_groups, epsilon=cfg.norm_eps,
                   use_fast_variance=False, rngs=rngs)


class TimeEmbedding(nnx.Module):
  """Linear -> SiLU -> Linear on the sinusoidal embedding."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    self.linear_1 = nnx.Linear(cin, cout, rngs=rngs)
    self.linear_2 = nnx.Linear(cout, cout, rngs=rngs)

  def __call__(self, x):
    return self.linear_2(jax.nn.silu(self.linear_1(x)))


class ResnetBlock(nnx.Module):
  """GroupNorm-SiLU-conv, plus the time embedding, GroupNorm-SiLU-dropout-conv, plus skip."""

  def __init__(self, cin: int, cout: int, temb: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
    self.norm1 = _norm(cin, cfg, rngs)
    self.conv1 = _conv(cin, cout, 3, rngs)
    self.time_emb_proj = nnx.Linear(temb, 2 * cout if cfg.scale_shift_norm else cout, rngs=rngs)
    self.norm2 = _norm(cout, cfg, rngs)
    self.conv2 = _conv(cout, cout, 3, rngs)
    self.conv_shortcut = _conv(cin, cout, 1, rngs, padding="VALID") if cin != cout else None
    self.scale_shift = cfg.scale_shift_norm
    self.dropout = float(cfg.dropout)

  def __call__(self, x, temb, key=None):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    e = self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
    if self.scale_shift:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = self.norm2(h) * (1 + scale) + shift
    else:
      # The time embedding is added in float32, inside the normalization's own kernels: added
      # in the compute dtype, XLA:GPU fuses it into conv1 as cuDNN's side input, which
      # materializes its broadcast to the full activation shape (gpu_check --aot). In float32
      # (the CPU's) this is the same computation.
      h = self.norm2(h.astype(jnp.float32) + e.astype(jnp.float32)).astype(h.dtype)
    h = jax.nn.silu(h)
    if key is not None and self.dropout > 0:
      keep = jax.random.bernoulli(key, 1.0 - self.dropout, h.shape)
      h = jnp.where(keep, h / (1.0 - self.dropout), 0).astype(h.dtype)
    h = self.conv2(h)
    if self.conv_shortcut is not None:
      x = self.conv_shortcut(x)
    return x + h


def attention_implementation(requested: str, head_dim: int, dtype) -> str:
  """The attention kernel for one layer on the default device (`backend.resolve_attention`)."""
  return backend.resolve_attention(requested, head_dim, dtype)


class Attention(nnx.Module):
  """Residual multi-head self-attention over the H·W positions (`jax.nn.dot_product_attention`:
  logits and softmax in float32 on XLA's path, cuDNN's fused kernel where chosen)."""

  def __init__(self, c: int, heads: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
    if c % heads:
      raise ValueError(f"attention: {c} channels do not split into {heads} heads")
    self.group_norm = _norm(c, cfg, rngs)
    self.to_q = nnx.Linear(c, c, rngs=rngs)
    self.to_k = nnx.Linear(c, c, rngs=rngs)
    self.to_v = nnx.Linear(c, c, rngs=rngs)
    self.to_out = nnx.Linear(c, c, rngs=rngs)
    self.heads = heads

  def __call__(self, x, implementation: str = "auto"):
    b, hh, ww, c = x.shape
    d = c // self.heads
    h = self.group_norm(x).reshape(b, hh * ww, c)
    q = self.to_q(h).reshape(b, hh * ww, self.heads, d)
    k = self.to_k(h).reshape(b, hh * ww, self.heads, d)
    v = self.to_v(h).reshape(b, hh * ww, self.heads, d)
    a = jax.nn.dot_product_attention(
        q, k, v, implementation=attention_implementation(implementation, d, q.dtype))
    return x + self.to_out(a.reshape(b, hh * ww, c)).reshape(b, hh, ww, c)


class Downsample(nnx.Module):
  def __init__(self, c: int, cfg: UNetConfig, *, rngs: nnx.Rngs):
    pad = ((0, 1), (0, 1)) if cfg.downsample_padding == 0 else ((1, 1), (1, 1))
    self.conv = _conv(c, c, 3, rngs, stride=2, padding=pad)

  def __call__(self, x):
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest-neighbour ×2, then a 3×3 conv."""

  def __init__(self, c: int, *, rngs: nnx.Rngs):
    self.conv = _conv(c, c, 3, rngs)

  def __call__(self, x):
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class DownBlock(nnx.Module):
  def __init__(self, cin, cout, temb, cfg: UNetConfig, attention: bool, downsample: bool, *,
               rngs: nnx.Rngs):
    n = cfg.layers_per_block
    self.resnets = nnx.List(
        [ResnetBlock(cin if i == 0 else cout, cout, temb, cfg, rngs=rngs) for i in range(n)])
    self.attentions = nnx.List(
        [Attention(cout, cfg.heads(cout), cfg, rngs=rngs) for _ in range(n)] if attention else [])
    self.downsamplers = nnx.List([Downsample(cout, cfg, rngs=rngs)] if downsample else [])

  def __call__(self, x, temb, keys, attention="auto"):
    skips = []
    for i, resnet in enumerate(self.resnets):
      x = resnet(x, temb, keys())
      if len(self.attentions):
        x = self.attentions[i](x, attention)
      skips.append(x)
    for down in self.downsamplers:
      x = down(x)
      skips.append(x)
    return x, skips


class MidBlock(nnx.Module):
  def __init__(self, c, temb, cfg: UNetConfig, *, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResnetBlock(c, c, temb, cfg, rngs=rngs) for _ in range(2)])
    self.attentions = nnx.List(
        [Attention(c, cfg.heads(c), cfg, rngs=rngs)] if cfg.mid_attention else [])

  def __call__(self, x, temb, keys, attention="auto"):
    x = self.resnets[0](x, temb, keys())
    for attn in self.attentions:
      x = attn(x, attention)
    return self.resnets[1](x, temb, keys())


class UpBlock(nnx.Module):
  def __init__(self, cin, skip_channels, cout, temb, cfg: UNetConfig, attention: bool,
               upsample: bool, *, rngs: nnx.Rngs):
    resnets = []
    for i, skip in enumerate(skip_channels):
      resnets.append(ResnetBlock((cin if i == 0 else cout) + skip, cout, temb, cfg, rngs=rngs))
    self.resnets = nnx.List(resnets)
    self.attentions = nnx.List(
        [Attention(cout, cfg.heads(cout), cfg, rngs=rngs) for _ in resnets] if attention else [])
    self.upsamplers = nnx.List([Upsample(cout, rngs=rngs)] if upsample else [])

  def __call__(self, x, skips, temb, keys, attention="auto"):
    for i, resnet in enumerate(self.resnets):
      x = resnet(jnp.concatenate([x, skips.pop()], axis=-1), temb, keys())
      if len(self.attentions):
        x = self.attentions[i](x, attention)
    for up in self.upsamplers:
      x = up(x)
    return x


class UNet(nnx.Module):
  """The DDPM UNet. `__call__(x [B,H,W,C], t [B], dropout_key=None, attention="auto")` ->
  [B,H,W,out_channels]; `attention` picks the attention kernel (`attention_implementation`)."""

  def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    chans = cfg.block_out_channels
    c0, temb, levels = chans[0], 4 * chans[0], len(chans)
    p2 = cfg.patch_size ** 2
    self.conv_in = _conv(cfg.in_channels * p2, c0, 3, rngs)
    self.time_embedding = TimeEmbedding(c0, temb, rngs=rngs)
    skip_channels, ch, down = [c0], c0, []
    for level, cout in enumerate(chans):
      last = level == levels - 1
      down.append(DownBlock(ch, cout, temb, cfg, cfg.level_has_attention(level), not last,
                            rngs=rngs))
      skip_channels += [cout] * cfg.layers_per_block + ([] if last else [cout])
      ch = cout
    self.down_blocks = nnx.List(down)
    self.mid_block = MidBlock(ch, temb, cfg, rngs=rngs)
    up = []
    for level in reversed(range(levels)):
      cout = chans[level]
      skips = [skip_channels.pop() for _ in range(cfg.layers_per_block + 1)]
      up.append(UpBlock(ch, skips, cout, temb, cfg, cfg.level_has_attention(level), level > 0,
                        rngs=rngs))
      ch = cout
    self.up_blocks = nnx.List(up)
    self.conv_norm_out = _norm(c0, cfg, rngs)
    self.conv_out = _conv(c0, cfg.out_channels * p2, 3, rngs)

  def __call__(self, x, t, dropout_key=None, attention="auto"):
    cfg = self.config
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32) * cfg.timestep_scale, x.shape[:1])
    emb = timestep_embedding(t, cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos,
                             freq_shift=cfg.freq_shift)
    temb = self.time_embedding(emb.astype(x.dtype))
    counter = [0]

    def keys():  # A fresh dropout key per ResNet block (None at inference).
      if dropout_key is None:
        return None
      counter[0] += 1
      return jax.random.fold_in(dropout_key, counter[0])

    h = self.conv_in(space_to_depth(x, cfg.patch_size))
    skips = [h]
    for block in self.down_blocks:
      h, s = block(h, temb, keys, attention)
      skips += s
    h = self.mid_block(h, temb, keys, attention)
    for block in self.up_blocks:
      h = block(h, skips, temb, keys, attention)
    return depth_to_space(self.conv_out(jax.nn.silu(self.conv_norm_out(h))), cfg.patch_size)


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
