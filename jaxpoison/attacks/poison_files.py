"""Poison files: crafted poisons saved once, reused across noise levels and defenses.

A `PoisonSet` holds everything needed to rebuild the poisoned training set and to know how it
was made: the training indices of the bases, the perturbed uint8 images, the target's test
index, the target and base classes, the attack's name, configuration and key, and a
fingerprint of the dataset (its name and split shapes, a SHA-256 of each base image and of the
target image). `load_poisons` checks the fingerprint, the labels and the perturbation bound
against the dataset it is given and refuses a mismatch with a message that says what differs:
poisons crafted on another copy of CIFAR-10 (e.g. the JPEG re-encoding) are not silently
applied to different images.

Files are single .npz archives (no pickle), written atomically with `jaxpoison.io`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison import io, runs
from jaxpoison._checks import check_images
from jaxpoison.attacks import constraints
from jaxpoison.keys import key_data

FORMAT_VERSION = 1


class PoisonFileError(ValueError):
  """A poison file that is unreadable or does not match the dataset it is applied to."""


@dataclasses.dataclass(frozen=True)
class PoisonSet:
  """Crafted poisons and their provenance (host arrays).

  Attributes:
    attack: the attack's name (a key of `jaxpoison.attacks.ATTACKS`).
    config: the attack configuration as a JSON-able dict (`config.to_dict()`).
    key: uint32 raw key data of the crafting key.
    target_index: index of the target in the test split.
    target_class: the target's label.
    base_class: the bases' label (the class the attack wants the target classified as).
    indices: int64 [P], training indices of the bases the poisons replace.
    images: uint8 [P, H, W, C], the poisons.
    fingerprint: dataset name, split shapes, SHA-256 of each base image and of the target.
  """
  attack: str
  config: dict[str, Any]
  key: np.ndarray
  target_index: int
  target_class: int
  base_class: int
  indices: np.ndarray
  images: np.ndarray
  fingerprint: dict[str, Any]

  @property
  def num_poisons(self) -> int:
    return int(self.indices.shape[0])


def _digest(image) -> str:
  return runs.digest_bytes(np.asarray(image, np.uint8))


def trial_fingerprint(dataset, indices, target_index: int) -> dict[str, Any]:
  """The identity of a dataset as far as a poison set depends on it: its name and shapes, and
  the digests of the trial's base images and target (`runs.digest_bytes`)."""
  return {
      "dataset": str(getattr(dataset, "name", "unknown")),
      "train_shape": [int(n) for n in dataset.x_train.shape],
      "test_shape": [int(n) for n in dataset.x_test.shape],
      "base_sha256": [_digest(dataset.x_train[int(i)]) for i in indices],
      "target_sha256": _digest(dataset.x_test[int(target_index)]),
  }


def make_poison_set(dataset, trial, poisons, *, attack: str, config, key) -> PoisonSet:
  """Bundles crafted poisons with their trial, attack and dataset fingerprint.

  Args:
    dataset: the `Dataset` the trial indexes.
    trial: a `Trial` (target_index, target_class, base_class, base_indices).
    poisons: uint8 [P, H, W, C] (e.g. `AttackResult.poisons`), in base_indices order.
    attack: the attack's name.
    config: the attack's config dataclass (or its dict).
    key: the crafting key.
  """
  poisons = np.asarray(poisons)
  indices = np.asarray(trial.base_indices, np.int64)
  check_images(poisons, name="poisons", image_shape=tuple(dataset.x_train.shape[1:]),
               dtypes=("uint8",))
  if indices.ndim != 1 or poisons.shape[0] != indices.shape[0]:
    raise ValueError(f"poisons: expected one image per base index ({indices.shape[0]}), got "
                     f"{poisons.shape[0]}")
  config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  poison_set = PoisonSet(
      attack=str(attack), config=config_dict, key=key_data(key),
      target_index=int(trial.target_index), target_class=int(trial.target_class),
      base_class=int(trial.base_class), indices=indices, images=poisons,
      fingerprint=trial_fingerprint(dataset, indices, trial.target_index))
  verify_poisons(poison_set, dataset)
  return poison_set


