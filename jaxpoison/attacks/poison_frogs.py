"""Poison Frogs (Shafahi et al. 2018): feature collision by forward–backward splitting.

Each poison x_p, started from its base b_p (watermarked with the target), minimizes

    Σ_m ‖f_m(x_p) − f_m(t)‖² + β‖x_p − b_p‖²

over the ensemble members f_m, subject to ‖x_p − b_p‖ <= ε and x_p ∈ [0, 1]. One iteration is
a gradient step on the feature term, x̂ = x − λ∇, the proximal step of the image term,
x ← (x̂ + λβb)/(1 + λβ), and the projection onto the ball ∩ box (with β = 0, the benchmark's
ℓ∞ variant, only the projection remains). A step that would raise the objective is rejected and
λ shrinks by `step_decay` (the benchmark's backtracking, here judged on the candidate's own
objective); a poison stops once an accepted step moves it by less than `tol` relative.

The objective is separable over poisons, so all poisons of a trial run as one batch with
per-poison step sizes and stopping, and the result equals crafting each poison alone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxpoison.attacks import constraints, core
from jaxpoison.attacks.configs import AttackResult, PoisonFrogsConfig
from jaxpoison.keys import as_key


def _squared_distance(x, y):
  return jnp.sum(jnp.square(x - y), axis=(1, 2, 3))


@functools.partial(jax.jit, static_argnames=("config",))
def _poison_frogs(key, ensemble, target_image, base_images, config: PoisonFrogsConfig):
  groups = core.group_ensemble(ensemble)
  target = core.to_unit_float(target_image)[None]
  bases = core.to_unit_float(base_images)
  target_features = core.group_features(groups, target, jax.random.fold_in(key, 0))
  beta = config.proximal_weight
  project = functools.partial(constraints.project, base=bases, norm=config.norm,
                              epsilon=config.epsilon)

  def collision(x, step_key):
    features = core.group_features(groups, x, step_key)
    per_poison = sum(jnp.sum(jnp.square(f - t), axis=(0, 2))
                     for f, t in zip(features, target_features))
    return jnp.sum(per_poison), per_poison

  collision_and_grad = jax.value_and_grad(collision, has_aux=True)

  def objective(x, step_key):
    return collision(x, step_key)[1] + beta * _squared_distance(x, bases)

  def evaluate(x, step_key):
    (_, per_poison), grad = collision_and_grad(x, step_key)
    return per_poison + beta * _squared_distance(x, bases), grad

  watermarked = config.watermark * target + (1.0 - config.watermark) * bases
  x0 = project(watermarked)
  objective0, grad0 = evaluate(x0, jax.random.fold_in(key, 1))
  num_poisons = bases.shape[0]
  step0 = jnp.full((num_poisons,), config.step_size, jnp.float32)
  done0 = jnp.zeros((num_poisons,), bool)

  def iterate(state, step_index):
    x, current, grad, step, done = state
    lam = step[:, None, None, None]
    forward = x - lam * grad
    candidate = project((forward + lam * beta * bases) / (1.0 + lam * beta))
    value, candidate_grad = evaluate(candidate, jax.random.fold_in(key, step_index + 2))
    accept = (value <= current) & ~done
    change = jnp.sqrt(_squared_distance(candidate, x)
                      / jnp.maximum(_squared_distance(x, 0.0), 1e-30))
    done = done | (accept & (change < config.tol))
    pick = lambda new, old: jnp.where(accept.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    state = (pick(candidate, x), pick(value, current), pick(candidate_grad, grad),
             jnp.where(accept | done, step, step * config.step_decay), done)
    return state, state[1]

  (x, _, _, _, _), history = jax.lax.scan(
      iterate, (x0, objective0, grad0, step0, done0), jnp.arange(config.num_steps))
  poisons = constraints._quantize(x, base_images, config.norm, config.epsilon)
  final_key = jax.random.fold_in(key, config.num_steps + 2)
  return AttackResult(
      poisons=poisons,
      poisons_float=x,
      initial_loss=objective(bases, final_key),
      final_loss=objective(core.to_unit_float(poisons), final_key),
      loss_history=history,
      coefficients=None)


def poison_frogs(key: jax.Array, extractors, target_image: jax.Array, base_images: jax.Array,
                 config: PoisonFrogsConfig | None = None) -> AttackResult:
  """Crafts Poison Frogs (feature-collision) poisons, one per base image, all at once.

  Args:
    key: PRNG key; it only matters for stochastic extractors (a fresh draw per step).
    extractors: a FeatureExtractor or a sequence of them (the objective sums over members).
    target_image: uint8 [H, W, C], the test image to be misclassified.
    base_images: uint8 [P, H, W, C], training images of the base class to perturb.
    config: PoisonFrogsConfig (default: the benchmark's, ℓ∞ ε = 16/255).

  Returns:
    AttackResult with per-poison objectives ([P], history [num_steps, P]).
  """
  config = PoisonFrogsConfig() if config is None else config
  if not isinstance(config, PoisonFrogsConfig):
    raise TypeError(f"config: expected a PoisonFrogsConfig, got {type(config).__name__}")
  key = as_key(key)
  ensemble = core.as_ensemble(extractors)
  image_shape = core.check_target_and_bases(target_image, base_images)
  constraints.check_quantizable(config.norm, config.epsilon, image_shape)
  core.check_extractor_outputs(ensemble, image_shape)
  return _poison_frogs(key, ensemble, target_image, base_images, config)
