"""The networks: airbench94 (Jordan 2024) and a CIFAR ResNet-18, as Flax NNX modules.

Both take float images in [0, 1], [B, H, W, C], and normalize them inside, so that a trained
model is a complete function of the pixels (the attacks' feature extractors rely on this).
`features(x)` is the penultimate layer, `__call__(x)` the logits; `train=True` runs batch norm
on batch statistics and updates its running averages.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpoison.classifier.config import CIFAR10_MEAN, CIFAR10_STD, HEAD_LOGIT_SCALE, TrainConfig

# PyTorch's default initialization of conv and linear weights, U(±1/√fan_in), which the
# airbench recipe was tuned with.
torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4


class Whitening(nnx.Variable):
  """The whitening conv's filters: computed from the data, never trained."""


class InputStatistics(nnx.Variable):
  """Per-channel mean and std [2, C] the network normalizes its inputs with, computed from its
  own training images (TrainConfig.input_norm = "training_set"), never trained."""


def dataset_statistics(channels: int) -> jax.Array:
  """The fixed normalization [2, C] (mean; std): CIFAR-10's for RGB, (0.5; 0.25) otherwise."""
  mean = CIFAR10_MEAN[:channels] if channels == 3 else (0.5,) * channels
  std = CIFAR10_STD[:channels] if channels == 3 else (0.25,) * channels
  return jnp.asarray([mean, std], jnp.float32)


