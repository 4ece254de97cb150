"""Data-generated indiscriminate poisons ("unlearnable examples"): URP, LSP and AR.

ECLIPSE (Wang et al., ESORICS'24, §2.1 and Table 1) evaluates its purification against, among
others, three poisons that need no model to craft. Each perturbs *every* training image,
keeps the labels clean, and makes the perturbation depend on the image's class, so that a
network learns the easy perturbation→class shortcut instead of the images:

* **URP**, class-wise random noise (the random-noise baseline of Huang et al. 2021,
  "Unlearnable Examples"): one fixed noise pattern per class, added to every image of the
  class, ℓ∞ ε = 8/255 (`urp_poison`).
* **LSP**, linearly separable perturbations (Yu et al. 2022, "Availability Attacks Create
  Shortcuts"): per image a point from its class's Gaussian cluster in a low-dimensional space
  (sklearn's `make_classification`), shown as patch-wise constant colours (8×8 patches on a
  32×32 image) and scaled to an ℓ2 norm (`lsp_poison`).
* **AR**, autoregressive perturbations (Sandoval-Segura et al. 2022, "Autoregressive
  Perturbations for Data Poisoning"): per class a 2-D autoregressive process (a 3×3 window per
  channel); each image gets its own sample of its class's process, cropped and scaled to an ℓ2
  norm (`ar_poison`).

The bounds follow the spec (round2.md §6.8): ECLIPSE leaves them unspecified, so LSP and AR
take ℓ2 = 1.0 from the table of Liu et al.'s ISS (liuzrcc/ImageShortcutSqueezing, README), and
URP takes Huang et al.'s ℓ∞ 8/255. Norms are over the whole image (H·W·C values) in [0, 1]
pixel units.

Randomness comes from an explicit `key` only. Class k's parameters come from
`fold_in(class_key, k)` and image i's sample (i = its position in `images`) from
`fold_in(image_key, i)`, so the same key gives the same poisons, whatever the batch size used to
compute them (but poisoning a subset gives its images the samples of their positions in the
subset).

Quantization. The references add the float perturbation to the [0, 1] image, clip, and cast to
uint8: `astype(np.uint8)` (a floor) in the URP and LSP code, `mul(255).add_(0.5)` (round half
up) in the AR code. Neither keeps an ℓ2 bound: flooring a negative offset or rounding up can
raise its magnitude. Here URP rounds its class noise to whole grey levels within ±⌊255ε⌋ before
adding it (so all images of a class get exactly the same offsets before clipping, and ℓ∞ holds
exactly), and LSP and AR go through `constraints.quantize_poisons`, which rounds to nearest
except where that would break the bound (there toward the clean image), so that after
quantization and clipping to [0, 255] every image satisfies Σ (q − b)² <= `l2_budget(ε)`.
(Huang et al.'s `PoisonCIFAR10` also clamps the noise itself to [0, 255] grey levels before
adding it, which zeroes its negative half; the maintainer agreed that the signed noise should
be added (HanxunH/Unlearnable-Examples issue #13), as here.)

References read (for facts; no code copied):
* HanxunH/Unlearnable-Examples: toolbox.py (`PerturbationTool.random_noise`), perturbation.py
  (`--attack_type random`), scripts/cifar10/random-noise/classwise-noise/*.sh, dataset.py
  (`PoisonCIFAR10`).
* dayu11/Availability-Attacks-Create-Shortcuts: synthetic_perturbations/cifar_train.py and
  util.py (`comput_l2norm_lim`, `normalize_l2norm`); scikit-learn's `make_classification`
  (sklearn/datasets/_samples_generator.py).
* psandovalsegura/autoregressive-poisoning: autoregressive.py (`ARProcessPerturb3Channel`,
  `response`), autoregressive_param_finder.py, autoregressive_params.py
  (`RANDOM_3C_AR_PARAMS_RNMR_10`), create_ar_poisons_3channel.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_images, check_labels, check_perturbation_bound
from jaxpoison._checks import check_positive as _positive
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks import constraints

URP_EPSILON = 8 / 255
LSP_EPSILON = 1.0
AR_EPSILON = 1.0
# The LSP reference's own bound: `--eps 6` → ℓ∞-equivalent 6/255, turned into the ℓ2 radius
# 6/255·√(H·W·C) of the ℓ∞ ball's corner (`comput_l2norm_lim`), ≈ 1.304 on CIFAR-10.
LSP_REFERENCE_LINF = 6 / 255
DEFAULT_BATCH_SIZE = 2048

# The ten 3-channel AR processes of the released CIFAR-10 (also SVHN and STL-10) AR poison:
# `RANDOM_3C_AR_PARAMS_RNMR_10` in autoregressive_params.py, found once by
# autoregressive_param_finder.py (`--total 10 --required_nm_response 10
# --gen_norm_upper_bound 50`) and hard-coded as printed, to 4 decimals (so a channel's
# coefficients sum to 1 only to about 1e-4). Indexed [class, channel, row, column]; entry
# [2, 2] is the current pixel and is 0.
AR_REFERENCE_COEFFICIENTS = np.array([
    [[[0.1561, -0.0710, 0.3743], [-0.1896, 0.0461, 0.6075], [0.0539, 0.0226, 0.0]],
     [[-0.1016, 0.2193, 0.0472], [0.1401, 0.1561, 0.1171], [0.1742, 0.2476, 0.0]],
     [[-0.1100, 0.2703, -0.0026], [0.2662, -0.1185, 0.0846], [0.1812, 0.4287, 0.0]]],
    [[[0.2346, 0.2056, -0.0480], [0.4110, 0.7504, 0.1326], [-0.1044, -0.5817, 0.0]],
     [[-0.0308, -0.1085, 0.3997], [0.2187, 0.1830, 0.3389], [-0.1017, 0.1008, 0.0]],
     [[0.1246, 0.1667, -0.1518], [0.2985, 0.1346, 0.3185], [0.3805, -0.2716, 0.0]]],
    [[[0.0951, 0.5501, 0.0344], [-0.3431, 0.0767, 0.2239], [0.4602, -0.0972, 0.0]],
     [[0.1714, 0.1121, 0.1129], [0.3032, 0.2959, 0.0861], [0.2207, -0.3021, 0.0]],
     [[0.2720, -0.3417, 0.2115], [0.2499, 0.3690, 0.3833], [-0.0282, -0.1158, 0.0]]],
    [[[-0.4241, -0.2694, 0.4091], [0.3998, 0.1572, 0.2683], [0.2700, 0.1892, 0.0]],
     [[0.1246, 0.3024, 0.2110], [0.0538, 0.1997, 0.3283], [0.0372, -0.2570, 0.0]],
     [[0.2038, 0.3972, -0.1963], [0.3460, -0.6439, 0.7153], [-0.2826, 0.4605, 0.0]]],
    [[[0.7873, -0.1756, -0.3509], [0.0763, 0.2261, -0.2704], [0.2491, 0.4581, 0.0]],
     [[0.1287, -0.1655, 0.2488], [0.3811, -0.2307, 0.3019], [-0.0076, 0.3433, 0.0]],
     [[0.4227, 0.0690, 0.2492], [0.0896, 0.0653, -0.1653], [-0.2349, 0.5043, 0.0]]],
    [[[0.1585, 0.2663, 0.1764], [0.0031, -0.0237, 0.3464], [0.0140, 0.0590, 0.0]],
     [[0.1632, 0.5094, 0.0321], [0.3935, -0.1807, 0.2110], [-0.3620, 0.2334, 0.0]],
     [[-0.2474, 0.1092, 0.3928], [0.2808, 0.3912, 0.1211], [-0.0635, 0.0159, 0.0]]],
    [[[0.8886, -0.2459, -0.4169], [-0.4120, -0.1282, 0.6105], [0.2495, 0.4546, 0.0]],
     [[0.0679, -0.2982, 0.1039], [0.1430, 0.1596, 0.6743], [-0.2002, 0.3496, 0.0]],
     [[-0.2195, 0.2183, -0.2665], [0.3373, 0.1907, 0.5847], [0.1977, -0.0427, 0.0]]],
    [[[-0.3829, 0.0158, 0.4019], [-0.0688, 0.1206, 0.2481], [0.1416, 0.5238, 0.0]],
     [[-0.2271, 0.1683, 0.3593], [0.2671, -0.1225, 0.0217], [0.0266, 0.5066, 0.0]],
     [[0.8539, 0.3682, 0.2899], [0.6635, 0.0130, -0.7025], [-0.1377, -0.3483, 0.0]]],
    [[[0.4482, 0.2220, 0.0598], [0.3965, -0.1148, 0.1683], [-0.3444, 0.1644, 0.0]],
     [[-0.1463, 0.6120, 0.2203], [0.4039, -0.2832, -0.1290], [0.3369, -0.0146, 0.0]],
     [[0.3759, 0.2814, 0.1494], [0.1925, 0.0552, 0.1091], [-0.0962, -0.0673, 0.0]]],
    [[[0.3556, 0.3477, -0.6625], [0.1812, 0.2997, -0.2139], [0.5538, 0.1385, 0.0]],
     [[-0.0297, 0.0780, 0.2486], [0.2246, 0.1931, 0.1349], [0.0079, 0.1426, 0.0]],
     [[0.2461, 0.1217, 0.1879], [-0.0165, 0.1160, 0.1356], [0.1772, 0.0321, 0.0]]],
], dtype=np.float32)
AR_WINDOW = 3
# The AR parameter finder's test generations: 36×36 cropped by 4, scaled to ℓ2 = 1
# (autoregressive_param_finder.py calls `generate(eps=1.0, p=2, size=(36, 36), crop=4)`).
_FINDER_SIZE = 36
_FINDER_CROP = 4


def _choice(name: str, value, options: tuple[str, ...]) -> str:
  if value not in options:
    raise ValueError(f"{name}: expected one of {options}, got {value!r}")
  return value


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
  num_classes: int = 10

  def __post_init__(self):
    _store(self, "num_classes", _positive("num_classes", self.num_classes, integer=True))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class URPConfig(PoisonConfig):
  """Class-wise random noise (URP).

  Attributes:
    num_classes: labels lie in [0, num_classes) (CIFAR-10: 10).
    epsilon: the ℓ∞ bound in [0, 1] pixel units (8/255: Huang et al.'s
      scripts/cifar10/random-noise/classwise-noise/exp_setting.sh, `epsilon=8`; the spec's
      suggestion for URP).
    distribution: "uniform", U(−ε, ε) per value, as Huang et al.'s reference
      (`PerturbationTool.random_noise`: `uniform_(-epsilon, epsilon)` on a [10, 3, 32, 32]
      tensor, one pattern per class); or "gaussian", N(0, std²) per value clipped to [−ε, ε],
      after ECLIPSE's wording ("same random Gaussian noise for images of the same category",
      §2.1), which gives neither σ nor code. Default "uniform": the only executable source.
    std: σ of the "gaussian" noise in [0, 1] units; None takes ε (UNSPECIFIED in ECLIPSE).
  """
  epsilon: float = URP_EPSILON
  distribution: str = "uniform"
  std: float | None = None

  def __post_init__(self):
    super().__post_init__()
    _store(self, "epsilon", check_perturbation_bound("linf", self.epsilon))
    _choice("distribution", self.distribution, ("uniform", "gaussian"))
    if self.std is not None:
      if self.distribution != "gaussian":
        raise ValueError(f"std: only the 'gaussian' distribution has a σ; got std={self.std!r} "
                         f"with distribution={self.distribution!r}")
      _store(self, "std", _positive("std", self.std))

  @property
  def noise_std(self) -> float:
    return self.epsilon if self.std is None else self.std


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


@dataclasses.dataclass(frozen=True)
class ARConfig(PoisonConfig):
  """Autoregressive perturbations (AR), Sandoval-Segura et al.'s create_ar_poisons_3channel.py.

  Attributes:
    num_classes: labels lie in [0, num_classes).
    norm, epsilon: each perturbation is scaled to exactly this norm (`generate(p, eps)`): ℓ2
      1.0 (the README's released CIFAR-10 poison and ISS's table), or "linf" (the README's
      sample ℓ∞ poison uses 8/255, with coefficients it calls suboptimal).
    crop: the process is run on an (H + crop)×(W + crop) field and its first `crop` rows and
      columns (the random start and the transient after it) are dropped (CIFAR-10, SVHN,
      CIFAR-100: size 36, crop 4).
    coefficients: "reference", the ten hard-coded CIFAR-10 processes
      (`AR_REFERENCE_COEFFICIENTS`; at most 10 classes, 3 channels; the key plays no part in
      them), or "sampled", processes drawn from the key by the reference's parameter finder
      (`sample_ar_coefficients`).
    required_response, norm_upper_bound, max_candidates: the finder's acceptance tests and
      budget for "sampled" (`--required_nm_response 10`, `--gen_norm_upper_bound 50`,
      `--num_samples 1000000`).
  """
  norm: str = "l2"
  epsilon: float = AR_EPSILON
  crop: int = 4
  coefficients: str = "reference"
  required_response: float = 10.0
  norm_upper_bound: float = 50.0
  max_candidates: int = 1_000_000

  def __post_init__(self):
    super().__post_init__()
    _store(self, "epsilon", check_perturbation_bound(self.norm, self.epsilon))
    _store(self, "crop", _positive("crop", self.crop, integer=True, allow_zero=True))
    _choice("coefficients", self.coefficients, ("reference", "sampled"))
    if self.coefficients == "reference" and self.num_classes > len(AR_REFERENCE_COEFFICIENTS):
      raise ValueError(
          f"coefficients: the reference has {len(AR_REFERENCE_COEFFICIENTS)} AR processes "
          f"(CIFAR-10), fewer than num_classes={self.num_classes}; use coefficients='sampled'")
    _store(self, "required_response",
           _positive("required_response", self.required_response, allow_zero=True))
    _store(self, "norm_upper_bound", _positive("norm_upper_bound", self.norm_upper_bound))
    _store(self, "max_candidates", _positive("max_candidates", self.max_candidates,
                                             integer=True))


# --- shared helpers -----------------------------------------------------------------------------

def _check_inputs(images, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  check_images(images, name="images", dtypes=("uint8",))
  check_labels(labels, num_classes, length=images.shape[0])
  return images, np.asarray(labels).astype(np.int32)


def indexed_keys(key, indices):
  """One key per index (image, class or candidate): fold_in(key, i) for each i."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def _scale_to_norm(x, norm: str, epsilon: float):
  """x scaled per image (over H, W, C) to norm ε exactly (in float32)."""
  axes = tuple(range(1, x.ndim))
  if norm == "l2":
    size = jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))
  else:
    size = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
  return x * (epsilon / size)


