"""Trained indiscriminate poisons ("unlearnable examples"): EM, TAP and REM.

ECLIPSE (Wang et al., ESORICS'24, §2.1 and Table 1) evaluates its purification against, among
others, three poisons crafted with a surrogate network. Like URP, LSP and AR
(`jaxpoison.attacks.indiscriminate`) each perturbs *every* training image within ℓ∞ ε = 8/255
and keeps the labels clean; unlike them each perturbation is optimized, per image, against a
network:

* **EM**, error-minimizing noise (Huang et al. 2021, "Unlearnable Examples"; sample-wise): a
  bi-level min-min. Rounds alternate a few SGD steps of a surrogate on the currently perturbed
  data with sign-gradient descent of every image's cross-entropy (its true label) over δ, until
  the surrogate classifies the perturbed training set almost perfectly: the noise is a shortcut
  the network learns instead of the images (`em_poison`).
* **TAP**, targeted adversarial poisoning (Fowl et al. 2021, "Adversarial Examples Make Strong
  Poisons"): a surrogate trained on clean data; every image is pushed by PGD, through
  differentiable shifts and flips, towards the class (y + 1) mod K. A network trained on them
  learns features that the surrogate ties to the wrong class (`tap_poison`).
* **REM**, robust error-minimizing noise (Fu et al. 2022, "Robust Unlearnable Examples"): EM's
  min-min made to survive adversarial training: δ (ℓ∞ 8/255) minimizes the loss after an
  adversary's ascent ρ (ℓ∞ ρ_a = 4/255), in expectation over the training augmentation, while
  the surrogate is itself trained adversarially (with ρ) on the perturbed data (`rem_poison`).

Units: images uint8 [N, H, W, C] in and out, perturbations in [0, 1] pixel units, ε in [0, 1]
units (8/255). None of the references normalizes the perturbation's step: our networks normalize
their inputs themselves, so every step and bound is in [0, 1] pixel units as in the references
(TAP's normalized-space step ε/std·τ is ε·τ in pixels).

Randomness comes from an explicit `key` only. Per-image draws (starts, augmentations, the inner
adversary's starts) come from `fold_in(·, i)` with i the image's position in `images`, so the
poisons do not depend on the batch sizes used to compute them; the surrogate's initialization,
shuffling and augmentation come from the classifier's trainer with its own key. Same key ⇒ same
poisons (on one device and XLA version).

Quantization. EM and TAP go through `constraints.quantize_poisons` (round to nearest, toward the
clean image where rounding would break ε), so that every uint8 poison is within ⌊255ε⌋ grey
levels of its image. REM's reference stores its noise as whole grey levels
(`(δ·255).round()` as int8) and trains on x + noise, so REM rounds δ to grey levels in [−8, 8]
and adds them with clipping (as URP does).

References read (for facts; no code copied):
* HanxunH/Unlearnable-Examples: perturbation.py (`sample_wise_perturbation`,
  `samplewise_perturbation_eval`, the argument defaults), toolbox.py
  (`PerturbationTool.min_min_attack`), trainer.py (`train_batch`),
  scripts/cifar10/min-min-noise/samplewise-noise/exp_setting.sh and
  search_perturbation_noise.sh, configs/cifar10/resnet18.yaml.
* lhfowl/adversarial_poisons: README.md (the CIFAR-10 command), village/options.py,
  village/shop/forgemaster_base.py (`_initialize_forge`, `_run_trial`, `_batched_step`,
  `_pgd_step`), village/shop/forgemaster_targeted.py (`_label_map`),
  village/materials/furnace.py (`initialize_poison`, `RandomTransform(shift=8)`),
  village/materials/diff_data_augmentation.py, village/consts.py.
* fshp971/robust-unlearnable-examples: README.md and scripts/cifar10/gen_rem.sh (the CIFAR-10
  settings), generate_robust_em.py (the loop), attacks/robust_workers.py
  (`RobustMinimaxPGDDefender`), attacks/pgd_attacker.py (`PGDAttacker`), utils/generic.py
  (`get_transforms`, the loaders), utils/argument.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxpoison._checks import check_images, check_labels, check_perturbation_bound
from jaxpoison._checks import check_positive as _positive
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks import constraints, core
from jaxpoison.attacks.configs import FOREST_CIFAR10_MEAN
from jaxpoison.attacks.indiscriminate import _indexed_keys, _PoisonConfig
from jaxpoison.attacks.witches_brew import GradientModel, apply_shift_flip

if TYPE_CHECKING:  # The classifier imports jaxpoison.attacks; imported lazily at run time.
  from jaxpoison.classifier import TrainConfig, TrainedModels

EM_EPSILON = 8 / 255
TAP_EPSILON = 8 / 255
REM_EPSILON = 8 / 255
REM_ADVERSARIAL_EPSILON = 4 / 255


# --- configs ------------------------------------------------------------------------------------

def _fraction(name: str, value) -> float:
  value = _positive(name, value)
  if value > 1:
    raise ValueError(f"{name}: expected a fraction in (0, 1], got {value!r}")
  return value


def _target_offset(offset, num_classes: int) -> int:
  """A class offset (y ↦ y + offset mod K) that moves every class."""
  offset = _positive("target_offset", offset, integer=True)
  if offset % num_classes == 0:
    raise ValueError(f"target_offset: {offset} maps every class to itself with {num_classes} "
                     f"classes; expected an offset not divisible by it")
  return offset


@dataclasses.dataclass(frozen=True)
class _TrainedPoisonConfig(_PoisonConfig):
  """The poisons' shared config base (`indiscriminate._PoisonConfig`), with at least two
  classes: these train a classifier."""

  def __post_init__(self):
    super().__post_init__()
    if self.num_classes < 2:
      raise ValueError(f"num_classes: expected >= 2 classes, got {self.num_classes}")


@dataclasses.dataclass(frozen=True)
class EMConfig(_TrainedPoisonConfig):
  """Sample-wise error-minimizing noise (EM), Huang et al.'s CIFAR-10 setting.

  Attributes:
    num_classes: labels lie in [0, num_classes).
    epsilon: the ℓ∞ bound (8/255: exp_setting.sh `epsilon=8`).
    steps, step_size: sign-gradient descent steps per image per round and their size (20 and
      0.8/255: exp_setting.sh `num_steps=20`, `step_size=0.8`).
    train_steps: surrogate SGD steps (batches) before each round's noise update (10:
      perturbation.py `--train_step`).
    stop_accuracy: the search stops after the first round whose surrogate accuracy on the
      perturbed training set reaches this (0.99: exp_setting.sh `universal_stop_error=0.01`,
      the loop continues while the error exceeds it).
    max_rounds: a cap on the rounds. Not in the reference, which loops until the stop
      condition; 100 rounds are about 1,000 surrogate steps and 100 passes of 20 steps over
      the training set, far more than the condition usually needs.
    random_start: δ starts as U(−ε, ε) per value (`--random_start`); False (the script does not
      pass the flag): δ starts at 0. Each round's descent starts from the current δ.
    batch_size: images per batch of the noise update and the accuracy pass (512:
      perturbation.py `--train_batch_size`/`--eval_batch_size`). Memory only here: the network
      runs on running statistics, so each image's descent is its own.
  """
  epsilon: float = EM_EPSILON
  steps: int = 20
  step_size: float = 0.8 / 255
  train_steps: int = 10
  stop_accuracy: float = 0.99
  max_rounds: int = 100
  random_start: bool = False
  batch_size: int = 512

  def __post_init__(self):
    super().__post_init__()
    _store(self, "epsilon", check_perturbation_bound("linf", self.epsilon))
    _store(self, "steps", _positive("steps", self.steps, integer=True))
    _store(self, "step_size", _positive("step_size", self.step_size))
    _store(self, "train_steps", _positive("train_steps", self.train_steps, integer=True))
    _store(self, "stop_accuracy", _fraction("stop_accuracy", self.stop_accuracy))
    _store(self, "max_rounds", _positive("max_rounds", self.max_rounds, integer=True))
    _store(self, "random_start", bool(self.random_start))
    _store(self, "batch_size", _positive("batch_size", self.batch_size, integer=True))


@dataclasses.dataclass(frozen=True)
class TAPConfig(_TrainedPoisonConfig):
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
    _store(self, "target_offset", _target_offset(self.target_offset, self.num_classes))
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


@dataclasses.dataclass(frozen=True)
class REMConfig(_TrainedPoisonConfig):
  """Robust error-minimizing noise (REM), Fu et al.'s CIFAR-10 setting (scripts/cifar10/
  gen_rem.sh, the README's example).

  Attributes:
    num_classes: labels lie in [0, num_classes).
    epsilon, steps, step_size, random_start: the defensive noise δ's sign-gradient descent per
      batch (ℓ∞ 8/255, 10 steps of 1.6/255 from U(−ε, ε): `--pgd-radius 8 --pgd-steps 10
      --pgd-step-size 1.6 --pgd-random-start`). Every descent starts afresh (the reference
      recomputes a batch's noise from a random start whenever the batch comes up).
    adversarial_epsilon, adversarial_steps, adversarial_step_size, adversarial_random_start:
      the adversary ρ, both inside δ's objective and in the surrogate's adversarial training
      (ℓ∞ ρ_a = 4/255, 10 ascent steps of 0.8/255 from U(−ρ_a, ρ_a): `--atk-pgd-radius 4
      --atk-pgd-steps 10 --atk-pgd-step-size 0.8 --atk-pgd-random-start`). ρ_a = 0 gives Fu et
      al.'s EM variant (no adversary).
    samples: draws of the augmentation averaged in each descent step's gradient (the
      expectation over transformations; 5: `--samp-num 5`).
    train_steps: surrogate steps (5000: `--train-steps`); before each step the noise of that
      step's batch is recomputed (`--perturb-freq 1`), and after the last the noise of every
      image is recomputed with the final surrogate (`regenerate_def_noise`).
    lr_decay_rate, lr_decay_every: the surrogate's learning rate is multiplied by the rate
      every this many steps (0.1 every 2000: `--lr-decay-rate 0.1 --lr-decay-freq 2000`).
    augment, translate: the transformations of the expectation, the training transform of
      `get_transforms(train=True)`: random horizontal flip and a random crop of the image
      zero-padded by `translate` pixels (`RandomCrop(32, 4)`); augment=False: none.

  The batch size (128: `--batch-size`) is the surrogate's `TrainConfig.batch_size`; the final
  regeneration runs in batches of the same size (memory only: the draws are per image).
  """
  epsilon: float = REM_EPSILON
  steps: int = 10
  step_size: float = 1.6 / 255
  random_start: bool = True
  adversarial_epsilon: float = REM_ADVERSARIAL_EPSILON
  adversarial_steps: int = 10
  adversarial_step_size: float = 0.8 / 255
  adversarial_random_start: bool = True
  samples: int = 5
  train_steps: int = 5000
  lr_decay_rate: float = 0.1
  lr_decay_every: int = 2000
  augment: bool = True
  translate: int = 4

  def __post_init__(self):
    super().__post_init__()
    _store(self, "epsilon", check_perturbation_bound("linf", self.epsilon))
    _store(self, "steps", _positive("steps", self.steps, integer=True))
    _store(self, "step_size", _positive("step_size", self.step_size))
    _store(self, "random_start", bool(self.random_start))
    rho = _positive("adversarial_epsilon", self.adversarial_epsilon, allow_zero=True)
    if rho >= 1:
      raise ValueError(f"adversarial_epsilon: an ℓ∞ radius of {rho} allows any image; ρ is in "
                       f"[0, 1] pixel units (4/255 ≈ 0.0157)")
    _store(self, "adversarial_epsilon", rho)
    _store(self, "adversarial_steps",
           _positive("adversarial_steps", self.adversarial_steps, integer=True))
    _store(self, "adversarial_step_size",
           _positive("adversarial_step_size", self.adversarial_step_size))
    _store(self, "adversarial_random_start", bool(self.adversarial_random_start))
    _store(self, "samples", _positive("samples", self.samples, integer=True))
    _store(self, "train_steps", _positive("train_steps", self.train_steps, integer=True))
    _store(self, "lr_decay_rate", _fraction("lr_decay_rate", self.lr_decay_rate))
    _store(self, "lr_decay_every", _positive("lr_decay_every", self.lr_decay_every,
                                             integer=True))
    _store(self, "augment", bool(self.augment))
    _store(self, "translate", _positive("translate", self.translate, integer=True,
                                        allow_zero=True))


def em_surrogate_config(**changes) -> "TrainConfig":
  """EM's surrogate recipe: ResNet-18, SGD lr 0.1 (constant), momentum 0.9, weight decay 5e-4
  (configs/cifar10/resnet18.yaml; its cosine scheduler is never stepped during the search),
  batches of 512 (perturbation.py `--train_batch_size`), no augmentation
  (`no_train_augments=True`). `changes` override any field (e.g. image_shape, num_classes)."""
  from jaxpoison.classifier.config import resnet18_config
  defaults = dict(batch_size=512, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                  schedule="constant", flip="none", translate=0)
  return resnet18_config(**{**defaults, **changes})


def rem_surrogate_config(**changes) -> "TrainConfig":
  """REM's surrogate recipe: ResNet-18, SGD lr 0.1 (decayed by `REMConfig`), momentum 0.9,
  weight decay 5e-4, batches of 128, random flip and 4-pixel zero-padded crop (gen_rem.sh,
  `get_transforms(train=True)`). Its adversarial-training fields are set from the REMConfig
  when REM trains it. `changes` override any field."""
  from jaxpoison.classifier.config import resnet18_config
  defaults = dict(batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                  schedule="constant", flip="random", translate=4, pad_mode="zeros")
  return resnet18_config(**{**defaults, **changes})


# --- results ------------------------------------------------------------------------------------

class EMResult(NamedTuple):
  """EM's poisons and how the search ended.

  poisons: uint8 [N, H, W, C], within ⌊255ε⌋ grey levels of the images.
  surrogate: the surrogate after the last round (the weights the last noise update descended
    on; TrainedModels with one model).
  accuracy_history: float [rounds], the surrogate's accuracy on the perturbed (unquantized)
    training set after each round's noise update (the reference's stop test).
  converged: whether the last round reached `stop_accuracy` (False: `max_rounds` ran out).
  """
  poisons: np.ndarray
  surrogate: Any
  accuracy_history: np.ndarray
  converged: bool


class TAPResult(NamedTuple):
  """TAP's poisons (uint8 [N, H, W, C]), each restart's mean target-class cross-entropy at its
  last step (float [restarts]) and the restart kept (the lowest)."""
  poisons: np.ndarray
  restart_losses: np.ndarray
  best_restart: int


class REMResult(NamedTuple):
  """REM's poisons (uint8 [N, H, W, C]) and the adversarially trained surrogate they were
  regenerated with at the end (TrainedModels with one model)."""
  poisons: np.ndarray
  surrogate: Any


# --- shared pieces ------------------------------------------------------------------------------

def sign_pgd(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], images, delta, *,
             epsilon: float, steps: int, step_size: float, minimize: bool):
  """ℓ∞ projected sign-gradient descent (or ascent) over perturbations δ of float images x.

  δ₀ = Π(delta); then `steps` times δ ← Π(δ ∓ step_size · sign(∇_δ Σ loss_fn(x + δ, t))), t
  the step index (e.g. to draw that step's augmentation), − when `minimize`. Π clips to
  [−ε, ε] and then to [−x, 1 − x] (the projection onto the ε-ball ∩ the image box), so x + δ
  stays a valid image: the form of Fowl et al.'s `_pgd_step`, and of Huang et al.'s
  `min_min_attack` and Fu et al.'s adversary, which step the clipped image x + δ. With per-image
  losses (and batch norm on running statistics) each image's step is its own.

  Args:
    loss_fn: (float images [B, H, W, C] in [0, 1], int32 step) → per-image losses [B] (or any
      array; its sum is differentiated); traceable.
    images: float [B, H, W, C] in [0, 1].
    delta: float [B, H, W, C], the start.
    epsilon, step_size: in [0, 1] pixel units; steps: >= 0 (static).
    minimize: descend (True) or ascend (False).

  Returns:
    (δ float32, with |δ| <= ε and x + δ in [0, 1]; loss_fn's value at the start of the last
    step, the one whose gradient it took, or at δ₀ when steps = 0).
  """
  x = jnp.asarray(images, jnp.float32)
  lower = jnp.maximum(-x, -epsilon)
  upper = jnp.minimum(1.0 - x, epsilon)
  project = lambda d: jnp.clip(d, lower, upper)
  direction = -1.0 if minimize else 1.0

  def total(d, t):
    losses = loss_fn(x + d, t).astype(jnp.float32)
    return jnp.sum(losses), losses

  gradient = jax.grad(total, has_aux=True)

  def step(t, carry):
    d, _ = carry
    grad, losses = gradient(d, t)
    return project(d + direction * step_size * jnp.sign(grad)), losses

  d0 = project(jnp.asarray(delta, jnp.float32))
  if steps == 0:
    return d0, total(d0, jnp.int32(0))[1]
  losses0 = jax.eval_shape(lambda d: total(d, jnp.int32(0))[1], d0)
  return jax.lax.fori_loop(0, steps, step, (d0, jnp.zeros(losses0.shape, jnp.float32)))


def _cross_entropy(logits, labels):
  """Per-image cross-entropy [B] (float32)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _nnx_logits(graphdef, params, rest) -> Callable[[jax.Array], jax.Array]:
  """The network of one model's split state, in inference mode (batch norm on its running
  statistics), as float images [B, H, W, C] in [0, 1] → logits [B, K]."""
  return lambda z: nnx.merge(graphdef, params, rest, copy=True)(z)


def _map_batches(fn, arrays, batch_size: int):
  """fn(*batch) over consecutive batches of `batch_size` along axis 0 of every array (the last
  zero-padded), its outputs concatenated and the padding dropped. One batch runs without a
  loop around the network (XLA:CPU runs convolutions inside loops far slower)."""
  num = arrays[0].shape[0]
  size = min(batch_size, num)
  num_batches = -(-num // size)
  pad = num_batches * size - num
  padded = [jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)]) for a in arrays]
  if num_batches == 1:
    return jax.tree.map(lambda o: o[:num], fn(*padded))
  batched = [a.reshape(num_batches, size, *a.shape[1:]) for a in padded]
  out = jax.lax.map(lambda b: fn(*b), batched)
  return jax.tree.map(lambda o: o.reshape(num_batches * size, *o.shape[2:])[:num], out)


