"""Adversarial training (Madry et al. 2018): ℓ∞ PGD examples in place of the training batch.

The trainer does the work (`TrainConfig.adversarial_epsilon` > 0: every SGD step trains on PGD
examples against each model's current weights, see jaxpoison.classifier.train); this module
names the recipe and measures its effect:

    config = adversarial_config(classifier.resnet18_config(), epsilon=8 / 255, steps=7)
    models = classifier.train_models(keys, images, labels, config)
    robust_accuracy(models, x_test, y_test, key, epsilon=8 / 255, steps=10, step_size=2 / 255)

Uses: the adversarially trained surrogate of the label-consistent backdoor (Turner et al.; the
poisoning benchmark's `ResNet18_CIFAR10_adv.pth`, recipe unspecified: Madry PGD, ℓ∞ 8/255,
7-10 steps suggested) and the "AT" baseline defense of Hong et al. Table 5 (PGD-7, ε 4/255,
step size unspecified: ε/4 suggested, adversarial examples only).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpoison._checks import check_images, check_labels
from jaxpoison.classifier.adversarial import pgd_linf
from jaxpoison.classifier.api import _as_unit, _views
from jaxpoison.classifier.config import TrainConfig
from jaxpoison.classifier.train import TrainedModels

__all__ = ["adversarial_config", "pgd_linf", "robust_accuracy"]


def adversarial_config(config: TrainConfig, epsilon: float = 8 / 255, steps: int = 7,
                       step_size: float = 2 / 255, random_start: bool = True) -> TrainConfig:
  """`config` with Madry PGD adversarial training: ℓ∞ radius `epsilon`, `steps` sign-gradient
  steps of `step_size` (all in [0, 1] pixel units) from a random start in the ball."""
  if not isinstance(config, TrainConfig):
    raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
  return config.replace(adversarial_epsilon=float(epsilon), adversarial_steps=int(steps),
                        adversarial_step_size=float(step_size),
                        adversarial_random_start=bool(random_start))


@functools.partial(jax.jit, static_argnames=("epsilon", "steps", "step_size", "random_start",
                                             "batch_size"))
def _robust_correct(models: TrainedModels, x, labels, key, *, epsilon, steps, step_size,
                    random_start, batch_size):
  """Whether each model classifies each PGD example correctly, bool [M, P]."""
  count = x.shape[0]
  batch = max(1, min(batch_size, count))
  padded = -(-count // batch) * batch
  x = jnp.pad(x, ((0, padded - count), (0, 0), (0, 0), (0, 0)))
  labels = jnp.pad(labels, (0, padded - count))
  chunks = x.reshape(padded // batch, batch, *x.shape[1:])
  label_chunks = labels.reshape(padded // batch, batch)
  level = models.config.tta_level
  model_keys = jax.vmap(lambda m: jax.random.fold_in(key, m))(jnp.arange(models.num_models))

  def one_model(state, model_key):
    model = nnx.merge(models.graphdef, state, copy=True)

    def logits_fn(z):  # the deployed classifier: test-time augmentation, running statistics
      return sum(wt * model(v, train=False) for v, wt in _views(z, level))

    def one_chunk(args):
      i, xc, yc = args
      adv = pgd_linf(logits_fn, xc, yc, jax.random.fold_in(model_key, i), epsilon=epsilon,
                     steps=steps, step_size=step_size, random_start=random_start)
      return jnp.argmax(logits_fn(adv), axis=-1) == yc

    index = jnp.arange(chunks.shape[0])
    if chunks.shape[0] == 1:  # no loop around the convolutions (slow on XLA:CPU)
      return one_chunk((index[0], chunks[0], label_chunks[0]))[None]
    return jax.lax.map(one_chunk, (index, chunks, label_chunks))

  out = jax.vmap(one_model)(models.state, model_keys)  # [M, chunks, B]
  return out.reshape(out.shape[0], padded)[:, :count]


def robust_accuracy(models: TrainedModels, images, labels, key, *, epsilon: float, steps: int,
                    step_size: float, random_start: bool = True,
                    batch_size: int = 1000) -> jax.Array:
  """Each model's accuracy under its own white-box ℓ∞ PGD attack, float32 [M].

  Model m is attacked with `pgd_linf` on the function `classifier.logits` evaluates (its
  config's test-time augmentation, batch norm on running statistics), the random starts drawn
  from fold_in(fold_in(key, m), batch index); an example counts when the model still predicts
  its label at the PGD point (not a worst case over restarts).

  Args:
    models: TrainedModels (M models).
    images: [P, H, W, C], uint8 or float in [0, 1].
    labels: int [P].
    key: a PRNG key (may be None when not random_start).
    epsilon, steps, step_size: the attack, in [0, 1] pixel units.
    batch_size: images attacked at once per model.
  """
  if not isinstance(models, TrainedModels):
    raise TypeError(f"models: expected TrainedModels, got {type(models).__name__}")
  check_images(images, name="images", image_shape=models.config.image_shape)
  label_arr = np.asarray(labels)
  check_labels(label_arr, models.config.num_classes, name="labels", length=images.shape[0])
  if not (0 <= epsilon <= 1 and steps >= 0 and step_size >= 0):
    raise ValueError(
        f"robust_accuracy: expected epsilon in [0, 1], steps >= 0 and step_size >= 0, got "
        f"{epsilon}, {steps}, {step_size}")
  if key is None:
    if random_start and epsilon > 0:
      raise ValueError("key: random_start needs a PRNG key")
    key = jax.random.key(0)
  correct = _robust_correct(models, _as_unit(images), jnp.asarray(label_arr, jnp.int32), key,
                            epsilon=float(epsilon), steps=int(steps),
                            step_size=float(step_size), random_start=bool(random_start),
                            batch_size=int(batch_size))
  return jnp.mean(correct, axis=1, dtype=jnp.float32)
