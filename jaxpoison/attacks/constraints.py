"""Perturbation bounds, their projections, quantization to uint8, and the simplex.

Units: images are float in [0, 1] (or uint8 in [0, 255] where said); ε is in [0, 1] pixel
units, as σ everywhere in jaxpoison. A poison x of base b is admissible when
‖x − b‖ ≤ ε (ℓ∞ or ℓ2, over the whole image) and x lies in the image box [0, 1].

* `project_linf`, `project_l2`: the Euclidean projection onto {‖x − b‖ ≤ ε} ∩ [0, 1]^n, per
  image. For ℓ∞ both sets are boxes and clipping is exact. For ℓ2 the projection is
  clip((1 − t)·x + t·b, 0, 1) for the smallest t ∈ [0, 1] that lands in the ball (the KKT
  conditions of the two constraints), found by bisection; clipping after a radial ℓ2
  projection would be feasible but not the nearest point.
* `quantize_poisons`: float poisons to uint8 such that the bound holds exactly in integer
  grey levels after rounding. Rounding to nearest can push an ℓ∞ perturbation to ε + 0.5/255
  or an ℓ2 one past the radius; the pixels that would break the bound are rounded toward their
  base value instead.
* `project_simplex`, `simplex_least_squares`: the probability simplex and the inner problem
  min_{c ∈ Δ} ‖Σ_j c_j f_j − t‖² of the Convex Polytope attack.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_images, check_perturbation_bound

IMAGE_AXES = (-3, -2, -1)
# int32 sums of squared grey-level differences stay exact below this many values per image.
_MAX_L2_VALUES = (2**31 - 1) // (255 * 255)


def linf_budget(epsilon: float) -> int:
  """The largest k (grey levels) with k / 255 <= ε, evaluated in float64."""
  epsilon = check_perturbation_bound("linf", epsilon)
  k = math.floor(epsilon * 255)
  while (k + 1) / 255 <= epsilon:
    k += 1
  while k > 0 and k / 255 > epsilon:
    k -= 1
  return k


def l2_budget(epsilon: float) -> int:
  """The largest s (squared grey levels) with √s / 255 <= ε, evaluated in float64.

  A uint8 poison q of base b satisfies the ℓ2 bound exactly when Σ (q − b)² <= s in integers.
  """
  epsilon = check_perturbation_bound("l2", epsilon)
  s = math.floor((epsilon * 255) ** 2)
  while math.sqrt(s + 1) / 255 <= epsilon:
    s += 1
  while s > 0 and math.sqrt(s) / 255 > epsilon:
    s -= 1
  return s


def project_linf(x: jax.Array, base: jax.Array, epsilon: float) -> jax.Array:
  """Projects images onto {‖x − base‖∞ <= ε} ∩ [0, 1] (both in [0, 1] units, same shape)."""
  base = jnp.asarray(base, x.dtype)
  lower = jnp.maximum(base - epsilon, 0.0)
  upper = jnp.minimum(base + epsilon, 1.0)
  return jnp.clip(x, lower, upper)


@functools.partial(jax.jit, static_argnames=("axes", "iterations"))
def project_l2(x: jax.Array, base: jax.Array, epsilon: float, *,
               axes: tuple[int, ...] = IMAGE_AXES, iterations: int = 40) -> jax.Array:
  """Projects each image onto {‖x − base‖₂ <= ε} ∩ [0, 1], the norm taken over `axes`.

  The nearest point is y(t) = clip(x + t·(base − x), 0, 1) for the smallest t ∈ [0, 1] with
  ‖y(t) − base‖ <= ε (‖y(t) − base‖ falls monotonically in t and is 0 at t = 1, because base
  lies in the box). `iterations` bisection steps fix t to 2^-iterations; the returned point is
  always on the feasible side.
  """
  base = jnp.asarray(base, x.dtype)

  def point(t):
    return jnp.clip(x + t * (base - x), 0.0, 1.0)

  def distance(t):
    return jnp.sqrt(jnp.sum(jnp.square(point(t) - base), axis=axes, keepdims=True))

  reduced = {axis % x.ndim for axis in axes}
  zero = jnp.zeros([1 if i in reduced else n for i, n in enumerate(x.shape)], x.dtype)
  inside = distance(zero) <= epsilon

  def bisect(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    feasible = distance(mid) <= epsilon
    return jnp.where(feasible, lo, mid), jnp.where(feasible, mid, hi)

  _, hi = jax.lax.fori_loop(0, iterations, bisect, (zero, jnp.ones_like(zero)))
  return point(jnp.where(inside, zero, hi))


def project(x: jax.Array, base: jax.Array, norm: str, epsilon: float) -> jax.Array:
  """`project_linf` or `project_l2` by name."""
  if norm == "linf":
    return project_linf(x, base, epsilon)
  if norm == "l2":
    return project_l2(x, base, epsilon)
  raise ValueError(f"norm: expected 'linf' or 'l2', got {norm!r}")


def _round_within_l2(excess: jax.Array, lower: jax.Array, upper: jax.Array,
                     budget: int) -> jax.Array:
  """Integer offsets d (one flat image) near `excess` with Σ d² <= budget and lower <= d <= upper.

  Starts from round-to-nearest; while over budget, rounds toward zero (toward the base) the
  values that were rounded away from it, cheapest first (least added rounding error per unit of
  Σ d² removed). If the float poison was itself outside the ball, falls back to shrinking.
  """
  nearest = jnp.clip(jnp.round(excess), lower, upper).astype(jnp.int32)
  toward = jnp.clip(jnp.trunc(excess), lower, upper).astype(jnp.int32)
  gain = nearest * nearest - toward * toward
  need = jnp.sum(nearest * nearest) - budget
  added_error = jnp.square(excess - toward) - jnp.square(excess - nearest)
  priority = jnp.where(gain > 0, added_error / jnp.maximum(gain, 1), jnp.inf)
  order = jnp.argsort(priority)
  removed = jnp.cumsum(gain[order])
  num_switched = jnp.sum(removed < need) + 1
  switched = jnp.zeros(excess.shape, bool).at[order].set(jnp.arange(excess.size) < num_switched)
  offsets = jnp.where((need > 0) & switched, toward, nearest)
  # Only reachable when the float poison lies outside the ball (a caller's mistake or float
  # rounding at the boundary): scale toward the base, then, failing that, give the base back.
  toward_norm2 = jnp.sum(toward * toward).astype(jnp.float32)
  scale = jnp.sqrt(budget / jnp.maximum(toward_norm2, 1.0)) * (1.0 - 1e-6)
  shrunk = jnp.trunc(toward.astype(jnp.float32) * scale).astype(jnp.int32)
  offsets = jnp.where(jnp.sum(offsets * offsets) > budget, shrunk, offsets)
  return jnp.where(jnp.sum(offsets * offsets) > budget, 0, offsets)


@functools.partial(jax.jit, static_argnames=("norm", "epsilon"))
def _quantize(poisons, bases, norm, epsilon):
  bases = bases.astype(jnp.int32)
  excess = poisons.astype(jnp.float32) * 255.0 - bases
  lower, upper = -bases, 255 - bases
  if norm == "linf":
    k = linf_budget(epsilon)
    offsets = jnp.clip(jnp.round(excess), jnp.maximum(lower, -k), jnp.minimum(upper, k))
    offsets = offsets.astype(jnp.int32)
  else:
    flat = lambda a: a.reshape(a.shape[0], -1)
    offsets = jax.vmap(_round_within_l2, in_axes=(0, 0, 0, None))(
        flat(excess), flat(lower), flat(upper), l2_budget(epsilon)).reshape(excess.shape)
  return (bases + offsets).astype(jnp.uint8)


def check_quantizable(norm: str, epsilon: float, image_shape) -> float:
  """Checks ε for images of `image_shape` (H, W, C) and returns it as a float."""
  num_values = int(np.prod(image_shape))
  epsilon = check_perturbation_bound(norm, epsilon, num_pixels=num_values)
  if norm == "l2" and num_values > _MAX_L2_VALUES:
    raise ValueError(
        f"ℓ2 quantization sums squared grey levels exactly in int32, which holds for images of up "
        f"to {_MAX_L2_VALUES} values; got {tuple(image_shape)} = {num_values} values")
  return epsilon


def quantize_poisons(poisons: jax.Array, bases: jax.Array, norm: str, epsilon: float) -> jax.Array:
  """Rounds float poisons in [0, 1] to uint8 images that keep the bound exactly.

  Args:
    poisons: float [P, H, W, C] in [0, 1], each within ε of its base (e.g. after `project`).
    bases: uint8 [P, H, W, C], the unperturbed training images.
    norm: "linf" or "l2".
    epsilon: the bound in [0, 1] pixel units.

  Returns:
    uint8 [P, H, W, C] poisons q with, per image, max |q − b| <= `linf_budget(ε)` grey levels
    (ℓ∞) or Σ (q − b)² <= `l2_budget(ε)` squared grey levels (ℓ2), both checked in integers.
    Values are rounded to nearest except where that would break the bound; there they are
    rounded toward the base.
  """
  check_images(bases, name="bases", dtypes=("uint8",))
  check_images(poisons, name="poisons", image_shape=tuple(bases.shape[1:]),
               dtypes=("float32", "bfloat16", "float16"))
  if tuple(poisons.shape) != tuple(bases.shape):
    raise ValueError(f"poisons: expected the bases' shape {tuple(bases.shape)}, got "
                     f"{tuple(poisons.shape)}")
  epsilon = check_quantizable(norm, epsilon, bases.shape[1:])
  return _quantize(poisons, bases, norm, epsilon)


def project_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection of each vector along the last axis onto the probability simplex.

  The sort-based algorithm of Held, Wolfe and Crowder (1974) / Duchi et al. (2008): the
  projection is max(v − θ, 0) with θ fixed by the number ρ of coordinates that stay positive.
  """
  n = v.shape[-1]
  descending = -jnp.sort(-v, axis=-1)
  cumulative = jnp.cumsum(descending, axis=-1) - 1.0
  positive = descending - cumulative / jnp.arange(1, n + 1, dtype=v.dtype) > 0
  rho = jnp.sum(positive, axis=-1, keepdims=True)  # >= 1: the largest value always stays.
  theta = jnp.take_along_axis(cumulative, rho - 1, axis=-1) / rho.astype(v.dtype)
  return jnp.maximum(v - theta, 0.0)


