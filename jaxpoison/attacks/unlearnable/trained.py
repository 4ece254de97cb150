"""What the trained unlearnable poisons (EM, TAP, REM, SEP) share: their config base, checks,
sign-gradient PGD over perturbations, batched maps, and a surrogate classifier trained span by
span between noise updates (`SurrogateRun`). Public so that each poison's module, and any new
one, uses the same pieces."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxpoison._checks import check_images, check_labels
from jaxpoison._checks import check_positive as _positive
from jaxpoison.attacks.unlearnable.base import PoisonConfig, indexed_keys
from jaxpoison.classifier import adversarial
from jaxpoison.classifier.augment import random_shift_flip_per_image
from jaxpoison.classifier.config import TrainConfig, resolve_loop
from jaxpoison.classifier.api import features
from jaxpoison.classifier.train import TrainedModels, make_train_parts, model_graphdef

def fraction(name: str, value) -> float:
  value = _positive(name, value)
  if value > 1:
    raise ValueError(f"{name}: expected a fraction in (0, 1], got {value!r}")
  return value


def check_target_offset(offset, num_classes: int) -> int:
  """A class offset (y ↦ y + offset mod K) that moves every class."""
  offset = _positive("target_offset", offset, integer=True)
  if offset % num_classes == 0:
    raise ValueError(f"target_offset: {offset} maps every class to itself with {num_classes} "
                     f"classes; expected an offset not divisible by it")
  return offset


@dataclasses.dataclass(frozen=True)
class TrainedPoisonConfig(PoisonConfig):
  """The poisons' shared config base (`unlearnable.base.PoisonConfig`), with at least two
  classes: these train a classifier."""

  def __post_init__(self):
    super().__post_init__()
    if self.num_classes < 2:
      raise ValueError(f"num_classes: expected >= 2 classes, got {self.num_classes}")


# --- shared pieces ------------------------------------------------------------------------------

# The package's one sign-gradient PGD (on the classifier's floor), under the name EM, TAP and
# REM import it by (and `attacks.unlearnable.sign_pgd`).
sign_pgd = adversarial.sign_pgd


def cross_entropy(logits, labels):
  """Per-image cross-entropy [B] (float32)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def nnx_logits(graphdef, params, rest) -> Callable[[jax.Array], jax.Array]:
  """The network of one model's split state, in inference mode (batch norm on its running
  statistics), as float images [B, H, W, C] in [0, 1] → logits [B, K]."""
  return lambda z: nnx.merge(graphdef, params, rest, copy=True)(z)


def map_batches(fn, arrays, batch_size: int):
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


def check_data(images, labels, num_classes: int):
  check_images(images, name="images", dtypes=("uint8",))
  if images.shape[0] < 1:
    raise ValueError("images: expected at least one training image, got an empty batch")
  check_labels(labels, num_classes, length=images.shape[0])
  return np.asarray(images), np.asarray(labels).astype(np.int32)


def check_config(config, config_type):
  config = config_type() if config is None else config
  if not isinstance(config, config_type):
    raise TypeError(f"config: expected a {config_type.__name__}, got {type(config).__name__}")
  return config


def check_surrogate_config(train_config, images, num_classes: int, poison: str,
                            *, float_images: bool) -> None:
  """The trainer recipe EM or REM continues between noise updates: the right data, and no
  feature that assumes a run of known length or uint8 batches."""
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


class SurrogateRun:
  """One surrogate trained a few steps at a time between noise updates: the classifier's
  `TrainParts` with their carry (weights, momentum, every epoch's shuffle) kept across spans,
  so that the spans make one continuous run of `num_steps` steps, as the references keep one
  model, optimizer and data iterator across rounds. Its batches are drawn by the trainer
  (shuffled per epoch); the training images may change between spans."""

  def __init__(self, train_config, num_steps: int, key, images, labels):
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


def class_mean_features(checkpoints: TrainedModels, images, labels, num_classes: int, *,
                        batch_size: int = 1000) -> jax.Array:
  """Each checkpoint's mean penultimate feature of each class over (images, labels), in
  inference mode, float32 [M, K, D] (SEP's `get_mean_feature`;
  EFP's class centroids, `get_centroid.py`)."""
  labels = jnp.asarray(labels)
  counts = jnp.bincount(labels, length=num_classes)
  if int(jnp.min(counts)) == 0:
    raise ValueError(f"labels: every class needs at least one image for its mean feature; "
                     f"classes {np.flatnonzero(np.asarray(counts) == 0).tolist()} have none")
  f = features(checkpoints, images, batch_size=batch_size)  # [M, N, D]
  sums = jax.vmap(lambda fm: jax.ops.segment_sum(fm, labels, num_segments=num_classes))(f)
  return sums / counts[None, :, None].astype(jnp.float32)


def forge_deltas(image_losses, images, labels, key, *, epsilon: float, steps: int,
                 step_size: float, augment: bool, fill, max_shift: float, batch_size: int):
  """One restart of the forge (`_Forgemaster._run_trial`, TAP and EFP) for every image: δ starts
  at N(0, 1)·ε clipped to ±ε (`initialize_poison("randn")`, image i from fold_in(fold_in(key,
  i), 0)) and descends `image_losses(z, labels) -> [B]` by `steps` signed steps of `step_size`
  (`sign_pgd`), through a random bilinear shift and flip per image and step when `augment`
  (drawn from fold_in(fold_in(key, i), t + 1); `fill` per channel outside). Traceable; returns
  (δ float32 [N, H, W, C], the mean over images of the last step's loss)."""
  fill = jnp.asarray(fill, jnp.float32)

  def batch(x_uint8, y, index):
    x = x_uint8.astype(jnp.float32) / 255.0
    keys = indexed_keys(key, index)
    start = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), x.shape[1:]))(keys)
    start = jnp.clip(start * epsilon, -epsilon, epsilon)

    def loss(z, t):
      if augment:
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t + 1))(keys)
        z = random_shift_flip_per_image(z, step_keys, fill, max_shift)
      return image_losses(z, y)

    return sign_pgd(loss, x, start, epsilon=epsilon, steps=steps, step_size=step_size,
                    minimize=True)

  index = jnp.arange(images.shape[0])
  deltas, last_losses = map_batches(batch, (images, labels, index), batch_size)
  return deltas, jnp.mean(last_losses)


def best_restart(run_restart, key, restarts: int):
  """The forge's restarts (`_Forgemaster._forge`): `run_restart(fold_in(key, r))` → (δ, its mean
  loss at the last step) for r < restarts; returns (the δ with the lowest loss, every restart's
  loss as float32 [restarts], the index kept; the first on ties)."""
  best, best_index, losses = None, 0, []
  for restart in range(restarts):
    delta, loss = run_restart(jax.random.fold_in(key, restart))
    losses.append(float(loss))
    if best is None or losses[-1] < losses[best_index]:
      best, best_index = delta, restart
  return best, np.asarray(losses, np.float32), best_index


def target_classes(labels, num_classes: int, offset: int = 1):
  """TAP's class permutation: (y + offset) mod K (`_label_map`: offset 1)."""
  return (jnp.asarray(labels) + offset) % num_classes


@jax.jit
def perturbed(images, delta):
  return images.astype(jnp.float32) / 255.0 + delta
