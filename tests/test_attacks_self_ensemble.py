"""SEP (jaxpoison.attacks.self_ensemble): the checkpoints of one training run, the class-mean
features against numpy, one SEP-FA-VR step and the plain ensemble step against an unjitted
re-implementation of the reference's loops, the poisons' effect on the checkpoints, bounds,
batch-size independence, determinism and the checks at the boundary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpoison import classifier
from jaxpoison.attacks import self_ensemble as sep

NUM_IMAGES, NUM_CLASSES = 64, 4
SHAPE = (16, 16, 3)
BUDGET = 8  # grey levels: ⌊255 · 8/255⌋
KEY = jax.random.key(0)
# Ten outer steps of one grey level: past the 8-level bound, so the projection binds.
CONFIG = sep.SEPConfig(num_classes=NUM_CLASSES, steps=10, num_checkpoints=3, inner_steps=3,
                       target_offset=2, batch_size=64)


def _data(seed=0):
  """Four colour classes with pixel noise (a tiny network learns them in a few steps), two
  images saturated in places so that the box clips the perturbation there."""
  rng = np.random.default_rng(seed)
  colours = np.array([[190, 70, 70], [70, 190, 70], [70, 70, 190], [170, 170, 60]])
  labels = rng.permutation(np.arange(NUM_IMAGES) % NUM_CLASSES).astype(np.int32)
  images = colours[labels][:, None, None, :] + rng.integers(-60, 61, (NUM_IMAGES, *SHAPE))
  images = np.clip(images, 0, 255).astype(np.uint8)
  images[0, :4] = 255
  images[1, :4] = 0
  return images, labels


def _train_config(**changes):
  # 36 steps at lr 0.02: the checkpoints at 45%, 62% and 100% training accuracy.
  defaults = dict(image_shape=SHAPE, num_classes=NUM_CLASSES, batch_size=16, epochs=9, lr=0.02,
                  widths=(8, 8, 8, 8), schedule="constant", flip="none", translate=0)
  return classifier.tiny_config("resnet18", **{**defaults, **changes})


@pytest.fixture(scope="module")
def data():
  return _data()


@pytest.fixture(scope="module")
def checkpoints(data):
  images, labels = data
  return sep.train_checkpoints(jax.random.key(3), images, labels, _train_config(), 3)


@pytest.fixture(scope="module")
def poisoned(data, checkpoints):
  images, labels = data
  return sep.sep_poison(KEY, checkpoints, images, labels, CONFIG)


# --- checkpoints --------------------------------------------------------------------------------

def test_checkpoint_steps_are_evenly_spaced_and_end_with_training():
  np.testing.assert_array_equal(sep.checkpoint_steps(12, 3), [4, 8, 12])
  np.testing.assert_array_equal(sep.checkpoint_steps(10, 4), [2, 5, 8, 10])  # round half even
  np.testing.assert_array_equal(sep.checkpoint_steps(5, 5), [1, 2, 3, 4, 5])
  # The reference's 15 of 120 epochs: one every 8, the last the end.
  assert sep.checkpoint_steps(120, 15)[[0, -1]].tolist() == [8, 120]
  for bad in (0, 6):
    with pytest.raises(ValueError, match="num_checkpoints"):
      sep.checkpoint_steps(5, bad)


def test_the_last_checkpoint_is_the_trained_network(data, checkpoints):
  images, labels = data
  config = _train_config()
  assert checkpoints.num_models == 3
  trained = classifier.train_models(jax.random.key(3)[None], images, labels, config)
  last = classifier.select(checkpoints, 2)
  x = jnp.asarray(images[:16])
  # The same steps on the same batches; float32 kernels in another order differ by rounding.
  np.testing.assert_allclose(classifier.logits(last, x), classifier.logits(trained, x),
                             rtol=1e-3, atol=1e-3)
  # Earlier checkpoints are other points of the run.
  first = classifier.logits(classifier.select(checkpoints, 0), x)
  assert float(jnp.max(jnp.abs(first - classifier.logits(trained, x)))) > 1e-2


def test_class_mean_features_match_numpy(data, checkpoints):
  images, labels = data
  means = np.asarray(sep.class_mean_features(checkpoints, images, labels, NUM_CLASSES,
                                             batch_size=24))
  feats = np.asarray(classifier.features(checkpoints, images), np.float64)
  expected = np.stack([[feats[m, labels == k].mean(0) for k in range(NUM_CLASSES)]
                       for m in range(3)])
  np.testing.assert_allclose(means, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="classes \\[3\\]"):
    sep.class_mean_features(checkpoints, images, labels % 3, NUM_CLASSES)


# --- the steps against the reference's loops ----------------------------------------------------

def _reference_images(checkpoints, images, labels, key, config):
  """The reference's loops (ens.py / ens_feature_svre.py), step by step, each checkpoint's
  gradient taken alone by jax.grad outside any jit (float64 accumulation of the VR sum)."""
  graphdef = checkpoints.graphdef
  states = [jax.tree.map(lambda a, m=m: a[m], checkpoints.state) for m in range(3)]
  means = np.asarray(sep.class_mean_features(checkpoints, images, labels, NUM_CLASSES))
  x = images.astype(np.float32) / 255.0
  targets = (labels + config.target_offset) % config.num_classes
  lower, upper = np.maximum(x - config.epsilon, 0), np.minimum(x + config.epsilon, 1)

  def grad(m, z):
    def loss(z):
      model = nnx.merge(graphdef, states[m], copy=True)
      if config.feature_alignment:
        d = model.features(z, train=False) - means[m][targets]
        return jnp.sum(jnp.mean(d ** 2, axis=-1))
      logp = jax.nn.log_softmax(model(z, train=False))
      return -jnp.sum(jnp.take_along_axis(logp, jnp.asarray(targets)[:, None], 1))
    return np.asarray(jax.grad(loss)(jnp.asarray(z, jnp.float32)), np.float64)

  step = lambda z, g: np.clip(z - config.step_size * np.sign(g), lower, upper).astype(np.float32)
  z = x
  for t in range(config.steps):
    grads = [grad(m, z) for m in range(3)]
    mean_grad = sum(grads) / 3
    if not config.variance_reduction:
      z = step(z, mean_grad)
      continue
    z_inner, total = z.copy(), 0.0
    for s in range(config.inner_steps):
      k = int(jax.random.randint(jax.random.fold_in(jax.random.fold_in(key, t), s), (), 0, 3))
      total = total + grad(k, z_inner) - grads[k] + mean_grad
      z_inner = step(z_inner, total)
    z = step(z, total)
  return z


@pytest.mark.parametrize("loop", ["scan", "host"])
@pytest.mark.parametrize("feature_alignment, variance_reduction",
                         [(True, True), (False, False)])
def test_steps_match_the_reference_loops(data, checkpoints, feature_alignment,
                                         variance_reduction, loop):
  images, labels = data
  config = sep.SEPConfig(num_classes=NUM_CLASSES, steps=2, num_checkpoints=3, inner_steps=3,
                         target_offset=2, feature_alignment=feature_alignment,
                         variance_reduction=variance_reduction, batch_size=32)
  if feature_alignment:
    means = sep.class_mean_features(checkpoints, images, labels, NUM_CLASSES)
  else:
    means = jnp.zeros((3, NUM_CLASSES, 1))
  run = {"scan": sep._sep_scan, "host": sep._sep_host}[loop]
  z = run(checkpoints.graphdef, checkpoints.state, means, jnp.asarray(images),
          jnp.asarray(labels), sep.checkpoint_draws(KEY, config), config)
  expected = _reference_images(checkpoints, images, labels, KEY, config)
  # Every value moves in whole steps of 1/255; a gradient component within rounding of zero
  # can take the other sign, so a few values may differ by a step or two, no more.
  diff = np.abs(np.asarray(z) - expected) * 255
  assert diff.max() <= 2 * (config.inner_steps + 1) + 1e-3
  assert np.mean(diff > 1e-3) < 0.01


def test_checkpoint_draws_cover_the_ensemble_uniformly():
  config = sep.SEPConfig(num_checkpoints=5, steps=40, inner_steps=50)
  draws = np.asarray(sep.checkpoint_draws(KEY, config))
  assert draws.shape == (40, 50) and draws.min() == 0 and draws.max() == 4
  # 2,000 draws, 400 expected per checkpoint: 4.5 binomial standard deviations (17.9) apart.
  np.testing.assert_allclose(np.bincount(draws.ravel(), minlength=5), 400, atol=80)
  np.testing.assert_array_equal(draws[3, 7], jax.random.randint(
      jax.random.fold_in(jax.random.fold_in(KEY, 3), 7), (), 0, 5))


# --- the poisons --------------------------------------------------------------------------------

def test_poisons_pull_features_toward_the_target_class(data, checkpoints, poisoned):
  images, labels = data
  targets = (labels + CONFIG.target_offset) % NUM_CLASSES
  means = np.asarray(sep.class_mean_features(checkpoints, images, labels, NUM_CLASSES))

  def distance(x):
    f = np.asarray(classifier.features(checkpoints, x))
    return np.mean((f - means[np.arange(3)[:, None], targets[None, :]]) ** 2, axis=-1)

  before, after = distance(images), distance(poisoned.poisons)
  # Every checkpoint: nearly every image closer to the target class's mean (measured: all), and
  # closer on average (measured: 0.51, 0.61, 0.84 of the clean distance; the colour classes lie
  # far apart for the trained network at 8 grey levels).
  assert np.all(np.mean(after < before, axis=1) > 0.9)
  assert np.all(after.mean(axis=1) < 0.9 * before.mean(axis=1))
  assert poisoned.target_rate.shape == (3,)
  clean_rate = np.mean(np.asarray(classifier.predict(checkpoints, images)) == targets[None], 1)
  assert np.all(poisoned.target_rate >= clean_rate)
  assert poisoned.target_rate.sum() > clean_rate.sum()


def test_poisons_keep_the_bound(data, poisoned):
  images, _ = data
  assert poisoned.poisons.dtype == np.uint8 and poisoned.poisons.shape == images.shape
  offsets = poisoned.poisons.astype(np.int32) - images.astype(np.int32)
  assert np.abs(offsets).max() == BUDGET
  assert np.all(offsets[0, :4] <= 0) and np.all(offsets[1, :4] >= 0)


def test_batch_size_is_memory_only(data, checkpoints, poisoned):
  images, labels = data
  import dataclasses
  other = sep.sep_poison(KEY, checkpoints, images, labels,
                         dataclasses.replace(CONFIG, batch_size=24))
  # Different batch shapes run different kernels: near-zero gradient components may flip.
  assert np.mean(other.poisons != poisoned.poisons) < 0.01


def test_sep_is_determined_by_its_key(data, checkpoints, poisoned):
  images, labels = data
  again = sep.sep_poison(KEY, checkpoints, images, labels, CONFIG)
  np.testing.assert_array_equal(again.poisons, poisoned.poisons)
  other = sep.sep_poison(jax.random.key(1), checkpoints, images, labels, CONFIG)
  assert not np.array_equal(other.poisons, poisoned.poisons)  # VR's checkpoint draws


# --- defaults and checks ------------------------------------------------------------------------

def test_defaults_follow_the_reference():
  config = sep.SEPConfig()
  assert (config.epsilon, config.steps, config.step_size, config.num_checkpoints,
          config.inner_steps, config.target_offset, config.feature_alignment,
          config.variance_reduction) == (8 / 255, 30, 1 / 255, 15, 15, 5, True, True)
  recipe = sep.sep_surrogate_config()
  assert (recipe.model, recipe.epochs, recipe.batch_size, recipe.lr, recipe.momentum,
          recipe.weight_decay, recipe.flip, recipe.translate, recipe.pad_mode) == (
              "resnet18", 120, 128, 0.1, 0.9, 5e-4, "random", 4, "zeros")


@pytest.mark.parametrize("changes", [dict(epsilon=8), dict(steps=0), dict(inner_steps=0),
                                     dict(num_classes=4, target_offset=8),
                                     dict(num_checkpoints=0), dict(step_size=-1.0)])
def test_config_rejects_bad_values(changes):
  with pytest.raises(ValueError):
    sep.SEPConfig(**changes)


def test_inputs_are_checked_at_the_boundary(data, checkpoints):
  images, labels = data
  with pytest.raises(TypeError, match="TrainedModels"):
    sep.sep_poison(KEY, lambda z: z, images, labels, CONFIG)
  with pytest.raises(ValueError, match="num_checkpoints"):
    sep.sep_poison(KEY, checkpoints, images, labels,
                   sep.SEPConfig(num_classes=NUM_CLASSES, num_checkpoints=2))
  with pytest.raises(ValueError, match="num_classes"):
    sep.sep_poison(KEY, checkpoints, images, labels % 3,
                   sep.SEPConfig(num_classes=3, num_checkpoints=3))
  with pytest.raises(ValueError, match="shape"):
    sep.sep_poison(KEY, checkpoints, images[:, :8, :8], labels, CONFIG)
  with pytest.raises(TypeError, match="dtype"):
    sep.sep_poison(KEY, checkpoints, images.astype(np.float32), labels, CONFIG)
  with pytest.raises(TypeError, match="config"):
    sep.sep_poison(KEY, checkpoints, images, labels, object())
  with pytest.raises(ValueError, match="loop"):
    sep.sep_poison(KEY, checkpoints, images, labels, CONFIG, loop="while")
  with pytest.raises(ValueError, match="batch_size"):
    sep.train_checkpoints(KEY, images, labels, _train_config(batch_size=128), 3)
  with pytest.raises(ValueError, match="image_shape"):
    sep.train_checkpoints(KEY, images, labels, _train_config(image_shape=(8, 8, 3)), 3)