def _as_key(key) -> jax.Array:
  key = core.check_key(key)
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  return key


def _check_data(images, labels, num_classes: int):
  check_images(images, name="images", dtypes=("uint8",))
  if images.shape[0] < 1:
    raise ValueError("images: expected at least one training image, got an empty batch")
  check_labels(labels, num_classes, length=images.shape[0])
  return np.asarray(images), np.asarray(labels).astype(np.int32)


def _check_config(config, config_type):
  config = config_type() if config is None else config
  if not isinstance(config, config_type):
    raise TypeError(f"config: expected a {config_type.__name__}, got {type(config).__name__}")
  return config


def _check_surrogate_config(train_config, images, num_classes: int, poison: str,
                            *, float_images: bool) -> None:
  """The trainer recipe EM or REM continues between noise updates: the right data, and no
  feature that assumes a run of known length or uint8 batches."""
  from jaxpoison.classifier.config import TrainConfig
  if not isinstance(train_config, TrainConfig):
    raise TypeError(f"train_config: expected a classifier TrainConfig, got "
                    f"{type(train_config).__name__}")
  name = f"{poison}: train_config"
  if tuple(train_config.image_shape) != tuple(images.shape[1:]):
    raise ValueError(f"{name}.image_shape: expected the images' {tuple(images.shape[1:])}, got "
                     f"{train_config.image_shape}")
  if train_config.num_classes != num_classes:
    raise ValueError(f"{name}.num_classes: expected the poison config's {num_classes}, got "
                     f"{train_config.num_classes}")
  if train_config.batch_size > images.shape[0]:
    raise ValueError(f"{name}.batch_size: {train_config.batch_size} exceeds the {images.shape[0]} "
                     f"training images; lower it")
  problems = []
  if train_config.schedule != "constant":
    problems.append(f"schedule={train_config.schedule!r} (the surrogate trains in short spans "
                    f"of an open-ended run: use 'constant')")
  if train_config.lookahead:
    problems.append("lookahead=True (its EMA is tied to a run of known length)")
  if train_config.friendly_epoch >= 0:
    problems.append("friendly_epoch >= 0 (friendly noise)")
  if float_images and train_config.adversarial_epsilon > 0:
    problems.append("adversarial_epsilon > 0 (EM's surrogate trains normally)")
  if float_images and (train_config.noise != "none" or train_config.grayscale_prob > 0):
    problems.append("noise or grayscale augmentation (EM trains on float images)")
  if problems:
    raise ValueError(f"{name}: unsupported setting(s): " + "; ".join(problems))


