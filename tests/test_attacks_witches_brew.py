"""Witches' Brew's objective: the differentiable augmentation against PyTorch's grid_sample, the
matching loss's values, and its second-order gradient against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.attacks import witches_brew as wb


def test_shift_flip_matches_torch_grid_sample():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (5, 32, 32, 3)).astype(np.float32)
  randgen = rng.uniform(0, 1, (5, 4)).astype(np.float32)
  # The reference's RandomTransform(32, 32, shift=8): identity grid over [-1, 1], shifted by
  # (r − 0.5)·2·δ with δ = linspace(0, 1, 32)[8], x negated where r2 > 0.5; zeros padding.
  delta = float(np.linspace(0, 1, 32)[8])
  line = np.linspace(-1, 1, 32, dtype=np.float32)
  grid = np.stack(np.broadcast_arrays(line[None, :], line[:, None]), axis=-1)[None].repeat(5, 0)
  grid = grid.copy()
  grid[..., 0] += ((randgen[:, 0] - 0.5) * 2 * delta)[:, None, None]
  grid[..., 1] += ((randgen[:, 1] - 0.5) * 2 * delta)[:, None, None]
  grid[randgen[:, 2] > 0.5, :, :, 0] *= -1
  expected = torch.nn.functional.grid_sample(
      torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(grid), mode="bilinear",
      padding_mode="zeros", align_corners=True).permute(0, 2, 3, 1).numpy()
  # Normalized shift s is s·31/2 pixels under align_corners.
  shifts = np.stack([(randgen[:, 1] - 0.5) * 2 * delta, (randgen[:, 0] - 0.5) * 2 * delta],
                    axis=1) * 31 / 2
  out = wb.apply_shift_flip(jnp.asarray(images), jnp.asarray(shifts),
                            jnp.asarray(randgen[:, 2] > 0.5), jnp.zeros(3))
  np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)
  assert np.abs(shifts).max() <= wb.MAX_SHIFT_PIXELS + 1e-5


def test_random_shift_flip_is_keyed_and_keeps_the_fill_outside():
  images = jnp.ones((64, 8, 8, 1))
  a = wb.random_shift_flip(images, jax.random.key(0), jnp.zeros(1), max_shift=2.0)
  b = wb.random_shift_flip(images, jax.random.key(0), jnp.zeros(1), max_shift=2.0)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A constant image shifted by up to 2 px: the centre stays 1, borders blend towards the fill.
  assert np.allclose(np.asarray(a)[:, 2:6, 2:6], 1.0)
  assert np.asarray(a).min() < 0.5


def test_gradient_matching_loss_values():
  g = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[3.0]])}
  assert float(wb.gradient_matching_loss(g, g)) == pytest.approx(0.0, abs=1e-6)
  assert float(wb.gradient_matching_loss(g, jax.tree.map(lambda x: -5 * x, g))) == \
      pytest.approx(2.0, abs=1e-6)
  orthogonal = {"a": jnp.array([2.0, -1.0]), "b": jnp.array([[0.0]])}
  assert float(wb.gradient_matching_loss(g, orthogonal)) == pytest.approx(1.0, abs=1e-6)
  # One global cosine, not a per-leaf average: here the leaves disagree in sign.
  h = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[-3.0]])}
  assert float(wb.gradient_matching_loss(g, h)) == pytest.approx(1 - (5 - 9) / 14, abs=1e-6)


def _tiny_net(key):
  k1, k2 = jax.random.split(key)
  params = {"conv": 0.5 * jax.random.normal(k1, (3, 3, 3, 4)),
            "dense": 0.5 * jax.random.normal(k2, (4, 3))}

  def apply_fn(p, x):
    h = jax.lax.conv_general_dilated(x, p["conv"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(h).mean(axis=(1, 2)) @ p["dense"]
  return params, apply_fn


def test_second_order_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    params, apply_fn = _tiny_net(jax.random.key(0))
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    rng = np.random.default_rng(1)
    target = jnp.asarray(rng.uniform(0, 1, (1, 6, 6, 3)))
    poisons = jnp.asarray(rng.uniform(0, 1, (2, 6, 6, 3)))
    labels = jnp.array([0, 0])
    target_grad = wb.parameter_gradient(apply_fn, params, target, jnp.array([2]))
    key, fill = jax.random.key(3), jnp.full(3, 0.4)

    def objective(x):
      return wb.matching_objective(apply_fn, params, target_grad, x, labels, key, fill=fill,
                                   max_shift=1.5)

    grad = np.asarray(jax.grad(objective)(poisons))
    assert np.abs(grad).max() > 1e-4  # the poisons do move the objective
    # The loss depends on the poisons only through their parameter gradient, so its gradient
    # is the mixed second derivative ∂g_p/∂x contracted with ∂L/∂g_p. Central differences in
    # float64 along random directions: truncation O(h²) and rounding ~1e-16/h, both far below
    # the 1e-6 relative tolerance.
    for seed in range(3):
      direction = np.random.default_rng(10 + seed).standard_normal(poisons.shape)
      direction /= np.linalg.norm(direction)
      h = 1e-5
      numeric = (objective(poisons + h * direction) - objective(poisons - h * direction)) / (2 * h)
      analytic = float(np.sum(grad * direction))
      assert analytic == pytest.approx(float(numeric), rel=1e-6, abs=1e-10)


def test_augmentation_needs_a_fill():
  params, apply_fn = _tiny_net(jax.random.key(0))
  g = wb.parameter_gradient(apply_fn, params, jnp.zeros((1, 6, 6, 3)), jnp.array([1]))
  with pytest.raises(ValueError, match="fill"):
    wb.matching_objective(apply_fn, params, g, jnp.zeros((2, 6, 6, 3)), jnp.array([0, 0]),
                          jax.random.key(0))
