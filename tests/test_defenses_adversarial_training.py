"""Tests of ℓ∞ PGD and Madry-style adversarial training in the many-model trainer (CPU, tiny
networks, 128 synthetic images, a few steps).

The trained models are module fixtures: each distinct program compiles once, and compiling
dominates the time on a CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxpoison import classifier, defenses
from jaxpoison.classifier import train as train_lib
from jaxpoison.classifier.adversarial import pgd_linf as classifier_pgd_linf
from jaxpoison.defenses import adversarial_config, pgd_linf, robust_accuracy

NUM_TRAIN = 128
EPSILON = 8 / 255
# Same tolerance as tests/test_classifier.py's (host loop vs scan: float sums in another order).
LOOP_RTOL = 1e-3

# ----------------------------------------------------------------------------- PGD


def _linear(seed=0, shape=(6, 4, 4, 3), classes=3):
  rng = np.random.default_rng(seed)
  dim = int(np.prod(shape[1:]))
  w = rng.normal(0, 0.3, (dim, classes)).astype(np.float32)
  b = rng.normal(0, 0.1, classes).astype(np.float32)
  x = rng.uniform(0, 1, shape).astype(np.float32)
  x[0, 0] = 0.0  # pixels on the box's faces: the projection must clip there
  x[1, 1] = 1.0
  y = rng.integers(0, classes, shape[0]).astype(np.int32)
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ jnp.asarray(w) + jnp.asarray(b)
  return w, b, x, y, logits_fn


def _np_losses(w, b, x, y):
  logits = x.reshape(x.shape[0], -1).astype(np.float64) @ w + b
  logits = logits - logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -logp[np.arange(len(y)), y]


def _np_pgd(w, b, x, y, start, epsilon, steps, step_size):
  """The same sign-gradient steps in float64 numpy: ∇ₓ CE = (softmax(xW + b) − onehot(y)) Wᵀ."""
  w, b, x = w.astype(np.float64), b.astype(np.float64), x.astype(np.float64)
  lower, upper = np.clip(x - epsilon, 0, 1), np.clip(x + epsilon, 0, 1)
  z = start.astype(np.float64)
  onehot = np.eye(w.shape[1])[y]
  for _ in range(steps):
    logits = z.reshape(z.shape[0], -1) @ w + b
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    grad = ((p - onehot) @ w.T).reshape(z.shape)
    z = np.clip(z + step_size * np.sign(grad), lower, upper)
  return z


def test_defenses_reexport_the_trainers_pgd():
  assert pgd_linf is classifier_pgd_linf  # one implementation, on the classifier's floor
  assert defenses.adversarial_training.pgd_linf is classifier_pgd_linf


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_the_ball_and_raises_the_loss(random_start):
  w, b, x, y, logits_fn = _linear()
  adv = np.asarray(pgd_linf(logits_fn, x, y, jax.random.key(3), epsilon=EPSILON, steps=5,
                            step_size=2 / 255, random_start=random_start))
  assert adv.dtype == np.float32 and adv.shape == x.shape
  assert np.max(np.abs(adv - x)) <= EPSILON + 1e-6
  assert adv.min() >= 0.0 and adv.max() <= 1.0
  assert np.max(np.abs(adv - x)) >= EPSILON - 1e-6  # it moved to the ball's boundary somewhere
  clean, attacked = _np_losses(w, b, x, y), _np_losses(w, b, adv, y)
  # CE of a linear model is convex in x, so the first sign step alone raises every example's
  # loss by at least step_size · ‖∇‖₁; five steps within ε = 8/255 of 48 pixels raise the
  # loss of this model (weights ~N(0, 0.3²)) by far more than rounding.
  assert np.all(attacked > clean), (clean, attacked)
  assert attacked.mean() > clean.mean() + 0.1, (clean.mean(), attacked.mean())


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_matches_a_numpy_reimplementation(random_start):
  w, b, x, y, logits_fn = _linear(seed=1)
  key = jax.random.key(11)
  epsilon, steps, step_size = 0.05, 6, 0.015
  adv = np.asarray(pgd_linf(logits_fn, jnp.asarray(x), y, key, epsilon=epsilon, steps=steps,
                            step_size=step_size, random_start=random_start))
  start = x
  if random_start:  # the start pgd_linf documents
    noise = np.asarray(jax.random.uniform(key, x.shape, jnp.float32, -epsilon, epsilon))
    start = np.clip(x + noise, 0, 1)
  expected = _np_pgd(w, b, x, y, start, epsilon, steps, step_size)
  # float32 vs float64 rounding only; a different sign anywhere would differ by 2 · step_size.
  np.testing.assert_allclose(adv, expected, rtol=0, atol=1e-5)
  assert np.max(np.abs(expected - start)) > step_size / 2  # the steps did move the images
  # uint8 input is read as /255.
  x8 = (x * 255).round().astype(np.uint8)
  np.testing.assert_allclose(
      pgd_linf(logits_fn, x8, y, key, epsilon=epsilon, steps=steps, step_size=step_size,
               random_start=False),
      _np_pgd(w, b, x8 / 255.0, y, x8 / 255.0, epsilon, steps, step_size), rtol=0, atol=1e-5)


def test_pgd_is_not_differentiated_through():
  w, b, x, y, _ = _linear()

  def total(weights, images):
    fn = lambda z: z.reshape(z.shape[0], -1) @ weights + b
    return pgd_linf(fn, images, y, jax.random.key(0), epsilon=EPSILON, steps=2,
                    step_size=2 / 255).sum()

  gw, gx = jax.grad(total, argnums=(0, 1))(jnp.asarray(w), jnp.asarray(x))
  assert not np.any(np.asarray(gw)) and not np.any(np.asarray(gx))


def test_pgd_argument_errors():
  _, _, x, y, logits_fn = _linear()
  with pytest.raises(ValueError, match="random_start needs a PRNG key"):
    pgd_linf(logits_fn, x, y, None, epsilon=EPSILON, steps=1, step_size=1 / 255)
  # Without a random start no key is needed.
  pgd_linf(logits_fn, x, y, None, epsilon=EPSILON, steps=1, step_size=1 / 255,
           random_start=False)
  with pytest.raises(ValueError, match="labels: expected one label per image"):
    pgd_linf(logits_fn, x, y[:-1], jax.random.key(0), epsilon=EPSILON, steps=1,
             step_size=1 / 255)


# ----------------------------------------------------------------------------- training

# Red vs green images, flat colour plus noise of ±20 grey levels: trivially separable, and a
# standard network trained on them still leans on fragile high-frequency features (airbench's
# whitening layer amplifies the noise directions), so PGD at 8/255 breaks it.
PALETTE = np.array([(220, 40, 40), (40, 220, 40)])


def _two_colour_data(seed, n):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, len(PALETTE), n).astype(np.int32)
  noise = rng.integers(-20, 21, (n, 32, 32, 3))
  images = np.clip(PALETTE[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
  return images, labels


@pytest.fixture(scope="module")
def data():
  return _two_colour_data(0, NUM_TRAIN), _two_colour_data(1, 200)  # train, test


@pytest.fixture(scope="module")
def keys():
  return jax.random.split(jax.random.key(7), 2)


@pytest.fixture(scope="module")
def config():
  # 16 steps (4 epochs of 4 batches). No lookahead (its EMA would discard the last steps of so
  # short a run) and no test-time augmentation (six views would make robust_accuracy's
  # attack six times as slow).
  return classifier.tiny_config(num_classes=2, epochs=4, batch_size=32, lookahead=False,
                                tta_level=0)


@pytest.fixture(scope="module")
def adv_config(config):
  return adversarial_config(config, epsilon=EPSILON, steps=5, step_size=2 / 255)


@pytest.fixture(scope="module")
def standard(data, config, keys):
  (x, y), _ = data
  return classifier.train_models(keys, x, y, config)


@pytest.fixture(scope="module")
def adversarial(data, adv_config, keys):
  (x, y), _ = data
  return classifier.train_models(keys, x, y, adv_config)


def _leaves(models):
  return [np.asarray(a) for a in jax.tree.leaves(models.state)]


def _max_diff(a, b):
  return max(float(np.max(np.abs(u - v)) / max(float(np.max(np.abs(u))), 1e-6))
             for u, v in zip(_leaves(a), _leaves(b)))


def test_adversarial_config_sets_the_fields(config, adv_config):
  assert (adv_config.adversarial_epsilon, adv_config.adversarial_steps,
          adv_config.adversarial_step_size, adv_config.adversarial_random_start) == (
              EPSILON, 5, 2 / 255, True)
  assert adv_config.replace(adversarial_epsilon=0.0, adversarial_steps=7) == config
  default = adversarial_config(config)
  assert (default.adversarial_epsilon, default.adversarial_steps,
          default.adversarial_step_size) == (8 / 255, 7, 2 / 255)
  assert classifier.TrainConfig.from_json(adv_config.to_json()) == adv_config
  assert classifier.TrainConfig().adversarial_epsilon == 0.0  # standard training by default


def test_epsilon_zero_is_standard_training_bit_for_bit(data, config, keys, standard):
  # ε = 0 ignores the other adversarial fields: the same program, the same parameters.
  (x, y), _ = data
  explicit = config.replace(adversarial_epsilon=0.0, adversarial_steps=3,
                            adversarial_step_size=0.5, adversarial_random_start=False)
  assert explicit != config
  out = classifier.train_models(keys, x, y, explicit)
  for a, b in zip(_leaves(standard), _leaves(out)):
    np.testing.assert_array_equal(a, b)
  # The traced step is literally the same program (no lax.cond around an attack).
  def lowered(c):
    parts = classifier.make_train_parts(c)
    carry = jax.eval_shape(parts.start, keys, x, y)
    return jax.jit(parts.body).lower(carry, jnp.int32(0), keys, x, y).as_text()
  assert lowered(explicit) == lowered(config)
  assert lowered(adversarial_config(config)) != lowered(config)


def test_adversarial_training_is_deterministic(data, adv_config, keys, standard, adversarial):
  (x, y), _ = data
  traces = train_lib.TRACES[adv_config]
  again = classifier.train_models(keys, x, y, adv_config)
  assert train_lib.TRACES[adv_config] == traces  # cached program, no recompilation
  for a, b in zip(_leaves(adversarial), _leaves(again)):
    np.testing.assert_array_equal(a, b)
  # Different keys, different models; the attack changes what is learned.
  assert not np.array_equal(_leaves(adversarial)[0][0], _leaves(adversarial)[0][1])
  assert _max_diff(standard, adversarial) > 1e-2


def test_adversarial_training_raises_robust_accuracy(data, standard, adversarial):
  _, (x_test, y_test) = data
  clean_std = np.asarray(classifier.evaluate(standard, x_test, y_test))
  clean_adv = np.asarray(classifier.evaluate(adversarial, x_test, y_test))
  key = jax.random.key(5)
  kwargs = dict(epsilon=EPSILON, steps=10, step_size=2 / 255)
  robust_std = np.asarray(robust_accuracy(standard, x_test, y_test, key, **kwargs))
  robust_adv = np.asarray(robust_accuracy(adversarial, x_test, y_test, key, **kwargs))
  print(f"clean: standard {clean_std}, adversarial {clean_adv}; PGD-10 at 8/255: standard "
        f"{robust_std}, adversarial {robust_adv}")
  assert robust_std.shape == robust_adv.shape == (2,)
  # Both learn the colours. Measured on the CPU (these 2 keys, and 4 other keys of the same
  # recipe): clean 1.0 for all; robust accuracy of the standard models 0.0-0.065, of the
  # adversarially trained ones 0.62-1.0 (1.0 with these keys). The bounds, 0.25 and 0.5, keep
  # a margin of ≥ 0.12 (24 of 200 images) from every measured value, far above float rounding
  # (another CPU or XLA moves a few images near the boundary), and still demand a gap of 0.25.
  assert np.all(clean_std >= 0.9) and np.all(clean_adv >= 0.9), (clean_std, clean_adv)
  assert np.all(robust_std <= 0.25), robust_std
  assert np.all(robust_adv >= 0.5), robust_adv


def test_robust_accuracy_at_zero_epsilon_is_the_accuracy(data, standard):
  # ε = 0: the PGD point is the image, so robust accuracy is `evaluate`'s accuracy, also with
  # test-time augmentation (the attack differentiates through the same views).
  _, (x_test, y_test) = data
  tta = classifier.TrainedModels(standard.graphdef, standard.state,
                                 standard.config.replace(tta_level=2))
  clean = np.asarray(classifier.evaluate(tta, x_test, y_test))
  zero = np.asarray(robust_accuracy(tta, x_test, y_test, None, epsilon=0.0, steps=1,
                                    step_size=1 / 255, random_start=False, batch_size=128))
  np.testing.assert_array_equal(zero, clean)


def test_robust_accuracy_argument_errors(data, standard):
  _, (x_test, y_test) = data
  with pytest.raises(ValueError, match="labels"):
    robust_accuracy(standard, x_test, y_test[:-1], jax.random.key(0), epsilon=EPSILON,
                    steps=1, step_size=1 / 255)
  with pytest.raises(ValueError, match="random_start needs a PRNG key"):
    robust_accuracy(standard, x_test, y_test, None, epsilon=EPSILON, steps=1,
                    step_size=1 / 255)
  with pytest.raises(ValueError, match="epsilon in"):
    robust_accuracy(standard, x_test, y_test, jax.random.key(0), epsilon=2.0, steps=1,
                    step_size=1 / 255)
  with pytest.raises(TypeError, match="models"):
    robust_accuracy(standard.state, x_test, y_test, jax.random.key(0), epsilon=EPSILON,
                    steps=1, step_size=1 / 255)


# A shorter run (4 steps, PGD-2) for the loops and the linear probe.
@pytest.fixture(scope="module")
def short_config(config):
  return adversarial_config(config.replace(epochs=1), epsilon=EPSILON, steps=2,
                            step_size=4 / 255)


def test_adversarial_host_loop_matches_the_scanned_program(data, short_config, keys):
  # Sign-PGD turns the two programs' rounding differences into whole-step differences of the
  # adversarial pixels wherever a gradient component is near zero, so the loops cannot agree to
  # float rounding (LOOP_RTOL) as standard training does: on one AMD EPYC host the whitening
  # bias differed by 3.2% of its size while the attack itself moved it by 150%. What must hold
  # is that, leaf by leaf, the loops differ by a small fraction of what the attack changes (a
  # host loop that dropped or misapplied the attack would differ by about all of it).
  (x, y), _ = data
  assert classifier.resolve_loop(short_config) == "host"
  host = classifier.train_models(keys, x, y, short_config)
  scanned = classifier.train_models(keys, x, y, short_config.replace(loop="scan"))
  standard = classifier.train_models(keys, x, y, short_config.replace(adversarial_epsilon=0.0))
  ratios = []
  for u, v, w in zip(_leaves(host), _leaves(scanned), _leaves(standard)):
    attack = float(np.max(np.abs(u - w)))
    loops = float(np.max(np.abs(u - v)))
    if attack > 0:
      ratios.append(loops / attack)
    else:  # a leaf nothing trains (the fixed whitening filters): identical in all three
      assert loops == 0
  print(f"adversarial, host loop vs scan: at most {max(ratios):.3g} of the attack's change "
        f"per leaf; relative max |Δ variable| = {_max_diff(host, scanned):.3g}")
  assert max(ratios) <= 0.1
  assert _max_diff(host, standard) > 1e-2  # the attack was active in this short run too


def test_adversarial_head_only_training(data, short_config, keys, standard):
  # Linear probe on frozen features, trained on PGD examples against the whole network.
  (x, y), _ = data
  head = short_config.replace(trainable="head", reinit_head=True)
  probed = classifier.train_models(keys, x, y, head, init=standard)
  plain = classifier.train_models(keys, x, y, head.replace(adversarial_epsilon=0.0),
                                  init=standard)
  before = nnx.to_flat_state(standard.state)
  after, after_plain = dict(nnx.to_flat_state(probed.state)), dict(
      nnx.to_flat_state(plain.state))
  for path, var in before:
    a, b = np.asarray(var[...]), np.asarray(after[path][...])
    if path[0] == "head":
      # Both probes start from the same fresh head and data order; only the attack differs.
      assert not np.array_equal(b, np.asarray(after_plain[path][...])), path
    else:
      np.testing.assert_array_equal(a, b, err_msg=str(path))  # features and statistics


def test_config_validation():
  with pytest.raises(ValueError, match=r"TrainConfig\.adversarial_epsilon: expected"):
    classifier.tiny_config(adversarial_epsilon=-0.01)
  with pytest.raises(ValueError, match=r"TrainConfig\.adversarial_epsilon: expected"):
    classifier.tiny_config(adversarial_epsilon=1.5)
  with pytest.raises(ValueError, match=r"TrainConfig\.adversarial_epsilon: expected"):
    classifier.tiny_config(adversarial_epsilon=float("nan"))
  with pytest.raises(ValueError, match=r"TrainConfig\.adversarial_steps: expected >= 1"):
    classifier.tiny_config(adversarial_epsilon=EPSILON, adversarial_steps=0)
  with pytest.raises(ValueError, match=r"TrainConfig\.adversarial_step_size: expected"):
    classifier.tiny_config(adversarial_step_size=0.0)
  with pytest.raises(ValueError, match=r"TrainConfig\.adversarial_steps"):
    adversarial_config(classifier.tiny_config(), steps=0)
  classifier.tiny_config(adversarial_steps=0)  # ignored without an attack
  with pytest.raises(TypeError, match="config: expected a TrainConfig"):
    adversarial_config({"model": "airbench94"})


def test_loss_is_summed_cross_entropy_of_the_true_labels():
  # The attack ascends Σ CE on the true labels, with no label smoothing: on a linear model
  # its first step from the clean image is exactly sign(∇ₓ Σ CE).
  w, b, x, y, logits_fn = _linear(seed=2)
  adv = pgd_linf(logits_fn, x, y, None, epsilon=1.0, steps=1, step_size=0.01,
                 random_start=False)
  grad = jax.grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(
      logits_fn(z), y).sum())(jnp.asarray(x))
  expected = np.clip(x + 0.01 * np.sign(np.asarray(grad)), 0, 1)
  np.testing.assert_array_equal(np.asarray(adv), expected)