# --- the surrogate trained in spans -------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _train_parts(config):
  from jaxpoison.classifier.train import make_train_parts
  return make_train_parts(config)


@functools.lru_cache(maxsize=None)
def _jitted_start(config):
  return jax.jit(_train_parts(config).start)


@functools.lru_cache(maxsize=None)
def _jitted_step(config):
  return jax.jit(_train_parts(config).body, donate_argnums=0)


@functools.lru_cache(maxsize=None)
def _jitted_span(config, num_steps: int):
  body = _train_parts(config).body

  def span(carry, first, keys, images, labels):
    steps = first + jnp.arange(num_steps, dtype=jnp.int32)
    carry, _ = jax.lax.scan(lambda c, s: (body(c, s, keys, images, labels), None), carry, steps)
    return carry

  return jax.jit(span, donate_argnums=0)


class _SurrogateRun:
  """One surrogate trained a few steps at a time between noise updates: the classifier's
  `TrainParts` with their carry (weights, momentum, every epoch's shuffle) kept across spans,
  so that the spans make one continuous run of `num_steps` steps, as the references keep one
  model, optimizer and data iterator across rounds. Its batches are drawn by the trainer
  (shuffled per epoch); the training images may change between spans."""

  def __init__(self, train_config, num_steps: int, key, images, labels):
    from jaxpoison.classifier.config import resolve_loop
    from jaxpoison.classifier.train import model_graphdef
    steps_per_epoch = images.shape[0] // train_config.batch_size
    self.config = train_config.replace(epochs=num_steps / steps_per_epoch)
    self.steps_per_epoch = steps_per_epoch
    self.graphdef = model_graphdef(self.config)
    self.keys = key[None]
    self.loop = resolve_loop(self.config)
    # The clean uint8 images: airbench's whitening filters are estimated from them.
    self.carry = _jitted_start(self.config)(self.keys, jnp.asarray(images), jnp.asarray(labels))

  def train(self, first: int, count: int, images, labels, lr: float | None = None) -> None:
    """Steps first, ..., first + count − 1 of the run on `images` (uint8 or float in [0, 1])."""
    config = self.config if lr is None else self.config.replace(lr=lr)
    if self.loop == "host":
      step = _jitted_step(config)
      for s in range(first, first + count):
        self.carry = step(self.carry, np.int32(s), self.keys, images, labels)
    else:
      self.carry = _jitted_span(config, count)(self.carry, np.int32(first), self.keys, images,
                                               labels)

  def weights(self):
    """(parameters, the other variables) of the model, without the models axis."""
    take = lambda tree: jax.tree.map(lambda a: a[0], tree)
    return take(self.carry.params), take(self.carry.rest)

  def trained_models(self, num_steps: int) -> "TrainedModels":
    return _train_parts(self.config).finish(self.carry, num_steps)


