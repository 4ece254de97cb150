"""Witches' Brew (Geiping et al. 2021): clean-label poisons crafted by gradient matching.

The poisons' training gradient is made to point where the target's adversarial gradient points:
with g_t = ∇_θ CE(f_θ(x_t), y_adv) (the target relabelled to the poison class) and
g_p = ∇_θ CE(f_θ(aug(x_p + δ)), y_p) (the poisons with their true labels), the attack minimizes

    1 − ⟨g_t, g_p⟩ / (‖g_t‖·‖g_p‖)        (norms and inner product over all parameters at once)

over δ within the ε-ball, differentiating through g_p (a second-order derivative), with the
network in inference mode (batch norm on its running statistics) and the poisons under
differentiable random shifts and flips. The objective's pieces take any
`apply_fn(params, images) -> logits` (images float in [0, 1]).

Crafting (`witches_brew`) optimizes all poisons of a trial at once against an ensemble of
surrogates (`GradientModel`s: the loss is averaged over members, each with its own target
gradient), with the reference's sign-Adam: Adam on sign(∇δ), lr τ·(pbatch/512)/ensemble in the
normalized input space, ×0.1 at 3/8, 5/8 and 7/8 of the run, each step followed by the exact
projection onto the ε-ball ∩ [0, 1]. A restart is one jitted program (a `lax.scan` over its
steps); of `restarts` random starts the one with the lowest last-step loss is kept, and its
poisons are quantized to uint8 keeping the bound exactly. `matching_steps` is the same loop
over a span of steps, which Sleeper Agent runs between its surrogate retrainings.

Reference: JonasGeiping/poisoning-gradient-matching, forest/witchcoven/witch_matching.py
(`_passenger_loss`) and forest/data/diff_data_augmentation.py (`RandomTransform`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpoison._checks import check_images
from jaxpoison.backend import LOOPS, resolve_loop  # noqa: F401  (re-exported)
from jaxpoison.attacks import constraints, core
from jaxpoison.surrogates import GradientModel, as_gradient_models  # noqa: F401  (re-exported)
from jaxpoison.attacks.configs import AttackResult, GradientMatchingConfig, WitchesBrewConfig
from jaxpoison.classifier.augment import (MAX_SHIFT_PIXELS, apply_shift_flip,  # noqa: F401
                                          random_shift_flip)
from jaxpoison.keys import as_key

def parameter_gradient(apply_fn: Callable, params, images, labels, weights=None):
  """∇_θ of the mean cross-entropy of `apply_fn(params, images)` against integer labels
  (weighted mean Σ wᵢ CEᵢ / Σ wᵢ when `weights` [B] is given, e.g. 0 for padding)."""
  def loss(p):
    logits = apply_fn(p, images)
    per_image = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if weights is None:
      return per_image.mean()
    return jnp.sum(weights * per_image) / jnp.maximum(jnp.sum(weights), 1e-12)
  return jax.grad(loss)(params)


def _batched(x, batch_size):
  """[P, ...] → [num_batches, batch_size, ...] zero-padded, and weights (0 marks padding)."""
  num = x.shape[0]
  num_batches = -(-num // batch_size)
  pad = num_batches * batch_size - num
  padded = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
  weights = jnp.concatenate([jnp.ones((num,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
  return (padded.reshape(num_batches, batch_size, *x.shape[1:]),
          weights.reshape(num_batches, batch_size))


def mean_parameter_gradient(apply_fn: Callable, params, images, labels, batch_size: int):
  """The mean-cross-entropy parameter gradient over many images, `batch_size` at a time (equal
  to `parameter_gradient` on all of them at once, in bounded memory)."""
  num = images.shape[0]
  x_batches, weights = _batched(images, min(batch_size, num))
  y_batches, _ = _batched(labels, min(batch_size, num))

  def summed(total, batch):
    x, y, w = batch
    grad = parameter_gradient(apply_fn, params, x, y, w)
    return jax.tree.map(lambda t, g: t + g * jnp.sum(w), total, grad), None

  zero = jax.tree.map(jnp.zeros_like, params)
  total, _ = jax.lax.scan(summed, zero, (x_batches, y_batches, weights))
  return jax.tree.map(lambda t: t / num, total)


def _dot(a, b):
  return sum(jnp.vdot(x, y).real for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def gradient_matching_loss(target_grad, poison_grad):
  """1 − cosine similarity of two parameter-gradient pytrees (one global inner product and
  norm over all leaves), in [0, 2]."""
  target_norm = jnp.sqrt(_dot(target_grad, target_grad))
  poison_norm = jnp.sqrt(_dot(poison_grad, poison_grad))
  return 1.0 - _dot(target_grad, poison_grad) / (target_norm * poison_norm)


def matching_objective(apply_fn: Callable, params, target_grad, poisons, labels, key=None, *,
                       fill=None, max_shift: float = MAX_SHIFT_PIXELS, weights=None):
  """The matching loss of poisons (float [B, H, W, C] in [0, 1], the bases plus δ) for one
  network; differentiable in `poisons` (second order through the parameter gradient).

  key: draws the differentiable shift-and-flip augmentation (None: no augmentation); fill: the
  value outside shifted images (the reference's zero in normalized space: the data mean).
  """
  if key is not None:
    if fill is None:
      raise ValueError("matching_objective: augmentation needs `fill` (the data mean per channel)")
    poisons = random_shift_flip(poisons, key, fill, max_shift=max_shift)
  return gradient_matching_loss(
      target_grad, parameter_gradient(apply_fn, params, poisons, labels, weights))



# ----------------------------------------------------------------------------- surrogates


class _Member(NamedTuple):
  apply_fn: Callable  # (params, images) -> logits, the state bound
  params: Any


def _groups(models: Sequence[GradientModel]) -> list[core.Group]:
  # core.group_ensemble stacks members by (apply_fn, parameter shapes); the state travels with
  # the parameters as a pair and is split off again where the gradient is taken.
  wrapped = [core.FeatureExtractor(m.apply_fn, (m.params, m.state)) for m in models]
  return core.group_ensemble(wrapped)


def _over_members(groups, fn, per_member=None):
  """[fn(member) for every member] (or fn(member, per_member[i]) with a list of per-member
  pytrees, e.g. target gradients), vmapped within groups; results in ensemble order."""
  out = {}
  for group in groups:
    def call(pair, extra=None, g=group):
      params, state = pair
      bound = lambda p, x, s=state, f=g.apply_fn: f(p, s, x)
      member = _Member(bound, params)
      return fn(member) if per_member is None else fn(member, extra)
    extras = None
    if per_member is not None:
      extras = [per_member[i] for i in group.members]
      extras = extras[0] if group.size == 1 else jax.tree.map(lambda *a: jnp.stack(a), *extras)
    if group.size == 1:
      results = [call(group.params, extras)]
    else:
      stacked = jax.vmap(call)(group.params, extras)
      results = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(group.size)]
    out.update(zip(group.members, results))
  return [out[i] for i in range(len(out))]


@functools.partial(jax.jit, static_argnames=("batch_size",))
def target_gradients(surrogates, images, labels, batch_size: int = 2500):
  """Each surrogate's mean-cross-entropy parameter gradient on float images [N, H, W, C] in
  [0, 1] with integer labels [N]: the target's (one image relabelled to the poison class) for
  Witches' Brew, the patched sources' for Sleeper Agent. A list in surrogate order."""
  return _over_members(_groups(surrogates), lambda m: mean_parameter_gradient(
      m.apply_fn, m.params, images, labels, batch_size))


# ----------------------------------------------------------------------------- crafting


class MatchingState(NamedTuple):
  """The optimizer's carry between spans of steps: perturbations (float [P, H, W, C], [0, 1]
  pixel units), Adam's moments, and the global step (it sets the learning-rate schedule)."""
  delta: jax.Array
  adam: Any
  step: jax.Array


