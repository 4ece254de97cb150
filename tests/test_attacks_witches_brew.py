"""Witches' Brew's objective: the differentiable augmentation against PyTorch's grid_sample, the
matching loss's values, and its second-order gradient against finite differences."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

wb = importlib.import_module("jaxpoison.attacks.witches_brew")


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


# ----------------------------------------------------------------------------- crafting

from jaxpoison.attacks import configs as attack_configs  # noqa: E402
from jaxpoison.attacks import constraints  # noqa: E402

MEAN = np.array(attack_configs.FOREST_CIFAR10_MEAN)
STD = np.array(attack_configs.FOREST_CIFAR10_STD)


def _normalized_net(params, state, x):
  """A tiny classifier on normalized inputs: conv 3×3 → tanh → spatial mean → linear (+ a fixed
  per-class offset in `state`, standing in for batch-norm statistics)."""
  x = (x - MEAN.astype(x.dtype)) / STD.astype(x.dtype)
  h = jax.lax.conv_general_dilated(x, params["conv"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.tanh(h).mean(axis=(1, 2)) @ params["dense"] + state["offset"]


def _surrogate(seed, dtype=jnp.float32, channels=4, classes=3):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  params = {"conv": 0.5 * jax.random.normal(k1, (3, 3, 3, channels), dtype),
            "dense": 0.5 * jax.random.normal(k2, (channels, classes), dtype)}
  return wb.GradientModel(_normalized_net, params,
                          {"offset": 0.1 * jax.random.normal(k3, (classes,), dtype)})


def _images(seed, n, size=8):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_learning_rate_schedule_matches_torch_multistep():
  torch = pytest.importorskip("torch")
  config = attack_configs.WitchesBrewConfig()
  assert config.lr_drop_steps == (93, 156, 218)  # the spec's milestones for 250 steps
  delta = torch.zeros(1, requires_grad=True)
  optimizer = torch.optim.Adam([delta], lr=config.step_size / 4)
  scheduler = torch.optim.lr_scheduler.MultiStepLR(
      optimizer, milestones=[config.num_steps // d for d in config.lr_drop_divisors], gamma=0.1)
  for step in range(config.num_steps):
    ours = float(wb._learning_rate(config, jnp.asarray(step), 4))
    assert ours == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-6), step
    optimizer.step()
    scheduler.step()


def _torch_reference_brew(torch, surrogates, target, target_label, bases, labels, delta0, config):
  """The reference's sign-Adam loop (forest/witchcoven/witch_base.py `_run_trial` with
  witch_matching.py's similarity loss), in its normalized space, float64, no augmentation."""
  def as_torch(net):
    conv = torch.tensor(np.asarray(net.params["conv"]).transpose(3, 2, 0, 1))
    dense = torch.tensor(np.asarray(net.params["dense"]))
    offset = torch.tensor(np.asarray(net.state["offset"]))
    params = [conv.requires_grad_(), dense.requires_grad_()]

    def forward(x):
      h = torch.nn.functional.conv2d(x, params[0], padding=1)
      return torch.tanh(h).mean(dim=(2, 3)) @ params[1] + offset
    return forward, params

  mean = torch.tensor(MEAN).view(1, 3, 1, 1)
  std = torch.tensor(STD).view(1, 3, 1, 1)
  to_normalized = lambda u: (torch.tensor(u, dtype=torch.float64).permute(0, 3, 1, 2) - mean) / std
  nets = [as_torch(s) for s in surrogates]
  target_n = to_normalized(target[None].astype(np.float64) / 255)
  target_grads = []
  for forward, params in nets:
    loss = torch.nn.functional.cross_entropy(forward(target_n), torch.tensor([target_label]))
    grads = torch.autograd.grad(loss, params)
    target_grads.append((grads, torch.sqrt(sum((g * g).sum() for g in grads))))
  bases_n = to_normalized(bases.astype(np.float64) / 255)
  labels_t = torch.tensor(np.asarray(labels))
  delta = (torch.tensor(np.asarray(delta0), dtype=torch.float64).permute(0, 3, 1, 2) / std)
  delta.requires_grad_()
  tau0 = config.step_size * (config.poison_batch_size / 512) / len(nets)
  optimizer = torch.optim.Adam([delta], lr=tau0, weight_decay=0)
  scheduler = torch.optim.lr_scheduler.MultiStepLR(
      optimizer, milestones=[config.num_steps // d for d in config.lr_drop_divisors], gamma=0.1)
  history = []
  for _ in range(config.num_steps):
    optimizer.zero_grad()
    total = 0.0
    for (forward, params), (tgrad, tnorm) in zip(nets, target_grads):
      loss = torch.nn.functional.cross_entropy(forward(bases_n + delta), labels_t)
      pgrad = torch.autograd.grad(loss, params, create_graph=True)
      passenger = -sum((t * p).sum() for t, p in zip(tgrad, pgrad)) / tnorm
      passenger = 1 + passenger / torch.sqrt(sum((p * p).sum() for p in pgrad))
      passenger.backward()
      total += float(passenger.detach())
    history.append(total / len(nets))
    delta.grad.sign_()
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
      eps = config.epsilon / std
      delta.data = torch.max(torch.min(delta, eps), -eps)
      delta.data = torch.max(torch.min(delta, (1 - mean) / std - bases_n), -mean / std - bases_n)
  return (delta.detach() * std).permute(0, 2, 3, 1).numpy(), np.array(history)


def test_sign_adam_loop_matches_the_torch_reference():
  torch = pytest.importorskip("torch")
  config = attack_configs.WitchesBrewConfig(num_steps=12, restarts=1, augment=False)
  assert config.lr_drop_steps == (4, 7, 10)  # the run crosses every drop
  with jax.enable_x64(True):
    surrogates = [_surrogate(0, jnp.float64), _surrogate(1, jnp.float64)]
    target, bases = _images(0, 1)[0], _images(1, 6)
    labels = np.array([0, 0, 0, 0, 0, 0])
    target_grads = wb.target_gradients(
        surrogates, jnp.asarray(target[None], jnp.float64) / 255, jnp.array([0]), batch_size=1)
    state = wb.initial_state(jax.random.key(0), jnp.asarray(bases, jnp.float64) / 255, config)
    assert state.delta.dtype == jnp.float64
    delta0 = np.asarray(state.delta)
    # matching_steps takes uint8 bases into float32; its loop runs here on float64 bases.
    final, history = wb.scan_matching_steps(
        state, jax.random.key(1), surrogates, target_grads, jnp.asarray(bases, jnp.float64) / 255,
        jnp.asarray(labels), config.num_steps, config)
    expected_delta, expected_history = _torch_reference_brew(
        torch, surrogates, target, 0, bases, labels, delta0, config)
  np.testing.assert_allclose(np.asarray(history), expected_history, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(np.asarray(final.delta), expected_delta, rtol=0, atol=1e-10)
  assert np.abs(expected_delta - delta0).max() > 1e-3  # the poisons did move



def _small_config(**changes):
  return attack_configs.WitchesBrewConfig(**{"num_steps": 6, "restarts": 3, **changes})


@pytest.mark.parametrize("norm,epsilon", [("linf", 16 / 255), ("l2", 0.6)])
def test_witches_brew_keeps_the_bound_and_the_best_restart(norm, epsilon):
  surrogates = [_surrogate(0), _surrogate(1)]
  target, bases = _images(0, 1)[0], _images(1, 5)
  config = _small_config(norm=norm, epsilon=epsilon)
  out = wb.witches_brew_restarts(jax.random.key(0), surrogates, target, 2, bases, 0, config)
  result = out.result
  diff = np.asarray(result.poisons).astype(np.int64) - bases.astype(np.int64)
  if norm == "linf":
    assert np.abs(diff).max() <= constraints.linf_budget(epsilon)
  else:
    assert (diff.reshape(5, -1) ** 2).sum(axis=1).max() <= constraints.l2_budget(epsilon)
  assert np.abs(diff).max() > 0
  assert out.restart_losses.shape == (3,)
  assert out.best_restart == int(np.argmin(out.restart_losses))
  assert float(result.loss_history[-1]) == out.restart_losses[out.best_restart]
  assert result.loss_history.shape == (6,)
  again = wb.witches_brew(jax.random.key(0), surrogates, target, 2, bases, 0, config)
  np.testing.assert_array_equal(np.asarray(again.poisons), np.asarray(result.poisons))


def test_crafting_lowers_the_matching_loss():
  surrogate = _surrogate(3)
  target, bases = _images(2, 1)[0], _images(3, 8)
  config = _small_config(num_steps=30, restarts=1, step_size=0.05)
  result = wb.witches_brew(jax.random.key(1), surrogate, target, 1, bases, 0, config)
  history = np.asarray(result.loss_history)
  # From a random start the loss falls well below where it began and below the bases' own.
  assert history[-5:].mean() < history[:3].mean() - 0.05
  assert float(result.final_loss) < float(result.initial_loss) - 0.05


def test_ensemble_loss_is_the_mean_of_its_members_stacked_or_not():
  a, b = _surrogate(0), _surrogate(1)

  def other_net(params, state, x):  # a different apply_fn: not stacked with `a`
    return _normalized_net(params, state, x)

  b_unstacked = wb.GradientModel(other_net, b.params, b.state)
  poisons, labels = jnp.asarray(_images(4, 5), jnp.float32) / 255, jnp.zeros(5, jnp.int32)
  target = jnp.asarray(_images(5, 1), jnp.float32) / 255
  config = _small_config(augment=False)

  def loss(members):
    grads = wb.target_gradients(members, target, jnp.array([1]), batch_size=1)
    return float(wb.matching_loss(members, grads, poisons, labels, config))

  mean = 0.5 * (loss([a]) + loss([b]))
  assert loss([a, b]) == pytest.approx(mean, rel=1e-5)
  assert loss([a, b_unstacked]) == pytest.approx(mean, rel=1e-5)


def test_poison_batches_each_match_their_own_gradient():
  surrogate = _surrogate(2)
  poisons, labels = jnp.asarray(_images(6, 5), jnp.float32) / 255, jnp.zeros(5, jnp.int32)
  target = jnp.asarray(_images(7, 1), jnp.float32) / 255
  grads = wb.target_gradients([surrogate], target, jnp.array([2]), batch_size=1)
  config = _small_config(augment=False, poison_batch_size=2)
  apply = lambda p, x: _normalized_net(p, surrogate.state, x)
  per_batch = [float(wb.matching_objective(apply, surrogate.params, grads[0], poisons[i:i + 2],
                                           labels[i:i + 2])) for i in (0, 2, 4)]
  batched = float(wb.matching_loss([surrogate], grads, poisons, labels, config))
  assert batched == pytest.approx(np.mean(per_batch), rel=1e-5)


def test_mean_parameter_gradient_in_chunks_equals_all_at_once():
  surrogate = _surrogate(4)
  images, labels = jnp.asarray(_images(8, 7), jnp.float32) / 255, jnp.arange(7) % 3
  apply = lambda p, x: _normalized_net(p, surrogate.state, x)
  whole = wb.parameter_gradient(apply, surrogate.params, images, labels)
  chunked = wb.mean_parameter_gradient(apply, surrogate.params, images, labels, batch_size=3)
  for w, c in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked)):
    np.testing.assert_allclose(np.asarray(c), np.asarray(w), rtol=1e-5, atol=1e-7)


def test_steps_split_into_spans_equal_one_run():
  surrogate = _surrogate(5)
  bases = _images(9, 4)
  target = jnp.asarray(_images(10, 1), jnp.float32) / 255
  grads = wb.target_gradients([surrogate], target, jnp.array([1]), batch_size=1)
  config = _small_config()
  labels = np.zeros(4, np.int32)
  start = lambda: wb.initial_state(jax.random.key(0), jnp.asarray(bases, jnp.float32) / 255,
                                   config)
  whole, history = wb.matching_steps(start(), jax.random.key(1), [surrogate], grads, bases,
                                     labels, 6, config)
  half, first = wb.matching_steps(start(), jax.random.key(1), [surrogate], grads, bases, labels,
                                  3, config)
  half, second = wb.matching_steps(half, jax.random.key(1), [surrogate], grads, bases, labels, 3,
                                   config)
  np.testing.assert_allclose(np.asarray(half.delta), np.asarray(whole.delta), atol=1e-7)
  np.testing.assert_allclose(np.concatenate([first, second]), np.asarray(history), rtol=1e-6)
  # One scanned program and a host loop of jitted steps take the same steps. Their float32
  # rounding may differ (other fusions), and a sign step flips a pixel whose gradient is
  # within rounding of zero, moving it by a whole step: allow such pixels, but rarely.
  scanned, scanned_history = wb.matching_steps(start(), jax.random.key(1), [surrogate], grads,
                                               bases, labels, 6, config, loop="scan")
  moved = np.abs(np.asarray(scanned.delta) - np.asarray(whole.delta)) > 1e-6
  assert moved.mean() < 0.01
  np.testing.assert_allclose(np.asarray(scanned_history), np.asarray(history), rtol=1e-4)
  with pytest.raises(ValueError, match="loop"):
    wb.matching_steps(start(), jax.random.key(1), [surrogate], grads, bases, labels, 1, config,
                      loop="gpu")


def test_crafting_errors_name_the_problem():
  surrogate, target, bases = _surrogate(0), _images(0, 1)[0], _images(1, 3)
  with pytest.raises(TypeError, match="WitchesBrewConfig|GradientMatchingConfig"):
    wb.witches_brew(jax.random.key(0), surrogate, target, 1, bases, 0,
                    attack_configs.PoisonFrogsConfig())
  with pytest.raises(ValueError, match="base_labels"):
    wb.witches_brew(jax.random.key(0), surrogate, target, 1, bases, [0, 1], _small_config())
  with pytest.raises(TypeError, match="uint8"):
    wb.witches_brew(jax.random.key(0), surrogate, target, 1, bases / 255.0, 0, _small_config())
  with pytest.raises(TypeError, match="GradientModel"):
    wb.witches_brew(jax.random.key(0), [object()], target, 1, bases, 0, _small_config())
  with pytest.raises(ValueError, match="restarts"):
    attack_configs.WitchesBrewConfig(restarts=0)


def test_gradient_model_of_trained_classifiers():
  from flax import nnx
  from jaxpoison import classifier
  config = classifier.tiny_config("airbench94", epochs=0, batch_size=4, whitening_images=8)
  images = _images(11, 8, size=32)
  models = classifier.train_models(jax.random.split(jax.random.key(0), 2), images,
                                   np.arange(8) % 10, config)
  surrogate = classifier.gradient_model(models, 1)
  assert all(isinstance(v, nnx.Param) or not hasattr(v, "value")
             for v in jax.tree.leaves(surrogate.params, is_leaf=lambda x: isinstance(
                 x, nnx.Variable)))
  x = jnp.asarray(images, jnp.float32) / 255
  reference = classifier.logits_extractor(models, 1)
  np.testing.assert_allclose(np.asarray(surrogate.apply_fn(surrogate.params, surrogate.state, x)),
                             np.asarray(reference.apply_fn(reference.params, x)), atol=1e-5)
  # Two surrogates of one architecture share the apply_fn, so they stack into one vmap.
  assert classifier.gradient_model(models, 0).apply_fn == surrogate.apply_fn


@pytest.mark.parametrize("augment,batch_size", [(True, 512), (False, 2)])
def test_forward_over_reverse_gradient_equals_reverse_over_reverse(augment, batch_size):
  # The crafting step's explicit gradient (a JVP in parameter space, then reverse mode in the
  # images) against plain double reverse-mode autodiff of the same loss, ensemble of two (one
  # stacked group) and three poison batches or one, with and without augmentation.
  with jax.enable_x64(True):
    surrogates = [_surrogate(0, jnp.float64), _surrogate(1, jnp.float64)]
    poisons = jnp.asarray(_images(3, 5), jnp.float64) / 255
    labels = jnp.array([0, 1, 2, 0, 1])
    target = jnp.asarray(_images(4, 1), jnp.float64) / 255
    grads = wb.target_gradients(surrogates, target, jnp.array([2]), batch_size=1)
    config = _small_config(augment=augment, poison_batch_size=batch_size)
    key = jax.random.key(5)
    loss, grad = wb._matching_value_and_grad(surrogates, grads, poisons, labels, key, config)
    expected_loss, expected_grad = jax.value_and_grad(
        lambda x: wb._matching_loss(surrogates, grads, x, labels, key, config))(poisons)
  assert float(loss) == pytest.approx(float(expected_loss), rel=1e-12)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-9, atol=1e-14)


