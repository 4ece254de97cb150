"""AR, autoregressive perturbations (Sandoval-Segura et al. 2022): per class a 2-D
autoregressive process, per image its own sample, scaled to ℓ2 = 1.0 (`ar_poison`). The family,
its bounds, randomness, quantization and references: `jaxpoison.attacks.indiscriminate`."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_perturbation_bound
from jaxpoison._checks import check_positive as _positive
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks.unlearnable.base import (DEFAULT_BATCH_SIZE, PoisonConfig, _add_and_quantize,
                                                _check_inputs, _choice, _in_batches, _scale_to_norm,
                                                indexed_keys)
from jaxpoison.attacks import constraints

AR_EPSILON = 1.0


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