@jax.jit
def _add_clipped(images, perturbations):
  return jnp.clip(images.astype(jnp.float32) / 255.0 + perturbations, 0.0, 1.0)


def _add_and_quantize(images, perturbations, norm: str, epsilon: float):
  """uint8 images + float perturbations ([0, 1] units) → clipped, quantized uint8 poisons that
  keep the bound exactly (`constraints.quantize_poisons`)."""
  return constraints.quantize_poisons(_add_clipped(images, perturbations), images, norm, epsilon)


def _in_batches(num_images: int, batch_size: int, poison_batch: Callable) -> np.ndarray:
  """Concatenates poison_batch(indices) over consecutive index ranges of `batch_size`."""
  batch_size = _positive("batch_size", batch_size, integer=True)
  parts = [np.asarray(poison_batch(np.arange(start, min(start + batch_size, num_images))))
           for start in range(0, num_images, batch_size)]
  return np.concatenate(parts) if parts else np.zeros((0,), np.uint8)


# --- URP: class-wise random noise ---------------------------------------------------------------

def urp_class_noise(key, image_shape, config: URPConfig | None = None) -> jax.Array:
  """The per-class noise patterns: float32 [num_classes, H, W, C] in [−ε, ε] ([0, 1] units).

  Class k's pattern is drawn from fold_in(key, k): U(−ε, ε) per value, or N(0, σ²) clipped to
  [−ε, ε] (`URPConfig.distribution`).
  """
  config = URPConfig() if config is None else config
  shape = tuple(int(s) for s in image_shape)
  keys = indexed_keys(key, jnp.arange(config.num_classes))
  if config.distribution == "uniform":
    draw = lambda k: jax.random.uniform(k, shape, jnp.float32, -config.epsilon, config.epsilon)
  else:
    draw = lambda k: jnp.clip(config.noise_std * jax.random.normal(k, shape, jnp.float32),
                              -config.epsilon, config.epsilon)
  return jax.vmap(draw)(keys)


