"""REM, robust error-minimizing noise (Fu et al. 2022, "Robust Unlearnable Examples"): EM's
min-min made to survive adversarial training: δ (ℓ∞ 8/255) minimizes the loss after an
adversary's ascent ρ (ℓ∞ 4/255), in expectation over the training augmentation, while the
surrogate is itself trained adversarially on the perturbed data (`rem_poison`). The family, its
units, randomness and references: `jaxpoison.attacks.unlearnable`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_perturbation_bound
from jaxpoison._checks import check_positive as _positive
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks import constraints
from jaxpoison.attacks.unlearnable.base import indexed_keys
from jaxpoison.attacks.unlearnable.trained import (SurrogateRun, TrainedPoisonConfig, check_config,
                                                  check_data, check_surrogate_config, cross_entropy,
                                                  fraction, nnx_logits, sign_pgd)
from jaxpoison.classifier.adversarial import signed_step
from jaxpoison.classifier.config import TrainConfig, resnet18_config
from jaxpoison.classifier.augment import flip_crop_per_image
from jaxpoison.keys import as_key

REM_EPSILON = 8 / 255
REM_ADVERSARIAL_EPSILON = 4 / 255


@dataclasses.dataclass(frozen=True)
class REMConfig(TrainedPoisonConfig):
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
    _store(self, "lr_decay_rate", fraction("lr_decay_rate", self.lr_decay_rate))
    _store(self, "lr_decay_every", _positive("lr_decay_every", self.lr_decay_every,
                                             integer=True))
    _store(self, "augment", bool(self.augment))
    _store(self, "translate", _positive("translate", self.translate, integer=True,
                                        allow_zero=True))


def rem_surrogate_config(**changes) -> "TrainConfig":
  """REM's surrogate recipe: ResNet-18, SGD lr 0.1 (decayed by `REMConfig`), momentum 0.9,
  weight decay 5e-4, batches of 128, random flip and 4-pixel zero-padded crop (gen_rem.sh,
  `get_transforms(train=True)`). Its adversarial-training fields are set from the REMConfig
  when REM trains it. `changes` override any field."""
  defaults = dict(batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                  schedule="constant", flip="random", translate=4, pad_mode="zeros")
  return resnet18_config(**{**defaults, **changes})


class REMResult(NamedTuple):
  """REM's poisons (uint8 [N, H, W, C]) and the adversarially trained surrogate they were
  regenerated with at the end (TrainedModels with one model)."""
  poisons: np.ndarray
  surrogate: Any


# --- REM: robust error-minimizing noise ---------------------------------------------------------

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
      return flip_crop_per_image(z, augment_keys, config.translate) if config.augment else z

    defended, pullback = jax.vjp(transformed, d)
    if rho > 0:
      adversary_start = jnp.zeros(x.shape, jnp.float32)
      if config.adversarial_random_start:
        adversary_start = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], jnp.float32,
                                                                -rho, rho))(adversary_keys)
      rho_delta, _ = sign_pgd(lambda z, _: cross_entropy(logits_fn(z), y), defended,
                              adversary_start, epsilon=rho, steps=config.adversarial_steps,
                              step_size=config.adversarial_step_size, minimize=False)
      adversarial = jax.lax.stop_gradient(defended + rho_delta)
    else:
      adversarial = defended
    grad_at_adversarial = jax.grad(
        lambda z: jnp.sum(cross_entropy(logits_fn(z), y)))(adversarial)
    return pullback(grad_at_adversarial)[0]

  def step(s, d):
    def accumulate(i, g):
      return g + sample_gradient(d, 1 + s * config.samples + i)
    g = jax.lax.fori_loop(0, config.samples, accumulate, jnp.zeros_like(d))
    return signed_step(d, g, -config.step_size, -config.epsilon, config.epsilon)

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
  delta = _rem_perturbations(nnx_logits(graphdef, params, rest),
                             images.astype(jnp.float32) / 255.0, labels,
                             indexed_keys(key, index), config)
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
  config = check_config(config, REMConfig)
  key = as_key(key)
  images, labels = check_data(images, labels, config.num_classes)
  constraints.check_quantizable("linf", config.epsilon, images.shape[1:])
  if train_config is None:
    train_config = rem_surrogate_config(image_shape=tuple(images.shape[1:]),
                                        num_classes=config.num_classes)
  check_surrogate_config(train_config, images, config.num_classes, "rem_poison",
                          float_images=False)
  train_config = train_config.replace(
      adversarial_epsilon=config.adversarial_epsilon,
      adversarial_steps=config.adversarial_steps,
      adversarial_step_size=config.adversarial_step_size,
      adversarial_random_start=config.adversarial_random_start)

  x, y = jnp.asarray(images), jnp.asarray(labels)
  surrogate = SurrogateRun(train_config, config.train_steps, jax.random.fold_in(key, 0), x, y)
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