def save_poisons(path: str | os.PathLike, poison_set: PoisonSet) -> Path:
  """Writes `poison_set` to `path` (one .npz, atomically; the name is kept as given)."""
  metadata = {
      "format_version": FORMAT_VERSION,
      "attack": poison_set.attack,
      "config": poison_set.config,
      "target_index": poison_set.target_index,
      "target_class": poison_set.target_class,
      "base_class": poison_set.base_class,
      "fingerprint": poison_set.fingerprint,
  }
  return io.atomic_save_npz(
      path, metadata=np.array(json.dumps(metadata, sort_keys=True)),
      indices=np.asarray(poison_set.indices, np.int64),
      images=np.asarray(poison_set.images, np.uint8),
      key=np.asarray(poison_set.key, np.uint32))


def load_poisons(path: str | os.PathLike, dataset) -> PoisonSet:
  """Reads a poison file and checks it against `dataset` (pass None to skip the check).

  Raises:
    PoisonFileError: the file is missing, unreadable or malformed, or it does not match the
      dataset (name, split shapes, base or target images, labels, perturbation bound).
  """
  path = Path(path)
  if not path.is_file():
    raise PoisonFileError(f"{path}: no such poison file")
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {name: archive[name] for name in archive.files}
  except Exception as e:  # np.load raises several types for a corrupt or foreign file.
    raise PoisonFileError(f"{path}: cannot be read as a poison file ({e})") from e
  missing = sorted({"metadata", "indices", "images", "key"} - set(arrays))
  if missing:
    raise PoisonFileError(f"{path}: missing arrays {missing}; found {sorted(arrays)}")
  try:
    metadata = json.loads(str(arrays["metadata"]))
  except json.JSONDecodeError as e:
    raise PoisonFileError(f"{path}: metadata is not valid JSON ({e})") from e
  if metadata.get("format_version") != FORMAT_VERSION:
    raise PoisonFileError(f"{path}: format version {metadata.get('format_version')}; this "
                          f"jaxpoison reads version {FORMAT_VERSION}")
  indices, images = arrays["indices"], arrays["images"]
  if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
    raise PoisonFileError(f"{path}: indices have shape {indices.shape} and dtype {indices.dtype}; "
                          "expected a 1-D integer array")
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != indices.shape[0]:
    raise PoisonFileError(f"{path}: images have shape {images.shape} and dtype {images.dtype}; "
                          f"expected uint8 [{indices.shape[0]}, H, W, C]")
  try:
    poison_set = PoisonSet(
        attack=metadata["attack"], config=metadata["config"], key=arrays["key"],
        target_index=int(metadata["target_index"]), target_class=int(metadata["target_class"]),
        base_class=int(metadata["base_class"]), indices=indices.astype(np.int64), images=images,
        fingerprint=metadata["fingerprint"])
  except KeyError as e:
    raise PoisonFileError(f"{path}: metadata lacks {e}") from e
  if dataset is not None:
    verify_poisons(poison_set, dataset, origin=str(path))
  return poison_set


def verify_poisons(poison_set: PoisonSet, dataset, *, origin: str = "poison set") -> None:
  """Raises PoisonFileError, listing every difference, if `poison_set` does not fit `dataset`."""
  expected = poison_set.fingerprint
  problems = []
  name = str(getattr(dataset, "name", "unknown"))
  train_shape = [int(n) for n in dataset.x_train.shape]
  test_shape = [int(n) for n in dataset.x_test.shape]
  if expected.get("dataset") != name:
    problems.append(f"dataset name: crafted on {expected.get('dataset')!r}, given {name!r}")
  if expected.get("train_shape") != train_shape:
    problems.append(f"training images: crafted on shape {expected.get('train_shape')}, given "
                    f"{train_shape}")
  if expected.get("test_shape") != test_shape:
    problems.append(f"test images: crafted on shape {expected.get('test_shape')}, given "
                    f"{test_shape}")
  indices = poison_set.indices
  if indices.size and (indices.min() < 0 or indices.max() >= train_shape[0]):
    problems.append(f"base indices range over [{indices.min()}, {indices.max()}], beyond the "
                    f"{train_shape[0]} training images")
  if not 0 <= poison_set.target_index < test_shape[0]:
    problems.append(f"target index {poison_set.target_index} is beyond the {test_shape[0]} test "
                    "images")
  if tuple(poison_set.images.shape[1:]) != tuple(train_shape[1:]):
    problems.append(f"poison images have shape {tuple(poison_set.images.shape[1:])}, the "
                    f"dataset's images {tuple(train_shape[1:])}")
  if problems:
    raise PoisonFileError(f"{origin} does not match the dataset: " + "; ".join(problems))

  differing = [int(i) for i, digest in zip(indices, expected.get("base_sha256", []))
               if _digest(dataset.x_train[int(i)]) != digest]
  if len(expected.get("base_sha256", [])) != indices.size:
    problems.append(f"fingerprint lists {len(expected.get('base_sha256', []))} base images for "
                    f"{indices.size} poisons")
  if differing:
    more = " ..." if len(differing) > 10 else ""
    problems.append(f"base images differ at training indices {differing[:10]}{more} "
                    f"({len(differing)} of {indices.size}); the poisons were crafted on other "
                    "images (another copy or ordering of the dataset?)")
  if _digest(dataset.x_test[poison_set.target_index]) != expected.get("target_sha256"):
    problems.append(f"the target image (test index {poison_set.target_index}) differs from the "
                    "one the poisons were crafted for")
  labels = np.asarray(dataset.y_train)[indices]
  if np.any(labels != poison_set.base_class):
    wrong = indices[labels != poison_set.base_class]
    problems.append(f"training labels at {wrong[:10].tolist()} are not the base class "
                    f"{poison_set.base_class}")
  target_label = int(np.asarray(dataset.y_test)[poison_set.target_index])
  if target_label != poison_set.target_class:
    problems.append(f"the target's test label is {target_label}, not the recorded target class "
                    f"{poison_set.target_class}")
  if not problems:
    excess = _bound_excess(poison_set, np.asarray(dataset.x_train)[indices])
    if excess:
      problems.append(excess)
  if problems:
    raise PoisonFileError(f"{origin} does not match the dataset: " + "; ".join(problems))


