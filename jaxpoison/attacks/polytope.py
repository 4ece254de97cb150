"""Convex Polytope (Zhu et al. 2019) and Bullseye Polytope (Aghakhani et al. 2021).

Both surround the target in feature space with all P poisons at once, over an ensemble of M
feature extractors (the victim's initialization for white-box, substitutes for black-box):

* Convex Polytope minimizes (1/M) Σ_m ½‖f_m(t) − Σ_j c_mj f_m(x_j)‖² / ‖f_m(t)‖², the target
  inside the convex hull of the poisons' features. Each step first refits the coefficients
  c_m ∈ simplex to the current features (`simplex_least_squares`, warm-started from the previous
  step), then takes the poison step with the coefficients held fixed.
* Bullseye Polytope fixes c_mj = 1/P: it minimizes (1/M) Σ_m ‖f_m(t) − mean_j f_m(x_j)‖ /
  ‖f_m(t)‖ (a norm, not its square, as in the reference), the target at the poisons' centre.

The poison step is Adam on the poisons in normalized-input units (lr · input_std per [0, 1]
unit, as the reference optimizes the normalized image), followed by the projection onto the
ball ∩ [0, 1] around each base. The whole loop is one `lax.scan`; ensemble members of one
architecture are vmapped; stochastic members (dropout) draw fresh noise every step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jaxpoison.attacks import constraints, core
from jaxpoison.attacks.configs import (
    AttackResult,
    BullseyePolytopeConfig,
    ConvexPolytopeConfig,
    _PolytopeConfig,
)
from jaxpoison.keys import as_key


def _safe_norm(x, axis):
  return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis), jnp.finfo(x.dtype).tiny))


def _member_losses(features, target, coefficients, convex: bool):
  """Per-member losses [M] of one group: features [M, P, D], target [M, D], coeffs [M, P]."""
  target_norm2 = jnp.maximum(jnp.sum(jnp.square(target), axis=-1), jnp.finfo(target.dtype).tiny)
  if convex:
    residual = target - jnp.einsum("mp,mpd->md", coefficients, features)
    return 0.5 * jnp.sum(jnp.square(residual), axis=-1) / target_norm2
  return _safe_norm(jnp.mean(features, axis=1) - target, -1) / jnp.sqrt(target_norm2)


@functools.partial(jax.jit, static_argnames=("config",))
def _polytope(key, ensemble, target_image, base_images, config: _PolytopeConfig):
  convex = isinstance(config, ConvexPolytopeConfig)
  groups = core.group_ensemble(ensemble)
  num_members = len(ensemble)
  target = core.to_unit_float(target_image)[None]
  bases = core.to_unit_float(base_images)
  num_poisons = bases.shape[0]
  targets = [f[:, 0] for f in core.group_features(groups, target, jax.random.fold_in(key, 0))]
  channels = bases.shape[-1]
  std = jnp.asarray(config.input_std if config.input_std is not None else (1.0,) * channels,
                    jnp.float32)
  project = functools.partial(constraints.project, base=bases, norm=config.norm,
                              epsilon=config.epsilon)
  schedule = optax.piecewise_constant_schedule(
      config.learning_rate, {int(s): config.decay_ratio for s in config.decay_steps})
  optimizer = optax.adam(schedule, b1=config.momentum, b2=0.999, eps=1e-8)

  def fit_coefficients(features, coefficients):
    if not convex:
      return coefficients
    solve = functools.partial(constraints.simplex_least_squares, tol=config.coeff_tol,
                              max_iters=config.coeff_max_iters)
    return [jax.vmap(solve)(jax.lax.stop_gradient(f), t, c)
            for f, t, c in zip(features, targets, coefficients)]

  def loss(features, coefficients):
    return sum(jnp.sum(_member_losses(f, t, c, convex))
               for f, t, c in zip(features, targets, coefficients)) / num_members

  def features_of(x, step_key):
    return core.group_features(groups, x, step_key)

  def step(state, step_index):
    x, opt_state, coefficients = state
    features, pullback = jax.vjp(
        functools.partial(features_of, step_key=jax.random.fold_in(key, step_index + 1)), x)
    coefficients = fit_coefficients(features, coefficients)
    value, feature_grads = jax.value_and_grad(loss)(features, coefficients)
    (grad,) = pullback(feature_grads)
    # Adam on u = x / std: ∂/∂u = std·∂/∂x, and a step Δu moves x by std·Δu.
    updates, opt_state = optimizer.update(grad * std, opt_state)
    x = project(x + std * updates)
    return (x, opt_state, coefficients), value

  uniform = [jnp.full((g.size, num_poisons), 1.0 / num_poisons, jnp.float32) for g in groups]
  state = (bases, optimizer.init(bases), uniform)
  (x, _, coefficients), history = jax.lax.scan(step, state, jnp.arange(config.num_steps))

  poisons = constraints._quantize(x, base_images, config.norm, config.epsilon)
  final_key = jax.random.fold_in(key, config.num_steps + 1)

  def evaluate(images, start):
    features = features_of(images, final_key)
    fitted = fit_coefficients(features, start)
    return loss(features, fitted), fitted

  initial_loss, _ = evaluate(bases, uniform)
  final_loss, fitted = evaluate(core.to_unit_float(poisons), coefficients)
  ordered = [None] * num_members
  for group, group_coefficients in zip(groups, fitted):
    for position, member in enumerate(group.members):
      ordered[member] = group_coefficients[position]
  return AttackResult(
      poisons=poisons,
      poisons_float=x,
      initial_loss=initial_loss,
      final_loss=final_loss,
      loss_history=history,
      coefficients=jnp.stack(ordered))


def _run(name, config_type, key, extractors, target_image, base_images, config):
  config = config_type() if config is None else config
  if type(config) is not config_type:
    raise TypeError(f"config: expected a {config_type.__name__} for {name}, got "
                    f"{type(config).__name__}")
  key = as_key(key)
  ensemble = core.as_ensemble(extractors)
  image_shape = core.check_target_and_bases(target_image, base_images)
  constraints.check_quantizable(config.norm, config.epsilon, image_shape)
  if config.input_std is not None and len(config.input_std) != image_shape[-1]:
    raise ValueError(f"config.input_std: expected one value per channel ({image_shape[-1]}), got "
                     f"{len(config.input_std)}")
  core.check_extractor_outputs(ensemble, image_shape)
  return _polytope(key, ensemble, target_image, base_images, config)


def convex_polytope(key: jax.Array, extractors, target_image: jax.Array, base_images: jax.Array,
                    config: ConvexPolytopeConfig | None = None) -> AttackResult:
  """Crafts Convex Polytope poisons: the target inside the hull of the poisons' features.

  Args:
    key: PRNG key; it only matters for stochastic extractors (a fresh draw per step).
    extractors: a FeatureExtractor or a sequence of them (the substitute ensemble).
    target_image: uint8 [H, W, C].
    base_images: uint8 [P, H, W, C], training images of the base class.
    config: ConvexPolytopeConfig (default: the benchmark's, ℓ∞ ε = 16/255).

  Returns:
    AttackResult with scalar objectives, history [num_steps] and the fitted coefficients [M, P]
    at the final poisons.
  """
  return _run("convex_polytope", ConvexPolytopeConfig, key, extractors, target_image,
              base_images, config)


def bullseye_polytope(key: jax.Array, extractors, target_image: jax.Array,
                      base_images: jax.Array,
                      config: BullseyePolytopeConfig | None = None) -> AttackResult:
  """Crafts Bullseye Polytope poisons: the target at the mean of the poisons' features.

  Arguments and result as `convex_polytope` (coefficients are all 1/P).
  """
  return _run("bullseye_polytope", BullseyePolytopeConfig, key, extractors, target_image,
              base_images, config)