def _learning_rate(config: GradientMatchingConfig, step, num_members: int):
  base = config.step_size * (config.poison_batch_size / 512) / num_members
  drops = sum((step >= s).astype(jnp.int32) for s in config.lr_drop_steps)
  return base * config.lr_drop_factor ** drops


def _project_delta(delta, bases, config: GradientMatchingConfig):
  return constraints.project(bases + delta, bases, config.norm, config.epsilon) - bases


def initial_state(key, bases, config: GradientMatchingConfig) -> MatchingState:
  """The reference's random start: δ ~ N(0, ε²) per pixel (ℓ∞; ℓ2: N(0, ε²/n) for n values
  per image), projected onto the ball ∩ [0, 1]; fresh Adam moments at step 0."""
  bases = jnp.asarray(bases)
  if not jnp.issubdtype(bases.dtype, jnp.floating):
    raise TypeError(f"bases: expected float images in [0, 1], got {bases.dtype}")
  scale = config.epsilon
  if config.norm == "l2":
    scale = config.epsilon / np.sqrt(np.prod(bases.shape[1:]))
  delta = _project_delta(scale * jax.random.normal(key, bases.shape, bases.dtype), bases, config)
  return MatchingState(delta, optax.scale_by_adam().init(delta), jnp.zeros((), jnp.int32))