# --- EM: error-minimizing noise -----------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _em_round(graphdef, params, rest, images, labels, delta, config: EMConfig):
  """One noise update of every image (sign descent of its true label's cross-entropy from the
  current δ) and the surrogate's correct predictions on the updated images."""
  logits_fn = _nnx_logits(graphdef, params, rest)

  def batch(x_uint8, y, d):
    x = x_uint8.astype(jnp.float32) / 255.0
    loss = lambda z, _: _cross_entropy(logits_fn(z), y)
    d, _ = sign_pgd(loss, x, d, epsilon=config.epsilon, steps=config.steps,
                    step_size=config.step_size, minimize=True)
    correct = jnp.argmax(logits_fn(x + d), axis=-1) == y
    return d, correct

  return _map_batches(batch, (images, labels, delta), config.batch_size)


@functools.partial(jax.jit, static_argnames=("epsilon", "random_start"))
def _em_start(key, images, epsilon: float, random_start: bool):
  if not random_start:
    return jnp.zeros(images.shape, jnp.float32)
  keys = _indexed_keys(key, jnp.arange(images.shape[0]))
  noise = jax.vmap(lambda k: jax.random.uniform(k, images.shape[1:], jnp.float32, -epsilon,
                                                epsilon))(keys)
  x = images.astype(jnp.float32) / 255.0
  return jnp.clip(noise, -x, 1.0 - x)


