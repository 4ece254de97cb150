import collections
import hashlib
import io
import pickle
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from jaxpoison import data as D


def _arrays(n_train=12, n_test=6, shape=(32, 32, 3), num_classes=10, seed=0):
  rng = np.random.default_rng(seed)
  return dict(
      x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
      y_train=rng.integers(0, num_classes, n_train).astype(np.int64),
      x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
      y_test=rng.integers(0, num_classes, n_test).astype(np.int64))


def _write_folder(root, classes_train=("cat", "dog"), classes_test=("cat", "dog"), size=32,
                  per_class=2, suffix=".png"):
  rng = np.random.default_rng(0)
  for split, classes in (("train", classes_train), ("test", classes_test)):
    for name in classes:
      (root / split / name).mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / name / f"{i}{suffix}")
  return root


TWO_CLASS = D.DatasetSpec("two", (32, 32, 3), 2)


# --- npz --------------------------------------------------------------------------------------

def test_load_npz_round_trip(tmp_path):
  arrays = _arrays()
  np.savez(tmp_path / "c.npz", **arrays, label_names=np.array(D.CIFAR10_LABEL_NAMES))
  ds = D.load_cifar10(tmp_path / "c.npz")
  np.testing.assert_array_equal(ds.x_train, arrays["x_train"])
  np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  assert ds.label_names == D.CIFAR10_LABEL_NAMES and ds.num_classes == 10
  assert ds.image_shape == (32, 32, 3)
  sub = ds.subset(num_train=5, num_test=2)
  assert sub.x_train.shape[0] == 5 and sub.y_test.shape == (2,)


def test_load_npz_without_label_names_uses_cifar10_names(tmp_path):
  np.savez(tmp_path / "c.npz", **_arrays())
  assert D.load_cifar10(str(tmp_path / "c.npz")).label_names[0] == "airplane"


def test_load_tiny_imagenet_npz(tmp_path):
  np.savez(tmp_path / "t.npz", **_arrays(shape=(64, 64, 3), num_classes=200))
  ds = D.load_tiny_imagenet(tmp_path / "t.npz")
  assert ds.image_shape == (64, 64, 3) and ds.num_classes == 200 and ds.name == "tiny_imagenet"
  # CIFAR-10's loader refuses the 64×64 file and says what it expected.
  with pytest.raises(D.DataError, match=r"t\.npz: x_train has shape \(12, 64, 64, 3\); expected \[N, 32, 32, 3\]"):
    D.load_cifar10(tmp_path / "t.npz")


@pytest.mark.parametrize("change, match", [
    (dict(x_train=np.zeros((4, 28, 28, 3), np.uint8)), r"x_train has shape \(4, 28, 28, 3\); expected \[N, 32, 32, 3\]"),
    (dict(x_train=np.zeros((4, 32, 32), np.uint8)), r"x_train has shape \(4, 32, 32\)"),
    (dict(x_test=np.zeros((6, 32, 32, 3), np.float32)), "x_test has dtype float32; expected uint8"),
    (dict(y_train=np.full(12, 10)), r"labels in \[10, 10\]; expected labels in \[0, 9\]"),
    (dict(y_test=np.full(6, -1)), r"labels in \[-1, -1\]"),
    (dict(y_test=np.zeros(6, np.float32)), "y_test has dtype float32; expected integer"),
    (dict(y_train=np.zeros(3, np.int64)), r"y_train has shape \(3,\); expected \[12\]"),
    (dict(x_test=np.zeros((0, 32, 32, 3), np.uint8), y_test=np.zeros(0, np.int64)), "test split is empty"),
    (dict(label_names=np.array(["a", "b"])), "2 label names given; expected 10"),
])
def test_load_npz_bad_content(tmp_path, change, match):
  arrays = _arrays()
  arrays.update(change)
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(D.DataError, match=match) as info:
    D.load_cifar10(tmp_path / "bad.npz")
  assert "bad.npz" in str(info.value)


def test_load_npz_missing_file(tmp_path):
  with pytest.raises(D.DataError, match=r"nothere\.npz: no such file"):
    D.load_cifar10(tmp_path / "nothere.npz")


