"""Image Shortcut Squeezing: JPEG and grayscale of the training images, as ECLIPSE's ISS-J/ISS-G."""

import io

import numpy as np
import pytest

from jaxpoison import defenses
from jaxpoison.diffusion import psnr


def _images(n=8, seed=0):
  rng = np.random.default_rng(seed)
  # Smooth images with a little texture: what JPEG is made for, so quality shows in the error.
  base = rng.uniform(40, 215, (n, 1, 1, 3)) + np.linspace(-30, 30, 32)[None, :, None, None]
  return np.clip(base + rng.normal(0, 8, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


def test_jpeg_quality_orders_the_error_and_removes_high_frequency_noise():
  images = _images()
  q10, q50, q95 = (defenses.iss_jpeg(images, q) for q in (10, 50, 95))
  assert q10.dtype == np.uint8 and q10.shape == images.shape
  errors = [float(np.mean(psnr(q, images))) for q in (q10, q50, q95)]
  assert errors[0] < errors[1] < errors[2]  # PSNR rises with quality.
  assert errors[2] > 30  # (the σ = 8 grey-level texture costs quality 95 a few dB)
  # A ±8/255 checkerboard (an ℓ∞ 8/255 high-frequency "shortcut") is mostly gone at quality 10.
  checker = (np.indices((32, 32)).sum(axis=0) % 2 * 16 - 8)[None, :, :, None]
  poisoned = np.clip(images.astype(int) + checker, 0, 255).astype(np.uint8)
  left = defenses.iss_jpeg(poisoned).astype(float) - defenses.iss_jpeg(images).astype(float)
  assert np.abs(left).mean() < 0.25 * np.abs(poisoned.astype(float) - images).mean()


def test_jpeg_is_pil_save_and_open_and_deterministic():
  from PIL import Image
  images = _images(3, seed=1)
  ours = defenses.iss_jpeg(images, 10)
  np.testing.assert_array_equal(ours, defenses.iss_jpeg(images, 10))
  buffer = io.BytesIO()
  Image.fromarray(images[1]).save(buffer, format="JPEG", quality=10)
  np.testing.assert_array_equal(ours[1], np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
  gray = defenses.iss_jpeg(images[..., :1], 10)
  assert gray.shape == (3, 32, 32, 1)


def test_grayscale_is_pils_L_in_three_channels():
  from PIL import Image
  images = _images(3, seed=2)
  ours = defenses.iss_grayscale(images)
  for image, gray in zip(images, ours):
    np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.fromarray(image).convert("L")))
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize("call, match", [
    (lambda x: defenses.iss_jpeg(x.astype(np.float32) / 255), "expected uint8"),
    (lambda x: defenses.iss_jpeg(x, 0), "quality: expected 1..95"),
    (lambda x: defenses.iss_grayscale(x[..., :1]), "expected uint8 RGB"),
])
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call(_images(2))
