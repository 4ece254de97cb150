"""EFP, the entangled-features poison (Wen et al., ICLR 2023, "Is Adversarial Training Really a
Silver Bullet for Mitigating Data Poisoning?"; EntF in the paper, EFP in ECLIPSE's tables): an
indiscriminate poison made to survive adversarial training (`efp_poison`).

An adversarially trained *reference* model (ResNet-18, PGD at ε_adv = 4/255) supplies robust
penultimate features and each class's centroid, the mean feature of its clean training images.
Every training image is then perturbed (ℓ∞ ε = 8/255) so that the reference's feature of it
moves away from its own class's centroid ("push") or toward the nearest other class's centroid
("pull"). The classes' robust features become entangled: a network trained on the poisons,
adversarially or not, finds less in them that separates the classes. ECLIPSE's Table 1 has it
hurting adversarial training (AT 71.46% on ResNet-18) far more than standard training (w/o
86.64%).

The crafting loop is the forest-style "forge" the reference shares with TAP
(`jaxpoison.attacks.unlearnable.tap`): δ starts at N(0, 1)·ε clipped to ±ε, then `steps` passes
over the data each take one signed step of τ·ε per image (descending the loss), projected onto
the ε-ball and the image box, through a fresh differentiable random shift and flip per image and
step, with the reference in inference mode. The losses (`ForgemasterPush`, `ForgemasterPull`):

* push: −MSE(f(x + δ), c_y), the mean over feature dimensions of the squared distance to the
  image's own class centroid, negated (descending it pushes the feature away);
* pull: MSE(f(x + δ), c_k) for k the other class whose centroid is nearest to the current
  feature (chosen afresh at every step, from the augmented image's feature). The reference
  leaves the own class out by setting its distance to 1 (`_find_close`), not to infinity, so
  where every other centroid is farther than MSE 1 it pulls toward the own class; here the own
  class is always left out, as the paper describes the pull.

The reference averages the MSE over the batch as well; the sign step of each image is the
same. Its restart score (restarts = 1 by default, so no choice is made) is the last pass's mean
of batch losses; here the mean over images.

Reference defaults (WenRuiUSTC/EntF, utils/options.py; the paper's CIFAR-10 setting): recipe
"push", ε 8/255 over every training image (`--budget 1.0`), `--attackiter 300`, `--tau 0.05`
(a step of 0.4/255), `--init randn`, `--restarts 1`, `--paugment` on (`RandomTransform(shift=8,
fliplr=True, mode="bilinear")`, ±4 pixels under align_corners), `--pbatch 512`; the reference
model (`train_reference_model.py`, `efp_reference_config`) ResNet-18 trained 100 epochs by
SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, ×0.1 at epochs 75 and 90, crop + flip,
on PGD examples of `--robust_eps 4` (10 steps of 2/255 from a uniform random start, batch norm
on running statistics while attacking). The reference does not normalize its inputs
(`prepare_data(normalize=False)`): the shift fills with 0 (black) and every bound is in [0, 1]
pixels, as here. Differences, named: our ResNet-18 normalizes its inputs by CIFAR-10's channel
statistics inside the network (the reference's sees raw [0, 1] pixels); the poisons are
quantized within the bound (`constraints.quantize_poisons`: round to nearest, toward the clean
image where rounding would leave ε), where the reference's PNG export rounds to nearest
unconditionally.

ECLIPSE does not say which variant its EFP pickles are; the reference's default, push, is the
default here. Randomness: restart r draws from fold_in(key, r); image i's start and its
augmentation at step t from fold_in(fold_in(·, i), 0) and fold_in(fold_in(·, i), t + 1), so the
poisons do not depend on the batch size. Same key ⇒ same poisons.

References read (for facts; no code copied): WenRuiUSTC/EntF: poison_generate.py,
train_reference_model.py, get_centroid.py, utils/options.py, utils/attack.py
(`FastGradientSignUntargeted`), village/shop/forgemaster_base.py, forgemaster_push.py,
forgemaster_pull.py, village/materials/furnace.py, village/materials/datasets.py,
models/resnet.py (`ResNetEmb`).
"""

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
from jaxpoison.attacks.unlearnable.trained import (TrainedPoisonConfig, best_restart,
                                                  check_config, check_data,
                                                  class_mean_features, forge_deltas, perturbed)
from jaxpoison.classifier.api import feature_extractor
from jaxpoison.classifier.config import TrainConfig, resnet18_config
from jaxpoison.classifier.train import TrainedModels
from jaxpoison.keys import as_key
from jaxpoison.surrogates import FeatureExtractor

