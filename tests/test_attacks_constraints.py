import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from jaxpoison.attacks import constraints as K


# --- budgets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("epsilon, expected", [(16 / 255, 16), (8 / 255, 8), (0.1, 25), (1 / 255, 1)])
def test_linf_budget(epsilon, expected):
  assert K.linf_budget(epsilon) == expected


@pytest.mark.parametrize("epsilon", [3.48, 6.43, 16 / 255, 1.0, 2 / 255])
def test_l2_budget_is_the_largest_admissible_integer(epsilon):
  budget = K.l2_budget(epsilon)
  assert math.sqrt(budget) / 255 <= epsilon < math.sqrt(budget + 1) / 255


# --- projections -------------------------------------------------------------------------------

def _images(seed, shape=(3, 4, 4, 3)):
  rng = np.random.default_rng(seed)
  base = rng.uniform(0, 1, shape).astype(np.float32)
  x = (base + rng.normal(0, 0.3, shape)).astype(np.float32)  # Often outside the box.
  return x, base


def test_project_linf_is_the_clip_onto_ball_and_box():
  x, base = _images(0)
  epsilon = 16 / 255
  y = np.asarray(K.project_linf(jnp.asarray(x), jnp.asarray(base), epsilon))
  expected = np.clip(x, np.maximum(base - epsilon, 0), np.minimum(base + epsilon, 1))
  np.testing.assert_array_equal(y, expected)
  assert np.all(np.abs(y - base) <= epsilon + 1e-7) and y.min() >= 0 and y.max() <= 1


def _scipy_ball_box_projection(x, base, epsilon):
  result = optimize.minimize(
      lambda y: np.sum((y - x) ** 2), np.clip(base, 0, 1), jac=lambda y: 2 * (y - x),
      bounds=[(0, 1)] * x.size, method="SLSQP",
      constraints=[{"type": "ineq", "fun": lambda y: epsilon ** 2 - np.sum((y - base) ** 2),
                    "jac": lambda y: -2 * (y - base)}],
      # 1e-12 (objective) puts the solution within ~1e-6 of the optimum, well inside the 2e-5
      # the test asks; 1e-14 sat at rounding level, and SLSQP's line search then failed on one
      # seed depending on the BLAS thread count (one core against two).
      options={"ftol": 1e-12, "maxiter": 1000})
  assert result.success, result.message
  return result.x


@pytest.mark.parametrize("seed", range(6))
def test_project_l2_matches_scipy(seed):
  rng = np.random.default_rng(seed)
  base = rng.uniform(0, 1, (1, 2, 3, 1))
  # Points far outside the box make the box constraints active next to the ball's.
  x = base + rng.normal(0, 0.8, base.shape)
  epsilon = 0.3
  y = np.asarray(K.project_l2(jnp.asarray(x, jnp.float32), jnp.asarray(base, jnp.float32), epsilon))
  reference = _scipy_ball_box_projection(x.ravel(), base.ravel(), epsilon)
  np.testing.assert_allclose(y.ravel(), reference, atol=2e-5)


