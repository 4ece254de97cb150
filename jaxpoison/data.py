"""Image-classification datasets as host uint8 arrays, and on-device augmentation.

Loaders return a `Dataset` of plain numpy arrays: x_* uint8 [N, H, W, C], y_* int32 [N]. The
sources are the official CIFAR-10 archive ("official", the default: downloaded once,
checksum-verified, decoded with numpy and cached as an .npz), TensorFlow Datasets data that is
already prepared ("tfds", read through `tfds.data_source`), an `.npz` file with x_train, y_train,
x_test, y_test (and optionally label_names), or an image folder
`train|test/<class name>/*.{png,jpg}`. Every input is validated, and a bad one fails with the
offending file, what was found and what was expected.

Augmentation is the classifier's (`jaxpoison.classifier.augment`); this module imports no jax.
Its length (over the package's ~500-line guide) is the four loaders' validation and messages,
one concern: reading a dataset from disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from jaxpoison.io import atomic_save_npz

CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                       "dog", "frog", "horse", "ship", "truck")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# The official CIFAR-10 archive (https://www.cs.toronto.edu/~kriz/cifar.html, 170,498,071 bytes)
# and its md5, the checksum torchvision also verifies. The environment variables override both:
# a mirror, or a local file:// archive in tests and offline machines.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
URL_ENV = "JAXPOISON_CIFAR10_URL"
MD5_ENV = "JAXPOISON_CIFAR10_MD5"
DATA_DIR_ENV = "JAXPOISON_DATA_DIR"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
CACHE_NAME = "cifar10.npz"
DOWNLOAD_TIMEOUT_S = 60.0  # Per connect or read: a stalled server fails instead of hanging.
_CHUNK_BYTES = 1 << 20


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


# --- The official CIFAR-10 archive ------------------------------------------------------------

_FALLBACK_HINT = ("pass --data /path/to/cifar10.npz (an .npz with x_train, y_train, x_test, "
                  "y_test), a JPEG pack or an image folder, or set " + URL_ENV + " to a mirror")
# Network failures: URLError (refused, DNS, HTTP errors) and OSError (timeouts, resets) are
# raised by urlopen and read; HTTPException by a truncated response; ValueError for a malformed
# URL.
_NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)


def default_data_dir() -> Path:
  """The cache directory of downloaded data: $JAXPOISON_DATA_DIR, else ~/.cache/jaxpoison."""
  return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "jaxpoison").expanduser()


def _download_error(url: str, error: BaseException) -> DataError:
  if isinstance(error, urllib.error.HTTPError):
    reason = f"HTTP {error.code} {error.reason}"
  elif isinstance(error, urllib.error.URLError):
    reason = str(error.reason)
  else:
    reason = str(error) or type(error).__name__
  return DataError(f"could not download CIFAR-10 from {url} ({reason}); {_FALLBACK_HINT}")


def _md5_of_file(path: Path) -> str:
  digest = hashlib.md5(usedforsecurity=False)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
      digest.update(chunk)
  return digest.hexdigest()


def download_archive(url: str, path: str | os.PathLike, md5: str,
                     timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
  """Downloads `url` to `path`, verifying its md5 while streaming.

  The bytes go to a temporary file beside `path`, renamed onto it only once the checksum
  matches, so `path` never holds a partial or corrupt archive; on any failure the temporary
  file is removed. Every failure is a one-line `DataError`.
  """
  path = Path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
  except OSError as e:
    raise DataError(f"cannot write to the data directory {path.parent} ({e}); set "
                    f"{DATA_DIR_ENV} to a writable folder, or {_FALLBACK_HINT}") from e
  tmp = Path(tmp)
  digest = hashlib.md5(usedforsecurity=False)
  try:
    with os.fdopen(fd, "wb") as f:
      try:
        response = urllib.request.urlopen(url, timeout=timeout_s)
      except _NETWORK_ERRORS as e:
        raise _download_error(url, e) from e
      with response:
        size = response.headers.get("Content-Length") if response.headers else None
        size_text = f" ({int(size) / 1e6:.0f} MB)" if size and size.isdigit() else ""
        print(f"downloading CIFAR-10{size_text} from {url} to {path}", file=sys.stderr,
              flush=True)
        while True:
          try:
            chunk = response.read(_CHUNK_BYTES)
          except _NETWORK_ERRORS as e:
            raise _download_error(url, e) from e
          if not chunk:
            break
          digest.update(chunk)
          f.write(chunk)
      f.flush()
      os.fsync(f.fileno())
    found = digest.hexdigest()
    if found != md5:
      raise DataError(f"the archive downloaded from {url} has md5 {found}; expected {md5} (a "
                      f"corrupt or different file, removed); retry, set {MD5_ENV} if a mirror "
                      f"serves another archive on purpose, or {_FALLBACK_HINT}")
    os.replace(tmp, path)
  except OSError as e:  # Writing the temporary file: a full disk, a quota.
    raise DataError(f"cannot write {tmp} ({e}); set {DATA_DIR_ENV} to a folder with about "
                    f"400 MB free (archive and cache), or {_FALLBACK_HINT}") from e
  finally:
    tmp.unlink(missing_ok=True)
  return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles plain containers and numpy arrays, nothing else: the CIFAR-10 batches hold only
  these, and any other global in an archive from a mirror would be a way to run code."""

  _ALLOWED = {
      ("numpy", "ndarray"): np.ndarray,
      ("numpy", "dtype"): np.dtype,
      # The official batches were pickled by Python 2's numpy (numpy.core); NumPy 2 pickles
      # name numpy._core. The functions are taken from numpy's own reducers, so that neither
      # module name has to be imported.
      ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
      ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
      ("numpy.core.multiarray", "scalar"): np.int64(0).__reduce__()[0],
      ("numpy._core.multiarray", "scalar"): np.int64(0).__reduce__()[0],
  }

  def find_class(self, module, name):
    try:
      return self._ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refers to {module}.{name}; expected only numpy arrays, lists and dicts") from None