def training_set_statistics(images: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Per-channel mean and std [2, C] of uint8 images [N, H, W, C] in [0, 1] units, over the
  images where `valid` [N] is set (all by default): the reference DPA code's normalization per
  partition (k1rezaei/DPA-election normalizes each base classifier's inputs by its part's
  statistics); the std is the population std over every pixel of the channel."""
  x = images.astype(jnp.float32) / 255.0
  weight = jnp.ones(x.shape[0], jnp.float32) if valid is None else valid.astype(jnp.float32)
  weight = jnp.broadcast_to(weight[:, None, None, None], x.shape[:-1] + (1,))
  count = jnp.maximum(weight.sum(), 1.0)
  mean = (x * weight).sum(axis=(0, 1, 2)) / count
  var = (jnp.square(x - mean) * weight).sum(axis=(0, 1, 2)) / count
  return jnp.stack([mean, jnp.sqrt(var)])


def _normalize(images: jax.Array, channels: int, statistics: jax.Array | None = None) -> jax.Array:
  stats = dataset_statistics(channels) if statistics is None else statistics
  return (images.astype(jnp.float32) - stats[0]) / stats[1]


def _batch_mask(mask):
  """A batch mask [B] as batch norm takes it (broadcast over [B, H, W, C]), or None."""
  return None if mask is None else mask[:, None, None, None]


def _dirac_init(kernel: jax.Array) -> jax.Array:
  """Makes the first min(in, out) filters of an HWIO kernel identities (airbench's init)."""
  kh, kw, cin, cout = kernel.shape
  n = min(cin, cout)
  identity = jnp.zeros((kh, kw, cin, n), kernel.dtype)
  identity = identity.at[kh // 2, kw // 2, jnp.arange(n), jnp.arange(n)].set(1.0)
  return kernel.at[..., :n].set(identity)


def _gelu(x):
  return jax.nn.gelu(x, approximate=False)  # PyTorch's nn.GELU() is the exact (erf) form.


class BatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm in float32 (statistics, running averages, normalization) whose output is
  cast to `out_dtype`, the network's compute dtype.

  Under bfloat16 the activations that follow (GELU, pooling, residual sums) then move half the
  bytes, while the arithmetic is float32's: nnx.BatchNorm(dtype=bfloat16) would instead cast
  the running averages, scale and bias to bfloat16 before normalizing (in eval mode the whole
  normalization runs in bfloat16). With out_dtype float32 this is nnx.BatchNorm(dtype=float32).
  """

  def __init__(self, num_features: int, *, out_dtype=jnp.float32, **kwargs):
    super().__init__(num_features, dtype=jnp.float32, **kwargs)
    self.out_dtype = out_dtype

  def __call__(self, x, use_running_average: bool | None = None, **kwargs):
    return super().__call__(x, use_running_average, **kwargs).astype(self.out_dtype)


class GroupNorm(nnx.GroupNorm):
  """nnx.GroupNorm in float32 whose output is cast to `out_dtype`; it takes (and ignores)
  batch norm's `use_running_average`, so that either norm fits the same call sites."""

  def __init__(self, num_features: int, *, out_dtype=jnp.float32, **kwargs):
    super().__init__(num_features, num_groups=min(32, num_features), epsilon=1e-5,
                     dtype=jnp.float32, **kwargs)
    self.out_dtype = out_dtype

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    # No running statistics; each example is normalized on its own, so a batch mask (padded
    # examples) does not concern it.
    del use_running_average, mask
    return super().__call__(x).astype(self.out_dtype)


def make_norm(config: TrainConfig, channels: int, out_dtype, rngs: nnx.Rngs, *,
              use_scale: bool = True) -> nnx.Module:
  """The config's normalization layer (`TrainConfig.norm`) over `channels` channels
  ("frozen_batch" is batch norm; the trainer runs it on its running statistics)."""
  if config.norm == "group":
    return GroupNorm(channels, use_scale=use_scale, out_dtype=out_dtype, rngs=rngs)
  return BatchNorm(channels, use_scale=use_scale, momentum=config.bn_momentum,
                   epsilon=config.bn_epsilon, out_dtype=out_dtype, rngs=rngs)


def _patches(x, window: int):
  """[B, H, W, C] → [B, H/k, k, W/k, k, C], the trailing rows and columns that fill no whole
  window dropped (floor mode, as nn.MaxPool2d and linen.max_pool's VALID padding)."""
  b, h, w, c = x.shape
  rows, cols = h // window, w // window
  return x[:, :rows * window, :cols * window].reshape(b, rows, window, cols, window, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window: int) -> jax.Array:
  """Max-pool over non-overlapping window × window patches of [B, H, W, C] (stride = window,
  floor mode), equal to `linen.max_pool(x, (k, k), (k, k))` in value and in every derivative:
  the tangent (and so the gradient) is the first maximum's of each patch in row-major order,
  as XLA's select_and_scatter (and PyTorch's MaxPool2d) gives it, so ties break the same way.

  Why not linen.max_pool: on a GPU its backward pass is a select_and_scatter (plus a zeroed
  buffer to scatter into), and XLA fuses the forward reduce_window with its consumer into a
  float32 value + int32 index pair; written as a reshape, a max and elementwise selects, the
  backward pass is one fused elementwise kernel. Compiled for an H100 (gpu_check --aot), this
  cuts the bytes an airbench94 training step moves by about a third (BENCHMARKS.md, issue 36).
  A custom JVP rather than a custom VJP: jax transposes it into the backward pass, and the
  attacks' gradients of gradients (Witches' Brew) differentiate it again.
  """
  return _patches(x, window).max(axis=(2, 4))


@max_pool.defjvp
def _max_pool_jvp(window, primals, tangents):
  (x,), (dx,) = primals, tangents
  patches, dpatches = _patches(x, window), _patches(dx, window)
  pooled = patches.max(axis=(2, 4))
  # The first maximum's position in the patch (row-major), one byte per output: what the
  # backward pass keeps of the forward (rather than a mask per position).
  slots = [(i, j) for i in range(window) for j in range(window)]
  first = jnp.full(pooled.shape, len(slots) - 1, jnp.uint8)
  for n, (i, j) in reversed(list(enumerate(slots[:-1]))):
    first = jnp.where(patches[:, :, i, :, j] == pooled, jnp.uint8(n), first)
  out = dpatches[:, :, slots[-1][0], :, slots[-1][1]]
  for n, (i, j) in enumerate(slots[:-1]):
    out = jnp.where(first == n, dpatches[:, :, i, :, j], out)
  return pooled, out


class ConvGroup(nnx.Module):
  """conv 3×3 → max-pool 2 → batch norm → GELU → conv 3×3 → batch norm → GELU."""

  def __init__(self, cin: int, cout: int, config: TrainConfig, dtype, *, rngs: nnx.Rngs):
    def conv(a, b):
      layer = nnx.Conv(a, b, (3, 3), padding="SAME", use_bias=False, dtype=dtype,
                       kernel_init=torch_default_init, rngs=rngs)
      layer.kernel[...] = _dirac_init(layer.kernel[...])
      return layer

    def norm(c):
      # airbench freezes the batch-norm scale at 1 and trains only the bias.
      return make_norm(config, c, dtype, rngs, use_scale=False)

    self.conv1 = conv(cin, cout)
    self.norm1 = norm(cout)
    self.conv2 = conv(cout, cout)
    self.norm2 = norm(cout)

  def __call__(self, x, train: bool, mask=None):
    x = self.conv1(x)
    x = max_pool(x, 2)
    x = _gelu(self.norm1(x, use_running_average=not train, mask=_batch_mask(mask)))
    x = self.conv2(x)
    return _gelu(self.norm2(x, use_running_average=not train, mask=_batch_mask(mask)))


class Airbench94(nnx.Module):
  """Whitening conv 2×2 (+bias, GELU), three ConvGroups, max-pool 3, linear × 1/9."""

  def __init__(self, config: TrainConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
    channels = config.image_shape[-1]
    width = 2 * channels * WHITEN_KERNEL ** 2
    self.channels = channels
    self.dtype = dtype
    self.whiten_kernel = Whitening(jnp.zeros((WHITEN_KERNEL, WHITEN_KERNEL, channels, width)))
    self.whiten_bias = nnx.Param(jnp.zeros((width,)))
    w1, w2, w3 = config.widths
    self.group1 = ConvGroup(width, w1, config, dtype, rngs=rngs)
    self.group2 = ConvGroup(w1, w2, config, dtype, rngs=rngs)
    self.group3 = ConvGroup(w2, w3, config, dtype, rngs=rngs)
    self.head = nnx.Linear(w3, config.num_classes, use_bias=False, dtype=dtype,
                           kernel_init=torch_default_init, rngs=rngs)
    self.scale = HEAD_LOGIT_SCALE["airbench94"]
    if config.input_norm == "training_set":
      self.input_statistics = InputStatistics(dataset_statistics(channels))

  def features(self, images: jax.Array, train: bool = False, mask=None) -> jax.Array:
    """Penultimate features [B, widths[-1]] of float images in [0, 1], [B, H, W, C]; `mask`
    [B] (training only): the examples batch norm's statistics are computed over (padding
    left out)."""
    x = _normalize(images, self.channels, _statistics(self)).astype(self.dtype)
    x = jax.lax.conv_general_dilated(
        x, self.whiten_kernel[...].astype(self.dtype), (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = _gelu(x + self.whiten_bias[...].astype(self.dtype))
    x = self.group1(x, train, mask)
    x = self.group2(x, train, mask)
    x = self.group3(x, train, mask)
    x = max_pool(x, 3)
    return x.reshape(x.shape[0], -1).astype(jnp.float32)

  def __call__(self, images: jax.Array, train: bool = False, mask=None) -> jax.Array:
    return self.head_logits(self.features(images, train, mask))

  def head_logits(self, features: jax.Array) -> jax.Array:
    return self.head(features.astype(self.dtype)).astype(jnp.float32) * self.scale


class BasicBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, stride: int, config: TrainConfig, dtype, *,
               rngs: nnx.Rngs):
    def conv(a, b, k, s):
      return nnx.Conv(a, b, (k, k), strides=(s, s), padding="SAME" if k == 3 else "VALID",
                      use_bias=False, dtype=dtype, rngs=rngs,
                      kernel_init=nnx.initializers.kaiming_normal())

    def norm(c):
      return make_norm(config, c, dtype, rngs)

    self.conv1 = conv(cin, cout, 3, stride)
    self.norm1 = norm(cout)
    self.conv2 = conv(cout, cout, 3, 1)
    self.norm2 = norm(cout)
    self.projection = stride != 1 or cin != cout
    if self.projection:
      self.shortcut = conv(cin, cout, 1, stride)
      self.shortcut_norm = norm(cout)

  def __call__(self, x, train: bool, mask=None):
    ura = not train
    m = _batch_mask(mask)
    y = jax.nn.relu(self.norm1(self.conv1(x), use_running_average=ura, mask=m).astype(x.dtype))
    y = self.norm2(self.conv2(y), use_running_average=ura, mask=m)
    skip = x if not self.projection else self.shortcut_norm(
        self.shortcut(x), use_running_average=ura, mask=m)
    return jax.nn.relu(y + skip).astype(x.dtype)


class ResNet18(nnx.Module):
  """ResNet-18 for 32×32 inputs: 3×3 stem (no max-pool), 4 stages of 2 basic blocks."""

  def __init__(self, config: TrainConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.channels = config.image_shape[-1]
    self.dtype = dtype
    w = config.widths
    self.stem = nnx.Conv(self.channels, w[0], (3, 3), padding="SAME", use_bias=False, dtype=dtype,
                         kernel_init=nnx.initializers.kaiming_normal(), rngs=rngs)
    self.stem_norm = make_norm(config, w[0], dtype, rngs)
    blocks, cin = [], w[0]
    for stage, cout in enumerate(w):
      for b in range(2):
        stride = 2 if (stage > 0 and b == 0) else 1
        blocks.append(BasicBlock(cin, cout, stride, config, dtype, rngs=rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(w[-1], config.num_classes, dtype=dtype,
                           kernel_init=torch_default_init, rngs=rngs)
    if config.input_norm == "training_set":
      self.input_statistics = InputStatistics(dataset_statistics(self.channels))

  def features(self, images: jax.Array, train: bool = False, mask=None) -> jax.Array:
    x = _normalize(images, self.channels, _statistics(self)).astype(self.dtype)
    x = self.stem_norm(self.stem(x), use_running_average=not train, mask=_batch_mask(mask))
    x = jax.nn.relu(x).astype(self.dtype)
    for block in self.blocks:
      x = block(x, train, mask)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

  def __call__(self, images: jax.Array, train: bool = False, mask=None) -> jax.Array:
    return self.head_logits(self.features(images, train, mask))

  def head_logits(self, features: jax.Array) -> jax.Array:
    return self.head(features.astype(self.dtype)).astype(jnp.float32)


def _statistics(model) -> jax.Array | None:
  """The model's own input statistics (input_norm "training_set"), or None (the dataset's)."""
  stats = getattr(model, "input_statistics", None)
  return None if stats is None else stats[...]


def create_model(config: TrainConfig, key: jax.Array, dtype=jnp.float32) -> nnx.Module:
  """A freshly initialized network for `config` (airbench's whitening filters still zero)."""
  cls = {"airbench94": Airbench94, "resnet18": ResNet18}[config.model]
  return cls(config, rngs=nnx.Rngs(params=key), dtype=dtype)


def init_head(config: TrainConfig, key: jax.Array, dtype=jnp.float32):
  """A fresh final linear layer's state (for `reinit_head`)."""
  width = config.widths[-1]
  layer = nnx.Linear(width, config.num_classes, use_bias=config.model == "resnet18",
                     dtype=dtype, kernel_init=torch_default_init, rngs=nnx.Rngs(params=key))
  return nnx.state(layer)


def whitening_kernel(images: jax.Array, num_images: int,
                     statistics: jax.Array | None = None,
                     valid: jax.Array | None = None) -> jax.Array:
  """airbench's whitening filters from the first `num_images` uint8 images [N, H, W, C]
  (normalized by `statistics` [2, C], default the dataset's, as the network normalizes them;
  only those where `valid` [N] is set, when given: padding left out).

  The covariance of all 2×2 patches of the normalized images is eigen-decomposed; each
  eigenvector, scaled by 1/√(eigenvalue + 5e-4), is a filter, and so is its negation
  (2 · 4C filters, HWIO [2, 2, C, 8C], strongest direction first).
  """
  x = _normalize(images[:num_images].astype(jnp.float32) / 255.0, images.shape[-1], statistics)
  h, w, c = x.shape[1:]
  k = WHITEN_KERNEL
  # Patch vectors in (dy, dx, channel) order, the HWIO kernel's order; the covariance is
  # accumulated from shifted views instead of materializing every patch.
  views = [x[:, dy:h - k + 1 + dy, dx:w - k + 1 + dx, :] for dy in range(k) for dx in range(k)]
  patches = jnp.concatenate(views, axis=-1)
  if valid is None:
    count = patches.shape[0] * patches.shape[1] * patches.shape[2]
    weighted = patches
  else:
    weight = valid[:num_images].astype(jnp.float32)
    count = jnp.maximum(weight.sum(), 1.0) * patches.shape[1] * patches.shape[2]
    weighted = patches * weight[:, None, None, None]
  cov = jnp.einsum("nhwa,nhwb->ab", weighted, patches,
                   precision=jax.lax.Precision.HIGHEST) / count
  eigenvalues, eigenvectors = jnp.linalg.eigh(cov)
  eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
  filters = eigenvectors / jnp.sqrt(jnp.maximum(eigenvalues, 0.0) + WHITEN_EPS)
  filters = jnp.concatenate([filters, -filters], axis=1)
  return filters.reshape(k, k, c, 2 * k * k * c)


def num_parameters(state) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(state)))