def urp_grey_levels(noise, epsilon: float) -> jax.Array:
  """Float noise in [0, 1] units → int32 grey-level offsets, rounded to nearest and kept
  within ±`constraints.linf_budget(ε)` (= 8 for 8/255)."""
  budget = constraints.linf_budget(epsilon)
  return jnp.clip(jnp.round(noise * 255.0), -budget, budget).astype(jnp.int32)


@jax.jit
def _add_offsets(images, offsets):
  return jnp.clip(images.astype(jnp.int32) + offsets, 0, 255).astype(jnp.uint8)


def urp_poison(key, images, labels, config: URPConfig | None = None) -> np.ndarray:
  """Class-wise random noise poison (URP): every image plus its class's fixed noise pattern.

  Args:
    key: a jax.random key; the patterns come from `urp_class_noise(key, ...)`.
    images: uint8 [N, H, W, C], the clean training images.
    labels: int [N] in [0, config.num_classes).
    config: `URPConfig` (default: U(−8/255, 8/255), 10 classes).

  Returns:
    uint8 [N, H, W, C]: clip(image + round(255·noise[label]), 0, 255). Before the clip, all
    images of a class get identical offsets; after it, |poison − image| <= ⌊255ε⌋ grey levels.
  """
  config = URPConfig() if config is None else config
  images, labels = _check_inputs(images, labels, config.num_classes)
  noise = urp_class_noise(key, images.shape[1:], config)
  offsets = urp_grey_levels(noise, config.epsilon)
  return np.asarray(_add_offsets(jnp.asarray(images), offsets[jnp.asarray(labels)]))


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