def simplex_least_squares(features: jax.Array, target: jax.Array, init: jax.Array | None = None,
                          *, tol: float = 1e-6, max_iters: int = 10_000) -> jax.Array:
  """Solves min_{c ∈ simplex} ½‖featuresᵀ c − target‖² by accelerated projected gradient.

  This is the coefficient step of Zhu et al.'s (2019) Algorithm 1: with `features` [P, D] the
  poisons' features and `target` [D] the target's, it returns the convex combination of the
  poisons' features nearest to the target. The reference runs plain projected gradient; here
  FISTA (Beck & Teboulle 2009) with the gradient-based adaptive restart of O'Donoghue & Candès
  (2015) reaches the same minimizer in far fewer iterations (features of one class are nearly
  collinear, which makes plain gradient steps crawl). Steps are 1/L with L the largest
  eigenvalue of the P×P Gram matrix (exact). Iteration stops when the relative change
  ‖c_new − c‖ / ‖c‖ drops below `tol` (the reference's test) or after `max_iters`. `init`
  (default uniform 1/P) warm-starts the solve, as the attack does from its previous step.
  """
  num_poisons = features.shape[0]
  highest = jax.lax.Precision.HIGHEST
  gram = jnp.matmul(features, features.T, precision=highest)
  correlation = jnp.matmul(features, target, precision=highest)
  lipschitz = jnp.linalg.eigvalsh(gram)[-1]
  step = 1.0 / jnp.maximum(lipschitz, jnp.finfo(features.dtype).tiny)
  if init is None:
    init = jnp.full((num_poisons,), 1.0 / num_poisons, features.dtype)
  one = jnp.ones((), features.dtype)

  def keep_going(state):
    iteration, *_, change = state
    return (iteration < max_iters) & (change >= tol)

  def descend(state):
    iteration, coeffs, previous, momentum, _ = state
    extrapolated = coeffs + (momentum - 1.0) / (0.5 + jnp.sqrt(0.25 + momentum ** 2)) * (
        coeffs - previous)
    gradient = jnp.matmul(gram, extrapolated, precision=highest) - correlation
    updated = project_simplex(extrapolated - step * gradient)
    # Restart the momentum when it points uphill (O'Donoghue & Candès's gradient test).
    uphill = jnp.dot(extrapolated - updated, updated - coeffs) > 0
    momentum = jnp.where(uphill, one, 0.5 + jnp.sqrt(0.25 + momentum ** 2))
    change = jnp.linalg.norm(updated - coeffs) / jnp.maximum(jnp.linalg.norm(coeffs), 1e-8)
    return iteration + 1, updated, coeffs, momentum, change

  start = project_simplex(init.astype(features.dtype))
  state = (jnp.zeros((), jnp.int32), start, start, one, jnp.asarray(jnp.inf, features.dtype))
  _, coeffs, *_ = jax.lax.while_loop(keep_going, descend, state)
  return coeffs
