"""EM, TAP and REM (jaxpoison.attacks.unlearnable): the sign-PGD step against numpy and its
analytic optimum, each poison's defining property on a tiny surrogate, bounds after
quantization, determinism, and the checks at the boundary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison import classifier
from jaxpoison.classifier import adversarial
from jaxpoison.attacks import unlearnable as ue

NUM_IMAGES, NUM_CLASSES = 64, 4
SHAPE = (16, 16, 3)
BUDGET = 8  # grey levels: ⌊255 · 8/255⌋
KEY = jax.random.key(0)


def _data(seed=0, num=NUM_IMAGES):
  """Four colour classes with pixel noise: separable, so that a tiny network learns them in a
  few steps, with images away from (and a few at) the ends of the range."""
  rng = np.random.default_rng(seed)
  colours = np.array([[190, 70, 70], [70, 190, 70], [70, 70, 190], [170, 170, 60]])
  labels = rng.permutation(np.arange(num) % NUM_CLASSES).astype(np.int32)
  images = colours[labels][:, None, None, :] + rng.integers(-60, 61, (num, *SHAPE))
  images = np.clip(images, 0, 255).astype(np.uint8)
  images[0, :4] = 255  # Saturated rows: the perturbation is clipped on one side there.
  images[1, :4] = 0
  return images, labels


def _train_config(**changes):
  defaults = dict(image_shape=SHAPE, num_classes=NUM_CLASSES, batch_size=16,
                  schedule="constant", flip="none", translate=0)
  return classifier.tiny_config("resnet18", **{**defaults, **changes})


def _mean_loss(logits_fn, images, labels):
  x = jnp.asarray(images, jnp.float32) / 255.0
  return np.asarray(ue._cross_entropy(logits_fn(x), jnp.asarray(labels)))


def _surrogate_fn(models):
  gm = classifier.gradient_model(models, 0)
  return lambda z: gm.apply_fn(gm.params, gm.state, z)


def _assert_within_bound(poisons, images):
  assert poisons.dtype == np.uint8 and poisons.shape == images.shape
  offsets = poisons.astype(np.int32) - images.astype(np.int32)
  assert np.abs(offsets).max() <= BUDGET
  return offsets


# --- sign PGD -----------------------------------------------------------------------------------

def _linear_problem(seed=0, batch=3, shape=(4, 4, 3), classes=5):
  rng = np.random.default_rng(seed)
  x = rng.uniform(0, 1, (batch, *shape)).astype(np.float32)
  x[0, 0] = 1.0  # Values at the box's edges.
  x[1, 0] = 0.0
  w = rng.normal(0, 1, (int(np.prod(shape)), classes)).astype(np.float32)
  y = rng.integers(0, classes, batch).astype(np.int32)
  return x, w, y


def _numpy_ce_and_grad(z, w, y):
  logits = z.reshape(z.shape[0], -1).astype(np.float64) @ w
  logits -= logits.max(axis=1, keepdims=True)
  p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  ce = -np.log(p[np.arange(len(y)), y])
  onehot = np.eye(w.shape[1])[y]
  return ce, ((p - onehot) @ w.T).reshape(z.shape)


@pytest.mark.parametrize("minimize", [True, False])
def test_sign_pgd_one_step_matches_numpy(minimize):
  x, w, y = _linear_problem()
  eps, alpha = 8 / 255, 3 / 255
  start = np.random.default_rng(1).uniform(-2 * eps, 2 * eps, x.shape).astype(np.float32)
  loss = lambda z, _: ue._cross_entropy(z.reshape(z.shape[0], -1) @ jnp.asarray(w),
                                        jnp.asarray(y))
  delta, last = ue.sign_pgd(loss, x, start, epsilon=eps, steps=1, step_size=alpha,
                            minimize=minimize)

  d0 = np.clip(np.clip(start, -eps, eps), -x, 1 - x)
  ce, grad = _numpy_ce_and_grad(x + d0, w, y)
  step = -alpha * np.sign(grad) if minimize else alpha * np.sign(grad)
  expected = np.clip(np.clip(d0 + step, -eps, eps), -x, 1 - x)
  np.testing.assert_allclose(np.asarray(delta), expected, atol=1e-6)
  np.testing.assert_allclose(np.asarray(last), ce, rtol=1e-4, atol=1e-6)  # the loss it descended


def test_sign_pgd_reaches_the_analytic_optimum_of_a_linear_loss():
  # Per image loss ⟨c, x + δ⟩: its minimizer over the ε-ball ∩ box is δ = −ε·sign(c), clipped
  # to the box (the maximizer +ε·sign(c)); 10 steps of 2/255 cross the whole ball.
  x, _, _ = _linear_problem(shape=(6, 6, 3))
  c = np.random.default_rng(2).choice([-1.0, 1.0], x.shape).astype(np.float32)
  eps = 8 / 255
  loss = lambda z, _: jnp.sum(jnp.asarray(c) * z, axis=(1, 2, 3))
  delta, _ = ue.sign_pgd(loss, x, np.zeros_like(x), epsilon=eps, steps=10, step_size=2 / 255,
                         minimize=True)
  np.testing.assert_allclose(np.asarray(delta), np.clip(-eps * c, -x, 1 - x), atol=1e-6)
  ascent, _ = ue.sign_pgd(loss, x, np.zeros_like(x), epsilon=eps, steps=10, step_size=2 / 255,
                          minimize=False)
  np.testing.assert_allclose(np.asarray(ascent), np.clip(eps * c, -x, 1 - x), atol=1e-6)


def test_sign_pgd_history_and_unrolled_loop_are_the_same_steps():
  # One implementation for every ℓ∞ sign-PGD of the package (classifier.adversarial): the
  # history form (a scan, label-consistent backdoor) and the unrolled loop (pgd_linf inside
  # the trainer) take the steps the plain loop takes.
  assert ue.sign_pgd is adversarial.sign_pgd
  x, w, y = _linear_problem()
  loss = lambda z, _: ue._cross_entropy(z.reshape(z.shape[0], -1) @ jnp.asarray(w),
                                        jnp.asarray(y))
  kwargs = dict(epsilon=8 / 255, steps=4, step_size=2 / 255, minimize=False)
  delta, last = ue.sign_pgd(loss, x, np.zeros_like(x), **kwargs)
  delta_h, history = ue.sign_pgd(loss, x, np.zeros_like(x), history=True, **kwargs)
  delta_u, last_u = ue.sign_pgd(loss, x, np.zeros_like(x), unroll=True, **kwargs)
  assert history.shape == (4, len(x))
  np.testing.assert_allclose(np.asarray(delta_h), np.asarray(delta), atol=1e-7)
  np.testing.assert_allclose(np.asarray(delta_u), np.asarray(delta), atol=1e-7)
  np.testing.assert_allclose(np.asarray(history[-1]), np.asarray(last), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(last_u), np.asarray(last), rtol=1e-6)
  # Ascent: the loss at each step's start never falls on this convex (linear-model CE) loss.
  assert np.all(np.diff(np.asarray(history), axis=0) >= -1e-6)


def test_target_classes_is_the_reference_permutation():
  np.testing.assert_array_equal(np.asarray(ue.target_classes(np.arange(4), 4)), [1, 2, 3, 0])
  np.testing.assert_array_equal(np.asarray(ue.target_classes(np.arange(4), 4, 3)), [3, 0, 1, 2])


# --- EM -----------------------------------------------------------------------------------------

EM_CONFIG = ue.EMConfig(num_classes=NUM_CLASSES, steps=6, train_steps=4, max_rounds=3,
                        stop_accuracy=0.99, batch_size=32)


@pytest.fixture(scope="module")
def data():
  return _data()


@pytest.fixture(scope="module")
def em(data):
  images, labels = data
  return ue.em_poison(KEY, images, labels, EM_CONFIG, train_config=_train_config())


def test_em_keeps_the_bound_after_quantization(data, em):
  images, _ = data
  offsets = _assert_within_bound(em.poisons, images)
  assert np.abs(offsets).max() == BUDGET  # The descent uses the whole budget.
  assert 1 <= len(em.accuracy_history) <= EM_CONFIG.max_rounds
  assert em.converged == (em.accuracy_history[-1] >= EM_CONFIG.stop_accuracy)
  assert em.converged or len(em.accuracy_history) == EM_CONFIG.max_rounds


def test_em_lowers_the_surrogates_loss_on_its_images(data, em):
  images, labels = data
  logits_fn = _surrogate_fn(em.surrogate)
  clean = _mean_loss(logits_fn, images, labels)
  poisoned = _mean_loss(logits_fn, em.poisons, labels)
  assert poisoned.mean() < 0.5 * clean.mean()
  # (Images the surrogate is sure of have a loss of 0 in float32 either way.)
  assert np.mean(poisoned <= clean + 1e-4) > 0.9


def test_em_is_determined_by_its_key(data, em):
  images, labels = data
  again = ue.em_poison(KEY, images, labels, EM_CONFIG, train_config=_train_config())
  np.testing.assert_array_equal(again.poisons, em.poisons)
  np.testing.assert_array_equal(again.accuracy_history, em.accuracy_history)
  other = ue.em_poison(jax.random.key(1), images, labels, EM_CONFIG, train_config=_train_config())
  assert not np.array_equal(other.poisons, em.poisons)


# --- TAP ----------------------------------------------------------------------------------------

TAP_CONFIG = ue.TAPConfig(num_classes=NUM_CLASSES, steps=10, tau=0.25, restarts=2,
                          batch_size=32)


@pytest.fixture(scope="module")
def clean_surrogate(data):
  # Trained on the clean images by the program EM's surrogate runs (same recipe and length, so
  # its compiled steps are shared: `classifier.train_models` would compile its own).
  images, labels = data
  steps = EM_CONFIG.max_rounds * EM_CONFIG.train_steps
  x, y = jnp.asarray(images), jnp.asarray(labels)
  run = ue._SurrogateRun(_train_config(), steps, jax.random.key(3), x, y)
  run.train(0, steps, ue._perturbed(x, jnp.zeros(x.shape, jnp.float32)), y)
  return classifier.gradient_model(run.trained_models(steps), 0)


@pytest.fixture(scope="module")
def tap(data, clean_surrogate):
  images, labels = data
  return ue.tap_poison(KEY, clean_surrogate, images, labels, TAP_CONFIG)


def test_tap_pushes_images_toward_the_next_class(data, clean_surrogate, tap):
  images, labels = data
  logits_fn = lambda z: clean_surrogate.apply_fn(clean_surrogate.params, clean_surrogate.state,
                                                 z)
  targets = (labels + 1) % NUM_CLASSES
  clean = _mean_loss(logits_fn, images, targets)
  poisoned = _mean_loss(logits_fn, tap.poisons, targets)
  # The target class's log-probability rises (to rounding where it is already 1).
  assert np.mean(poisoned <= clean + 1e-4) > 0.9
  assert poisoned.mean() < clean.mean() - 0.5


def test_tap_keeps_the_bound_and_the_best_restart(data, tap):
  images, _ = data
  _assert_within_bound(tap.poisons, images)
  assert tap.restart_losses.shape == (TAP_CONFIG.restarts,)
  assert tap.best_restart == int(np.argmin(tap.restart_losses))


def test_tap_is_determined_by_its_key(data, clean_surrogate, tap):
  images, labels = data
  again = ue.tap_poison(KEY, clean_surrogate, images, labels, TAP_CONFIG)
  np.testing.assert_array_equal(again.poisons, tap.poisons)
  other = ue.tap_poison(jax.random.key(1), clean_surrogate, images, labels, TAP_CONFIG)
  assert not np.array_equal(other.poisons, tap.poisons)


# --- REM ----------------------------------------------------------------------------------------

# The end-to-end run without the transformations' expectation: with 16-pixel images, crops and
# a surrogate of 4 adversarial steps, the expectation leaves too weak an effect to test reliably;
# the expectation is tested on a linear model below.
# (No learning-rate decay within the 4 steps: each rate compiles its own training step.)
REM_CONFIG = ue.REMConfig(num_classes=NUM_CLASSES, steps=4, samples=2, adversarial_steps=2,
                          adversarial_step_size=2 / 255, train_steps=4, lr_decay_every=4,
                          augment=False)
REM_TRAIN_CONFIG = _train_config(flip="random", translate=2, pad_mode="zeros")


@pytest.fixture(scope="module")
def rem(data):
  images, labels = data
  return ue.rem_poison(KEY, images, labels, REM_CONFIG, train_config=REM_TRAIN_CONFIG)


def _adversarial_loss(logits_fn, x, labels, config, start=None):
  """Per-image loss after the adversary (ρ_a, its steps) from `start` (default: the image);
  traceable."""
  loss = lambda z, _: ue._cross_entropy(logits_fn(z), jnp.asarray(labels))
  start = jnp.zeros_like(x) if start is None else start
  rho, _ = ue.sign_pgd(loss, x, start, epsilon=config.adversarial_epsilon,
                       steps=config.adversarial_steps, step_size=config.adversarial_step_size,
                       minimize=False)
  return loss(x + rho, 0)


def _unit(images):
  return jnp.asarray(images, jnp.float32) / 255.0


def test_rem_lowers_the_loss_under_the_adversary(data, rem):
  images, labels = data
  logits_fn = _surrogate_fn(rem.surrogate)
  adversarial_loss = jax.jit(lambda x: _adversarial_loss(logits_fn, x, labels, REM_CONFIG))
  clean = np.asarray(adversarial_loss(_unit(images)))
  poisoned = np.asarray(adversarial_loss(_unit(rem.poisons)))
  assert poisoned.mean() < 0.8 * clean.mean()
  assert np.mean(poisoned < clean) > 0.9


def test_rem_noise_lowers_the_expected_adversarial_loss_on_a_small_network():
  # δ descends E_T max_ρ CE(f(T(x + δ) + ρ), y) (Danskin's gradient pulled back through the
  # transform); measured on fresh draws of T and of the adversary's start. A convolution and a
  # global average: nearly invariant to the crops and flips, so that one δ can serve them all.
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.uniform(0.1, 0.9, (16, 8, 8, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, 16), jnp.int32)
  kernel = jnp.asarray(rng.normal(0, 1, (3, 3, 3, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(0, 1, (8, 3)), jnp.float32)

  def logits_fn(z):
    h = jax.lax.conv_general_dilated(z, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(h).mean(axis=(1, 2)) @ w

  config = ue.REMConfig(num_classes=3, steps=10, samples=4, adversarial_steps=3,
                        adversarial_step_size=2 / 255, translate=2)
  keys = ue._indexed_keys(jax.random.key(5), jnp.arange(16))
  delta = jax.jit(lambda: ue._rem_perturbations(logits_fn, x, y, keys, config))()
  assert float(jnp.max(jnp.abs(delta))) <= config.epsilon + 1e-7

  @jax.jit
  def expected_loss(d):
    def draw(index):
      draw_keys = ue._indexed_keys(jax.random.fold_in(jax.random.key(100), index), jnp.arange(16))
      z = ue._flip_crop(jnp.clip(x + d, 0, 1), draw_keys, config.translate)
      start = jax.random.uniform(jax.random.fold_in(jax.random.key(200), index), z.shape,
                                 jnp.float32, -config.adversarial_epsilon,
                                 config.adversarial_epsilon)
      return _adversarial_loss(logits_fn, z, y, config, start)
    return jnp.mean(jax.lax.map(draw, jnp.arange(8)), axis=0)

  clean, poisoned = np.asarray(expected_loss(jnp.zeros_like(x))), np.asarray(expected_loss(delta))
  assert poisoned.mean() < 0.95 * clean.mean()
  assert np.all(poisoned < clean)


def test_flip_crop_is_a_flip_and_a_zero_padded_crop():
  rng = np.random.default_rng(6)
  images = rng.uniform(0.1, 1, (12, 6, 5, 2)).astype(np.float32)
  keys = ue._indexed_keys(jax.random.key(7), jnp.arange(12))
  out = np.asarray(jax.jit(ue._flip_crop, static_argnums=2)(jnp.asarray(images), keys, 2))
  seen_flips, seen_offsets = set(), set()
  for image, got in zip(images, out):
    matches = []
    for flip in (False, True):
      source = np.pad(image[:, ::-1] if flip else image, ((2, 2), (2, 2), (0, 0)))
      for dy in range(5):
        for dx in range(5):
          if np.array_equal(source[dy:dy + 6, dx:dx + 5], got):
            matches.append((flip, dy, dx))
    assert len(matches) == 1  # Exactly one flip and offset explains each output.
    seen_flips.add(matches[0][0])
    seen_offsets.add(matches[0][1:])
  assert seen_flips == {False, True} and len(seen_offsets) > 4  # Drawn per image.
  # Differentiable in the images: the crop's transpose puts each gradient back in place.
  grad = jax.jit(jax.grad(lambda z: jnp.sum(ue._flip_crop(z, keys, 2))))(jnp.asarray(images))
  assert set(np.unique(np.asarray(grad))) <= {0.0, 1.0}
  assert np.asarray(grad).sum() == pytest.approx(np.count_nonzero(out))


def test_rem_keeps_the_bound_and_trains_the_surrogate_adversarially(data, rem):
  images, _ = data
  _assert_within_bound(rem.poisons, images)
  config = rem.surrogate.config
  assert (config.adversarial_epsilon, config.adversarial_steps,
          config.adversarial_step_size) == (REM_CONFIG.adversarial_epsilon,
                                            REM_CONFIG.adversarial_steps,
                                            REM_CONFIG.adversarial_step_size)


def test_rem_is_determined_by_its_key(data, rem):
  images, labels = data
  again = ue.rem_poison(KEY, images, labels, REM_CONFIG, train_config=REM_TRAIN_CONFIG)
  np.testing.assert_array_equal(again.poisons, rem.poisons)


# --- defaults and checks ------------------------------------------------------------------------

def test_defaults_follow_the_references():
  em = ue.EMConfig()
  assert (em.epsilon, em.steps, em.step_size, em.train_steps, em.stop_accuracy,
          em.random_start) == (8 / 255, 20, 0.8 / 255, 10, 0.99, False)
  tap = ue.TAPConfig()
  assert (tap.steps, tap.restarts, tap.target_offset, tap.augment) == (250, 8, 1, True)
  assert tap.step_size == pytest.approx(0.4 / 255)
  rem = ue.REMConfig()
  assert (rem.epsilon, rem.steps, rem.step_size, rem.adversarial_epsilon,
          rem.adversarial_steps, rem.adversarial_step_size, rem.samples, rem.train_steps,
          rem.lr_decay_every) == (8 / 255, 10, 1.6 / 255, 4 / 255, 10, 0.8 / 255, 5, 5000, 2000)
  em_recipe = ue.em_surrogate_config()
  assert (em_recipe.model, em_recipe.batch_size, em_recipe.lr, em_recipe.weight_decay,
          em_recipe.schedule, em_recipe.flip, em_recipe.translate) == (
              "resnet18", 512, 0.1, 5e-4, "constant", "none", 0)
  rem_recipe = ue.rem_surrogate_config()
  assert (rem_recipe.batch_size, rem_recipe.flip, rem_recipe.translate,
          rem_recipe.pad_mode) == (128, "random", 4, "zeros")


@pytest.mark.parametrize("make, error", [
    (lambda: ue.EMConfig(epsilon=8), ValueError),            # ε in grey levels, not [0, 1]
    (lambda: ue.EMConfig(stop_accuracy=1.5), ValueError),
    (lambda: ue.EMConfig(steps=0), ValueError),
    (lambda: ue.EMConfig(train_steps=2.5), TypeError),
    (lambda: ue.TAPConfig(num_classes=4, target_offset=4), ValueError),
    (lambda: ue.TAPConfig(input_mean=(0.5, 2.0, 0.5)), ValueError),
    (lambda: ue.REMConfig(adversarial_epsilon=4.0), ValueError),
    (lambda: ue.REMConfig(lr_decay_rate=0.0), ValueError),
    (lambda: ue.REMConfig(num_classes=1), ValueError),
])
def test_configs_reject_bad_values(make, error):
  with pytest.raises(error):
    make()


def test_inputs_are_checked_at_the_boundary(data, clean_surrogate):
  images, labels = data
  tc = _train_config()
  with pytest.raises(TypeError, match="config"):
    ue.em_poison(KEY, images, labels, ue.TAPConfig(num_classes=NUM_CLASSES), train_config=tc)
  with pytest.raises(TypeError, match="dtype"):
    ue.em_poison(KEY, images.astype(np.float32), labels, EM_CONFIG, train_config=tc)
  with pytest.raises(ValueError, match="labels"):
    ue.em_poison(KEY, images, labels + NUM_CLASSES, EM_CONFIG, train_config=tc)
  with pytest.raises(TypeError, match="key"):
    ue.em_poison(0, images, labels, EM_CONFIG, train_config=tc)
  with pytest.raises(ValueError, match="schedule"):
    ue.em_poison(KEY, images, labels, EM_CONFIG, train_config=_train_config(schedule="cosine"))
  with pytest.raises(ValueError, match="image_shape"):
    ue.em_poison(KEY, images, labels, EM_CONFIG, train_config=_train_config(image_shape=(8, 8, 3)))
  with pytest.raises(ValueError, match="adversarial"):
    ue.em_poison(KEY, images, labels, EM_CONFIG,
                 train_config=_train_config(adversarial_epsilon=4 / 255))
  with pytest.raises(ValueError, match="num_classes"):
    ue.rem_poison(KEY, images, labels, REM_CONFIG, train_config=_train_config(num_classes=5))
  with pytest.raises(TypeError, match="GradientModel"):
    ue.tap_poison(KEY, lambda z: z, images, labels, TAP_CONFIG)
  with pytest.raises(ValueError, match="logits"):
    ue.tap_poison(KEY, clean_surrogate, images, labels % 3, ue.TAPConfig(num_classes=3))
  with pytest.raises(ValueError, match="input_mean"):
    ue.tap_poison(KEY, clean_surrogate, images[..., :1], labels, TAP_CONFIG)