# --- AR: autoregressive perturbations -----------------------------------------------------------

@jax.jit
def ar_process(start, coefficients) -> jax.Array:
  """Runs each image's AR process over its start field, in raster order.

  Args:
    start: float [N, S1, S2, C], the initial field (the reference: N(0, 1) everywhere).
    coefficients: float [N, C, 3, 3] per image (its class's), [c, 2, 2] unused (0).

  Returns:
    float [N, S1, S2, C]: rows 0–1 and columns 0–1 kept from `start`; every other value, row
    by row and left to right, x[r, s, c] = Σ_{(u, v) ≠ (2, 2)} coefficients[c, u, v] ·
    x[r − 2 + u, s − 2 + v, c] over the already final values (ARProcessPerturb3Channel.generate
    with gaussian_noise=False: a grouped 3×3 correlation whose last entry is the new value).
  """
  rows = jnp.moveaxis(start, 1, 0)                       # [S1, N, S2, C]
  b = jnp.moveaxis(coefficients.astype(start.dtype), 1, -1)  # [N, 3, 3, C]
  width = start.shape[2]

  def fill_row(previous_rows, row):
    above2, above1 = previous_rows                       # rows r − 2, r − 1: [N, S2, C]
    from_above = sum(b[:, 0, v][:, None] * above2[:, v:width - 2 + v]
                     + b[:, 1, v][:, None] * above1[:, v:width - 2 + v] for v in range(3))

    def fill_value(left, above):
      left2, left1 = left
      value = above + b[:, 2, 0] * left2 + b[:, 2, 1] * left1
      return (left1, value), value

    _, values = jax.lax.scan(fill_value, (row[:, 0], row[:, 1]), jnp.moveaxis(from_above, 1, 0))
    new_row = jnp.concatenate([row[:, :2], jnp.moveaxis(values, 0, 1)], axis=1)
    return (above1, new_row), new_row

  _, filled = jax.lax.scan(fill_row, (rows[0], rows[1]), rows[2:])
  return jnp.moveaxis(jnp.concatenate([rows[:2], filled]), 0, 1)