def map_poison_batches(batch_fn, poisons, labels, batch_size: int):
  """`batch_fn((index, x, y, weights))` over the poisons in batches of `batch_size` (the last
  zero-padded, weights 0 there), its outputs stacked over batches; a single batch runs without
  a loop around the network (see `resolve_loop`)."""
  x_batches, weights = _batched(poisons, min(batch_size, poisons.shape[0]))
  y_batches, _ = _batched(labels, min(batch_size, poisons.shape[0]))
  if x_batches.shape[0] == 1:
    return jax.tree.map(lambda a: a[None], batch_fn((0, x_batches[0], y_batches[0], weights[0])))
  indices = jnp.arange(x_batches.shape[0])
  return jax.lax.map(batch_fn, (indices, x_batches, y_batches, weights))


def _matching_loss(surrogates, target_grads, poisons, labels, key, config: GradientMatchingConfig):
  """Mean over poison batches of the ensemble-mean matching loss (a scalar), augmented with
  `key` (None: no augmentation)."""
  groups = _groups(surrogates)
  fill = jnp.asarray(config.input_mean, jnp.float32)

  def batch_loss(args):
    index, x, y, w = args
    if key is not None and config.augment:
      x = random_shift_flip(x, jax.random.fold_in(key, index), fill.astype(x.dtype),
                            max_shift=config.max_shift)
    losses = _over_members(groups, lambda m: parameter_gradient(m.apply_fn, m.params, x, y, w))
    return sum(gradient_matching_loss(t, g) for t, g in zip(target_grads, losses)) / len(losses)

  return jnp.mean(map_poison_batches(batch_loss, poisons, labels, config.poison_batch_size))


def _loss_and_input_gradient(member, target_grad, x, y, w):
  """(1 − cos(g_t, g_p(x)), its gradient with respect to the images x) for one network.

  The gradient is the vector–Jacobian product of x ↦ g_p(x) = ∇_θ CE(θ, x) with v = ∂loss/∂g_p,
  i.e. ∇_x ⟨∇_θ CE(θ, x), v⟩, computed as the x-gradient of CE's directional derivative along v
  in parameter space (forward mode in θ, reverse in x): the same number as differentiating the
  loss twice in reverse mode, without transposing each convolution's parameter gradient (which
  XLA:CPU runs several times slower).
  """
  def cross_entropy(params, images):
    per_image = optax.softmax_cross_entropy_with_integer_labels(member.apply_fn(params, images), y)
    return jnp.sum(w * per_image) / jnp.maximum(jnp.sum(w), 1e-12)

  poison_grad = jax.grad(cross_entropy)(member.params, x)
  loss, v = jax.value_and_grad(lambda g: gradient_matching_loss(target_grad, g))(poison_grad)
  directional = lambda images: jax.jvp(lambda p: cross_entropy(p, images), (member.params,),
                                       (v,))[1]
  return loss, jax.grad(directional)(x)


def _matching_value_and_grad(surrogates, target_grads, poisons, labels, key, config):
  """`_matching_loss` (augmented with `key`) and its gradient with respect to the poisons."""
  groups = _groups(surrogates)
  fill = jnp.asarray(config.input_mean, poisons.dtype)

  def batch(args):
    index, x, y, w = args
    augment = lambda images: random_shift_flip(images, jax.random.fold_in(key, index), fill,
                                               max_shift=config.max_shift)
    if config.augment:
      x_aug, augment_vjp = jax.vjp(augment, x)
    else:
      x_aug, augment_vjp = x, lambda g: (g,)
    results = _over_members(
        groups, lambda m, t: _loss_and_input_gradient(m, t, x_aug, y, w), target_grads)
    loss = sum(r[0] for r in results) / len(results)
    grad = sum(r[1] for r in results) / len(results)
    return loss, augment_vjp(grad)[0]

  losses, grads = map_poison_batches(batch, poisons, labels, config.poison_batch_size)
  # The loss is the batches' mean, so each batch's gradient carries 1 / num_batches.
  grads = grads.reshape(-1, *poisons.shape[1:])[:poisons.shape[0]] / losses.shape[0]
  return jnp.mean(losses), grads