# --- the attack's effect on a victim trained from scratch, where the attack is easy ------------
#
# A linear softmax classifier on two overlapping Gaussian classes of 8×8 colour images, trained
# from scratch by full-batch gradient descent with L2 weight decay: its loss is strongly convex,
# so a victim from any initialization reaches the surrogate's optimum on clean data, and the
# poisons' gradient alignment transfers to it exactly. The targets are class-0 test images the
# clean model classifies correctly with p(class 1) in [0.15, 0.45]; the poisons are 16 of the 40
# class-1 training images (the same bases for the crafted and the random perturbation).

_TINY_SHAPE = (8, 8, 3)
_TINY_DIM = int(np.prod(_TINY_SHAPE))


def _tiny_logits(params, state, images):
  del state
  return images.reshape(images.shape[0], -1) @ params["w"] + params["b"]


@jax.jit
def _train_linear(key, images, labels):
  x = images.astype(jnp.float32) / 255
  params = {"w": 0.01 * jax.random.normal(key, (_TINY_DIM, 2)), "b": jnp.zeros(2)}
  opt = optax.sgd(0.5, momentum=0.9)

  def loss(p):
    ce = optax.softmax_cross_entropy_with_integer_labels(_tiny_logits(p, None, x), labels)
    return ce.mean() + 5e-3 * jnp.sum(p["w"] ** 2)

  def step(carry, _):
    p, opt_state = carry
    updates, opt_state = opt.update(jax.grad(loss)(p), opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, 1000)
  return params


