import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison import attacks as A
from jaxpoison.attacks import testing
from jaxpoison.data import CIFAR10_LABEL_NAMES, Dataset

SHAPE = (8, 8, 3)


def _dataset(seed=0, n_train=60, n_test=20, name="tiny"):
  rng = np.random.default_rng(seed)
  return Dataset(
      x_train=rng.integers(0, 256, (n_train, *SHAPE), dtype=np.uint8),
      y_train=(np.arange(n_train) % 10).astype(np.int32),
      x_test=rng.integers(0, 256, (n_test, *SHAPE), dtype=np.uint8),
      y_test=(np.arange(n_test) % 10).astype(np.int32),
      label_names=CIFAR10_LABEL_NAMES, name=name)


# --- trials ------------------------------------------------------------------------------------

def test_sample_trial_is_seeded_and_consistent():
  dataset = _dataset()
  trials = [A.sample_trial(jax.random.key(seed), dataset, 3) for seed in range(12)]
  again = A.sample_trial(jax.random.key(0), dataset, 3)
  assert again.target_index == trials[0].target_index and again.base_class == trials[0].base_class
  np.testing.assert_array_equal(again.base_indices, trials[0].base_indices)
  for trial in trials:
    assert dataset.y_test[trial.target_index] == trial.target_class
    assert trial.base_class != trial.target_class
    assert trial.base_indices.dtype == np.int64 and trial.base_indices.shape == (3,)
    assert np.unique(trial.base_indices).size == 3
    assert np.all(dataset.y_train[trial.base_indices] == trial.base_class)
  # Different keys give different trials.
  assert len({(t.target_index, t.base_class, tuple(t.base_indices)) for t in trials}) > 8


def test_sample_trial_respects_pools_and_fixed_classes():
  dataset = _dataset()
  pool = np.arange(30, 60)
  trial = A.sample_trial(jax.random.key(1), dataset, 3, train_indices=pool,
                         test_indices=np.arange(5), target_class=2, base_class=7)
  assert trial.target_index == 2 and trial.target_class == 2 and trial.base_class == 7
  assert set(trial.base_indices) == {37, 47, 57}  # The only class-7 images in the pool.


def test_sample_trial_nearest_takes_the_closest_in_feature_space():
  dataset = _dataset(1, n_train=100)
  extractors = [testing.tiny_cnn_extractor(0), testing.mlp_extractor(1, SHAPE)]
  trial = A.sample_trial(jax.random.key(2), dataset, 4, base_selection="nearest",
                         extractors=extractors, target_class=1, base_class=4, batch_size=3)
  candidates = np.flatnonzero(dataset.y_train == 4)
  features = A.extract_features(extractors, jnp.asarray(dataset.x_train[candidates], jnp.float32) / 255)
  target = A.extract_features(extractors, jnp.asarray(dataset.x_test[trial.target_index][None],
                                                      jnp.float32) / 255)
  distances = sum(np.sum((np.asarray(f) - np.asarray(t)) ** 2, axis=1)
                  for f, t in zip(features, target))
  np.testing.assert_array_equal(trial.base_indices, candidates[np.argsort(distances)[:4]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_poisons=0), "num_poisons: expected a positive integer"),
    (dict(num_poisons=7), "no base class has 7 training images"),
    (dict(base_selection="closest"), "base_selection: expected one of"),
    (dict(base_selection="nearest"), "needs the feature extractors"),
    (dict(target_class=3, base_class=3), "must differ from target_class"),
    (dict(base_class=10), r"expected a class in \[0, 9\]"),
    (dict(train_indices=np.array([0, 0, 1])), "indices must be distinct"),
    (dict(train_indices=np.array([100])), r"train_indices: indices must lie in \[0, 59\]"),
    (dict(test_indices=np.arange(3), target_class=5), "no test image to draw the target from in class 5"),
    (dict(base_class=4, train_indices=np.arange(10)), "base_class 4: has 1 training images"),
])
def test_sample_trial_errors(kwargs, match):
  args = dict(num_poisons=3) | kwargs
  with pytest.raises(ValueError, match=match):
    A.sample_trial(jax.random.key(0), _dataset(), **args)


# --- poison files ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def crafted():
  dataset = _dataset()
  key = jax.random.key(4)
  trial = A.sample_trial(key, dataset, 3)
  config = A.BullseyePolytopeConfig(num_steps=5)
  result = A.bullseye_polytope(key, [testing.mlp_extractor(0, SHAPE)],
                               dataset.x_test[trial.target_index],
                               dataset.x_train[trial.base_indices], config)
  poison_set = A.make_poison_set(dataset, trial, result.poisons, attack="bullseye_polytope",
                                 config=config, key=key)
  return dataset, trial, config, poison_set