def _one_step(state, key, surrogates, target_grads, bases, labels, config):
  std = jnp.asarray(config.input_std, bases.dtype)
  step_key = jax.random.fold_in(key, state.step)
  loss, grad = _matching_value_and_grad(surrogates, target_grads, bases + state.delta, labels,
                                        step_key, config)
  direction, adam_state = optax.scale_by_adam().update(jnp.sign(grad), state.adam)
  lr = _learning_rate(config, state.step, len(surrogates))
  delta = _project_delta(state.delta - lr * std * direction, bases, config)
  return MatchingState(delta, adam_state, state.step + 1), loss


def scan_matching_steps(state, key, surrogates, target_grads, bases, labels, num_steps: int,
                        config: GradientMatchingConfig):
  """The loop of `matching_steps` on float bases in [0, 1] as one `lax.scan` (traceable;
  computes in the bases' dtype)."""
  def step(state, _):
    return _one_step(state, key, surrogates, target_grads, bases, labels, config)
  return jax.lax.scan(step, state, None, length=num_steps)


@functools.partial(jax.jit, static_argnames=("num_steps", "config"), donate_argnames=("state",))
def _matching_steps(state, key, surrogates, target_grads, bases, labels, num_steps: int,
                    config: GradientMatchingConfig):
  return scan_matching_steps(state, key, surrogates, target_grads, core.to_unit_float(bases),
                             labels, num_steps, config)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def _matching_step(state, key, surrogates, target_grads, bases, labels,
                   config: GradientMatchingConfig):
  return _one_step(state, key, surrogates, target_grads, core.to_unit_float(bases), labels,
                   config)


def matching_steps(state: MatchingState, key, surrogates, target_grads, base_images, labels,
                   num_steps: int, config: GradientMatchingConfig, *, loop: str = "auto"):
  """`num_steps` sign-Adam steps from `state`; returns (new state, loss per step [num_steps]).

  The loss recorded at a step is the one whose gradient the step took (before its update), as
  the reference prints it. Step t draws its augmentation from fold_in(key, t) (t global), so
  one run of n steps equals two runs of n/2 with the same key. `state` is donated. `loop`:
  see `resolve_loop` (the losses stay on the device either way).
  """
  labels = jnp.asarray(labels, jnp.int32)
  if resolve_loop(loop) == "scan":
    return _matching_steps(state, key, surrogates, target_grads, base_images, labels,
                           int(num_steps), config)
  losses = []
  for _ in range(int(num_steps)):
    state, loss = _matching_step(state, key, surrogates, target_grads, base_images, labels,
                                 config)
    losses.append(loss)
  return state, jnp.stack(losses)


@functools.partial(jax.jit, static_argnames=("config",))
def matching_loss(surrogates, target_grads, poisons, labels, config: GradientMatchingConfig):
  """The matching loss of float poisons in [0, 1] without augmentation (to compare poisons)."""
  return _matching_loss(surrogates, target_grads, poisons, jnp.asarray(labels, jnp.int32), None,
                        config)


def _check_crafting_inputs(surrogates, base_images, base_labels, config, config_type):
  if not isinstance(config, config_type):
    raise TypeError(f"config: expected a {config_type.__name__}, got {type(config).__name__}")
  surrogates = as_gradient_models(surrogates)
  image_shape = core.check_bases(base_images)
  constraints.check_quantizable(config.norm, config.epsilon, image_shape)
  if len(config.input_mean) != image_shape[-1]:
    raise ValueError(f"config.input_mean: expected {image_shape[-1]} channels (the images'), got "
                     f"{len(config.input_mean)}")
  labels = np.asarray(base_labels)
  if labels.ndim == 0:
    labels = np.full((base_images.shape[0],), int(labels))
  if labels.shape != (base_images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"base_labels: expected one integer label per base ({base_images.shape[0]}) "
                     f"or a single one, got {labels.dtype} of shape {labels.shape}")
  return surrogates, image_shape, jnp.asarray(labels, jnp.int32)


