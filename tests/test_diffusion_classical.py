"""The classical anchors' wrapper (jaxpoison.diffusion.classical): units, dtypes, shapes, errors."""

import numpy as np
import pytest

bm3d = pytest.importorskip("bm3d")
restoration = pytest.importorskip("skimage.restoration")

from jaxpoison.diffusion import classical  # noqa: E402


def _smooth(n, size=32, seed=0):
  """Smooth float images in [0.1, 0.9] (gradients and a blob): what any denoiser should help."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
  out = np.empty((n, size, size, 3), np.float32)
  for i in range(n):
    for c in range(3):
      a, b, cy, cx = rng.uniform(-1, 1, 4)
      blob = np.exp(-((yy - 0.5 - 0.3 * cy) ** 2 + (xx - 0.5 - 0.3 * cx) ** 2) / 0.05)
      out[i, :, :, c] = 0.5 + 0.15 * (a * yy + b * xx) + 0.2 * blob - 0.1
  return np.clip(out, 0.1, 0.9)


@pytest.mark.parametrize("method", classical.CLASSICAL_DENOISERS)
def test_denoises_float_batches_and_single_images(method):
  clean = _smooth(2)
  sigma = 0.1
  noisy = clean + sigma * np.random.default_rng(1).standard_normal(clean.shape).astype(np.float32)
  out = classical.classical_denoise(method, noisy, sigma)
  assert out.shape == clean.shape and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  gain = classical.psnr_np(out, clean) - classical.psnr_np(noisy, clean)
  # Smooth images at σ = 0.1 (20 dB noisy): each method gains well over 3 dB on them; a
  # wrapper that passed σ in the wrong units (255× or 2× off) or returned its input gains ~0.
  assert gain.min() > 3.0, gain
  single = classical.classical_denoise(method, noisy[1], sigma)
  np.testing.assert_allclose(single, out[1], atol=1e-6)


def test_bm3d_matches_the_package_in_its_own_units():
  clean = _smooth(1)[0]
  noisy = clean + 0.25 * np.random.default_rng(2).standard_normal(clean.shape)
  expected = np.clip(bm3d.bm3d_rgb(noisy, 0.25), 0, 1)
  out = classical.classical_denoise("bm3d", noisy, 0.25)
  # Not bit for bit: the package's threaded C code is not deterministic (two calls on the same
  # input differed by up to 1e-3 here: aggregation order and block-matching ties). A wrong σ
  # (2× or 255× off) moves pixels by tenths and PSNR by decibels.
  np.testing.assert_allclose(out, expected, atol=5e-3)
  assert abs(classical.psnr_np(out[None], clean[None])[0]
             - classical.psnr_np(expected[None], clean[None])[0]) < 0.05


@pytest.mark.parametrize("method", ["wavelet", "nl_means"])
def test_uint8_in_uint8_out_equals_the_float_path(method):
  rng = np.random.default_rng(3)
  noisy = np.round(255 * np.clip(_smooth(2) + 0.1 * rng.standard_normal((2, 32, 32, 3)), 0, 1))
  noisy = noisy.astype(np.uint8)
  out = classical.classical_denoise(method, noisy, 0.1)
  assert out.dtype == np.uint8 and out.shape == noisy.shape
  # The uint8 output is the float output rounded. float32 holds the float output to ~3e-5 grey
  # levels, and Haar wavelet shrinkage lands exactly on half grey levels, so compare as "a
  # rounding of" rather than bit for bit.
  as_float = classical.classical_denoise(method, noisy.astype(np.float64) / 255.0, 0.1)
  assert np.abs(out.astype(np.float64) - 255.0 * as_float).max() <= 0.5 + 1e-4


def test_workers_give_the_same_result():
  noisy = _smooth(3) + 0.2 * np.random.default_rng(4).standard_normal((3, 32, 32, 3))
  one = classical.classical_denoise("nl_means", noisy, 0.2)
  two = classical.classical_denoise("nl_means", noisy, 0.2, workers=2)
  np.testing.assert_array_equal(one, two)


def test_calibration_picks_the_best_setting_of_the_grid():
  params, score = classical.calibrate_classical("wavelet", _smooth(2), 0.25, seed=0)
  assert params in classical.PARAMETER_GRIDS["wavelet"]
  x = _smooth(2).astype(np.float64)
  noisy = x + 0.25 * np.random.default_rng(0).standard_normal(x.shape)
  scores = [np.mean(classical.psnr_np(classical.classical_denoise("wavelet", noisy, 0.25,
                                                                   params=p), x))
            for p in classical.PARAMETER_GRIDS["wavelet"]]
  assert score == pytest.approx(max(scores))


def test_errors():
  image = _smooth(1)
  with pytest.raises(ValueError, match="method: expected one of"):
    classical.classical_denoise("median", image, 0.1)
  with pytest.raises(ValueError, match="uint8 or float"):
    classical.classical_denoise("wavelet", image.astype(np.int32), 0.1)
  with pytest.raises(ValueError, match=r"\[H, W, C\] or a batch"):
    classical.classical_denoise("wavelet", image[0, :, :, 0], 0.1)
  with pytest.raises(ValueError, match="NaN"):
    classical.classical_denoise("wavelet", np.full_like(image, np.nan), 0.1)
  with pytest.raises(ValueError, match="sigma"):
    classical.classical_denoise("wavelet", image, 0.0)