def test_poison_file_round_trip(tmp_path, crafted):
  dataset, trial, config, poison_set = crafted
  path = A.save_poisons(tmp_path / "trial_000.poisons", poison_set)
  assert [p.name for p in tmp_path.iterdir()] == ["trial_000.poisons"]  # No temporary left.
  loaded = A.load_poisons(path, dataset)
  for field in dataclasses.fields(A.PoisonSet):
    a, b = getattr(loaded, field.name), getattr(poison_set, field.name)
    if isinstance(a, np.ndarray):
      np.testing.assert_array_equal(a, b)
      assert a.dtype == b.dtype
    else:
      assert a == b, field.name
  assert loaded.num_poisons == 3 and loaded.target_index == trial.target_index
  assert A.config_from_dict(loaded.attack, loaded.config) == config
  np.testing.assert_array_equal(jax.random.key_data(jax.random.key(4)), loaded.key)
  assert loaded.fingerprint["dataset"] == "tiny" and len(loaded.fingerprint["base_sha256"]) == 3


def test_apply_poisons_replaces_exactly_the_bases(crafted):
  dataset, trial, _, poison_set = crafted
  poisoned = A.apply_poisons(dataset, poison_set)
  assert isinstance(poisoned, np.ndarray) and poisoned.dtype == np.uint8
  np.testing.assert_array_equal(poisoned[trial.base_indices], poison_set.images)
  others = np.setdiff1d(np.arange(len(poisoned)), trial.base_indices)
  np.testing.assert_array_equal(poisoned[others], dataset.x_train[others])
  assert not np.array_equal(poisoned, dataset.x_train)
  np.testing.assert_array_equal(dataset.x_train, _dataset().x_train)  # Input untouched.
  on_device = A.apply_poisons(jnp.asarray(dataset.x_train), poison_set)
  assert isinstance(on_device, jax.Array)
  np.testing.assert_array_equal(np.asarray(on_device), poisoned)
  np.testing.assert_array_equal(A.apply_poisons(dataset.x_train, poison_set), poisoned)


def _tampered(dataset, **changes):
  return dataclasses.replace(dataset, **changes)


def test_load_refuses_a_mismatching_dataset(tmp_path, crafted):
  dataset, trial, _, poison_set = crafted
  path = A.save_poisons(tmp_path / "p.npz", poison_set)
  base = int(trial.base_indices[1])

  x_train = dataset.x_train.copy()
  x_train[base, 0, 0, 0] ^= 1
  with pytest.raises(A.PoisonFileError, match=rf"p\.npz does not match.*base images differ at "
                                              rf"training indices \[{base}\] \(1 of 3\)"):
    A.load_poisons(path, _tampered(dataset, x_train=x_train))
  with pytest.raises(A.PoisonFileError, match=rf"base images differ at training indices \[{base}\]"):
    A.apply_poisons(x_train, poison_set)

  with pytest.raises(A.PoisonFileError, match="dataset name: crafted on 'tiny', given 'cifar10'"):
    A.load_poisons(path, _tampered(dataset, name="cifar10"))
  with pytest.raises(A.PoisonFileError, match=r"training images: crafted on shape \[60, 8, 8, 3\], "
                                              r"given \[50, 8, 8, 3\]"):
    A.load_poisons(path, _tampered(dataset, x_train=dataset.x_train[:50],
                                   y_train=dataset.y_train[:50]))
  x_test = dataset.x_test.copy()
  x_test[trial.target_index] = 255 - x_test[trial.target_index]
  with pytest.raises(A.PoisonFileError, match="target image .* differs"):
    A.load_poisons(path, _tampered(dataset, x_test=x_test))
  y_train = dataset.y_train.copy()
  y_train[base] = (trial.base_class + 1) % 10
  with pytest.raises(A.PoisonFileError, match=rf"training labels at \[{base}\] are not the base class"):
    A.load_poisons(path, _tampered(dataset, y_train=y_train))
  # Without a dataset the file is only read.
  assert A.load_poisons(path, None).attack == "bullseye_polytope"