def _read_batch(tar: tarfile.TarFile, member: tarfile.TarInfo, origin: str) -> dict:
  where = f"{origin}: {member.name}"
  try:
    batch = _NumpyOnlyUnpickler(tar.extractfile(member), encoding="bytes").load()
  except Exception as e:  # A corrupt pickle raises one of many types.
    raise DataError(f"{where}: cannot be unpickled ({e}); expected a CIFAR-10 python batch") from e
  if not isinstance(batch, dict):
    raise DataError(f"{where}: holds a {type(batch).__name__}; expected a dict")
  return batch


def _decode_batch(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
  """A batch's b"data" (uint8 [N, 3072], each row the red, green then blue 32×32 planes) as
  NHWC images, and its b"labels"."""
  if b"data" not in batch or b"labels" not in batch:
    raise DataError(f"{where}: keys {sorted(batch)}; expected b'data' and b'labels'")
  data = batch[b"data"]
  labels = np.asarray(batch[b"labels"])
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
      or data.shape[1] != 3 * 32 * 32:
    found = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
             else type(data).__name__)
    raise DataError(f"{where}: data is {found}; expected uint8 [N, 3072]")
  if labels.shape != (data.shape[0],):
    raise DataError(f"{where}: {labels.shape} labels for {data.shape[0]} images; expected one "
                    "label per image")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def parse_cifar10_archive(path: str | os.PathLike) -> Dataset:
  """Decodes the official CIFAR-10 python archive (cifar-10-python.tar.gz) in one pass.

  data_batch_1..5 form the training split in that order, test_batch the test split, and
  batches.meta gives the label names. Members are read straight from the tar.gz.
  """
  path = Path(path)
  wanted = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
  batches = {}
  try:
    with tarfile.open(path, "r:gz") as tar:
      # Members in archive order: a gzip stream read forward is decompressed once.
      for member in tar:
        name = member.name.rsplit("/", 1)[-1]
        if member.isfile() and name in wanted and name not in batches:
          batches[name] = (_read_batch(tar, member, str(path)), f"{path}: {member.name}")
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise DataError(f"{path}: cannot be read as a tar.gz archive ({e}); expected the official "
                    f"CIFAR-10 python archive {ARCHIVE_NAME}") from e
  missing = sorted(wanted - set(batches))
  if missing:
    raise DataError(f"{path}: no {', '.join(missing)} in the archive; expected "
                    "cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta")
  train = [_decode_batch(*batches[f"data_batch_{i}"]) for i in range(1, 6)]
  x_test, y_test = _decode_batch(*batches["test_batch"])
  meta, where = batches["batches.meta"]
  names = meta.get(b"label_names")
  if not isinstance(names, (list, tuple)):
    raise DataError(f"{where}: no list b'label_names' (keys {sorted(meta)}); expected the 10 "
                    "class names")
  names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
  return make_dataset(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                      x_test, y_test, names, spec=CIFAR10, origin=str(path))


