"""LSP, linearly separable perturbations (Yu et al. 2022): per image a point of its class's
Gaussian cluster shown as patch-wise constant colours, scaled to ℓ2 = 1.0 (`lsp_poison`). The
family, its bounds, randomness, quantization and references: `jaxpoison.attacks.indiscriminate`."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_perturbation_bound
from jaxpoison._checks import check_positive as _positive
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks.unlearnable.base import (DEFAULT_BATCH_SIZE, PoisonConfig, _add_and_quantize,
                                                _check_inputs, _in_batches, _scale_to_norm,
                                                indexed_keys)
from jaxpoison.attacks import constraints

LSP_EPSILON = 1.0
# The LSP reference's own bound: `--eps 6` → ℓ∞-equivalent 6/255, turned into the ℓ2 radius
# 6/255·√(H·W·C) of the ℓ∞ ball's corner (`comput_l2norm_lim`), ≈ 1.304 on CIFAR-10.
LSP_REFERENCE_LINF = 6 / 255


@dataclasses.dataclass(frozen=True)
class LSPConfig(PoisonConfig):
  """Linearly separable perturbations (LSP), Yu et al.'s synthetic_perturbations/cifar_train.py.

  Attributes:
    num_classes: labels lie in [0, num_classes).
    epsilon: every perturbation is scaled to exactly this ℓ2 norm (then clipping and
      quantization can only shrink it). 1.0: ISS's table (spec §6.8).
    l2_from_linf: when set, the bound is instead l2_from_linf·√(H·W·C), the reference's own
      scaling (`comput_l2norm_lim(args.eps/255, 32·32·3)` with `--eps 6` by default:
      `LSP_REFERENCE_LINF`, ≈ 1.304 on CIFAR-10); epsilon is then ignored.
    patch_size: side of the constant-colour patches (`--patchsize 8`).
    class_sep: half the side of the hypercube whose vertices are the class centroids
      (`make_classification(class_sep=10.)`).
  """
  epsilon: float = LSP_EPSILON
  l2_from_linf: float | None = None
  patch_size: int = 8
  class_sep: float = 10.0

  def __post_init__(self):
    super().__post_init__()
    _store(self, "epsilon", check_perturbation_bound("l2", self.epsilon))
    if self.l2_from_linf is not None:
      _store(self, "l2_from_linf", check_perturbation_bound("linf", self.l2_from_linf,
                                                            name="l2_from_linf"))
    _store(self, "patch_size", _positive("patch_size", self.patch_size, integer=True))
    _store(self, "class_sep", _positive("class_sep", self.class_sep))

  def bound(self, image_shape) -> float:
    """The ℓ2 norm the perturbations of images of `image_shape` (H, W, C) are scaled to."""
    if self.l2_from_linf is None:
      return self.epsilon
    return self.l2_from_linf * math.sqrt(int(np.prod(image_shape)))


# --- LSP: linearly separable perturbations ------------------------------------------------------

class LSPClasses(NamedTuple):
  """The per-class Gaussian clusters of LSP (make_classification with one cluster per class).

  A sample of class k is z·mixing[k] + centroids[k] with z ~ N(0, I_d): a Gaussian with
  covariance mixing[k]ᵀ·mixing[k] around a hypercube vertex.

  Attributes:
    centroids: float32 [K, d], distinct vertices of {−class_sep, +class_sep}^d.
    mixing: float32 [K, d, d], entries U(−1, 1) ("introduce random covariance").
  """
  centroids: jax.Array
  mixing: jax.Array


def lsp_num_features(image_shape, patch_size: int) -> int:
  """d = ⌈H/p⌉·⌈W/p⌉·C, one value per patch and channel (48 on CIFAR-10 with p = 8)."""
  h, w, c = (int(s) for s in image_shape)
  return math.ceil(h / patch_size) * math.ceil(w / patch_size) * c


def lsp_classes(key, num_features: int, config: LSPConfig | None = None) -> LSPClasses:
  """Draws the class clusters as `make_classification(n_informative=n_features=d,
  n_redundant=0, n_repeated=0, n_clusters_per_class=1, class_sep, flip_y=0)` does.

  The centroids are distinct random hypercube vertices (sklearn samples them without
  replacement); here all K are drawn at once from fold_in(key, attempt) until no two coincide
  (for d = 48 the first attempt almost surely succeeds). The mixing matrix of class k comes
  from fold_in(key', k). sklearn's defaults shift=0, scale=1 leave the points as they are, and
  its final shuffles of samples and features do not change their distribution.
  """
  config = LSPConfig() if config is None else config
  d, k = int(num_features), config.num_classes
  if d < 60 and 2 ** d < k:
    raise ValueError(f"LSP: {k} classes need {k} distinct vertices of a {d}-dimensional "
                     f"hypercube, which has only {2 ** d}; use a smaller patch_size")
  vertex_key, mixing_key = jax.random.split(key)
  for attempt in range(1000):
    bits = np.asarray(jax.random.bernoulli(jax.random.fold_in(vertex_key, attempt), 0.5, (k, d)))
    if len(np.unique(bits, axis=0)) == k:
      break
  else:  # Only reachable when 2^d is barely above k.
    raise ValueError(f"LSP: could not draw {k} distinct vertices of a {d}-cube in 1000 attempts")
  centroids = jnp.asarray(np.where(bits, config.class_sep, -config.class_sep), jnp.float32)
  mixing = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(mixing_key, i), (d, d),
                                                 jnp.float32, -1.0, 1.0))(jnp.arange(k))
  return LSPClasses(centroids, mixing)


def lsp_points(key, indices, labels, classes: LSPClasses) -> jax.Array:
  """The synthetic points of images `indices` with `labels`: float32 [N, d], image i's from
  fold_in(key, i)."""
  d = classes.centroids.shape[1]
  z = jax.vmap(lambda k: jax.random.normal(k, (d,), jnp.float32))(indexed_keys(key, indices))
  return jnp.einsum("nd,nde->ne", z, classes.mixing[labels]) + classes.centroids[labels]


def patch_upsample(points, patch_size: int, image_shape) -> jax.Array:
  """[N, d] → [N, H, W, C]: the points as ⌈H/p⌉×⌈W/p⌉ images of C channels (row-major, channel
  last, as the reference's reshape to [n, num_patch, num_patch, 3]), each value repeated over a
  p×p patch and the result cropped to H×W."""
  h, w, c = (int(s) for s in image_shape)
  rows, cols = math.ceil(h / patch_size), math.ceil(w / patch_size)
  grid = points.reshape(points.shape[0], rows, cols, c)
  grid = jnp.repeat(jnp.repeat(grid, patch_size, axis=1), patch_size, axis=2)
  return grid[:, :h, :w, :]


@functools.partial(jax.jit, static_argnames=("image_shape", "patch_size", "epsilon"))
def _lsp_perturbations(key, indices, labels, classes, image_shape, patch_size, epsilon):
  points = lsp_points(key, indices, labels, classes)
  return _scale_to_norm(patch_upsample(points, patch_size, image_shape), "l2", epsilon)


def _lsp_keys(key):
  class_key, image_key = jax.random.split(key)
  return class_key, image_key


def lsp_perturbations(key, indices, labels, image_shape,
                      config: LSPConfig | None = None) -> jax.Array:
  """LSP perturbations of the images at `indices` with `labels`: float32 [N, H, W, C], each of
  ℓ2 norm `config.bound(image_shape)` exactly (before clipping and quantization), as
  `lsp_poison(key, ...)` adds them."""
  config = LSPConfig() if config is None else config
  image_shape = tuple(int(s) for s in image_shape)
  class_key, image_key = _lsp_keys(key)
  classes = lsp_classes(class_key, lsp_num_features(image_shape, config.patch_size), config)
  return _lsp_perturbations(image_key, jnp.asarray(indices), jnp.asarray(labels), classes,
                            image_shape, config.patch_size, config.bound(image_shape))


def lsp_poison(key, images, labels, config: LSPConfig | None = None, *,
               batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
  """Linearly separable perturbations (LSP, Yu et al. 2022) added to every image.

  Per image: a point of its class's cluster in d = ⌈H/p⌉·⌈W/p⌉·C dimensions (`lsp_classes`),
  upsampled to p×p constant-colour patches (`patch_upsample`), scaled to ℓ2 norm ε
  (`normalize_l2norm` in the reference), added to the image in [0, 1], clipped and quantized
  within the bound. Each image gets its own point (the reference draws n = N points and hands
  class k's to class k's images in order; its points are i.i.d. within a class).

  Args:
    key: a jax.random key.
    images: uint8 [N, H, W, C].
    labels: int [N] in [0, config.num_classes).
    config: `LSPConfig` (default: ℓ2 1.0, 8×8 patches, class_sep 10, 10 classes).
    batch_size: images per jitted call (memory only; the result does not depend on it).

  Returns:
    uint8 [N, H, W, C] with Σ (poison − image)² <= `constraints.l2_budget(bound)` per image.
  """
  config = LSPConfig() if config is None else config
  images, labels = _check_inputs(images, labels, config.num_classes)
  image_shape = tuple(images.shape[1:])
  epsilon = constraints.check_quantizable("l2", config.bound(image_shape), image_shape)
  class_key, image_key = _lsp_keys(key)
  classes = lsp_classes(class_key, lsp_num_features(image_shape, config.patch_size), config)

  def poison_batch(indices):
    perturbations = _lsp_perturbations(image_key, jnp.asarray(indices),
                                       jnp.asarray(labels[indices]), classes, image_shape,
                                       config.patch_size, epsilon)
    return _add_and_quantize(jnp.asarray(images[indices]), perturbations, "l2", epsilon)

  return _in_batches(images.shape[0], batch_size, poison_batch).reshape(images.shape)