@jax.jit
def _perturbed(images, delta):
  return images.astype(jnp.float32) / 255.0 + delta


def em_poison(key, images, labels, config: EMConfig | None = None, *,
              train_config: "TrainConfig | None" = None) -> EMResult:
  """Sample-wise error-minimizing noise (EM, Huang et al. 2021) added to every image.

  The min-min loop of `sample_wise_perturbation` (HanxunH/Unlearnable-Examples): δ starts at 0
  (or U(−ε, ε), `random_start`); each round
    1. trains the surrogate `train_steps` SGD steps (batches) on x + δ, continuing one run (the
       reference's optimizer and data iterator persist across rounds);
    2. updates every image's δ by `steps` sign-descent steps of CE(f(x + δ), y) from the current
       δ, projected onto the ε-ball and the image box (`min_min_attack` with the batch's noise
       as the start), the network in inference mode;
    3. measures the surrogate's accuracy on all x + δ and stops once it reaches
       `stop_accuracy` (or after `max_rounds`).
  The result is quantized within the bound (`constraints.quantize_poisons`).

  Left out: the reference clips each gradient to norm 5 (`grad_clip`) and feeds its training
  batches without clipping x + δ to [0, 1] and in file order; here there is no gradient
  clipping, δ is kept inside the box, and the trainer shuffles per epoch.

  Args:
    key: a jax.random key (the surrogate's initialization and batches; δ's random start).
    images: uint8 [N, H, W, C], the clean training images.
    labels: int [N] in [0, config.num_classes).
    config: `EMConfig` (default: Huang et al.'s CIFAR-10 sample-wise setting).
    train_config: the surrogate's `classifier.TrainConfig` (default: `em_surrogate_config` for
      the images' shape and config.num_classes); needs schedule "constant", no lookahead, no
      adversarial training, no friendly noise, no noise or grayscale augmentation.

  Returns:
    `EMResult` (poisons uint8 [N, H, W, C], the final surrogate, the accuracy per round,
    whether the stop condition was met).
  """
  config = _check_config(config, EMConfig)
  key = _as_key(key)
  images, labels = _check_data(images, labels, config.num_classes)
  epsilon = constraints.check_quantizable("linf", config.epsilon, images.shape[1:])
  if train_config is None:
    train_config = em_surrogate_config(image_shape=tuple(images.shape[1:]),
                                       num_classes=config.num_classes)
  _check_surrogate_config(train_config, images, config.num_classes, "em_poison",
                          float_images=True)

  x, y = jnp.asarray(images), jnp.asarray(labels)
  surrogate = _SurrogateRun(train_config, config.max_rounds * config.train_steps,
                            jax.random.fold_in(key, 0), x, y)
  delta = _em_start(jax.random.fold_in(key, 1), x, epsilon, config.random_start)
  history = []
  for round_index in range(config.max_rounds):
    surrogate.train(round_index * config.train_steps, config.train_steps, _perturbed(x, delta),
                    y)
    params, rest = surrogate.weights()
    delta, correct = _em_round(surrogate.graphdef, params, rest, x, y, delta, config)
    history.append(float(jnp.mean(correct)))
    if history[-1] >= config.stop_accuracy:
      break
  poisons = constraints.quantize_poisons(_perturbed(x, delta), x, "linf", epsilon)
  return EMResult(np.asarray(poisons),
                  surrogate.trained_models(len(history) * config.train_steps),
                  np.asarray(history, np.float32), history[-1] >= config.stop_accuracy)