def load_official_cifar10(data_dir: str | os.PathLike | None = None, *, url: str | None = None,
                          md5: str | None = None) -> Dataset:
  """CIFAR-10 from the official archive, downloaded and decoded once, then read from a cache.

  Args:
    data_dir: cache directory (default: $JAXPOISON_DATA_DIR, else ~/.cache/jaxpoison). It keeps
      the verified archive (cifar-10-python.tar.gz) and the decoded arrays (cifar10.npz).
    url: where to download the archive (default: $JAXPOISON_CIFAR10_URL, else CIFAR10_URL);
      file:// URLs work too.
    md5: the archive's md5 (default: $JAXPOISON_CIFAR10_MD5, else CIFAR10_MD5).

  Raises:
    DataError: on one line, if the archive cannot be downloaded, has another checksum or
      another content.
  """
  url = url or os.environ.get(URL_ENV) or CIFAR10_URL
  md5 = (md5 or os.environ.get(MD5_ENV) or CIFAR10_MD5).lower()
  data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
  cache = data_dir / CACHE_NAME
  if cache.is_file():
    # The cache names the archive it came from: another md5 (a mirror of other data) rebuilds it.
    try:
      with np.load(cache, allow_pickle=False) as arrays:
        cached_md5 = str(arrays["archive_md5"]) if "archive_md5" in arrays.files else None
    except Exception:  # An unreadable cache is rebuilt like a stale one.
      cached_md5 = None
    if cached_md5 == md5:
      return load_npz(cache, CIFAR10)
  archive = data_dir / ARCHIVE_NAME
  if archive.is_file() and _md5_of_file(archive) != md5:
    print(f"{archive}: md5 differs from {md5}; downloading it again", file=sys.stderr)
    archive.unlink()
  if not archive.is_file():
    download_archive(url, archive, md5)
  dataset = parse_cifar10_archive(archive)
  try:
    atomic_save_npz(cache, x_train=dataset.x_train, y_train=dataset.y_train,
                    x_test=dataset.x_test, y_test=dataset.y_test,
                    label_names=np.array(dataset.label_names), archive_md5=np.array(md5))
  except OSError as e:  # The data is in hand: a failed cache only costs the next load a parse.
    print(f"warning: cannot cache CIFAR-10 in {cache} ({e})", file=sys.stderr)
  return dataset


# --- TensorFlow Datasets ----------------------------------------------------------------------