def _kkt_ball_box_projection(x, base, epsilon):
  """The projection of each image x onto {‖y − base‖₂ <= ε} ∩ [0, 1]^d, in float64.

  Minimize ½‖y − x‖² subject to ½‖y − base‖² <= ½ε² and 0 <= y <= 1. Slater holds (base is in
  the box, strictly inside the ball), so the minimizer is a KKT point: for a multiplier λ >= 0
  of the ball, y minimizes ½‖y − x‖² + ½λ‖y − base‖² over the box. That is separable, each
  coordinate a convex parabola with vertex (x + λ·base)/(1 + λ), and a 1-D convex parabola's
  minimum over [0, 1] is its vertex clipped: y(λ) = clip((x + λ·base)/(1 + λ), 0, 1).
  Complementary slackness: λ = 0 if y(0) = clip(x) is in the ball, else ‖y(λ) − base‖ = ε.
  Each coordinate of (x + λ·base)/(1 + λ) moves monotonically from x to base as λ grows, and
  clipping keeps it monotone (base is in [0, 1]), so ‖y(λ) − base‖ falls monotonically to 0
  and bisection finds that λ.
  """
  x, base = np.asarray(x, np.float64), np.asarray(base, np.float64)
  out = np.empty_like(x)
  for i in range(x.shape[0]):
    def point(lam):
      return np.clip((x[i] + lam * base[i]) / (1 + lam), 0, 1)

    def outside(lam):
      return np.sqrt(np.sum((point(lam) - base[i]) ** 2)) > epsilon

    if not outside(0.0):
      out[i] = point(0.0)
      continue
    lo, hi = 0.0, 1.0
    while outside(hi):
      lo, hi = hi, 2 * hi
    for _ in range(200):
      mid = 0.5 * (lo + hi)
      lo, hi = (mid, hi) if outside(mid) else (lo, mid)
    out[i] = point(hi)
  return out


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 2.0, 4.0, 14.0])
def test_project_l2_matches_the_kkt_projection(epsilon):
  # Many images, noise large enough that the box is active in most coordinates: there the
  # nearest point of ball ∩ box is not the ball's radial projection clipped to the box. ε = 14
  # exceeds √(8·8·3) ≈ 13.9, so only the box binds (λ = 0).
  rng = np.random.default_rng(5)
  base = rng.uniform(0, 1, (32, 8, 8, 3)).astype(np.float32)
  x = (base + rng.normal(0, 0.8, base.shape)).astype(np.float32)
  y = np.asarray(K.project_l2(jnp.asarray(x), jnp.asarray(base), epsilon), np.float64)
  reference = _kkt_ball_box_projection(x, base, epsilon)
  norms = np.sqrt(np.sum((y - base) ** 2, axis=(1, 2, 3)))
  assert np.all(norms <= epsilon * (1 + 1e-6)) and y.min() >= 0 and y.max() <= 1
  # float32 images and a 40-step bisection against float64: a few float32 ulps of [0, 1].
  atol = 2e-5
  np.testing.assert_allclose(y, reference, rtol=0, atol=atol)
  # Not vacuous: where the ball binds, radial-then-clip is farther from the reference than
  # the tolerance (measured: 2.7e-4 at ε = 0.1 up to 0.23 at ε = 4); else they agree.
  radius = np.sqrt(np.sum((x - base) ** 2, axis=(1, 2, 3), keepdims=True))
  radial = np.clip(base + (x - base) * np.minimum(1, epsilon / radius), 0, 1)
  gap = np.max(np.abs(radial - reference))
  assert gap > 10 * atol if epsilon < 14 else gap < 1e-6, gap


def test_project_l2_keeps_inside_points():
  _, base = _images(1, (4, 8, 8, 3))
  # A point already inside the ball and the box is its own projection.
  inside = (base + 0.001).clip(0, 1).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(K.project_l2(jnp.asarray(inside), jnp.asarray(base), 0.5)),
                                inside)


# --- quantization ------------------------------------------------------------------------------

def _boundary_poisons(seed, norm, epsilon, shape=(6, 32, 32, 3)):
  """Float poisons on the boundary of the ball (where naive rounding breaks the bound)."""
  rng = np.random.default_rng(seed)
  bases = rng.integers(0, 256, shape, dtype=np.uint8)
  direction = rng.normal(0, 1, shape)
  if norm == "linf":
    far = bases / 255 + np.sign(direction) * 1.0
  else:
    far = bases / 255 + direction
  poisons = K.project(jnp.asarray(far, jnp.float32), jnp.asarray(bases / 255, jnp.float32),
                      norm, epsilon)
  return np.asarray(poisons), bases


def test_quantize_linf_keeps_the_bound_in_integers():
  epsilon = 0.1  # 25.5 grey levels: nearest rounding would reach 26.
  poisons, bases = _boundary_poisons(0, "linf", epsilon)
  naive = np.round(poisons.astype(np.float64) * 255).astype(np.int64) - bases
  assert np.abs(naive).max() > K.linf_budget(epsilon)  # The test is not vacuous.
  q = np.asarray(K.quantize_poisons(jnp.asarray(poisons), jnp.asarray(bases), "linf", epsilon))
  assert q.dtype == np.uint8
  offsets = q.astype(np.int64) - bases
  assert np.abs(offsets).max() <= K.linf_budget(epsilon)
  assert np.all(np.abs(offsets) / 255 <= epsilon)
  # Elsewhere it is plain rounding: only values that would break the bound move, by one level.
  changed = offsets != np.clip(naive, -25, 25)
  assert not changed.any()
  assert np.abs(offsets - naive).max() <= 1


