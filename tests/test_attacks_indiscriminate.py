"""URP, LSP and AR (jaxpoison.attacks.indiscriminate): bounds after quantization, determinism,
the class structure each poison is built on, and independent re-implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.attacks import indiscriminate as ind

KEY = jax.random.PRNGKey(0)
OTHER_KEY = jax.random.PRNGKey(1)
NUM_IMAGES, NUM_CLASSES = 40, 4
SHAPE = (32, 32, 3)
CONFIGS = {
    "urp": ind.URPConfig(num_classes=NUM_CLASSES),
    "lsp": ind.LSPConfig(num_classes=NUM_CLASSES),
    "ar": ind.ARConfig(num_classes=NUM_CLASSES),
}


def _data(seed=0, num=NUM_IMAGES, low=0, high=256):
  """Random uint8 images (full range: clipping happens) and shuffled balanced labels."""
  rng = np.random.default_rng(seed)
  images = rng.integers(low, high, (num, *SHAPE), dtype=np.uint8)
  labels = rng.permutation(np.arange(num) % NUM_CLASSES).astype(np.int32)
  return images, labels


def _poison(name, key, images, labels, config=None):
  return ind.INDISCRIMINATE_POISONS[name].poison(key, images, labels, config or CONFIGS[name])


def _l2_norms(poisons, images):
  delta = (poisons.astype(np.float64) - images.astype(np.float64)) / 255.0
  return np.sqrt(np.sum(delta ** 2, axis=(1, 2, 3)))


# --- bounds -------------------------------------------------------------------------------------

def test_urp_linf_bound_holds_after_quantization():
  images, labels = _data()
  images[0] = 0    # All-black and all-white images: the noise is clipped on one side.
  images[1] = 255
  poisons = _poison("urp", KEY, images, labels)
  assert poisons.dtype == np.uint8 and poisons.shape == images.shape
  delta = (poisons.astype(np.float64) - images.astype(np.float64)) / 255.0
  assert np.abs(delta).max() <= 8 / 255
  assert np.abs(delta).max() * 255 == 8  # The noise uses the whole budget.


@pytest.mark.parametrize("name", ["lsp", "ar"])
def test_l2_bound_holds_after_quantization_and_is_reached(name):
  images, labels = _data()
  images[0] = 0
  images[1] = 255
  poisons = _poison(name, KEY, images, labels)
  assert poisons.dtype == np.uint8 and poisons.shape == images.shape
  assert np.all(_l2_norms(poisons, images) <= 1.0)
  # Away from the box's edges the perturbation is scaled to the bound, not far below it.
  mid_images, _ = _data(low=64, high=192)
  norms = _l2_norms(_poison(name, KEY, mid_images, labels), mid_images)
  assert np.all(norms <= 1.0) and np.all(norms > 0.98)


def test_ar_linf_variant_keeps_its_bound():
  images, labels = _data()
  config = ind.ARConfig(num_classes=NUM_CLASSES, norm="linf", epsilon=8 / 255)
  delta = _poison("ar", KEY, images, labels, config).astype(np.int32) - images
  assert np.abs(delta).max() <= 8


def test_lsp_reference_scaling_option():
  config = ind.LSPConfig(num_classes=NUM_CLASSES, l2_from_linf=ind.LSP_REFERENCE_LINF)
  bound = config.bound(SHAPE)
  assert bound == pytest.approx(6 / 255 * np.sqrt(3072))
  assert bound == pytest.approx(1.3041, abs=1e-4)
  images, labels = _data(low=64, high=192)
  norms = _l2_norms(_poison("lsp", KEY, images, labels, config), images)
  assert np.all(norms <= bound) and np.all(norms > 0.98 * bound)


# --- determinism --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["urp", "lsp", "ar"])
def test_same_key_same_poisons_other_key_different(name):
  images, labels = _data()
  first = _poison(name, KEY, images, labels)
  np.testing.assert_array_equal(first, _poison(name, KEY, images, labels))
  assert not np.array_equal(first, _poison(name, OTHER_KEY, images, labels))


@pytest.mark.parametrize("name", ["lsp", "ar"])
def test_batch_size_does_not_change_the_poisons(name):
  images, labels = _data()
  poison = ind.INDISCRIMINATE_POISONS[name].poison
  np.testing.assert_array_equal(poison(KEY, images, labels, CONFIGS[name]),
                                poison(KEY, images, labels, CONFIGS[name], batch_size=20))


# --- URP ----------------------------------------------------------------------------------------

def test_urp_same_offsets_within_a_class_and_different_across_classes():
  images, labels = _data(low=8, high=248)  # No clipping: the offsets are the class noise.
  offsets = _poison("urp", KEY, images, labels).astype(np.int32) - images
  noise = ind.urp_class_noise(KEY, SHAPE, CONFIGS["urp"])
  expected = np.asarray(ind.urp_grey_levels(noise, 8 / 255))
  for k in range(NUM_CLASSES):
    np.testing.assert_array_equal(offsets[labels == k], np.broadcast_to(
        expected[k], offsets[labels == k].shape))
  for j in range(NUM_CLASSES):
    for k in range(j):
      assert np.mean(expected[j] != expected[k]) > 0.8
  # U(−8, 8) grey levels: mean near 0, spread over the whole range.
  assert abs(expected.mean()) < 0.2 and expected.min() == -8 and expected.max() == 8


def test_urp_gaussian_setting():
  uniform = np.asarray(ind.urp_grey_levels(ind.urp_class_noise(KEY, SHAPE, CONFIGS["urp"]),
                                           8 / 255))
  config = ind.URPConfig(num_classes=NUM_CLASSES, distribution="gaussian")
  gaussian = np.asarray(ind.urp_grey_levels(ind.urp_class_noise(KEY, SHAPE, config), 8 / 255))
  assert np.abs(gaussian).max() == 8
  # σ = ε clipped to ±ε: P(|z| > 1) ≈ 0.32 of the values sit at the bound; uniform:
  # P(|u| > 7.5/8) = 1/16.
  assert 0.28 < np.mean(np.abs(gaussian) == 8) < 0.36
  assert np.mean(np.abs(uniform) == 8) < 0.1


# --- LSP ----------------------------------------------------------------------------------------

def _patch_means(x, patch=8):
  n, h, w, c = x.shape
  return x.reshape(n, h // patch, patch, w // patch, patch, c).mean(axis=(2, 4)).reshape(n, -1)


def _least_squares_accuracy(features, labels):
  design = np.concatenate([features, np.ones((len(features), 1))], axis=1)
  targets = np.eye(NUM_CLASSES)[labels]
  weights, *_ = np.linalg.lstsq(design, targets, rcond=None)
  return np.mean(np.argmax(design @ weights, axis=1) == labels)


def test_lsp_perturbations_are_linearly_separable_by_class():
  # 400 points in 49 dimensions (patch values + bias): random labels are not separable.
  images, labels = _data(num=400, low=64, high=192)
  poisons = _poison("lsp", KEY, images, labels)
  features = _patch_means(poisons.astype(np.float64) - images)
  assert _least_squares_accuracy(features, labels) >= 0.99
  shuffled = np.random.default_rng(1).permutation(labels)
  assert _least_squares_accuracy(features, shuffled) < 0.6


def test_lsp_perturbations_are_patchwise_constant_and_applied():
  images, labels = _data(low=64, high=192)
  config = CONFIGS["lsp"]
  delta = np.asarray(ind.lsp_perturbations(KEY, np.arange(NUM_IMAGES), labels, SHAPE, config))
  patches = delta.reshape(NUM_IMAGES, 4, 8, 4, 8, 3)
  np.testing.assert_array_equal(patches, np.broadcast_to(patches[:, :, :1, :, :1], patches.shape))
  np.testing.assert_allclose(np.sqrt(np.sum(delta.astype(np.float64) ** 2, axis=(1, 2, 3))),
                             1.0, rtol=1e-5)
  offsets = _poison("lsp", KEY, images, labels).astype(np.float64) - images
  assert np.abs(offsets - 255 * delta).max() <= 1.0


def test_patch_upsample_matches_numpy_repeat_and_crop():
  rng = np.random.default_rng(0)
  for shape, patch in [((32, 32, 3), 8), ((30, 20, 3), 8), ((12, 12, 1), 4)]:
    rows, cols = -(-shape[0] // patch), -(-shape[1] // patch)
    points = rng.normal(size=(5, rows * cols * shape[2])).astype(np.float32)
    grid = points.reshape(5, rows, cols, shape[2])
    expected = np.repeat(np.repeat(grid, patch, axis=1), patch, axis=2)[:, :shape[0], :shape[1]]
    np.testing.assert_array_equal(np.asarray(ind.patch_upsample(jnp.asarray(points), patch, shape)),
                                  expected)


def test_lsp_points_follow_their_class_cluster():
  config = ind.LSPConfig(num_classes=NUM_CLASSES)
  d = ind.lsp_num_features(SHAPE, 8)
  assert d == 48
  classes = ind.lsp_classes(KEY, d, config)
  centroids, mixing = np.asarray(classes.centroids), np.asarray(classes.mixing)
  assert set(np.unique(centroids)) == {-10.0, 10.0} and len(np.unique(centroids, axis=0)) == 4
  assert mixing.shape == (4, d, d) and np.abs(mixing).max() <= 1.0
  labels = np.arange(400) % NUM_CLASSES
  points = np.asarray(ind.lsp_points(KEY, jnp.arange(400), jnp.asarray(labels), classes),
                      np.float64)
  # Undo x = z·A_k + c_k: the z are standard normal.
  z = np.stack([np.linalg.solve(mixing[k].T.astype(np.float64), points[i] - centroids[k])
                for i, k in enumerate(labels)])
  assert abs(z.mean()) < 0.05 and 0.9 < z.var() < 1.1


# --- AR -----------------------------------------------------------------------------------------

def _numpy_ar_process(start, coefficients):
  """The reference's generate loop, in float64: for each window position in raster order, the
  window's last value is set to its correlation with the coefficients (entry [2, 2] = 0)."""
  x = np.array(start, np.float64)
  for n in range(x.shape[0]):
    for i in range(x.shape[1] - 2):
      for j in range(x.shape[2] - 2):
        window = x[n, i:i + 3, j:j + 3, :]                          # [3, 3, C]
        x[n, i + 2, j + 2, :] = np.einsum("cuv,uvc->c", coefficients[n], window)
  return x