# --- TAP: targeted adversarial poisoning --------------------------------------------------------

def target_classes(labels, num_classes: int, offset: int = 1):
  """TAP's class permutation: (y + offset) mod K (`_label_map`: offset 1)."""
  return (jnp.asarray(labels) + offset) % num_classes


def _random_shift_flip_per_image(images, keys, fill, max_shift: float):
  """RandomTransform's shift (uniform in [−max_shift, max_shift]² pixels) and horizontal flip
  (a fair coin), drawn per image from its own key, applied bilinearly (`apply_shift_flip`)."""
  def draw(k):
    k_shift, k_flip = jax.random.split(k)
    return (jax.random.uniform(k_shift, (2,), jnp.float32, -max_shift, max_shift),
            jax.random.bernoulli(k_flip, 0.5))
  shifts, flips = jax.vmap(draw)(keys)
  return apply_shift_flip(images, shifts, flips, fill)


@functools.partial(jax.jit, static_argnames=("config",))
def _tap_restart(surrogate: GradientModel, images, labels, key, config: TAPConfig):
  """One restart: (δ of every image, the mean target loss at the last step)."""
  logits_fn = lambda z: surrogate.apply_fn(surrogate.params, surrogate.state, z)
  fill = jnp.asarray(config.input_mean, jnp.float32)

  def batch(x_uint8, y, index):
    x = x_uint8.astype(jnp.float32) / 255.0
    targets = target_classes(y, config.num_classes, config.target_offset)
    keys = _indexed_keys(key, index)
    # furnace.initialize_poison("randn"): N(0, 1)·ε clipped to ±ε per value.
    start = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), x.shape[1:]))(keys)
    start = jnp.clip(start * config.epsilon, -config.epsilon, config.epsilon)

    def loss(z, t):
      if config.augment:
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t + 1))(keys)
        z = _random_shift_flip_per_image(z, step_keys, fill, config.max_shift)
      return _cross_entropy(logits_fn(z), targets)

    return sign_pgd(loss, x, start, epsilon=config.epsilon, steps=config.steps,
                    step_size=config.step_size, minimize=True)

  index = jnp.arange(images.shape[0])
  deltas, last_losses = _map_batches(batch, (images, labels, index), config.batch_size)
  return deltas, jnp.mean(last_losses)


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
  config = _check_config(config, TAPConfig)
  key = _as_key(key)
  images, labels = _check_data(images, labels, config.num_classes)
  epsilon = constraints.check_quantizable("linf", config.epsilon, images.shape[1:])
  if config.augment and len(config.input_mean) != images.shape[-1]:
    raise ValueError(f"config.input_mean: expected {images.shape[-1]} values (one per channel of "
                     f"the images), got {len(config.input_mean)}")
  surrogate = _check_surrogate(surrogate, images.shape[1:], config.num_classes)

  x, y = jnp.asarray(images), jnp.asarray(labels)
  best, best_loss, losses, best_index = None, math.inf, [], 0
  for restart in range(config.restarts):
    delta, loss = _tap_restart(surrogate, x, y, jax.random.fold_in(key, restart), config)
    losses.append(float(loss))
    if best is None or losses[-1] < best_loss:
      best, best_loss, best_index = delta, losses[-1], restart
  poisons = constraints.quantize_poisons(_perturbed(x, best), x, "linf", epsilon)
  return TAPResult(np.asarray(poisons), np.asarray(losses, np.float32), best_index)