class BrewResult(NamedTuple):
  """`AttackResult` plus the loss each restart ended with."""
  result: AttackResult
  restart_losses: np.ndarray  # float [restarts], last-step loss of each restart
  best_restart: int


def witches_brew(key: jax.Array, surrogates, target_image, target_label: int, base_images,
                 base_labels, config: WitchesBrewConfig | None = None, *,
                 loop: str = "auto") -> AttackResult:
  """Crafts Witches' Brew poisons: all bases of a trial at once, on an ensemble of surrogates.

  Args:
    key: PRNG key; restart r starts from fold_in(key, r).
    surrogates: a GradientModel or a sequence of them (the ensemble; e.g.
      `classifier.gradient_model(models, i)` for surrogates trained on clean data).
    target_image: uint8 [H, W, C], the test image to be misclassified.
    target_label: the class it should be predicted as (the poisons' class, "adversarial").
    base_images: uint8 [P, H, W, C], training images whose perturbed copies replace them.
    base_labels: their (true, unchanged) labels, int [P] or one int.
    config: WitchesBrewConfig (default: the reference's, ℓ∞ 16/255).
    loop: how the steps run ("auto", "scan", "host"; `resolve_loop`); same results.

  Returns:
    AttackResult: poisons uint8 within the bound exactly; initial_loss / final_loss: the
    unaugmented matching loss at the bases and at the quantized poisons (scalars);
    loss_history: float [num_steps], the kept restart's loss per step. See
    `witches_brew_restarts` for every restart's loss.
  """
  return witches_brew_restarts(key, surrogates, target_image, target_label, base_images,
                               base_labels, config, loop=loop).result


def witches_brew_restarts(key, surrogates, target_image, target_label, base_images, base_labels,
                          config: WitchesBrewConfig | None = None, *,
                          loop: str = "auto") -> BrewResult:
  """`witches_brew`, also returning each restart's final loss and which one was kept."""
  config = WitchesBrewConfig() if config is None else config
  key = as_key(key)
  surrogates, image_shape, labels = _check_crafting_inputs(
      surrogates, base_images, base_labels, config, GradientMatchingConfig)
  check_images(target_image, name="target_image", ndims=(3,), image_shape=image_shape,
               dtypes=("uint8",))
  target = core.to_unit_float(target_image)[None]
  target_grads = target_gradients(surrogates, target, jnp.asarray([int(target_label)], jnp.int32),
                                  batch_size=1)
  return _craft_with_restarts(key, surrogates, target_grads, base_images, labels, config,
                              resolve_loop(loop))


def _craft_with_restarts(key, surrogates, target_grads, base_images, labels, config, loop):
  best, best_loss, restart_losses, best_history = None, np.inf, [], None
  for restart in range(config.restarts):
    restart_key = jax.random.fold_in(key, restart)
    state = initial_state(jax.random.fold_in(restart_key, 0), core.to_unit_float(base_images),
                          config)
    state, history = matching_steps(state, jax.random.fold_in(restart_key, 1), surrogates,
                                    target_grads, base_images, labels, config.num_steps, config,
                                    loop=loop)
    last = float(history[-1])
    restart_losses.append(last)
    if last < best_loss or best is None:
      best, best_loss, best_history, best_index = state.delta, last, history, restart
  return BrewResult(_finish(best, best_history, surrogates, target_grads, base_images, labels,
                            config), np.asarray(restart_losses, np.float32), best_index)


def quantized_poisons(delta, base_images, config: GradientMatchingConfig):
  """(uint8 poisons keeping the bound, the float poisons clip(bases + δ, 0, 1))."""
  poisons_float = jnp.clip(core.to_unit_float(base_images) + delta, 0.0, 1.0)
  return (constraints._quantize(poisons_float, base_images, config.norm, config.epsilon),
          poisons_float)


def _finish(delta, history, surrogates, target_grads, base_images, labels, config):
  bases = core.to_unit_float(base_images)
  poisons, poisons_float = quantized_poisons(delta, base_images, config)
  return AttackResult(
      poisons=poisons,
      poisons_float=poisons_float,
      initial_loss=matching_loss(surrogates, target_grads, bases, labels, config),
      final_loss=matching_loss(surrogates, target_grads, core.to_unit_float(poisons), labels,
                               config),
      loss_history=history,
      coefficients=None)