def test_ar_process_matches_the_reference_loop():
  rng = np.random.default_rng(0)
  start = rng.normal(size=(3, 12, 14, 3)).astype(np.float32)
  coefficients = ind.AR_REFERENCE_COEFFICIENTS[[0, 3, 9]]
  ours = np.asarray(ind.ar_process(jnp.asarray(start), jnp.asarray(coefficients)))
  expected = _numpy_ar_process(start, coefficients)
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(ours[:, :2], start[:, :2])
  np.testing.assert_array_equal(ours[:, :, :2], start[:, :, :2])


def test_ar_perturbations_satisfy_their_class_recurrence():
  _, labels = _data()
  coefficients = ind.AR_REFERENCE_COEFFICIENTS[:NUM_CLASSES]
  delta = ind.ar_perturbations(KEY, np.arange(NUM_IMAGES), labels, coefficients, SHAPE,
                               CONFIGS["ar"])
  rms = float(jnp.sqrt(jnp.mean(jnp.square(delta))))
  own = ind.ar_residual(delta, jnp.asarray(coefficients[labels]))
  assert float(jnp.abs(own).max()) < 1e-4 * rms
  # Another class's filter does not annihilate the sample.
  other = ind.ar_residual(delta, jnp.asarray(coefficients[(labels + 1) % NUM_CLASSES]))
  assert float(jnp.sqrt(jnp.mean(jnp.square(other), axis=(1, 2, 3))).min()) > 0.05 * rms
  norms = np.sqrt(np.sum(np.asarray(delta, np.float64) ** 2, axis=(1, 2, 3)))
  np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_ar_images_of_a_class_get_different_samples_and_the_poison_adds_them():
  images, labels = _data(low=64, high=192)
  coefficients = ind.AR_REFERENCE_COEFFICIENTS[:NUM_CLASSES]
  delta = np.asarray(ind.ar_perturbations(KEY, np.arange(NUM_IMAGES), labels, coefficients,
                                          SHAPE, CONFIGS["ar"]))
  same = np.flatnonzero(labels == 0)
  correlation = np.corrcoef(delta[same[0]].ravel(), delta[same[1]].ravel())[0, 1]
  assert abs(correlation) < 0.5
  offsets = _poison("ar", KEY, images, labels).astype(np.float64) - images
  assert np.abs(offsets - 255 * delta).max() <= 1.0