EFP_EPSILON = 8 / 255
EFP_REFERENCE_EPSILON = 4 / 255
EFP_RECIPES = ("push", "pull")
# train_reference_model.py: 100 epochs, MultiStepLR(milestones=[75, 90], gamma=0.1).
_REFERENCE_EPOCHS = 100
_REFERENCE_MILESTONES = (75, 90)


@dataclasses.dataclass(frozen=True)
class EFPConfig(TrainedPoisonConfig):
  """The entangled-features poison, the reference's defaults (utils/options.py).

  Attributes:
    num_classes: labels lie in [0, num_classes).
    recipe: "push" (away from the own class's centroid; `--recipe push`, the default) or
      "pull" (toward the nearest other class's centroid).
    epsilon: the ℓ∞ bound in [0, 1] pixels (8/255: `--eps 8`).
    steps: signed steps per image, each a pass over all images (300: `--attackiter`).
    tau: the step as a fraction of ε (0.05: `--tau`; 0.4/255 in [0, 1] pixels).
    restarts: independent random starts, the lowest last-step mean loss kept (1: `--restarts`).
    augment: a differentiable random shift and flip per image and step (`--paugment`, on).
    max_shift: the shift's range in pixels (`RandomTransform(shift=8)`: ±4 pixels).
    fill: the value the shift fills in, per channel (0: the reference's unnormalized black).
    batch_size: images per batch (512: `--pbatch`); memory only (inference-mode network,
      per-image sign steps).
  """
  recipe: str = "push"
  epsilon: float = EFP_EPSILON
  steps: int = 300
  tau: float = 0.05
  restarts: int = 1
  augment: bool = True
  max_shift: float = 4.0
  fill: tuple[float, ...] = (0.0, 0.0, 0.0)
  batch_size: int = 512

  def __post_init__(self):
    super().__post_init__()
    if self.recipe not in EFP_RECIPES:
      raise ValueError(f"recipe: expected one of {EFP_RECIPES}, got {self.recipe!r}")
    if self.recipe == "pull" and self.num_classes < 2:
      raise ValueError("recipe 'pull' needs another class to pull toward")
    _store(self, "epsilon", check_perturbation_bound("linf", self.epsilon))
    _store(self, "steps", _positive("steps", self.steps, integer=True))
    _store(self, "tau", _positive("tau", self.tau))
    _store(self, "restarts", _positive("restarts", self.restarts, integer=True))
    _store(self, "augment", bool(self.augment))
    _store(self, "max_shift", _positive("max_shift", self.max_shift, allow_zero=True))
    fill = tuple(float(v) for v in self.fill)
    if not fill or not all(0.0 <= v <= 1.0 for v in fill):
      raise ValueError(f"fill: expected one value in [0, 1] per channel, got {fill}")
    _store(self, "fill", fill)
    _store(self, "batch_size", _positive("batch_size", self.batch_size, integer=True))

  @property
  def step_size(self) -> float:
    """The signed step in [0, 1] pixel units: τ·ε."""
    return self.tau * self.epsilon


def efp_reference_config(epochs: int = _REFERENCE_EPOCHS, *,
                         adversarial_epsilon: float = EFP_REFERENCE_EPSILON,
                         **changes) -> TrainConfig:
  """The reference model's recipe (train_reference_model.py): ResNet-18, `epochs` (100) of SGD
  lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, ×0.1 at epochs 75 and 90 (scaled with
  `epochs`), 4-pixel zero-padded crop and flip, trained on PGD examples at
  `adversarial_epsilon` (`--robust_eps 4`: 4/255) of 10 steps of 2/255 from a uniform random
  start. `changes` override any other field (e.g. widths for a CPU run)."""
  epochs = _positive("epochs", epochs, integer=True)
  milestones = tuple(round(m * epochs / _REFERENCE_EPOCHS) for m in _REFERENCE_MILESTONES)
  defaults = dict(epochs=epochs, batch_size=128, lr=0.1, momentum=0.9, nesterov=False,
                  weight_decay=5e-4, schedule="milestones", lr_milestones=milestones,
                  lr_gamma=0.1, flip="random", translate=4, pad_mode="zeros",
                  adversarial_epsilon=adversarial_epsilon, adversarial_steps=10,
                  adversarial_step_size=2 / 255, adversarial_random_start=True)
  return resnet18_config(**{**defaults, **changes})