def test_load_refuses_poisons_beyond_their_bound(tmp_path, crafted):
  dataset, _, config, poison_set = crafted
  images = poison_set.images.copy()
  base = dataset.x_train[poison_set.indices[2]]
  images[2] = np.where(base < 128, base.astype(np.int64) + 17, base.astype(np.int64) - 17)
  path = A.save_poisons(tmp_path / "p.npz", dataclasses.replace(poison_set, images=images))
  with pytest.raises(A.PoisonFileError, match=r"poisons \[2\] exceed the recorded linf bound .* "
                                              r"\(largest 17 grey levels, allowed 16\)"):
    A.load_poisons(path, dataset)
  with pytest.raises(A.PoisonFileError, match="exceed the recorded linf bound"):
    A.make_poison_set(dataset, A.Trial(poison_set.target_index, poison_set.target_class,
                                       poison_set.base_class, poison_set.indices),
                      images, attack="bullseye_polytope", config=config, key=jax.random.key(4))


def test_load_and_apply_refuse_poisons_beyond_their_l2_bound(tmp_path, crafted):
  # The ℓ2 branch counts squared grey levels: ε = 20/255 allows Σ (q − b)² <= 400.
  dataset, _, _, poison_set = crafted
  l2 = dataclasses.replace(poison_set, config=poison_set.config | {"norm": "l2",
                                                                   "epsilon": 20 / 255})
  base_images = dataset.x_train[l2.indices]
  base = base_images[1].astype(np.int64)

  def offset(flat_offsets):
    # Moves the first pixels of base 1 by these grey levels, away from the nearer edge.
    delta = np.zeros(base.size, np.int64)
    delta[:len(flat_offsets)] = flat_offsets
    delta = np.where(base.reshape(-1) < 128, delta, -delta).reshape(base.shape)
    images = base_images.copy()
    images[1] = base + delta
    return dataclasses.replace(l2, images=images)

  # Exactly at the budget (one pixel off by 20 > the ℓ∞ 16: the norm recorded is the one
  # checked): accepted by both.
  at = offset([20])
  path = A.save_poisons(tmp_path / "at.npz", at)
  np.testing.assert_array_equal(A.load_poisons(path, dataset).images, at.images)
  A.apply_poisons(dataset, at)
  # One squared grey level over (400 + 1): refused on load and on apply.
  over = offset([20, 1])
  path = A.save_poisons(tmp_path / "over.npz", over)
  match = (r"poisons \[1\] exceed the recorded l2 bound .* \(largest 401 squared grey levels, "
           r"allowed 400\)")
  with pytest.raises(A.PoisonFileError, match=match):
    A.load_poisons(path, dataset)
  with pytest.raises(A.PoisonFileError, match=match):
    A.apply_poisons(dataset, over)


def test_load_refuses_broken_files(tmp_path, crafted):
  dataset, _, _, poison_set = crafted
  with pytest.raises(A.PoisonFileError, match="no such poison file"):
    A.load_poisons(tmp_path / "missing.npz", dataset)
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(A.PoisonFileError, match="cannot be read as a poison file"):
    A.load_poisons(tmp_path / "junk.npz", dataset)
  np.savez(tmp_path / "partial.npz", images=poison_set.images)
  with pytest.raises(A.PoisonFileError, match=r"missing arrays \['indices', 'key', 'metadata'\]"):
    A.load_poisons(tmp_path / "partial.npz", dataset)
  path = A.save_poisons(tmp_path / "p.npz", poison_set)
  with np.load(path) as archive:
    arrays = dict(archive)
  metadata = json.loads(str(arrays["metadata"]))
  metadata["format_version"] = 99
  np.savez(tmp_path / "future.npz", **(arrays | {"metadata": np.array(json.dumps(metadata))}))
  with pytest.raises(A.PoisonFileError, match="format version 99"):
    A.load_poisons(tmp_path / "future.npz", dataset)
  np.savez(tmp_path / "float.npz", **(arrays | {"images": arrays["images"].astype(np.float32)}))
  with pytest.raises(A.PoisonFileError, match="expected uint8"):
    A.load_poisons(tmp_path / "float.npz", dataset)


def test_make_poison_set_checks_its_inputs(crafted):
  dataset, trial, config, poison_set = crafted
  with pytest.raises(ValueError, match=r"one image per base index \(3\), got 2"):
    A.make_poison_set(dataset, trial, poison_set.images[:2], attack="bullseye_polytope",
                      config=config, key=jax.random.key(4))
  with pytest.raises(TypeError, match="poisons: expected dtype uint8"):
    A.make_poison_set(dataset, trial, poison_set.images.astype(np.float32),
                      attack="bullseye_polytope", config=config, key=jax.random.key(4))