SAMPLED = ind.ARConfig(num_classes=2, coefficients="sampled")


@pytest.fixture(scope="module")
def sampled_coefficients():
  return ind.ar_coefficients(KEY, SAMPLED)


def test_sampled_ar_coefficients_follow_the_finder(sampled_coefficients):
  c = sampled_coefficients
  assert c.shape == (2, 3, 3, 3) and c.dtype == np.float32
  assert np.all(c[:, :, 2, 2] == 0)
  np.testing.assert_allclose(c.sum(axis=(2, 3)), 1.0, rtol=1e-5)
  assert not np.allclose(c[0], c[1])
  # Accepted processes do not diverge: new 36×36 samples, cropped by 4, stay (in the median)
  # below the finder's norm bound of 50, which it checked on three samples.
  keys = jax.random.split(OTHER_KEY, NUM_IMAGES)
  for k in range(2):
    _, norms = ind.ar_samples(keys, jnp.asarray(np.repeat(c[k:k + 1], NUM_IMAGES, axis=0)),
                              (36, 36), 4, "l2", 1.0)
    assert np.all(np.isfinite(np.asarray(norms))) and np.median(np.asarray(norms)) < 50
  # ...and are told apart: the other process's filter responds to them, their own does not
  # (the finder required a response >= 10 on one sample).
  samples = np.asarray(ind.ar_samples(keys, jnp.asarray(np.repeat(c[1:], NUM_IMAGES, axis=0)),
                                      (36, 36), 4, "l2", 1.0)[0])
  assert max(ind.ar_response(ind.ar_filters(c[1]), x) for x in samples) < 1e-3
  assert np.median([ind.ar_response(ind.ar_filters(c[0]), x) for x in samples]) > 5


