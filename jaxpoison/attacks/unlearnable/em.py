"""EM, error-minimizing noise (Huang et al. 2021, "Unlearnable Examples"; sample-wise): a
bi-level min-min. Rounds alternate a few SGD steps of a surrogate on the currently perturbed
data with sign-gradient descent of every image's cross-entropy (its true label) over δ, until
the surrogate classifies the perturbed training set almost perfectly (`em_poison`). The family,
its units, randomness and references: `jaxpoison.attacks.unlearnable`."""

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
                                                  fraction, map_batches, nnx_logits, perturbed,
                                                  sign_pgd)
from jaxpoison.classifier.config import TrainConfig, resnet18_config
from jaxpoison.keys import as_key

EM_EPSILON = 8 / 255


@dataclasses.dataclass(frozen=True)
class EMConfig(TrainedPoisonConfig):
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
    _store(self, "stop_accuracy", fraction("stop_accuracy", self.stop_accuracy))
    _store(self, "max_rounds", _positive("max_rounds", self.max_rounds, integer=True))
    _store(self, "random_start", bool(self.random_start))
    _store(self, "batch_size", _positive("batch_size", self.batch_size, integer=True))


def em_surrogate_config(**changes) -> "TrainConfig":
  """EM's surrogate recipe: ResNet-18, SGD lr 0.1 (constant), momentum 0.9, weight decay 5e-4
  (configs/cifar10/resnet18.yaml; its cosine scheduler is never stepped during the search),
  batches of 512 (perturbation.py `--train_batch_size`), no augmentation
  (`no_train_augments=True`). `changes` override any field (e.g. image_shape, num_classes)."""
  defaults = dict(batch_size=512, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                  schedule="constant", flip="none", translate=0)
  return resnet18_config(**{**defaults, **changes})


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


# --- EM: error-minimizing noise -----------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _em_round(graphdef, params, rest, images, labels, delta, config: EMConfig):
  """One noise update of every image (sign descent of its true label's cross-entropy from the
  current δ) and the surrogate's correct predictions on the updated images."""
  logits_fn = nnx_logits(graphdef, params, rest)

  def batch(x_uint8, y, d):
    x = x_uint8.astype(jnp.float32) / 255.0
    loss = lambda z, _: cross_entropy(logits_fn(z), y)
    d, _ = sign_pgd(loss, x, d, epsilon=config.epsilon, steps=config.steps,
                    step_size=config.step_size, minimize=True)
    correct = jnp.argmax(logits_fn(x + d), axis=-1) == y
    return d, correct

  return map_batches(batch, (images, labels, delta), config.batch_size)


@functools.partial(jax.jit, static_argnames=("epsilon", "random_start"))
def _em_start(key, images, epsilon: float, random_start: bool):
  if not random_start:
    return jnp.zeros(images.shape, jnp.float32)
  keys = indexed_keys(key, jnp.arange(images.shape[0]))
  noise = jax.vmap(lambda k: jax.random.uniform(k, images.shape[1:], jnp.float32, -epsilon,
                                                epsilon))(keys)
  x = images.astype(jnp.float32) / 255.0
  return jnp.clip(noise, -x, 1.0 - x)


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
  config = check_config(config, EMConfig)
  key = as_key(key)
  images, labels = check_data(images, labels, config.num_classes)
  epsilon = constraints.check_quantizable("linf", config.epsilon, images.shape[1:])
  if train_config is None:
    train_config = em_surrogate_config(image_shape=tuple(images.shape[1:]),
                                       num_classes=config.num_classes)
  check_surrogate_config(train_config, images, config.num_classes, "em_poison",
                          float_images=True)

  x, y = jnp.asarray(images), jnp.asarray(labels)
  surrogate = SurrogateRun(train_config, config.max_rounds * config.train_steps,
                            jax.random.fold_in(key, 0), x, y)
  delta = _em_start(jax.random.fold_in(key, 1), x, epsilon, config.random_start)
  history = []
  for round_index in range(config.max_rounds):
    surrogate.train(round_index * config.train_steps, config.train_steps, perturbed(x, delta),
                    y)
    params, rest = surrogate.weights()
    delta, correct = _em_round(surrogate.graphdef, params, rest, x, y, delta, config)
    history.append(float(jnp.mean(correct)))
    if history[-1] >= config.stop_accuracy:
      break
  poisons = constraints.quantize_poisons(perturbed(x, delta), x, "linf", epsilon)
  return EMResult(np.asarray(poisons),
                  surrogate.trained_models(len(history) * config.train_steps),
                  np.asarray(history, np.float32), history[-1] >= config.stop_accuracy)
