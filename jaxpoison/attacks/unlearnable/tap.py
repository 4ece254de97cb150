"""TAP, targeted adversarial poisoning (Fowl et al. 2021, "Adversarial Examples Make Strong
Poisons"): a surrogate trained on clean data; every image is pushed by PGD, through
differentiable shifts and flips, towards the class (y + 1) mod K (`tap_poison`). The family, its
units, randomness and references: `jaxpoison.attacks.unlearnable`."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_perturbation_bound
from jaxpoison._checks import check_positive as _positive
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks import constraints
from jaxpoison.attacks.configs import FOREST_CIFAR10_MEAN
from jaxpoison.attacks.witches_brew import GradientModel
from jaxpoison.attacks.unlearnable.trained import (TrainedPoisonConfig, best_restart, check_config,
                                                  check_data, check_target_offset, cross_entropy,
                                                  forge_deltas, perturbed, target_classes)
from jaxpoison.keys import as_key

TAP_EPSILON = 8 / 255


@dataclasses.dataclass(frozen=True)
class TAPConfig(TrainedPoisonConfig):
  """Targeted adversarial poisoning (TAP), Fowl et al.'s CIFAR-10 command (README.md:
  `anneal.py --recipe targeted --eps 8 --budget 1.0 --attackoptim PGD`) with
  village/options.py's defaults.

  Attributes:
    num_classes: labels lie in [0, num_classes).
    epsilon: the ℓ∞ bound (8/255: `--eps 8`).
    steps: PGD steps, each a pass over all images (250: `--attackiter`).
    tau: the step as a fraction of ε (0.05: `--tau`; "rule 1" of `_initialize_forge`, step
      ε/255/std·τ in the normalized space, i.e. τ·ε = 0.4/255 in [0, 1] pixels).
    restarts: independent random starts; the one whose mean target loss at the last step is
      lowest is kept (8: `--restarts`).
    target_offset: image of class y is pushed toward class (y + target_offset) mod K (1:
      `ForgemasterTargeted._label_map`, `(labels + 1) % K`).
    augment: differentiable random shift and horizontal flip of the images at every step
      (`--paugment`, on: `RandomTransform(shift=8, fliplr=True, mode="bilinear")`).
    max_shift: the shift's range in pixels (`RandomTransform(shift=8)`: linspace(0, 1, 32)[8] in
      grid units, ±4 pixels under align_corners).
    input_mean: the value the shift fills in (zero in the reference's normalized space, i.e.
      the CIFAR-10 mean of village/consts.py); one per channel.
    batch_size: images per batch (512: `--pbatch`). Memory only here: the network runs on
      running statistics (`client.eval()`) and the per-image steps are sign steps.
  """
  epsilon: float = TAP_EPSILON
  steps: int = 250
  tau: float = 0.05
  restarts: int = 8
  target_offset: int = 1
  augment: bool = True
  max_shift: float = 4.0
  input_mean: tuple[float, ...] = FOREST_CIFAR10_MEAN
  batch_size: int = 512

  def __post_init__(self):
    super().__post_init__()
    _store(self, "epsilon", check_perturbation_bound("linf", self.epsilon))
    _store(self, "steps", _positive("steps", self.steps, integer=True))
    _store(self, "tau", _positive("tau", self.tau))
    _store(self, "restarts", _positive("restarts", self.restarts, integer=True))
    _store(self, "target_offset", check_target_offset(self.target_offset, self.num_classes))
    _store(self, "augment", bool(self.augment))
    _store(self, "max_shift", _positive("max_shift", self.max_shift, allow_zero=True))
    mean = tuple(float(m) for m in self.input_mean)
    if not mean or not all(0.0 <= m <= 1.0 for m in mean):
      raise ValueError(f"input_mean: expected one value in [0, 1] per channel, got {mean}")
    _store(self, "input_mean", mean)
    _store(self, "batch_size", _positive("batch_size", self.batch_size, integer=True))

  @property
  def step_size(self) -> float:
    """The PGD step in [0, 1] pixel units: τ·ε."""
    return self.tau * self.epsilon


class TAPResult(NamedTuple):
  """TAP's poisons (uint8 [N, H, W, C]), each restart's mean target-class cross-entropy at its
  last step (float [restarts]) and the restart kept (the lowest)."""
  poisons: np.ndarray
  restart_losses: np.ndarray
  best_restart: int


# --- TAP: targeted adversarial poisoning --------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("config",))
def _tap_restart(surrogate: GradientModel, images, labels, key, config: TAPConfig):
  """One restart: (δ of every image, the mean target loss at the last step)."""
  def image_losses(z, y):
    logits = surrogate.apply_fn(surrogate.params, surrogate.state, z)
    return cross_entropy(logits, target_classes(y, config.num_classes, config.target_offset))

  return forge_deltas(image_losses, images, labels, key, epsilon=config.epsilon,
                      steps=config.steps, step_size=config.step_size, augment=config.augment,
                      fill=config.input_mean, max_shift=config.max_shift,
                      batch_size=config.batch_size)


def _check_surrogate(surrogate, image_shape, num_classes: int) -> GradientModel:
  if not isinstance(surrogate, GradientModel):
    raise TypeError(f"surrogate: expected a GradientModel (e.g. classifier.gradient_model("
                    f"models, 0)), got {type(surrogate).__name__}")
  probe = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  try:
    out = jax.eval_shape(lambda z: surrogate.apply_fn(surrogate.params, surrogate.state, z),
                         probe)
  except Exception as error:  # A shape mismatch surfaces from deep inside the network.
    raise ValueError(f"surrogate: could not run on images of shape {tuple(image_shape)}: "
                     f"{error}") from error
  if tuple(out.shape) != (1, num_classes):
    raise ValueError(f"surrogate: expected logits [B, {num_classes}] (config.num_classes), got "
                     f"shape {tuple(out.shape)} for one image")
  return surrogate


def tap_poison(key, surrogate: GradientModel, images, labels,
               config: TAPConfig | None = None) -> TAPResult:
  """Targeted adversarial poisons (TAP, Fowl et al. 2021): every image pushed toward the next
  class.

  Per restart (of `restarts`), δ starts at N(0, 1)·ε clipped to ±ε (`initialize_poison`) and
  takes `steps` signed steps of τ·ε that descend CE(f(aug(x + δ)), (y + 1) mod K), each
  followed by the projection onto the ε-ball and the image box (`_pgd_step`), with a fresh
  differentiable shift and flip (`RandomTransform`) per image and step and the surrogate in
  inference mode. The restart with the lowest mean target loss at its last step is kept
  (`_forge`) and quantized within the bound.

  The reference sweeps all images once per step, batch by batch; every image's trajectory is
  its own, so here each batch runs all its steps in turn (the same computation). Its restart
  score is the mean of batch means; here it is the mean over images.

  Args:
    key: a jax.random key; restart r draws from fold_in(key, r), image i from fold_in(·, i).
    surrogate: the network crafted against (`classifier.gradient_model(models, 0)` of a model
      trained on the clean data: the reference trains a ResNet-18 with the "conservative"
      recipe, `classifier.conservative_config()`), logits [B, num_classes].
    images: uint8 [N, H, W, C], the clean training images.
    labels: int [N] in [0, config.num_classes).
    config: `TAPConfig` (default: the reference's CIFAR-10 command).

  Returns:
    `TAPResult` (poisons uint8 [N, H, W, C], each restart's last-step loss, the restart kept).
  """
  config = check_config(config, TAPConfig)
  key = as_key(key)
  images, labels = check_data(images, labels, config.num_classes)
  epsilon = constraints.check_quantizable("linf", config.epsilon, images.shape[1:])
  if config.augment and len(config.input_mean) != images.shape[-1]:
    raise ValueError(f"config.input_mean: expected {images.shape[-1]} values (one per channel of "
                     f"the images), got {len(config.input_mean)}")
  surrogate = _check_surrogate(surrogate, images.shape[1:], config.num_classes)

  x, y = jnp.asarray(images), jnp.asarray(labels)
  best, losses, best_index = best_restart(
      lambda k: _tap_restart(surrogate, x, y, k, config), key, config.restarts)
  poisons = constraints.quantize_poisons(perturbed(x, best), x, "linf", epsilon)
  return TAPResult(np.asarray(poisons), losses, best_index)