def ar_filters(coefficients) -> jax.Array:
  """The matching filters of AR processes [..., C, 3, 3]: the coefficients with −1 at [2, 2]
  (`get_filter`): their correlation with a sample of the process is zero."""
  return jnp.asarray(coefficients).at[..., 2, 2].set(-1.0)


@jax.jit
def ar_residual(signals, coefficients) -> jax.Array:
  """Per-channel 3×3 valid correlation of signals [N, H, W, C] with `ar_filters(coefficients)`
  [N, C, 3, 3]: float [N, H − 2, W − 2, C], zero (to rounding) where the signal follows its
  process."""
  filters = ar_filters(coefficients)
  h, w = signals.shape[1], signals.shape[2]
  return sum(filters[:, None, None, :, u, v] * signals[:, u:h - 2 + u, v:w - 2 + v]
             for u in range(AR_WINDOW) for v in range(AR_WINDOW))


def ar_response(filter_, signal) -> float:
  """The reference's `response`: Σ relu of the full (all channels summed) valid correlation of
  one signal [H, W, C] with one filter [C, 3, 3], in float64."""
  filter_ = np.asarray(filter_, np.float64)
  signal = np.asarray(signal, np.float64)
  h, w = signal.shape[0] - 2, signal.shape[1] - 2
  out = sum(signal[u:u + h, v:v + w] @ filter_[:, u, v]
            for u in range(AR_WINDOW) for v in range(AR_WINDOW))
  return float(np.maximum(out, 0.0).sum())