class EFPResult(NamedTuple):
  """EFP's poisons (uint8 [N, H, W, C]), the reference's class centroids (float32 [K, D]),
  each restart's mean loss at its last step (float [restarts]) and the restart kept."""
  poisons: np.ndarray
  centroids: np.ndarray
  restart_losses: np.ndarray
  best_restart: int


def efp_losses(features, labels, centroids, recipe: str):
  """Per-image EFP loss [B] of features [B, D] (labels [B], centroids [K, D]): push −MSE to the
  own class's centroid; pull MSE to the nearest other class's centroid."""
  distances = jnp.mean(jnp.square(features[:, None, :] - centroids[None]), axis=-1)  # [B, K]
  own = jax.nn.one_hot(labels, centroids.shape[0], dtype=bool)
  if recipe == "push":
    return -jnp.sum(jnp.where(own, distances, 0.0), axis=-1)
  return jnp.min(jnp.where(own, jnp.inf, distances), axis=-1)


@functools.partial(jax.jit, static_argnames=("config",))
def _efp_restart(reference: FeatureExtractor, centroids, images, labels, key, config: EFPConfig):
  """One restart: (δ of every image, the mean loss at the last step)."""
  def image_losses(z, y):
    features = reference.apply_fn(reference.params, z).astype(jnp.float32)
    return efp_losses(features, y, centroids, config.recipe)

  return forge_deltas(image_losses, images, labels, key, epsilon=config.epsilon,
                      steps=config.steps, step_size=config.step_size, augment=config.augment,
                      fill=config.fill, max_shift=config.max_shift, batch_size=config.batch_size)


def _check_reference(reference, images, config: EFPConfig) -> None:
  if not isinstance(reference, TrainedModels):
    raise TypeError(f"reference: expected classifier TrainedModels with one model (e.g. "
                    f"train_models(keys, images, labels, efp_reference_config(...))), got "
                    f"{type(reference).__name__}")
  if reference.num_models != 1:
    raise ValueError(f"reference: expected one model, got {reference.num_models}; select one "
                     f"with classifier.select(models, i)")
  if tuple(reference.config.image_shape) != tuple(images.shape[1:]):
    raise ValueError(f"reference: trained on images of shape {reference.config.image_shape}, "
                     f"got images of shape {tuple(images.shape[1:])}")
  if reference.config.num_classes != config.num_classes:
    raise ValueError(f"reference: {reference.config.num_classes} classes, config.num_classes is "
                     f"{config.num_classes}")


def efp_poison(key, reference: TrainedModels, images, labels,
               config: EFPConfig | None = None) -> EFPResult:
  """Entangled-features poisons (EFP / EntF, Wen et al. 2023): every image's robust feature moved
  away from its class (module docstring).

  The class centroids are the reference's mean penultimate features of (images, labels) in
  inference mode (`get_centroid.py`); every class needs an image.

  Args:
    key: a jax.random key; restart r draws from fold_in(key, r), image i from fold_in(·, i).
    reference: the adversarially trained reference model (TrainedModels, one model; the
      reference's recipe is `efp_reference_config`).
    images: uint8 [N, H, W, C], the clean training images.
    labels: int [N] in [0, config.num_classes).
    config: `EFPConfig` (default: the reference's CIFAR-10 command, push).

  Returns:
    `EFPResult`: poisons uint8 within ⌊255ε⌋ grey levels of the clean images, the centroids,
    each restart's last-step loss and the restart kept.
  """
  config = check_config(config, EFPConfig)
  key = as_key(key)
  images, labels = check_data(images, labels, config.num_classes)
  epsilon = constraints.check_quantizable("linf", config.epsilon, images.shape[1:])
  if config.augment and len(config.fill) != images.shape[-1]:
    raise ValueError(f"config.fill: expected {images.shape[-1]} values (one per channel of the "
                     f"images), got {len(config.fill)}")
  _check_reference(reference, images, config)
  centroids = class_mean_features(reference, images, labels, config.num_classes)[0]
  extractor = feature_extractor(reference, 0)
  x, y = jnp.asarray(images), jnp.asarray(labels)
  best, losses, best_index = best_restart(
      lambda k: _efp_restart(extractor, centroids, x, y, k, config), key, config.restarts)
  poisons = constraints.quantize_poisons(perturbed(x, best), x, "linf", epsilon)
  return EFPResult(np.asarray(poisons), np.asarray(centroids), losses, best_index)