def load_tfds(spec: DatasetSpec = CIFAR10, data_dir=None, download: bool = False) -> Dataset:
  """Loads data prepared by TensorFlow Datasets through `tfds.data_source` (array_record files).

  Reading needs no TensorFlow, but preparing does (TFDS's CIFAR-10 builder reads the archive
  with tf.io.gfile), so by default nothing is prepared here: data that is not there yet is a
  `DataError` that points at the "official" source.
  """
  if spec.tfds_name is None:
    raise DataError(f"{spec.name} has no TensorFlow Datasets builder; load it from an .npz "
                    "file or an image folder instead")
  hint = (f"preparing {spec.name} with TFDS needs TensorFlow (not a jaxpoison dependency); the "
          f"default source \"official\" downloads the official archive without it")
  try:
    import tensorflow_datasets as tfds  # Slow import, only for this source.
  except Exception as e:  # A broken install raises more than ImportError.
    raise DataError(f"tfds: tensorflow_datasets cannot be imported ({e}); {hint}") from e

  builder_kwargs = {"file_format": "array_record"}
  splits = {}
  label_names = None
  for split in ("train", "test"):
    # TFDS logs warnings about the missing files before failing; the DataError says it all.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
      source = tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir,
                                download=download, builder_kwargs=builder_kwargs)
    except Exception as e:  # Missing data shows up as KeyError, AssertionError, ImportError...
      reason = " ".join(str(e).split()) or type(e).__name__
      where = data_dir or "TFDS's data directory (~/tensorflow_datasets by default)"
      raise DataError(f"tfds:{spec.tfds_name}: no prepared {split} split in {where} "
                      f"({reason}); {hint}") from e
    finally:
      absl_logger.setLevel(level)
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


def load_dataset(name: str = "cifar10", source: str | os.PathLike = "official",
                 data_dir=None) -> Dataset:
  """Loads dataset `name` from `source`: "official" (CIFAR-10 only), "tfds", an .npz path or an
  image-folder path. `data_dir` is the cache of "official" or the TFDS data directory."""
  if name not in SPECS:
    raise DataError(f"unknown dataset {name!r}; expected one of {sorted(SPECS)}")
  spec = SPECS[name]
  if str(source) == "official":
    if spec is not CIFAR10:
      raise DataError(f"{spec.name} has no \"official\" download; load it from an .npz file or "
                      "an image folder instead")
    return load_official_cifar10(data_dir)
  if str(source) == "tfds":
    return load_tfds(spec, data_dir=data_dir)
  path = Path(source)
  if path.suffix == ".npz" or path.is_file():
    return load_npz(path, spec)
  if path.is_dir():
    return load_image_folder(path, spec)
  raise DataError(f"{path}: no such file or directory; expected \"official\", \"tfds\", an .npz "
                  "file or an image folder with train/ and test/")


def load_cifar10(source: str | os.PathLike = "official", data_dir=None) -> Dataset:
  """CIFAR-10 as uint8 [N, 32, 32, 3] images and int32 labels.

  Args:
    source: "official" (the default: the official archive, downloaded on first use,
      md5-verified and cached as an .npz in `data_dir`), "tfds" (data already prepared by
      TensorFlow Datasets in `data_dir`), a path to an .npz with x_train, y_train, x_test,
      y_test (or a JPEG pack), or a path to an image folder `train|test/<class name>/*.{png,jpg}`.
    data_dir: the cache of "official" (default: $JAXPOISON_DATA_DIR, else ~/.cache/jaxpoison) or
      the TFDS data directory (default: TFDS's own, ~/tensorflow_datasets).
  """
  return load_dataset("cifar10", source, data_dir)


def load_tiny_imagenet(source: str | os.PathLike, data_dir=None) -> Dataset:
  """Tiny ImageNet (64×64, 200 classes) from an .npz or an image folder."""
  return load_dataset("tiny_imagenet", source, data_dir)


# The augmentations that lived here until the floors were drawn: they are the classifier's now.
_MOVED = {"random_flip", "random_translate", "cutout"}


def __getattr__(name):
  if name in _MOVED:
    raise AttributeError(f"jaxpoison.data.{name} moved to jaxpoison.classifier.augment.{name} "
                         f"(also jaxpoison.{name})")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