@functools.partial(jax.jit, static_argnames=("size", "crop", "norm", "epsilon"))
def ar_samples(keys, coefficients, size, crop, norm, epsilon):
  """Fresh samples of AR processes, as `ARProcessPerturb3Channel.generate(size, eps, crop, p)`.

  Args:
    keys: [B] keys (or [B, 2] raw keys), one per sample; each draws an N(0, 1) start field.
    coefficients: float [B, C, 3, 3], each sample's process.
    size: (S1, S2), the field the process runs on; crop: rows and columns dropped at the top
      and left; norm ("l2" or "linf") and epsilon: the norm each sample is scaled to.

  Returns:
    (samples float32 [B, S1 − crop, S2 − crop, C] of norm ε, their norms [B] before scaling).
  """
  c = coefficients.shape[1]
  start = jax.vmap(lambda k: jax.random.normal(k, (size[0], size[1], c), jnp.float32))(keys)
  cropped = ar_process(start, coefficients)[:, crop:, crop:]
  axes = (1, 2, 3)
  unscaled_norm = (jnp.sqrt(jnp.sum(jnp.square(cropped), axis=axes)) if norm == "l2"
                   else jnp.max(jnp.abs(cropped), axis=axes))
  return _scale_to_norm(cropped, norm, epsilon), unscaled_norm


