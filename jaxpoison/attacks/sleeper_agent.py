"""Sleeper Agent (Souri et al. 2022): a hidden-trigger backdoor for training from scratch, by
gradient matching with poison selection and surrogate retraining.

The attacker wants any source-class image carrying a trigger patch to be classified as the
target class, while the poisons (target-class training images, clean labels) carry no trigger.
Following hsouri/Sleeper-Agent (`forest/witchcoven/witch_base.py`, `witch_matching.py`,
`forest/data/kettle_base.py`):

1. the trigger (`trigger_10.png` resized to 8×8) is pasted at a uniformly random position into
   every source-class training image (`patch_images`);
2. of the target-class training images, the `num_poisons` with the largest parameter-gradient
   norm ‖∇_θ CE(f(x), y)‖ under the clean surrogates (averaged over an ensemble) become the
   poisons (`select_poisons`);
3. the source gradient is the mean over the patched source images of ∇_θ CE(f(x̃), target);
4. the poisons are optimized exactly as Witches' Brew's (`witches_brew.matching_steps`) toward
   that gradient, and after every `retrain_every` steps the surrogates are retrained from
   scratch on the currently poisoned data (`retrain_fn`, supplied by the caller, e.g. the
   benchmark's many-model trainer) and the source gradient recomputed; the optimizer's moments
   and learning-rate schedule carry on.

Success is measured at test time on patched source-class test images (`patch_images` with a
fresh key): the fraction classified as the target class (the reference's `check_sources`), and
the single-target form of Hong et al.'s benchmark (one patched source test image).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_images
from jaxpoison.attacks import core, triggers
from jaxpoison.attacks.configs import AttackResult, SleeperAgentConfig
# By name: the package exports the function `witches_brew`, which shadows the module there.
from jaxpoison.attacks.witches_brew import (
    _check_crafting_inputs,
    _finish,
    _groups,
    _over_members,
    as_gradient_models,
    initial_state,
    map_poison_batches,
    matching_steps,
    parameter_gradient,
    quantized_poisons,
    target_gradients,
)
from jaxpoison.keys import as_key


def patch_images(key: jax.Array, images, config: SleeperAgentConfig | None = None):
  """uint8 images [N, H, W, C] with the config's trigger pasted at a uniformly random position
  per image; returns (patched images, positions int32 [N, 2] (row, col))."""
  config = SleeperAgentConfig() if config is None else config
  check_images(images, name="images", dtypes=("uint8",))
  trigger = triggers.get_trigger(config.trigger, config.patch_size)
  positions = triggers.random_trigger_positions(key, images.shape[0], config.patch_size,
                                                images.shape[1:])
  return triggers.paste_trigger_per_image(images, trigger, positions), positions


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _gradient_norms(surrogates, images, labels, batch_size: int):
  def per_image_norm(member, x, y):
    grad = parameter_gradient(member.apply_fn, member.params, x[None], y[None])
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grad)))

  def norms(batch):
    _, x, y, _ = batch
    per_member = _over_members(
        _groups(surrogates),
        lambda m: jax.vmap(lambda xi, yi: per_image_norm(m, xi, yi))(x, y))
    return sum(per_member) / len(per_member)

  out = map_poison_batches(norms, core.to_unit_float(images), labels, batch_size)
  return out.reshape(-1)[:images.shape[0]]


def gradient_norms(surrogates, images, labels, *, batch_size: int = 64) -> jax.Array:
  """‖∇_θ CE(f(x), y)‖₂ per uint8 image [N, H, W, C] (no augmentation, inference mode), averaged
  over the surrogates; float [N]. Per-example gradients are formed `batch_size` at a time."""
  surrogates = as_gradient_models(surrogates)
  check_images(images, name="images", dtypes=("uint8",))
  labels = jnp.asarray(labels, jnp.int32).reshape(-1)
  if labels.shape[0] != images.shape[0]:
    raise ValueError(f"labels: expected {images.shape[0]} (one per image), got {labels.shape[0]}")
  return _gradient_norms(surrogates, images, labels, min(int(batch_size), images.shape[0]))


def select_poisons(surrogates, candidate_images, candidate_labels, num_poisons: int, *,
                   batch_size: int = 64) -> np.ndarray:
  """Indices into the candidates of the `num_poisons` with the largest gradient norm
  (`gradient_norms`), in ascending order of that norm as the reference keeps them."""
  norms = np.asarray(gradient_norms(surrogates, candidate_images, candidate_labels,
                                    batch_size=batch_size))
  if not 1 <= num_poisons <= norms.shape[0]:
    raise ValueError(f"num_poisons: expected 1..{norms.shape[0]} (the candidates), got "
                     f"{num_poisons}")
  return np.argsort(norms, kind="stable")[-num_poisons:]


class SleeperAgentResult(NamedTuple):
  """What `sleeper_agent` returns.

  Attributes:
    result: AttackResult (poisons uint8 within the bound; initial_loss / final_loss: the
      unaugmented matching loss at the bases and the quantized poisons against the final
      surrogates' source gradient; loss_history [num_steps], each step's loss against the
      source gradient of the surrogates in use at that step).
    source_positions: int32 [S, 2], where the trigger was pasted into each source image.
    retrained_at: the steps after which the surrogates were retrained.
  """
  result: AttackResult
  source_positions: jax.Array
  retrained_at: tuple[int, ...]


RetrainFn = Callable[[jax.Array, jax.Array], object]


def sleeper_agent(key: jax.Array, surrogates, source_images, target_class: int, base_images,
                  config: SleeperAgentConfig | None = None,
                  retrain_fn: RetrainFn | None = None, *,
                  loop: str = "auto") -> SleeperAgentResult:
  """Crafts Sleeper Agent poisons.

  Args:
    key: PRNG key: fold_in(key, 0) places the triggers on the sources, fold_in(key, 1 + r)
      drives restart r (its start and augmentation), and retraining i gets
      fold_in(key, 1000 + i).
    surrogates: GradientModel(s) trained on clean data (e.g. `classifier.gradient_model`).
    source_images: uint8 [S, H, W, C], source-class training images (unpatched; the reference
      uses all 5,000 of the class).
    target_class: the class patched sources should be classified as; the poisons' true class.
    base_images: uint8 [P, H, W, C], the selected target-class images (`select_poisons`).
    config: SleeperAgentConfig (default: the reference's).
    retrain_fn: `retrain_fn(key, poisons) -> surrogates`, poisons uint8 [P, H, W, C] in the
      bases' order: trains new surrogates from scratch on the training set with the bases
      replaced by these poisons. Required when config.retrain_steps is non-empty.
    loop: how the steps run ("auto", "scan", "host"; `witches_brew.resolve_loop`).

  Returns:
    SleeperAgentResult.
  """
  config = SleeperAgentConfig() if config is None else config
  key = as_key(key)
  surrogates, image_shape, labels = _check_crafting_inputs(
      surrogates, base_images, target_class, config, SleeperAgentConfig)
  check_images(source_images, name="source_images", image_shape=image_shape, dtypes=("uint8",))
  if config.retrain_steps and retrain_fn is None:
    raise ValueError(
        f"retrain_fn: config.retrain_every = {config.retrain_every} retrains the surrogates after "
        f"steps {config.retrain_steps}, so a retrain_fn(key, poisons) -> surrogates is needed "
        "(or retrain_every=0)")
  patched, positions = patch_images(jax.random.fold_in(key, 0), source_images, config)
  source_labels = jnp.full((patched.shape[0],), int(target_class), jnp.int32)

  def source_gradients(models):
    return target_gradients(models, core.to_unit_float(patched), source_labels,
                               batch_size=min(config.source_batch_size, patched.shape[0]))

  # Span ends: the reference retrains after the update of step s (s % retrain_every == 0).
  ends = [s + 1 for s in config.retrain_steps] + [config.num_steps]
  best = None
  for restart in range(config.restarts):
    restart_key = jax.random.fold_in(key, 1 + restart)
    models = surrogates
    grads = source_gradients(models)
    state = initial_state(jax.random.fold_in(restart_key, 0), core.to_unit_float(base_images),
                             config)
    histories, start = [], 0
    for span, end in enumerate(ends):
      state, history = matching_steps(state, jax.random.fold_in(restart_key, 1), models, grads,
                                      base_images, labels, end - start, config, loop=loop)
      histories.append(history)
      start = end
      if end < config.num_steps:
        poisons, _ = quantized_poisons(state.delta, base_images, config)
        models = as_gradient_models(
            retrain_fn(jax.random.fold_in(key, 1000 + restart * len(ends) + span), poisons))
        grads = source_gradients(models)
    history = jnp.concatenate(histories)
    if best is None or float(history[-1]) < float(best[1][-1]):
      best = (state.delta, history, models, grads)
  delta, history, models, grads = best
  result = _finish(delta, history, models, grads, base_images, labels, config)
  return SleeperAgentResult(result, positions, config.retrain_steps)