# --- REM: robust error-minimizing noise ---------------------------------------------------------

def _flip_crop(images, keys, translate: int):
  """The training transform per image, from its own key: a horizontal flip (a fair coin) and a
  crop of the image zero-padded by `translate` pixels (offsets uniform in [0, 2·translate]);
  differentiable in the images (a selection of their values)."""
  h, w, c = images.shape[1:]

  def one(image, k):
    k_flip, k_crop = jax.random.split(k)
    image = jnp.where(jax.random.bernoulli(k_flip, 0.5), image[:, ::-1], image)
    if translate == 0:
      return image
    padded = jnp.pad(image, ((translate, translate), (translate, translate), (0, 0)))
    offsets = jax.random.randint(k_crop, (2,), 0, 2 * translate + 1)
    return jax.lax.dynamic_slice(padded, (offsets[0], offsets[1], 0), (h, w, c))

  return jax.vmap(one)(images, keys)


def _rem_perturbations(logits_fn, x, y, keys, config: REMConfig):
  """REM's noise for a batch (`RobustMinimaxPGDDefender.perturb`): float δ [B, H, W, C].

  δ₀ ~ U(−ε, ε) (or 0); each of `steps` steps sums over `samples` draws T of the transform the
  gradient of CE(f(ρ*), y) with respect to δ, where ρ* = the adversary's ascent from
  T(clip(x + δ, 0, 1)) (treated as a constant point: Danskin's theorem; the reference
  back-propagates ⟨T(clip(x + δ)), ∇_ρ* CE⟩), and sets δ ← clip(δ − α·sign(g), −ε, ε). δ itself
  is not kept inside the box: the clip to [0, 1] comes when it is added (as the reference's).
  """
  def image_draw(index):
    """Per image: the key of (step, sample) draw `index`."""
    return jax.vmap(lambda k: jax.random.fold_in(k, index))(keys)

  if config.random_start:
    start = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), x.shape[1:],
                                                  jnp.float32, -config.epsilon,
                                                  config.epsilon))(keys)
  else:
    start = jnp.zeros(x.shape, jnp.float32)
  rho = config.adversarial_epsilon

  def sample_gradient(d, draw):
    draw_keys = image_draw(draw)
    split = jax.vmap(jax.random.split)(draw_keys)
    augment_keys, adversary_keys = split[:, 0], split[:, 1]

    def transformed(d):
      z = jnp.clip(x + d, 0.0, 1.0)
      return _flip_crop(z, augment_keys, config.translate) if config.augment else z

    defended, pullback = jax.vjp(transformed, d)
    if rho > 0:
      adversary_start = jnp.zeros(x.shape, jnp.float32)
      if config.adversarial_random_start:
        adversary_start = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], jnp.float32,
                                                                -rho, rho))(adversary_keys)
      rho_delta, _ = sign_pgd(lambda z, _: _cross_entropy(logits_fn(z), y), defended,
                              adversary_start, epsilon=rho, steps=config.adversarial_steps,
                              step_size=config.adversarial_step_size, minimize=False)
      adversarial = jax.lax.stop_gradient(defended + rho_delta)
    else:
      adversarial = defended
    grad_at_adversarial = jax.grad(
        lambda z: jnp.sum(_cross_entropy(logits_fn(z), y)))(adversarial)
    return pullback(grad_at_adversarial)[0]

  def step(s, d):
    def accumulate(i, g):
      return g + sample_gradient(d, 1 + s * config.samples + i)
    g = jax.lax.fori_loop(0, config.samples, accumulate, jnp.zeros_like(d))
    return jnp.clip(d - config.step_size * jnp.sign(g), -config.epsilon, config.epsilon)

  return jax.lax.fori_loop(0, config.steps, step, start)