@functools.partial(jax.jit, static_argnames=("num_channels", "trials"))
def _ar_candidates(key, indices, num_channels, trials):
  """The finder's candidates `indices`: their coefficients [B, C, 3, 3], the unscaled norms of
  their `trials` test samples [B, trials], and the last sample scaled to ℓ2 = 1."""
  keys = indexed_keys(key, indices)
  raw = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (num_channels, 3, 3),
                                             jnp.float32))(keys)
  raw = raw.at[:, :, 2, 2].set(0.0)
  coefficients = raw / jnp.sum(raw, axis=(2, 3), keepdims=True)
  trial_keys = jax.vmap(
      lambda k: indexed_keys(jax.random.fold_in(k, 1), jnp.arange(trials)))(keys)
  samples, norms = ar_samples(trial_keys.reshape(-1, *keys.shape[1:]),
                              jnp.repeat(coefficients, trials, axis=0),
                              (_FINDER_SIZE, _FINDER_SIZE), _FINDER_CROP, "l2", 1.0)
  last = samples.reshape(indices.shape[0], trials, *samples.shape[1:])[:, -1]
  return coefficients, norms.reshape(indices.shape[0], trials), last


def sample_ar_coefficients(key, num_classes: int, num_channels: int = 3, *,
                           required_response: float = 10.0, norm_upper_bound: float = 50.0,
                           trials: int = 3, max_candidates: int = 1_000_000,
                           batch_size: int = 512) -> np.ndarray:
  """AR processes found as the reference's autoregressive_param_finder.py finds them.

  Candidate j (key fold_in(key, j), j = 0, 1, ...): per channel 3×3 coefficients N(0, 1), the
  [2, 2] entry set to 0, divided by their sum ("more stable when normalized"). It is rejected
  if any of `trials` test samples (36×36 from N(0, 1), cropped by 4) has a non-finite or
  greater than `norm_upper_bound` ℓ2 norm before scaling (divergent processes), or if, on the
  last sample scaled to ℓ2 = 1, some already accepted process's filter has `ar_response` below
  `required_response` (processes must be told apart). Candidates are taken greedily in order
  until `num_classes` are accepted. The reference's published coefficients
  (`AR_REFERENCE_COEFFICIENTS`) came from one such run with its own (unrecorded) seed.

  Returns float32 [num_classes, num_channels, 3, 3]. Raises RuntimeError if `max_candidates`
  candidates do not suffice. Most candidates diverge (about 99% for 3 channels), so finding 10
  processes takes on the order of 10⁵ candidates.
  """
  num_classes = _positive("num_classes", num_classes, integer=True)
  num_channels = _positive("num_channels", num_channels, integer=True)
  trials = _positive("trials", trials, integer=True)

  accepted: list[np.ndarray] = []
  for start in range(0, max_candidates, batch_size):
    indices = jnp.arange(start, min(start + batch_size, max_candidates))
    coefficients, norms, last = (np.asarray(a) for a in _ar_candidates(
        key, indices, num_channels, trials))
    stable = np.all(np.isfinite(norms) & (norms <= norm_upper_bound), axis=1)
    stable &= np.all(np.isfinite(last), axis=(1, 2, 3))
    for j in np.flatnonzero(stable):
      if accepted and min(ar_response(ar_filters(a), last[j]) for a in accepted) < \
          required_response:
        continue
      accepted.append(coefficients[j])
      if len(accepted) == num_classes:
        return np.stack(accepted).astype(np.float32)
  raise RuntimeError(f"sample_ar_coefficients: found {len(accepted)} of {num_classes} AR "
                     f"processes in {max_candidates} candidates")


def _ar_keys(key):
  coefficient_key, start_key = jax.random.split(key)
  return coefficient_key, start_key


def ar_coefficients(key, config: ARConfig | None = None, num_channels: int = 3) -> np.ndarray:
  """The per-class AR coefficients float32 [K, C, 3, 3] that `ar_poison(key, ...)` uses: the
  reference's first K processes, or `sample_ar_coefficients` from the key."""
  config = ARConfig() if config is None else config
  if config.coefficients == "reference":
    if num_channels != AR_REFERENCE_COEFFICIENTS.shape[1]:
      raise ValueError(f"coefficients='reference': the reference's AR processes have "
                       f"{AR_REFERENCE_COEFFICIENTS.shape[1]} channels, the images have "
                       f"{num_channels}; use coefficients='sampled'")
    return AR_REFERENCE_COEFFICIENTS[:config.num_classes].copy()
  coefficient_key, _ = _ar_keys(key)
  return sample_ar_coefficients(coefficient_key, config.num_classes, num_channels,
                                required_response=config.required_response,
                                norm_upper_bound=config.norm_upper_bound,
                                max_candidates=config.max_candidates)