def _tiny_task(seed):
  rng = np.random.default_rng(seed)
  mean = rng.uniform(0.3, 0.7, _TINY_DIM)
  shift = rng.normal(0, 1, _TINY_DIM)
  shift *= 1.2 / np.linalg.norm(shift)

  def draw(n, label):
    x = (mean + label * shift)[None] + rng.normal(0, 0.12, (n, _TINY_DIM))
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8).reshape(n, *_TINY_SHAPE)

  images = np.concatenate([draw(40, 0), draw(40, 1)])
  return images, np.repeat([0, 1], 40), draw(600, 0), rng


def _class_one_probability(params, image):
  logits = _tiny_logits(params, None, jnp.asarray(image[None], jnp.float32) / 255)
  return float(jax.nn.softmax(logits)[0, 1])


def test_poisons_flip_targets_of_a_victim_trained_from_scratch_where_random_ones_do_not():
  scipy_stats = pytest.importorskip("scipy.stats")
  images, labels, tests, rng = _tiny_task(0)
  surrogate = _train_linear(jax.random.key(0), images, labels)
  clean_p = np.asarray(jax.nn.softmax(_tiny_logits(surrogate, None,
                                                   jnp.asarray(tests, jnp.float32) / 255))[:, 1])
  targets = np.flatnonzero((clean_p > 0.15) & (clean_p < 0.45))[:20]
  assert targets.size == 20
  config = attack_configs.WitchesBrewConfig(restarts=1, num_steps=100, augment=False)
  budget = constraints.linf_budget(config.epsilon)
  crafted_flips = random_flips = 0
  for trial, target in enumerate(targets):
    bases = rng.choice(np.flatnonzero(labels == 1), 16, replace=False)
    poisons = np.asarray(wb.witches_brew(jax.random.key(trial), wb.GradientModel(
        _tiny_logits, surrogate), tests[target], 1, images[bases], 1, config).poisons)
    signs = rng.choice([-1, 1], poisons.shape)
    random = np.clip(images[bases].astype(np.int64) + budget * signs, 0, 255).astype(np.uint8)
    victim_key = jax.random.key(1000 + trial)  # not the surrogate's initialization
    for perturbed, is_crafted in ((poisons, True), (random, False)):
      tampered = images.copy()
      tampered[bases] = perturbed
      victim = _train_linear(victim_key, tampered, labels)
      flipped = _class_one_probability(victim, tests[target]) > 0.5
      crafted_flips += flipped and is_crafted
      random_flips += flipped and not is_crafted
  # Margin: the poisons must flip most targets (≥ 15 of 20) and random perturbations of the
  # same ℓ∞ norm on the same bases almost none (≤ 2), and the difference must be significant
  # (one-sided Fisher exact test, p < 1e-4) — a sign error or a broken second-order gradient
  # leaves the crafted poisons no better than the random ones.
  assert crafted_flips >= 15, (crafted_flips, random_flips)
  assert random_flips <= 2, (crafted_flips, random_flips)
  table = [[crafted_flips, 20 - crafted_flips], [random_flips, 20 - random_flips]]
  assert scipy_stats.fisher_exact(table, alternative="greater").pvalue < 1e-4
