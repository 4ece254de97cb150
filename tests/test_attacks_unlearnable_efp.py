"""EFP, the entangled-features poison (jaxpoison.attacks.unlearnable.efp): its losses against
numpy, the reference model's recipe and the defaults against WenRuiUSTC/EntF, the poison's
defining property on a tiny adversarially trained reference (push moves features away from their
class's centroid, pull toward the nearest other class's), bounds after quantization, the
centroids, determinism, batch-size independence and the checks at the boundary."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison import attacks, classifier
from jaxpoison.attacks.unlearnable import efp

NUM_IMAGES, NUM_CLASSES = 64, 4
SHAPE = (16, 16, 3)
BUDGET = 8  # grey levels: ⌊255 · 8/255⌋
KEY = jax.random.key(0)
# Without the augmentation each image descends its own loss at the reference's fixed view, the
# property tested; the augmented run (the reference's default) descends its expectation.
CONFIG = efp.EFPConfig(num_classes=NUM_CLASSES, steps=12, tau=0.25, batch_size=32,
                       augment=False)
AUGMENTED = efp.EFPConfig(num_classes=NUM_CLASSES, steps=12, tau=0.25, batch_size=32)


def _data(seed=0, num=NUM_IMAGES):
  """Four colour classes with pixel noise (separable in a few steps), a few saturated rows."""
  rng = np.random.default_rng(seed)
  colours = np.array([[190, 70, 70], [70, 190, 70], [70, 70, 190], [170, 170, 60]])
  labels = rng.permutation(np.arange(num) % NUM_CLASSES).astype(np.int32)
  images = colours[labels][:, None, None, :] + rng.integers(-60, 61, (num, *SHAPE))
  images = np.clip(images, 0, 255).astype(np.uint8)
  images[0, :4] = 255
  images[1, :4] = 0
  return images, labels


@pytest.fixture(scope="module")
def data():
  return _data()


@pytest.fixture(scope="module")
def reference(data):
  # The reference recipe (adversarial training at 4/255) on a tiny network, 8 epochs.
  images, labels = data
  config = efp.efp_reference_config(
      8, image_shape=SHAPE, num_classes=NUM_CLASSES, widths=(4, 8, 8, 8), batch_size=16,
      compute_dtype="float32", adversarial_steps=2)
  return classifier.train_models(jax.random.key(3)[None], images, labels, config)


def _features(reference, images):
  return np.asarray(classifier.features(reference, jnp.asarray(images)))[0].astype(np.float64)


def _numpy_losses(features, labels, centroids, recipe):
  d = ((features[:, None, :] - centroids[None]) ** 2).mean(-1)
  if recipe == "push":
    return -d[np.arange(len(labels)), labels]
  d[np.arange(len(labels)), labels] = np.inf
  return d.min(-1)


@pytest.mark.parametrize("recipe", ["push", "pull"])
def test_losses_match_numpy(recipe):
  rng = np.random.default_rng(1)
  f = rng.normal(size=(7, 5)).astype(np.float32)
  c = rng.normal(size=(3, 5)).astype(np.float32)
  y = np.array([0, 1, 2, 0, 1, 2, 0])
  f[0] = c[0] + 1e-3  # Nearest to its own class: pull must still choose another class.
  got = np.asarray(efp.efp_losses(jnp.asarray(f), jnp.asarray(y), jnp.asarray(c), recipe))
  np.testing.assert_allclose(got, _numpy_losses(f.astype(np.float64), y, c.astype(np.float64),
                                                recipe), rtol=1e-5, atol=1e-6)


def test_defaults_follow_the_reference():
  config = efp.EFPConfig()
  assert (config.recipe, config.epsilon, config.steps, config.tau, config.restarts,
          config.augment, config.max_shift, config.fill, config.batch_size) == (
              "push", 8 / 255, 300, 0.05, 1, True, 4.0, (0.0, 0.0, 0.0), 512)
  assert config.step_size == pytest.approx(0.4 / 255)
  recipe = efp.efp_reference_config()
  assert (recipe.model, recipe.epochs, recipe.batch_size, recipe.lr, recipe.momentum,
          recipe.nesterov, recipe.weight_decay, recipe.schedule, recipe.lr_milestones,
          recipe.lr_gamma, recipe.flip, recipe.translate, recipe.pad_mode) == (
              "resnet18", 100, 128, 0.1, 0.9, False, 5e-4, "milestones", (75, 90), 0.1,
              "random", 4, "zeros")
  assert (recipe.adversarial_epsilon, recipe.adversarial_steps, recipe.adversarial_step_size,
          recipe.adversarial_random_start) == (4 / 255, 10, 2 / 255, True)
  assert efp.efp_reference_config(20).lr_milestones == (15, 18)
  assert attacks.get_attack("efp").kind == attacks.TRAINED_INDISCRIMINATE


@pytest.fixture(scope="module")
def push(data, reference):
  images, labels = data
  return efp.efp_poison(KEY, reference, images, labels, CONFIG)


def test_centroids_are_the_class_mean_features(data, reference, push):
  images, labels = data
  f = _features(reference, images)
  expected = np.stack([f[labels == k].mean(0) for k in range(NUM_CLASSES)])
  np.testing.assert_allclose(push.centroids, expected, rtol=1e-5, atol=1e-6)


def test_push_moves_features_away_from_their_class(data, reference, push):
  images, labels = data
  own = lambda x: -_numpy_losses(_features(reference, x), labels, push.centroids, "push")
  clean, poisoned = own(images), own(push.poisons)
  # Every image's feature leaves its class's centroid (sign steps on its own loss; margin: 12
  # steps of 2/255 against a 16-pixel network, measured ≈ 27× the clean distance on average).
  assert np.all(poisoned > clean)
  assert poisoned.mean() > 5 * clean.mean()


def test_pull_moves_features_toward_another_class(data, reference):
  images, labels = data
  pull = efp.efp_poison(KEY, reference, images, labels,
                        dataclasses.replace(CONFIG, recipe="pull"))
  nearest = lambda x: _numpy_losses(_features(reference, x), labels, pull.centroids, "pull")
  clean, poisoned = nearest(images), nearest(pull.poisons)
  # Sign steps of 2/255 overshoot where a feature already lies near another class's centroid
  # (measured: 61 of 64 images nearer, the mean distance ≈ 0.49 of the clean one).
  assert np.mean(poisoned < clean) > 0.9
  assert poisoned.mean() < 0.8 * clean.mean()


def test_augmented_push_moves_the_features_in_expectation(data, reference):
  # Optimized through random shifts and flips, the unshifted view moves too, on average (measured:
  # 18× the clean distance, 84% of the images farther).
  images, labels = data
  result = efp.efp_poison(KEY, reference, images, labels, AUGMENTED)
  own = lambda x: -_numpy_losses(_features(reference, x), labels, result.centroids, "push")
  clean, poisoned = own(images), own(result.poisons)
  assert poisoned.mean() > 5 * clean.mean() and np.mean(poisoned > clean) > 0.7


def test_keeps_the_bound_and_the_best_restart(data, reference, push):
  images, labels = data
  offsets = push.poisons.astype(np.int32) - images.astype(np.int32)
  assert push.poisons.dtype == np.uint8 and push.poisons.shape == images.shape
  assert np.abs(offsets).max() <= BUDGET and np.abs(offsets).max() > 0
  assert push.restart_losses.shape == (1,) and push.best_restart == 0
  restarts = efp.efp_poison(KEY, reference, images[:16], labels[:16],
                            efp.EFPConfig(num_classes=NUM_CLASSES, steps=2, restarts=3))
  assert restarts.restart_losses.shape == (3,)
  assert restarts.best_restart == int(np.argmin(restarts.restart_losses))


def test_is_determined_by_its_key_not_its_batches(data, reference):
  images, labels = data
  first = efp.efp_poison(KEY, reference, images, labels, AUGMENTED)
  again = efp.efp_poison(KEY, reference, images, labels, AUGMENTED)
  np.testing.assert_array_equal(again.poisons, first.poisons)
  other = efp.efp_poison(jax.random.key(1), reference, images, labels, AUGMENTED)
  assert not np.array_equal(other.poisons, first.poisons)
  # Per-image keys (start and every step's shift and flip): other batch sizes give the same
  # trajectories, up to float rounding in the network (a near-zero gradient entry's sign may
  # differ, moving that value by a step).
  rebatched = efp.efp_poison(KEY, reference, images, labels,
                             dataclasses.replace(AUGMENTED, batch_size=64))
  differ = rebatched.poisons.astype(int) - first.poisons.astype(int)
  assert np.mean(differ == 0) > 0.99


def test_inputs_are_checked_at_the_boundary(data, reference):
  images, labels = data
  with pytest.raises(ValueError, match="recipe"):
    efp.EFPConfig(recipe="shove")
  with pytest.raises(ValueError, match="fill"):
    efp.EFPConfig(fill=(0.0, 2.0, 0.0))
  with pytest.raises(ValueError, match="epsilon"):
    efp.EFPConfig(epsilon=8)
  with pytest.raises(TypeError, match="TrainedModels"):
    efp.efp_poison(KEY, classifier.gradient_model(reference, 0), images, labels, CONFIG)
  with pytest.raises(ValueError, match="one model"):
    efp.efp_poison(KEY, classifier.stack([reference, reference]), images, labels, CONFIG)
  with pytest.raises(ValueError, match="classes"):
    efp.efp_poison(KEY, reference, images, labels % 3, efp.EFPConfig(num_classes=3))
  with pytest.raises(ValueError, match="shape"):
    efp.efp_poison(KEY, reference, images[:, :8, :8], labels, CONFIG)
  with pytest.raises(ValueError, match="fill"):
    efp.efp_poison(KEY, reference, images, labels,
                   efp.EFPConfig(num_classes=NUM_CLASSES, fill=(0.0,)))
  with pytest.raises(ValueError, match="every class"):
    efp.efp_poison(KEY, reference, images[labels < 3], labels[labels < 3], CONFIG)
  with pytest.raises(TypeError, match="config"):
    efp.efp_poison(KEY, reference, images, labels, attacks.TAPConfig(num_classes=NUM_CLASSES))