def _bound_excess(poison_set: PoisonSet, bases: np.ndarray) -> str | None:
  """A message if a poison is outside the recorded bound (checked in integer grey levels)."""
  norm = poison_set.config.get("norm")
  epsilon = poison_set.config.get("epsilon")
  if norm is None or epsilon is None:
    return None
  offsets = poison_set.images.astype(np.int64) - bases.astype(np.int64)
  if norm == "linf":
    budget = constraints.linf_budget(epsilon)
    size = np.abs(offsets).reshape(len(offsets), -1).max(axis=1)
  else:
    budget = constraints.l2_budget(epsilon)
    size = np.square(offsets).reshape(len(offsets), -1).sum(axis=1)
  over = np.flatnonzero(size > budget)
  if over.size == 0:
    return None
  unit = "grey levels" if norm == "linf" else "squared grey levels"
  return (f"poisons {over[:10].tolist()} exceed the recorded {norm} bound ε = {epsilon} "
          f"(largest {int(size.max())} {unit}, allowed {budget})")


def apply_poisons(dataset_or_images, poison_set: PoisonSet):
  """The training images with the poisons in place of their bases (a copy).

  Args:
    dataset_or_images: a `Dataset` (its x_train is used and the full fingerprint checked) or
      uint8 training images [N, H, W, C] as a numpy or jax array (the base images are checked).
    poison_set: the poisons.

  Returns:
    The poisoned training images, same type, shape and dtype as the input images.
  """
  if hasattr(dataset_or_images, "x_train"):
    verify_poisons(poison_set, dataset_or_images)
    images = dataset_or_images.x_train
  else:
    images = dataset_or_images
    check_images(images, name="images", dtypes=("uint8",))
    if tuple(images.shape[1:]) != tuple(poison_set.images.shape[1:]):
      raise PoisonFileError(f"images have shape {tuple(images.shape[1:])}; the poisons "
                            f"{tuple(poison_set.images.shape[1:])}")
    indices = poison_set.indices
    if indices.size and indices.max() >= images.shape[0]:
      raise PoisonFileError(f"base index {int(indices.max())} is beyond the {images.shape[0]} "
                            "training images")
    host = np.asarray(images[jnp.asarray(indices)] if isinstance(images, jax.Array)
                      else images[indices])
    differing = [int(i) for i, image, digest in
                 zip(indices, host, poison_set.fingerprint.get("base_sha256", []))
                 if _digest(image) != digest]
    if differing:
      raise PoisonFileError(f"base images differ at training indices {differing[:10]}; the "
                            "poisons were crafted on other images")
  if isinstance(images, jax.Array):
    return images.at[jnp.asarray(poison_set.indices)].set(jnp.asarray(poison_set.images))
  poisoned = np.array(images, copy=True)
  poisoned[poison_set.indices] = poison_set.images
  return poisoned


# Its earlier name, which `jaxpoison.benchmarks` also used for the whole dataset's fingerprint.
dataset_fingerprint = trial_fingerprint
