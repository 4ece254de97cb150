"""Image-classification datasets as host uint8 arrays, and on-device augmentation.

Loaders return a `Dataset` of plain numpy arrays: x_* uint8 [N, H, W, C], y_* int32 [N]. The
sources are TensorFlow Datasets (what a user with internet gets; no TensorFlow needed, the
records are read through `tfds.data_source`), an `.npz` file with x_train, y_train, x_test,
y_test (and optionally label_names), or an image folder `train|test/<class name>/*.{png,jpg}`.
Every input is validated, and a bad one fails with the offending file, what was found and what
was expected.

Augmentations are pure functions of an explicit key, jittable, operating on a batch of NHWC
images of any dtype, so the training loop keeps data and augmentation on the accelerator.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_images

CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                       "dog", "frog", "horse", "ship", "truck")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a dataset must look like: checked against every source."""
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  tfds_name: str | None = None
  label_names: tuple[str, ...] | None = None


CIFAR10 = DatasetSpec("cifar10", (32, 32, 3), 10, tfds_name="cifar10",
                      label_names=CIFAR10_LABEL_NAMES)
# Tiny ImageNet has no TFDS builder: load it from an image folder or an .npz.
TINY_IMAGENET = DatasetSpec("tiny_imagenet", (64, 64, 3), 200)
SPECS = {spec.name: spec for spec in (CIFAR10, TINY_IMAGENET)}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A train/test split held on the host as uint8 images and int32 labels."""
  x_train: np.ndarray  # uint8 [N_train, H, W, C]
  y_train: np.ndarray  # int32 [N_train]
  x_test: np.ndarray   # uint8 [N_test, H, W, C]
  y_test: np.ndarray   # int32 [N_test]
  label_names: tuple[str, ...]
  name: str = "cifar10"

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.x_train.shape[1:])

  def subset(self, num_train: int | None = None, num_test: int | None = None) -> "Dataset":
    """The first `num_train` training and `num_test` test examples (None keeps all)."""
    return dataclasses.replace(
        self,
        x_train=self.x_train[:num_train], y_train=self.y_train[:num_train],
        x_test=self.x_test[:num_test], y_test=self.y_test[:num_test])


class DataError(ValueError):
  """A dataset source that is missing or does not have the expected content."""


def _validate_split(x, y, split: str, spec: DatasetSpec, origin: str):
  x = np.asarray(x)
  y = np.asarray(y)
  if x.ndim == 0 or x.shape[0] == 0:
    raise DataError(f"{origin}: the {split} split is empty; expected at least one image")
  if x.dtype != np.uint8:
    raise DataError(
        f"{origin}: x_{split} has dtype {x.dtype}; expected uint8 pixels in [0, 255]")
  if x.ndim != 4 or x.shape[1:] != spec.image_shape:
    raise DataError(
        f"{origin}: x_{split} has shape {x.shape}; expected [N, {', '.join(map(str, spec.image_shape))}] "
        f"for {spec.name}")
  if y.ndim != 1 or y.shape[0] != x.shape[0]:
    raise DataError(
        f"{origin}: y_{split} has shape {y.shape}; expected [{x.shape[0]}] (one label per image)")
  if not np.issubdtype(y.dtype, np.integer):
    raise DataError(f"{origin}: y_{split} has dtype {y.dtype}; expected integer class indices")
  if y.min() < 0 or y.max() >= spec.num_classes:
    raise DataError(
        f"{origin}: y_{split} has labels in [{y.min()}, {y.max()}]; expected labels in "
        f"[0, {spec.num_classes - 1}] for {spec.num_classes} classes")
  return x, y.astype(np.int32)


def make_dataset(x_train, y_train, x_test, y_test, label_names=None, *,
                 spec: DatasetSpec = CIFAR10, origin: str = "arrays") -> Dataset:
  """Validates arrays against `spec` and wraps them in a `Dataset`."""
  x_train, y_train = _validate_split(x_train, y_train, "train", spec, origin)
  x_test, y_test = _validate_split(x_test, y_test, "test", spec, origin)
  if label_names is None:
    label_names = spec.label_names or tuple(str(i) for i in range(spec.num_classes))
  label_names = tuple(str(n) for n in np.asarray(label_names).tolist())
  if len(label_names) != spec.num_classes:
    raise DataError(
        f"{origin}: {len(label_names)} label names given; expected {spec.num_classes} for {spec.name}")
  return Dataset(x_train, y_train, x_test, y_test, label_names, spec.name)


def load_npz(path: str | os.PathLike, spec: DatasetSpec = CIFAR10) -> Dataset:
  """Loads x_train, y_train, x_test, y_test (and optional label_names) from an .npz file.

  This is the format `../shared/tools/unpack_cifar10_jpeg.py` writes. A pack of JPEG files
  (train_jpeg, train_offsets, train_labels and the same for test, as in
  `../shared/data/cifar10_jpeg.npz`) is decoded directly.
  """
  path = Path(path)
  if not path.is_file():
    raise DataError(f"{path}: no such file; expected an .npz with x_train, y_train, x_test, y_test")
  try:
    archive = np.load(path, allow_pickle=False)
  except Exception as e:  # np.load raises several types for a corrupt or foreign file.
    raise DataError(f"{path}: cannot be read as an .npz archive ({e})") from e
  with archive:
    if {"train_jpeg", "train_offsets", "test_jpeg", "test_offsets"} <= set(archive.files):
      return _load_jpeg_pack(archive, path, spec)
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in archive.files]
    if missing:
      raise DataError(
          f"{path}: missing arrays {missing}; found {sorted(archive.files)}, expected "
          "x_train, y_train, x_test, y_test")
    names = archive["label_names"] if "label_names" in archive.files else None
    return make_dataset(archive["x_train"], archive["y_train"], archive["x_test"],
                        archive["y_test"], names, spec=spec, origin=str(path))


def _load_jpeg_pack(archive, path: Path, spec: DatasetSpec) -> Dataset:
  """Decodes an .npz of concatenated JPEG files (`{split}_jpeg`, `{split}_offsets` with n + 1
  byte offsets, `{split}_labels`), the layout of the CIFAR-10 JPEG copy in ../shared/data."""
  import io

  from PIL import Image

  arrays = []
  for split in ("train", "test"):
    if f"{split}_labels" not in archive.files:
      raise DataError(f"{path}: JPEG pack without {split}_labels; found {sorted(archive.files)}")
    blob, offsets = archive[f"{split}_jpeg"], archive[f"{split}_offsets"]
    mode = "RGB" if spec.image_shape[-1] == 3 else "L"
    images = [np.asarray(Image.open(io.BytesIO(blob[a:b].tobytes())).convert(mode))
              for a, b in zip(offsets[:-1], offsets[1:])]
    x = np.stack(images) if images else np.zeros((0, *spec.image_shape), np.uint8)
    arrays += [x.reshape(x.shape[0], *x.shape[1:3], -1), archive[f"{split}_labels"]]
  names = archive["label_names"] if "label_names" in archive.files else None
  return make_dataset(*arrays, names, spec=spec, origin=str(path))


def _read_image(path: Path, spec: DatasetSpec) -> np.ndarray:
  from PIL import Image  # Imported here: only the folder source needs it.
  try:
    with Image.open(path) as image:
      array = np.asarray(image.convert("RGB" if spec.image_shape[-1] == 3 else "L"))
  except Exception as e:
    raise DataError(f"{path}: cannot be decoded as an image ({e})") from e
  if array.ndim == 2:
    array = array[..., None]
  if array.shape != spec.image_shape:
    raise DataError(f"{path}: image has shape {array.shape}; expected {spec.image_shape} "
                    f"for {spec.name}")
  return array


def load_image_folder(root: str | os.PathLike, spec: DatasetSpec = CIFAR10) -> Dataset:
  """Loads `root/train/<class name>/*.{png,jpg,jpeg}` and `root/test/<class name>/...`.

  Classes are the sorted sub-folder names, which must be the same in both splits; files are
  read in sorted order, so the result is deterministic.
  """
  root = Path(root)
  if not root.is_dir():
    raise DataError(f"{root}: no such directory; expected train/ and test/ class folders")
  classes = {}
  for split in ("train", "test"):
    split_dir = root / split
    if not split_dir.is_dir():
      raise DataError(f"{split_dir}: no such directory; expected {root}/{split}/<class name>/*.png")
    classes[split] = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
  if classes["train"] != classes["test"]:
    only_train = sorted(set(classes["train"]) - set(classes["test"]))
    only_test = sorted(set(classes["test"]) - set(classes["train"]))
    raise DataError(
        f"{root}: train and test class folders disagree; only in train: {only_train}, "
        f"only in test: {only_test}")
  names = classes["train"]
  if len(names) != spec.num_classes:
    raise DataError(
        f"{root}: found {len(names)} class folders {names[:12]}; expected {spec.num_classes} "
        f"for {spec.name}")
  arrays = {}
  for split in ("train", "test"):
    images, labels = [], []
    for label, name in enumerate(names):
      files = sorted(p for p in (root / split / name).iterdir()
                     if p.suffix.lower() in IMAGE_SUFFIXES)
      images += [_read_image(p, spec) for p in files]
      labels += [label] * len(files)
    if not images:
      raise DataError(f"{root / split}: the {split} split is empty; expected "
                      f"{'/'.join(IMAGE_SUFFIXES)} files in its class folders")
    arrays[split] = (np.stack(images), np.asarray(labels, np.int32))
  return make_dataset(*arrays["train"], *arrays["test"], names, spec=spec, origin=str(root))


def load_tfds(spec: DatasetSpec = CIFAR10, data_dir=None, download: bool = True) -> Dataset:
  """Loads a dataset through `tfds.data_source` (array_record files; TensorFlow not needed)."""
  if spec.tfds_name is None:
    raise DataError(f"{spec.name} has no TensorFlow Datasets builder; load it from an .npz "
                    "file or an image folder instead")
  import tensorflow_datasets as tfds  # Slow import, only for this source.

  builder_kwargs = {"file_format": "array_record"}
  splits = {}
  label_names = None
  for split in ("train", "test"):
    source = tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir,
                              download=download, builder_kwargs=builder_kwargs)
    records = [source[i] for i in range(len(source))]
    if not records:
      raise DataError(f"tfds:{spec.tfds_name}: the {split} split is empty")
    splits[split] = (np.stack([np.asarray(r["image"]) for r in records]),
                     np.asarray([r["label"] for r in records]))
    info = getattr(source, "dataset_info", None)
    if info is not None and label_names is None:
      label_names = tuple(info.features["label"].names)
  return make_dataset(*splits["train"], *splits["test"], label_names, spec=spec,
                      origin=f"tfds:{spec.tfds_name}")


def load_dataset(name: str = "cifar10", source: str | os.PathLike = "tfds",
                 data_dir=None) -> Dataset:
  """Loads dataset `name` from `source`: "tfds", an .npz path, or an image-folder path."""
  if name not in SPECS:
    raise DataError(f"unknown dataset {name!r}; expected one of {sorted(SPECS)}")
  spec = SPECS[name]
  if str(source) == "tfds":
    return load_tfds(spec, data_dir=data_dir)
  path = Path(source)
  if path.suffix == ".npz" or path.is_file():
    return load_npz(path, spec)
  if path.is_dir():
    return load_image_folder(path, spec)
  raise DataError(f"{path}: no such file or directory; expected \"tfds\", an .npz file or an "
                  "image folder with train/ and test/")


def load_cifar10(source: str | os.PathLike = "tfds", data_dir=None) -> Dataset:
  """CIFAR-10 as uint8 [N, 32, 32, 3] images and int32 labels.

  Args:
    source: "tfds" (downloads through TensorFlow Datasets into `data_dir` on first use), a path
      to an .npz with x_train, y_train, x_test, y_test, or a path to an image folder
      `train|test/<class name>/*.{png,jpg}`.
    data_dir: TFDS data directory (default: TFDS's own, ~/tensorflow_datasets).
  """
  return load_dataset("cifar10", source, data_dir)


def load_tiny_imagenet(source: str | os.PathLike, data_dir=None) -> Dataset:
  """Tiny ImageNet (64×64, 200 classes) from an .npz or an image folder."""
  return load_dataset("tiny_imagenet", source, data_dir)


# --- On-device augmentation ------------------------------------------------------------------
# Each takes a key and a batch [B, H, W, C] and returns a batch of the same shape and dtype.
# Every image gets its own random draw from the one key.


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Flips each image left-right with probability 1/2."""
  check_images(images, name="random_flip images")
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def random_translate(key: jax.Array, images: jax.Array, pad: int = 2) -> jax.Array:
  """Shifts each image by up to `pad` pixels in each direction, filling by reflection."""
  check_images(images, name="random_translate images")
  if pad < 0:
    raise ValueError(f"pad: expected a non-negative number of pixels, got {pad}")
  if pad == 0:
    return images
  _, height, width, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * pad + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

  return jax.vmap(crop)(padded, offsets)


def cutout(key: jax.Array, images: jax.Array, size: int = 8) -> jax.Array:
  """Zeroes a `size`×`size` square at a uniformly random centre in each image (DeVries & Taylor
  2017); the square is clipped where it crosses the border."""
  check_images(images, name="cutout images")
  if size < 0:
    raise ValueError(f"size: expected a non-negative patch size, got {size}")
  batch, height, width, _ = images.shape
  centres = jax.random.randint(key, (batch, 2), 0, jnp.array([height, width]))
  top = centres[:, 0] - size // 2
  left = centres[:, 1] - size // 2
  rows = jnp.arange(height)[None, :]
  cols = jnp.arange(width)[None, :]
  in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)
  in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)
  mask = in_rows[:, :, None] & in_cols[:, None, :]
  return jnp.where(mask[..., None], jnp.zeros((), images.dtype), images)