def test_ar_poison_with_sampled_coefficients(sampled_coefficients):
  images, labels = _data()
  labels = labels % 2
  # ar_poison draws the processes from the key again: the same ones.
  poisons = ind.ar_poison(KEY, images, labels, SAMPLED)
  np.testing.assert_array_equal(
      poisons, ind.ar_poison(KEY, images, labels, SAMPLED, coefficients=sampled_coefficients))
  assert np.all(_l2_norms(poisons, images) <= 1.0)


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["urp", "lsp", "ar"])
def test_bad_inputs_are_rejected(name):
  images, labels = _data()
  with pytest.raises(TypeError, match="uint8"):
    _poison(name, KEY, images.astype(np.float32) / 255, labels)
  with pytest.raises(ValueError, match="NHWC"):
    _poison(name, KEY, images[0], labels)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
    _poison(name, KEY, images, np.where(labels == 0, NUM_CLASSES, labels))
  with pytest.raises(ValueError, match="labels must lie"):
    _poison(name, KEY, images, labels - 1)
  with pytest.raises(ValueError, match="expected 40 labels"):
    _poison(name, KEY, images, labels[:-1])
  with pytest.raises(TypeError, match="integer class indices"):
    _poison(name, KEY, images, labels.astype(np.float32))


def test_bad_configs_are_rejected():
  with pytest.raises(ValueError, match="ℓ∞ bound"):
    ind.URPConfig(epsilon=8)
  with pytest.raises(ValueError, match="distribution"):
    ind.URPConfig(distribution="laplace")
  with pytest.raises(ValueError, match="std"):
    ind.URPConfig(std=0.01)
  with pytest.raises(ValueError, match="patch_size"):
    ind.LSPConfig(patch_size=0)
  with pytest.raises(ValueError, match="coefficients='sampled'"):
    ind.ARConfig(num_classes=11)
  with pytest.raises(ValueError, match="norm"):
    ind.ARConfig(norm="l1")
  with pytest.raises(ValueError, match="coefficients"):
    ind.ARConfig(coefficients="learned")


def test_shape_dependent_errors():
  images, labels = _data()
  with pytest.raises(ValueError, match="3 channels"):
    ind.ar_poison(KEY, images[..., :1], labels, CONFIGS["ar"])
  with pytest.raises(ValueError, match=r"coefficients: expected shape \(4, 3, 3, 3\)"):
    ind.ar_poison(KEY, images, labels, CONFIGS["ar"],
                  coefficients=ind.AR_REFERENCE_COEFFICIENTS[:3])
  # One 32×32 patch of one channel: a 1-cube has 2 vertices, too few for 4 classes.
  with pytest.raises(ValueError, match="distinct vertices"):
    ind.lsp_poison(KEY, images[..., :1], labels, ind.LSPConfig(num_classes=4, patch_size=32))