@pytest.mark.parametrize("epsilon", [3.48, 6.43])
def test_quantize_l2_keeps_the_bound_in_integers(epsilon):
  poisons, bases = _boundary_poisons(1, "l2", epsilon)
  naive = np.clip(np.round(poisons.astype(np.float64) * 255), 0, 255).astype(np.int64) - bases
  budget = K.l2_budget(epsilon)
  naive_norms = np.sum(naive ** 2, axis=(1, 2, 3))
  assert np.any(naive_norms > budget)  # Nearest rounding leaves the ball for some poisons.
  q = np.asarray(K.quantize_poisons(jnp.asarray(poisons), jnp.asarray(bases), "l2", epsilon))
  assert q.dtype == np.uint8
  offsets = q.astype(np.int64) - bases
  norms = np.sum(offsets ** 2, axis=(1, 2, 3))
  assert np.all(norms <= budget)
  assert np.all(np.sqrt(norms) / 255 <= epsilon)
  # Each value is rounded either to nearest or toward its base, never further.
  exact = poisons.astype(np.float64) * 255 - bases
  assert np.all((offsets == naive) | (offsets == np.trunc(exact)))
  # Poisons that were inside after nearest rounding are left exactly as rounded.
  inside = naive_norms <= budget
  np.testing.assert_array_equal(offsets[inside], naive[inside])
  # Only as few values as needed are rounded toward the base: one switch removes at most
  # 2·255 + 1 squared levels, so the result stays that close to the ball's edge.
  assert np.all(norms[~inside] >= budget - 511)


def test_quantize_l2_falls_back_when_the_float_poison_is_outside_the_ball():
  rng = np.random.default_rng(3)
  bases = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  poisons = np.clip(bases / 255 + rng.normal(0, 0.5, bases.shape), 0, 1).astype(np.float32)
  q = np.asarray(K.quantize_poisons(jnp.asarray(poisons), jnp.asarray(bases), "l2", 0.5))
  assert np.all(np.sum((q.astype(np.int64) - bases) ** 2, axis=(1, 2, 3)) <= K.l2_budget(0.5))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(epsilon=-0.1), ValueError, "positive, finite linf bound"),
    (dict(epsilon=0.0), ValueError, "positive, finite"),
    (dict(epsilon=float("nan")), ValueError, "positive, finite"),
    (dict(epsilon=16), ValueError, r"not \[0, 255\]"),
    (dict(epsilon=0.5 / 255), ValueError, "below one grey level"),
    (dict(epsilon="big"), TypeError, "expected a number"),
    (dict(norm="l1"), ValueError, "norm: expected one of"),
    (dict(norm="l2", epsilon=60.0), ValueError, "exceeds the diameter"),
])
def test_quantize_rejects_bad_bounds(kwargs, error, match):
  bases = np.zeros((1, 32, 32, 3), np.uint8)
  args = dict(norm="linf", epsilon=16 / 255) | kwargs
  with pytest.raises(error, match=match):
    K.quantize_poisons(jnp.zeros(bases.shape, jnp.float32), jnp.asarray(bases), **args)


def test_quantize_rejects_bad_arrays():
  bases = jnp.zeros((2, 8, 8, 3), jnp.uint8)
  with pytest.raises(TypeError, match="bases: expected dtype uint8"):
    K.quantize_poisons(jnp.zeros((2, 8, 8, 3)), bases.astype(jnp.float32), "linf", 0.1)
  with pytest.raises(TypeError, match="poisons: expected dtype float32"):
    K.quantize_poisons(bases, bases, "linf", 0.1)
  with pytest.raises(ValueError, match=r"expected the bases' shape \(2, 8, 8, 3\)"):
    K.quantize_poisons(jnp.zeros((3, 8, 8, 3)), bases, "linf", 0.1)
  with pytest.raises(ValueError, match=r"images of shape \(8, 8, 3\)"):
    K.quantize_poisons(jnp.zeros((2, 4, 4, 3)), bases, "linf", 0.1)
  with pytest.raises(ValueError, match="int32"):
    K.quantize_poisons(jnp.zeros((1, 128, 128, 3)), jnp.zeros((1, 128, 128, 3), jnp.uint8),
                       "l2", 3.0)


