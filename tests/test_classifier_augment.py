"""The trainer's augmentations (jaxpoison.classifier.augment): flips, crops, cutout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.classifier import augment as D


@pytest.fixture
def batch():
  return jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))


def test_random_flip(batch):
  key = jax.random.key(0)
  out = jax.jit(D.random_flip)(key, batch)
  assert out.shape == batch.shape and out.dtype == batch.dtype
  flipped = [bool((out[i] == batch[i, :, ::-1]).all()) for i in range(16)]
  same = [bool((out[i] == batch[i]).all()) for i in range(16)]
  assert all(f or s for f, s in zip(flipped, same))
  assert 0 < sum(flipped) < 16
  np.testing.assert_array_equal(out, D.random_flip(key, batch))


def test_random_translate_is_a_crop_of_the_reflect_padded_image(batch):
  pad = 2
  out = jax.jit(D.random_translate, static_argnums=2)(jax.random.key(1), batch, pad)
  assert out.shape == batch.shape and out.dtype == batch.dtype
  padded = np.pad(np.asarray(batch), ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  shifts = set()
  for i in range(16):
    matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
               if (padded[i, dy:dy + 8, dx:dx + 8] == np.asarray(out[i])).all()]
    assert matches, f"image {i} is not a crop of its padded original"
    shifts.add(matches[0])
  assert len(shifts) > 1
  assert D.random_translate(jax.random.key(1), batch, 0) is batch


def test_cutout(batch):
  size = 4
  images = batch.astype(jnp.float32) + 1.0  # No pixel is zero before cutout.
  out = jax.jit(D.cutout, static_argnums=2)(jax.random.key(2), images, size)
  assert out.shape == images.shape and out.dtype == images.dtype
  for i in range(16):
    zero = np.asarray((out[i] == 0).all(-1))
    rows, cols = np.nonzero(zero)
    assert 0 < zero.sum() <= size * size
    # The zeroed region is one axis-aligned rectangle (a square clipped at the border).
    assert zero.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    np.testing.assert_array_equal(np.asarray(out[i])[~zero], np.asarray(images[i])[~zero])


def test_augmentations_depend_only_on_key(batch):
  for fn in (D.random_flip, D.random_translate, D.cutout):
    a = fn(jax.random.key(5), batch)
    np.testing.assert_array_equal(a, fn(jax.random.key(5), batch))
    assert not np.array_equal(a, fn(jax.random.key(6), batch))


def test_augmentation_errors(batch):
  with pytest.raises(ValueError, match="4-D array of NHWC images"):
    D.random_flip(jax.random.key(0), batch[0])
  with pytest.raises(ValueError, match="pad"):
    D.random_translate(jax.random.key(0), batch, -1)
  with pytest.raises(ValueError, match="size"):
    D.cutout(jax.random.key(0), batch, -2)
  with pytest.raises(TypeError, match="dtype"):
    D.random_flip(jax.random.key(0), batch.astype(jnp.int32))


def test_the_trainer_primitives_match_a_numpy_reference(batch):
  flip = np.arange(16) % 3 == 0
  np.testing.assert_array_equal(D.flip_where(batch, jnp.asarray(flip)),
                                np.where(flip[:, None, None, None], np.asarray(batch)[:, :, ::-1],
                                         np.asarray(batch)))
  offsets = np.random.default_rng(1).integers(0, 5, (16, 2))
  for mode, np_mode in (("reflect", "reflect"), ("constant", "constant")):
    padded = np.pad(np.asarray(batch), ((0, 0), (2, 2), (2, 2), (0, 0)), mode=np_mode)
    expected = np.stack([padded[i, r:r + 8, c:c + 8] for i, (r, c) in enumerate(offsets)])
    np.testing.assert_array_equal(D.translate(batch, jnp.asarray(offsets), 2, mode), expected)