def ar_perturbations(key, indices, labels, coefficients, image_shape,
                     config: ARConfig | None = None) -> jax.Array:
  """AR perturbations of the images at `indices` with `labels`: float32 [N, H, W, C], image i a
  fresh sample of process coefficients[label] (start field N(0, 1) from fold_in(key', i)) on
  an (H + crop)×(W + crop) field, its first `crop` rows and columns dropped
  (`start_signal[:, crop:, crop:]`), scaled to norm ε exactly, as `ar_poison(key, ...)` adds
  them."""
  config = ARConfig() if config is None else config
  h, w, _ = (int(s) for s in image_shape)
  _, start_key = _ar_keys(key)
  keys = indexed_keys(start_key, jnp.asarray(indices))
  coefficients = jnp.asarray(coefficients, jnp.float32)[jnp.asarray(labels)]
  samples, _ = ar_samples(keys, coefficients, (h + config.crop, w + config.crop), config.crop,
                          config.norm, config.epsilon)
  return samples


def ar_poison(key, images, labels, config: ARConfig | None = None, *,
              coefficients=None, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
  """Autoregressive perturbations (AR, Sandoval-Segura et al. 2022) added to every image.

  Args:
    key: a jax.random key (the start fields; with coefficients="sampled" also the processes).
    images: uint8 [N, H, W, C].
    labels: int [N] in [0, config.num_classes).
    config: `ARConfig` (default: ℓ2 1.0, crop 4, the reference's ten CIFAR-10 processes).
    coefficients: optional float [K, C, 3, 3] to use instead of `ar_coefficients(key, config)`
      (e.g. computed once for several calls).
    batch_size: images per jitted call (memory only; the result does not depend on it).

  Returns:
    uint8 [N, H, W, C] within the bound after quantization (Σ (q − b)² <= `l2_budget(ε)`, or
    |q − b| <= `linf_budget(ε)` for norm="linf").
  """
  config = ARConfig() if config is None else config
  images, labels = _check_inputs(images, labels, config.num_classes)
  image_shape = tuple(images.shape[1:])
  epsilon = constraints.check_quantizable(config.norm, config.epsilon, image_shape)
  if coefficients is None:
    coefficients = ar_coefficients(key, config, image_shape[2])
  coefficients = np.asarray(coefficients, np.float32)
  expected = (config.num_classes, image_shape[2], AR_WINDOW, AR_WINDOW)
  if coefficients.shape != expected:
    raise ValueError(f"coefficients: expected shape {expected} (classes, channels, 3, 3), got "
                     f"{coefficients.shape}")

  def poison_batch(indices):
    perturbations = ar_perturbations(key, indices, labels[indices], coefficients, image_shape,
                                     config)
    if not bool(jnp.all(jnp.isfinite(perturbations))):
      raise ValueError("ar_poison: an AR process diverged (non-finite samples); its "
                       "coefficients are unstable")
    return _add_and_quantize(jnp.asarray(images[indices]), perturbations, config.norm, epsilon)

  return _in_batches(images.shape[0], batch_size, poison_batch).reshape(images.shape)


class IndiscriminatePoison(NamedTuple):
  """A data-generated poison: `poison(key, images, labels, config) -> uint8 images`."""
  poison: Callable[..., np.ndarray]
  config_type: type


INDISCRIMINATE_POISONS = {
    "urp": IndiscriminatePoison(urp_poison, URPConfig),
    "lsp": IndiscriminatePoison(lsp_poison, LSPConfig),
    "ar": IndiscriminatePoison(ar_poison, ARConfig),
}


# Earlier private names of the two helpers the trained poisons share.
_PoisonConfig = PoisonConfig
_indexed_keys = indexed_keys