def _grey_levels(delta, epsilon: float):
  """The reference's int8 noise: round(255·δ), kept within ±⌊255ε⌋ grey levels."""
  budget = constraints.linf_budget(epsilon)
  return jnp.clip(jnp.round(delta * 255.0), -budget, budget).astype(jnp.int32)


def _add_grey_levels(images, offsets):
  return jnp.clip(images.astype(jnp.int32) + offsets, 0, 255).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _rem_batch(graphdef, params, rest, images, labels, index, key, config: REMConfig):
  """A batch's images (uint8 [B, H, W, C], positions `index` in the training set) plus their
  noise against the given surrogate, rounded to grey levels."""
  delta = _rem_perturbations(_nnx_logits(graphdef, params, rest),
                             images.astype(jnp.float32) / 255.0, labels,
                             _indexed_keys(key, index), config)
  return _add_grey_levels(images, _grey_levels(delta, config.epsilon))


@functools.partial(jax.jit, donate_argnums=0)
def _scatter(poisoned, index, batch):
  return poisoned.at[index].set(batch)


def rem_poison(key, images, labels, config: REMConfig | None = None, *,
               train_config: "TrainConfig | None" = None) -> REMResult:
  """Robust error-minimizing noise (REM, Fu et al. 2022) added to every image.

  The loop of generate_robust_em.py: the noise starts at 0; for each of `train_steps` steps,
    1. the noise of the batch the surrogate trains on next is recomputed against the current
       surrogate (`_rem_perturbations`: min over δ of the loss after the adversary's max over
       ρ, in expectation over the training transform), rounded to whole grey levels;
    2. the surrogate takes one SGD step on PGD adversarial examples (radius ρ_a) of the
       augmented poisoned batch (the trainer's adversarial training, inference-mode attack),
       with the learning rate decayed every `lr_decay_every` steps;
  and finally every image's noise is recomputed with the final surrogate.

  Args:
    key: a jax.random key (the surrogate's initialization, batches and augmentation; the noise's
      starts, transforms and adversary starts).
    images: uint8 [N, H, W, C], the clean training images.
    labels: int [N] in [0, config.num_classes).
    config: `REMConfig` (default: Fu et al.'s CIFAR-10 setting, ε 8/255, ρ_a 4/255).
    train_config: the surrogate's `classifier.TrainConfig` (default: `rem_surrogate_config`
      for the images' shape and config.num_classes); its adversarial-training fields are
      replaced by config's adversary and its lr is the rate before decay. Needs schedule
      "constant", no lookahead, no friendly noise.

  Returns:
    `REMResult` (poisons uint8 [N, H, W, C] within ⌊255ε⌋ grey levels, the final surrogate).
  """
  config = _check_config(config, REMConfig)
  key = _as_key(key)
  images, labels = _check_data(images, labels, config.num_classes)
  constraints.check_quantizable("linf", config.epsilon, images.shape[1:])
  if train_config is None:
    train_config = rem_surrogate_config(image_shape=tuple(images.shape[1:]),
                                        num_classes=config.num_classes)
  _check_surrogate_config(train_config, images, config.num_classes, "rem_poison",
                          float_images=False)
  train_config = train_config.replace(
      adversarial_epsilon=config.adversarial_epsilon,
      adversarial_steps=config.adversarial_steps,
      adversarial_step_size=config.adversarial_step_size,
      adversarial_random_start=config.adversarial_random_start)

  x, y = jnp.asarray(images), jnp.asarray(labels)
  surrogate = _SurrogateRun(train_config, config.train_steps, jax.random.fold_in(key, 0), x, y)
  batch_size, steps_per_epoch = train_config.batch_size, surrogate.steps_per_epoch
  # The trainer's shuffles, drawn once for the whole run: step t reads the batch at
  # perms[t // steps_per_epoch, (t % steps_per_epoch)·B :][:B].
  perms = np.asarray(surrogate.carry.perms[0])
  noise_key, final_key = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
  poisoned = jnp.array(x)  # A copy: it is donated and updated batch by batch.
  for step in range(config.train_steps):
    position = (step % steps_per_epoch) * batch_size
    index = perms[step // steps_per_epoch, position:position + batch_size]
    params, rest = surrogate.weights()
    batch = _rem_batch(surrogate.graphdef, params, rest, x[index], y[index], index,
                       jax.random.fold_in(noise_key, step), config)
    poisoned = _scatter(poisoned, index, batch)
    lr = train_config.lr * config.lr_decay_rate ** (step // config.lr_decay_every)
    surrogate.train(step, 1, poisoned, y, lr=lr)
  # regenerate_def_noise: every image's noise with the final surrogate, in batches of the
  # training batch size (the last one padded by repeating its first image, then dropped).
  params, rest = surrogate.weights()
  parts = []
  for begin in range(0, images.shape[0], batch_size):
    index = np.arange(begin, begin + batch_size)
    valid = index < images.shape[0]
    index = np.where(valid, index, begin)
    batch = _rem_batch(surrogate.graphdef, params, rest, x[index], y[index], index, final_key,
                       config)
    parts.append(np.asarray(batch)[valid])
  poisons = np.concatenate(parts)
  return REMResult(poisons, surrogate.trained_models(config.train_steps))
