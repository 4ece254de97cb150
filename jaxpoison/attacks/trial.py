"""Choosing a poisoning trial: a target test image, its class, a base class and the bases.

The benchmark of Schwarzschild et al. fixes, per trial, a target test image, the target class
(its label), a different base ("poison") class, and the training images of the base class that
are perturbed into poisons. Its published setups list the base images; here they are drawn from
a key, uniformly at random from the base class by default. `base_selection="nearest"` instead
takes the base-class images whose features are closest to the target's (summed squared ℓ2
distance over the ensemble), the `--nearest` option of Zhu et al.'s Convex Polytope code.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.attacks import core
from jaxpoison.keys import as_key

BASE_SELECTIONS = ("random", "nearest")


class Trial(NamedTuple):
  """One poisoning trial (indices into the dataset's splits, on the host)."""
  target_index: int         # into the test split
  target_class: int         # the target's true label
  base_class: int           # the label the poisons carry and the attack aims for
  base_indices: np.ndarray  # int64 [num_poisons], into the training split


def _check_pool(indices, size: int, name: str) -> np.ndarray:
  if indices is None:
    return np.arange(size)
  pool = np.asarray(indices)
  if pool.ndim != 1 or not np.issubdtype(pool.dtype, np.integer):
    raise ValueError(f"{name}: expected a 1-D array of integer indices, got shape {pool.shape} "
                     f"and dtype {pool.dtype}")
  if pool.size and (pool.min() < 0 or pool.max() >= size):
    raise ValueError(f"{name}: indices must lie in [0, {size - 1}], found values in "
                     f"[{pool.min()}, {pool.max()}]")
  if np.unique(pool).size != pool.size:
    raise ValueError(f"{name}: indices must be distinct")
  return np.sort(pool)


def _check_class(value, num_classes: int, name: str):
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name}: expected an integer class, got {value!r}")
  if not 0 <= int(value) < num_classes:
    raise ValueError(f"{name}: expected a class in [0, {num_classes - 1}], got {value}")
  return int(value)


@jax.jit
def _distances(ensemble, images, target, key):
  groups = core.group_ensemble(ensemble)
  features = core.group_features(groups, core.to_unit_float(images), key)
  target_features = core.group_features(groups, core.to_unit_float(target)[None], key)
  return sum(jnp.sum(jnp.square(f - t), axis=(0, 2)) for f, t in zip(features, target_features))


def feature_distances(extractors, images, target_image, *, key: jax.Array | None = None,
                      batch_size: int = 1000) -> np.ndarray:
  """Σ_m ‖f_m(x) − f_m(t)‖² for uint8 images [N, H, W, C] and a uint8 target [H, W, C].

  Batches are padded to `batch_size` so the jitted function compiles once.
  """
  ensemble = core.as_ensemble(extractors)
  image_shape = core.check_target_and_bases(target_image, images)
  core.check_extractor_outputs(ensemble, image_shape)
  key = jax.random.key(0) if key is None else as_key(key)
  num_images = images.shape[0]
  batch_size = max(1, min(int(batch_size), num_images))
  out = []
  for start in range(0, num_images, batch_size):
    batch = np.asarray(images[start:start + batch_size])
    valid = batch.shape[0]
    if valid < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - valid, axis=0)])
    out.append(np.asarray(_distances(ensemble, batch, target_image, key))[:valid])
  return np.concatenate(out)


def sample_trial(key: jax.Array, dataset, num_poisons: int, *, base_selection: str = "random",
                 extractors=None, train_indices=None, test_indices=None,
                 target_class: int | None = None, base_class: int | None = None,
                 batch_size: int = 1000) -> Trial:
  """Draws a trial from `key`: target image, target class, base class and base indices.

  Args:
    key: PRNG key; the same key and dataset give the same trial.
    dataset: a `jaxpoison.Dataset` (x_train, y_train, x_test, y_test, num_classes).
    num_poisons: number of base images (benchmark, CIFAR-10 transfer learning: 25).
    base_selection: "random" (uniform without replacement from the base class, the default) or
      "nearest" (closest to the target in the features of `extractors`).
    extractors: the ensemble for "nearest".
    train_indices: the training images bases may come from (e.g. the fine-tuning half);
      default all.
    test_indices: the test images the target may come from; default all.
    target_class, base_class: fix the classes instead of drawing them. The target is drawn
      uniformly from the test pool (from `target_class` if given); the base class uniformly
      from the other classes with at least `num_poisons` training images in the pool.

  Returns:
    A `Trial`; base_indices are ordered by draw (random) or by distance (nearest).
  """
  key = as_key(key)
  if isinstance(num_poisons, bool) or not isinstance(num_poisons, (int, np.integer)) \
      or num_poisons < 1:
    raise ValueError(f"num_poisons: expected a positive integer, got {num_poisons!r}")
  if base_selection not in BASE_SELECTIONS:
    raise ValueError(f"base_selection: expected one of {BASE_SELECTIONS}, got {base_selection!r}")
  if base_selection == "nearest" and extractors is None:
    raise ValueError("base_selection='nearest' needs the feature extractors (extractors=...)")
  num_classes = int(dataset.num_classes)
  y_train, y_test = np.asarray(dataset.y_train), np.asarray(dataset.y_test)
  train_pool = _check_pool(train_indices, y_train.shape[0], "train_indices")
  test_pool = _check_pool(test_indices, y_test.shape[0], "test_indices")
  target_class = _check_class(target_class, num_classes, "target_class")
  base_class = _check_class(base_class, num_classes, "base_class")
  if target_class is not None and target_class == base_class:
    raise ValueError(f"base_class: must differ from target_class ({target_class}); a clean-label "
                     "attack makes the target look like another class")

  target_key, class_key, base_key, feature_key = jax.random.split(key, 4)
  if target_class is not None:
    test_pool = test_pool[y_test[test_pool] == target_class]
  if test_pool.size == 0:
    raise ValueError("test_indices: no test image to draw the target from"
                     + (f" in class {target_class}" if target_class is not None else ""))
  target_index = int(test_pool[int(jax.random.randint(target_key, (), 0, test_pool.size))])
  target_class = int(y_test[target_index])

  counts = np.bincount(y_train[train_pool], minlength=num_classes)
  if base_class is None:
    eligible = [c for c in range(num_classes) if c != target_class and counts[c] >= num_poisons]
    if not eligible:
      raise ValueError(
          f"no base class has {num_poisons} training images in the pool (largest other class "
          f"has {max((counts[c] for c in range(num_classes) if c != target_class), default=0)})")
    base_class = eligible[int(jax.random.randint(class_key, (), 0, len(eligible)))]
  elif base_class == target_class:
    raise ValueError(f"base_class: must differ from the target's class ({target_class})")
  elif counts[base_class] < num_poisons:
    raise ValueError(f"base_class {base_class}: has {counts[base_class]} training images in the "
                     f"pool; {num_poisons} poisons need as many")

  candidates = train_pool[y_train[train_pool] == base_class]
  if base_selection == "random":
    chosen = np.asarray(jax.random.choice(base_key, candidates.size, (num_poisons,),
                                          replace=False))
  else:
    distances = feature_distances(extractors, np.asarray(dataset.x_train)[candidates],
                                  np.asarray(dataset.x_test[target_index]), key=feature_key,
                                  batch_size=batch_size)
    chosen = np.argsort(distances, kind="stable")[:num_poisons]
  return Trial(target_index, target_class, int(base_class),
               candidates[chosen].astype(np.int64))