def test_load_npz_missing_arrays(tmp_path):
  np.savez(tmp_path / "m.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8))
  with pytest.raises(D.DataError, match=r"m\.npz: missing arrays \['y_train', 'x_test', 'y_test'\]"):
    D.load_cifar10(tmp_path / "m.npz")


def test_load_npz_not_an_archive(tmp_path):
  (tmp_path / "junk.npz").write_text("not a zip file")
  with pytest.raises(D.DataError, match=r"junk\.npz: cannot be read"):
    D.load_cifar10(tmp_path / "junk.npz")


def test_unknown_source_and_dataset(tmp_path):
  with pytest.raises(D.DataError, match="no such file or directory"):
    D.load_cifar10(tmp_path / "missing_dir")
  with pytest.raises(D.DataError, match="unknown dataset 'mnist'"):
    D.load_dataset("mnist", tmp_path)
  with pytest.raises(D.DataError, match="no TensorFlow Datasets builder"):
    D.load_tiny_imagenet("tfds")


# --- image folder -----------------------------------------------------------------------------

def test_load_image_folder(tmp_path):
  _write_folder(tmp_path, suffix=".png")
  ds = D.load_image_folder(tmp_path, TWO_CLASS)
  assert ds.x_train.shape == (4, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
  assert ds.label_names == ("cat", "dog")
  np.testing.assert_array_equal(ds.y_train, [0, 0, 1, 1])
  # PNG is lossless: pixels read back exactly.
  np.testing.assert_array_equal(ds.x_train[2], np.asarray(Image.open(tmp_path / "train/dog/0.png")))


def test_load_image_folder_jpeg_cifar10(tmp_path):
  _write_folder(tmp_path, D.CIFAR10_LABEL_NAMES, D.CIFAR10_LABEL_NAMES, per_class=1, suffix=".jpg")
  ds = D.load_cifar10(tmp_path)
  assert ds.x_train.shape == (10, 32, 32, 3) and ds.label_names == tuple(sorted(D.CIFAR10_LABEL_NAMES))


def test_image_folder_class_sets_disagree(tmp_path):
  _write_folder(tmp_path, ("cat", "dog"), ("cat", "frog"))
  with pytest.raises(D.DataError, match=r"disagree; only in train: \['dog'\], only in test: \['frog'\]"):
    D.load_image_folder(tmp_path, TWO_CLASS)


def test_image_folder_wrong_image_size(tmp_path):
  _write_folder(tmp_path, size=28)
  with pytest.raises(D.DataError, match=r"cat/0\.png: image has shape \(28, 28, 3\); expected \(32, 32, 3\)"):
    D.load_image_folder(tmp_path, TWO_CLASS)


def test_image_folder_wrong_class_count(tmp_path):
  _write_folder(tmp_path)
  with pytest.raises(D.DataError, match="found 2 class folders.*expected 10"):
    D.load_cifar10(tmp_path)


def test_image_folder_empty_split(tmp_path):
  _write_folder(tmp_path)
  for f in (tmp_path / "test").rglob("*.png"):
    f.unlink()
  with pytest.raises(D.DataError, match="test split is empty"):
    D.load_image_folder(tmp_path, TWO_CLASS)


def test_image_folder_missing_split_and_undecodable_file(tmp_path):
  _write_folder(tmp_path)
  (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"garbage")
  with pytest.raises(D.DataError, match=r"broken\.png: cannot be decoded"):
    D.load_image_folder(tmp_path, TWO_CLASS)
  other = tmp_path / "other"
  (other / "train" / "cat").mkdir(parents=True)
  with pytest.raises(D.DataError, match=r"other/test: no such directory"):
    D.load_image_folder(other, TWO_CLASS)


# --- TFDS (offline, mocked) -------------------------------------------------------------------

def test_load_cifar10_tfds_mocked():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=9):
    ds = D.load_cifar10("tfds")
  assert ds.x_train.shape == (9, 32, 32, 3) and ds.x_train.dtype == np.uint8
  assert ds.x_test.shape == (9, 32, 32, 3) and ds.y_test.dtype == np.int32
  assert ds.num_classes == 10 and ds.y_train.max() < 10


def test_tfds_without_prepared_data_points_at_official(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(D.DataError, match=r'needs TensorFlow.*default source "official"') as info:
    D.load_cifar10("tfds", data_dir=tmp_path)
  assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_tfds_not_importable(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import` raises ImportError.
  with pytest.raises(D.DataError, match=r"tensorflow_datasets cannot be imported.*\"official\""):
    D.load_cifar10("tfds")


# --- the official archive (served from a local file: no network) -------------------------------

OFFICIAL_PER_BATCH = 20


def _pickle_batch(obj) -> bytes:
  # Protocol 3 writes globals as text lines (GLOBAL opcodes), like the official Python 2 files;
  # renaming numpy._core to numpy.core gives the module names those files carry.
  return pickle.dumps(obj, protocol=3).replace(b"cnumpy._core.multiarray\n",
                                               b"cnumpy.core.multiarray\n")


def _official_batches(seed=0):
  """NHWC images and labels per batch, and the batches as pickled in the official archive
  (each image one row: its red, then green, then blue 32×32 plane)."""
  rng = np.random.default_rng(seed)
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  images = {n: rng.integers(0, 256, (OFFICIAL_PER_BATCH, 32, 32, 3), dtype=np.uint8)
            for n in names}
  labels = {n: [int(v) for v in rng.integers(0, 10, OFFICIAL_PER_BATCH)] for n in names}
  members = {n: _pickle_batch({
      b"batch_label": n.encode(), b"labels": labels[n],
      b"data": images[n].transpose(0, 3, 1, 2).reshape(OFFICIAL_PER_BATCH, 3072),
      b"filenames": [f"{n}_{i}.png".encode() for i in range(OFFICIAL_PER_BATCH)]})
      for n in names}
  members["batches.meta"] = _pickle_batch({
      b"num_cases_per_batch": OFFICIAL_PER_BATCH, b"num_vis": 3072,
      b"label_names": [n.encode() for n in D.CIFAR10_LABEL_NAMES]})
  return images, labels, members


def _write_tar_gz(path, members):
  with tarfile.open(path, "w:gz") as tar:
    for name, payload in members.items():
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return path, hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def official(tmp_path, monkeypatch):
  """A small archive in the official format behind a file:// URL, and an empty cache."""
  images, labels, members = _official_batches()
  archive, md5 = _write_tar_gz(tmp_path / "served.tar.gz", members)
  monkeypatch.setenv(D.URL_ENV, archive.as_uri())
  monkeypatch.setenv(D.MD5_ENV, md5)
  monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path / "cache"))
  return dict(images=images, labels=labels, archive=archive, md5=md5, cache=tmp_path / "cache")


def test_official_download_decode_and_cache(official, monkeypatch, capsys):
  ds = D.load_cifar10()  # The default source.
  train = [f"data_batch_{i}" for i in range(1, 6)]
  np.testing.assert_array_equal(ds.x_train, np.concatenate([official["images"][n] for n in train]))
  np.testing.assert_array_equal(ds.y_train, np.concatenate([official["labels"][n] for n in train]))
  np.testing.assert_array_equal(ds.x_test, official["images"]["test_batch"])
  np.testing.assert_array_equal(ds.y_test, official["labels"]["test_batch"])
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  assert ds.label_names == D.CIFAR10_LABEL_NAMES
  assert "downloading CIFAR-10" in capsys.readouterr().err
  cache = official["cache"]
  assert sorted(p.name for p in cache.iterdir()) == [D.ARCHIVE_NAME, D.CACHE_NAME]
  # The second load reads the cache: no download (the URL is unreachable) and no parse.
  monkeypatch.setenv(D.URL_ENV, "http://127.0.0.1:9/cifar-10-python.tar.gz")
  (cache / D.ARCHIVE_NAME).unlink()
  again = D.load_cifar10("official")
  np.testing.assert_array_equal(again.x_train, ds.x_train)
  np.testing.assert_array_equal(again.y_test, ds.y_test)
  assert again.label_names == ds.label_names
  assert capsys.readouterr().err == ""


def test_official_cache_of_another_archive_is_rebuilt(official, tmp_path, monkeypatch):
  first = D.load_official_cifar10()
  images, _, members = _official_batches(seed=1)
  archive, md5 = _write_tar_gz(tmp_path / "other.tar.gz", members)
  ds = D.load_official_cifar10(url=archive.as_uri(), md5=md5)
  np.testing.assert_array_equal(ds.x_test, images["test_batch"])
  assert not np.array_equal(ds.x_test, first.x_test)
  # Explicit arguments take precedence over the environment; data_dir too.
  elsewhere = D.load_official_cifar10(tmp_path / "elsewhere")
  np.testing.assert_array_equal(elsewhere.x_test, first.x_test)
  assert (tmp_path / "elsewhere" / D.CACHE_NAME).is_file()


def test_official_checksum_mismatch(official, monkeypatch):
  monkeypatch.setenv(D.MD5_ENV, "0" * 32)
  with pytest.raises(D.DataError) as info:
    D.load_cifar10()
  message = str(info.value)
  assert f"has md5 {official['md5']}; expected {'0' * 32}" in message
  assert official["archive"].as_uri() in message and "\n" not in message
  assert list(official["cache"].iterdir()) == []  # Neither the bad file nor a temporary.


def test_official_unreachable_url(official, monkeypatch):
  url = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # A closed local port: refused at once.
  monkeypatch.setenv(D.URL_ENV, url)
  with pytest.raises(D.DataError) as info:
    D.load_cifar10()
  message = str(info.value)
  assert message.startswith(f"could not download CIFAR-10 from {url} (")
  assert "--data /path/to/cifar10.npz" in message and D.URL_ENV in message
  assert "\n" not in message
  assert list(official["cache"].iterdir()) == []
  monkeypatch.setenv(D.URL_ENV, official["archive"].as_uri() + ".missing")
  with pytest.raises(D.DataError, match=r"could not download .*No such file.*--data"):
    D.load_cifar10()


@pytest.mark.parametrize("change, match", [
    (dict(drop="test_batch"), r"no test_batch in the archive"),
    (dict(replace=("data_batch_2", {b"labels": [1]})),
     r"data_batch_2: keys \[b'labels'\]; expected b'data'"),
    (dict(replace=("data_batch_3", {b"labels": [0] * 4, b"data": np.zeros((4, 1024), np.uint8)})),
     r"data_batch_3: data is uint8 \(4, 1024\); expected uint8 \[N, 3072\]"),
    (dict(replace=("test_batch", {b"labels": [0] * 3, b"data": np.zeros((4, 3072), np.uint8)})),
     r"test_batch: \(3,\) labels for 4 images"),
    (dict(replace=("test_batch", {b"labels": [0] * 4, b"data": np.zeros((4, 3072), np.uint8),
                                  b"extra": collections.OrderedDict()})),
     r"test_batch: cannot be unpickled \(refers to collections.OrderedDict; expected only numpy"),
    (dict(replace=("batches.meta", {b"num_vis": 3072})), r"batches.meta: no list b'label_names'"),
])
def test_official_unexpected_content(official, monkeypatch, tmp_path, change, match):
  _, _, members = _official_batches()
  if "drop" in change:
    del members[change["drop"]]
  else:
    name, batch = change["replace"]
    members[name] = _pickle_batch(batch)
  archive, md5 = _write_tar_gz(tmp_path / "bad.tar.gz", members)
  with pytest.raises(D.DataError, match=match):
    D.load_official_cifar10(url=archive.as_uri(), md5=md5)
  assert not (official["cache"] / D.CACHE_NAME).exists()


def test_official_not_an_archive(official, tmp_path):
  junk = tmp_path / "junk.tar.gz"
  junk.write_bytes(b"not a gzip file")
  md5 = hashlib.md5(junk.read_bytes()).hexdigest()
  with pytest.raises(D.DataError, match=r"cannot be read as a tar.gz archive"):
    D.load_official_cifar10(url=junk.as_uri(), md5=md5)


def test_official_only_for_cifar10():
  with pytest.raises(D.DataError, match=r'tiny_imagenet has no "official" download'):
    D.load_tiny_imagenet("official")


def test_the_augmentations_moved_to_the_classifier_say_where():
  with pytest.raises(AttributeError, match="jaxpoison.data.random_flip moved to "
                     "jaxpoison.classifier.augment.random_flip"):
    D.random_flip  # noqa: B018
  with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
    D.nothing  # noqa: B018


def test_load_jpeg_pack(tmp_path):
  import io
  rng = np.random.default_rng(0)
  pack = {}
  originals = {}
  for split, n in (("train", 5), ("test", 3)):
    blobs = []
    # Smooth images: JPEG keeps them close, unlike white noise.
    ramp = np.linspace(0, 1, 32)
    base = ramp[:, None, None] * ramp[None, :, None] * 255
    originals[split] = (base * rng.uniform(0.2, 1, (n, 1, 1, 3))).astype(np.uint8)
    for image in originals[split]:
      buffer = io.BytesIO()
      Image.fromarray(image).save(buffer, format="JPEG", quality=95)
      blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    pack[f"{split}_jpeg"] = np.concatenate(blobs)
    pack[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    pack[f"{split}_labels"] = rng.integers(0, 10, n).astype(np.uint8)
  np.savez(tmp_path / "pack.npz", **pack, label_names=np.array(D.CIFAR10_LABEL_NAMES))
  ds = D.load_cifar10(tmp_path / "pack.npz")
  assert ds.x_train.shape == (5, 32, 32, 3) and ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(ds.y_test, pack["test_labels"])
  # JPEG is lossy; at quality 95 the decoded pixels stay close to the originals.
  assert np.abs(ds.x_train.astype(int) - originals["train"]).mean() < 3
  del pack["test_labels"]
  np.savez(tmp_path / "bad_pack.npz", **pack)
  with pytest.raises(D.DataError, match=r"bad_pack\.npz: JPEG pack without test_labels"):
    D.load_cifar10(tmp_path / "bad_pack.npz")