# --- simplex -----------------------------------------------------------------------------------

def _simplex_reference(v):
  """Projection onto the simplex from its optimality condition Σ max(v − θ, 0) = 1, by brentq."""
  theta = optimize.brentq(lambda t: np.sum(np.maximum(v - t, 0)) - 1, v.min() - 1, v.max())
  return np.maximum(v - theta, 0)


def test_project_simplex_matches_root_finding():
  rng = np.random.default_rng(0)
  vectors = np.concatenate([rng.normal(0, 1, (20, 7)), rng.normal(0, 5, (5, 7)),
                            np.full((1, 7), 1 / 7), np.eye(7)[:2] * 3]).astype(np.float64)
  projected = np.asarray(K.project_simplex(jnp.asarray(vectors, jnp.float32)))
  for v, p in zip(vectors, projected):
    np.testing.assert_allclose(p, _simplex_reference(v), atol=1e-5)
  assert np.all(projected >= 0)
  np.testing.assert_allclose(projected.sum(-1), 1, atol=1e-5)


def _simplex_least_squares_reference(features, target):
  num = features.shape[0]
  result = optimize.minimize(
      lambda c: 0.5 * np.sum((features.T @ c - target) ** 2), np.full(num, 1 / num),
      jac=lambda c: features @ (features.T @ c - target), bounds=[(0, 1)] * num, method="SLSQP",
      constraints=[{"type": "eq", "fun": lambda c: np.sum(c) - 1, "jac": lambda c: np.ones(num)}],
      options={"ftol": 1e-15, "maxiter": 1000})
  assert result.success, result.message
  return result.x


@pytest.mark.parametrize("seed", range(4))
def test_simplex_least_squares_matches_scipy(seed):
  rng = np.random.default_rng(seed)
  features = rng.normal(0, 1, (5, 12))
  # A target partly inside the hull, partly outside: some coefficients end at zero.
  target = 0.6 * features[0] + 0.4 * features[3] + rng.normal(0, 0.5, 12)
  c = np.asarray(K.simplex_least_squares(jnp.asarray(features, jnp.float32),
                                         jnp.asarray(target, jnp.float32), tol=1e-9,
                                         max_iters=100_000))
  reference = _simplex_least_squares_reference(features, target)
  np.testing.assert_allclose(c, reference, atol=2e-4)
  np.testing.assert_allclose(c.sum(), 1, atol=1e-5)
  # Warm-started from elsewhere on the simplex, it reaches the same point.
  warm = np.asarray(K.simplex_least_squares(jnp.asarray(features, jnp.float32),
                                            jnp.asarray(target, jnp.float32),
                                            jnp.asarray(np.eye(5)[2], jnp.float32), tol=1e-9,
                                            max_iters=100_000))
  np.testing.assert_allclose(warm, reference, atol=2e-4)


def test_simplex_least_squares_recovers_a_point_inside_the_hull():
  rng = np.random.default_rng(5)
  features = rng.normal(0, 1, (4, 16)).astype(np.float32)
  weights = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
  c = K.simplex_least_squares(jnp.asarray(features), jnp.asarray(weights @ features), tol=1e-10,
                              max_iters=100_000)
  np.testing.assert_allclose(np.asarray(c), weights, atol=1e-4)
  assert jax.jit(K.simplex_least_squares)(jnp.asarray(features),
                                          jnp.asarray(weights @ features)).shape == (4,)


def test_simplex_least_squares_converges_with_its_defaults_on_collinear_features():
  # Features of one class are nearly collinear (a shared direction plus small variations):
  # plain projected gradient stalls there within its 10,000 iterations.
  rng = np.random.default_rng(6)
  features = 1.0 + 0.05 * rng.normal(0, 1, (25, 64))
  target = 1.0 + 0.05 * rng.normal(0, 1, 64)
  c = np.asarray(K.simplex_least_squares(jnp.asarray(features, jnp.float32),
                                         jnp.asarray(target, jnp.float32)), np.float64)
  objective = lambda c: 0.5 * np.sum((c @ features - target) ** 2)
  reference = _simplex_least_squares_reference(features, target)
  assert objective(c) <= objective(reference) * (1 + 1e-4) + 1e-9
