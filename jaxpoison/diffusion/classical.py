"""Classical Gaussian denoisers, the anchors a learned denoiser's PSNR is read against.

BM3D (the `bm3d` package: Mäkinen, Azzari & Foi's reference implementation, colour version in
its opponent colour space) and scikit-image's wavelet (BayesShrink or VisuShrink soft
thresholding in YCbCr) and non-local-means denoisers, all told the true noise level σ, like the
diffusion denoiser. They run on the host (NumPy, one image at a time), optionally in worker
processes; they are references, not a fast path.

Images: uint8 [..., H, W, C] (values /255) or float [..., H, W, C] in [0, 1] units (noisy inputs
may leave [0, 1]: pass them unclipped, exactly what the diffusion denoiser receives). The output
has the input's shape and dtype: float32 clipped to [0, 1], or uint8 rounded. σ is in [0, 1]
pixel units.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import multiprocessing

import numpy as np

from jaxpoison._checks import check_sigma

CLASSICAL_DENOISERS = ("bm3d", "wavelet", "nl_means")

# The settings each method's `calibrate_classical` chooses among (on held-out images), so that
# every anchor runs at its best σ-specific setting rather than at a library default.
PARAMETER_GRIDS = {
    "bm3d": [{}],
    "wavelet": [{"method": m, "wavelet": w} for m in ("BayesShrink", "VisuShrink")
                for w in ("db1", "db2", "sym4")],
    "nl_means": [{"h_factor": h, "patch_size": p}
                 for h, p in itertools.product((0.4, 0.6, 0.8, 1.0), (3, 5))],
}


def _require(module: str, package: str):
  try:
    return __import__(module, fromlist=["_"])
  except ImportError as e:
    raise ImportError(f"the classical denoisers need the {package!r} package: pip install "
                      f"{package} (or the project's [dev] extra)") from e


def _denoise_one(method: str, image: np.ndarray, sigma: float, params: dict) -> np.ndarray:
  """One float64 image [H, W, C] -> float64 [H, W, C] (unclipped)."""
  if method == "bm3d":
    bm3d = _require("bm3d", "bm3d")
    if image.shape[-1] == 3:
      return np.asarray(bm3d.bm3d_rgb(image, sigma), np.float64)
    return np.stack([np.asarray(bm3d.bm3d(image[..., c], sigma), np.float64)
                     for c in range(image.shape[-1])], axis=-1)
  restoration = _require("skimage.restoration", "scikit-image")
  if method == "wavelet":
    return restoration.denoise_wavelet(
        image, sigma=sigma, wavelet=params.get("wavelet", "db1"),
        method=params.get("method", "BayesShrink"), mode="soft", channel_axis=-1,
        convert2ycbcr=image.shape[-1] == 3, rescale_sigma=True)
  if method == "nl_means":
    # With σ given, scikit-image subtracts the expected noise from the patch distances, so
    # h below σ is its recommended range (its docs: "a smaller h should be used").
    return restoration.denoise_nl_means(
        image, h=params.get("h_factor", 0.6) * sigma, sigma=sigma, fast_mode=True,
        patch_size=params.get("patch_size", 5), patch_distance=6, channel_axis=-1)
  raise ValueError(f"method: expected one of {CLASSICAL_DENOISERS}, got {method!r}")


def _denoise_chunk(method, images, sigma, params):
  return np.stack([np.clip(_denoise_one(method, im, sigma, params), 0.0, 1.0) for im in images])


def classical_denoise(method: str, noisy, sigma: float, *, params: dict | None = None,
                      workers: int = 1) -> np.ndarray:
  """Denoises `noisy` (uint8 or float, [H, W, C] or [N, H, W, C]) with a classical method.

  method: one of CLASSICAL_DENOISERS. sigma: the noise standard deviation in [0, 1] pixel units.
  params: method settings (see PARAMETER_GRIDS; None = the defaults). workers: processes for a
  batch (> 1 splits the images into that many chunks).
  """
  if method not in CLASSICAL_DENOISERS:
    raise ValueError(f"method: expected one of {CLASSICAL_DENOISERS}, got {method!r}")
  sigma = check_sigma(sigma)
  noisy = np.asarray(noisy)
  if noisy.ndim not in (3, 4):
    raise ValueError(f"noisy: expected an image [H, W, C] or a batch [N, H, W, C], got shape "
                     f"{noisy.shape}")
  if noisy.dtype == np.uint8:
    x = noisy.astype(np.float64) / 255.0
  elif np.issubdtype(noisy.dtype, np.floating):
    x = noisy.astype(np.float64)
  else:
    raise ValueError(f"noisy: expected uint8 or float images, got dtype {noisy.dtype}")
  if not np.all(np.isfinite(x)):
    raise ValueError("noisy: contains NaN or infinite values")
  batch = x if x.ndim == 4 else x[None]
  params = dict(params or {})
  if workers > 1 and len(batch) > 1:
    chunks = np.array_split(batch, min(int(workers), len(batch)))
    # "spawn": a forked child of a multithreaded JAX process can deadlock.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(chunks), mp_context=context) as pool:
      out = np.concatenate(list(pool.map(
          functools.partial(_denoise_chunk, method, sigma=sigma, params=params), chunks)))
  else:
    out = _denoise_chunk(method, batch, sigma, params)
  out = out if x.ndim == 4 else out[0]
  if noisy.dtype == np.uint8:
    return np.round(out * 255.0).astype(np.uint8)
  return out.astype(np.float32)


def psnr_np(denoised, clean) -> np.ndarray:
  """Per-image PSNR (dB) of float [0, 1] or uint8 images [N, H, W, C]: 10·log10(1/MSE)."""
  def unit(a):
    a = np.asarray(a)
    return a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
  mse = np.mean((unit(denoised) - unit(clean)) ** 2, axis=(-3, -2, -1))
  return -10.0 * np.log10(np.maximum(mse, 1e-12))


def calibrate_classical(method: str, clean, sigma: float, *, seed: int = 0,
                        workers: int = 1) -> tuple[dict, float]:
  """The setting of PARAMETER_GRIDS[method] with the best mean PSNR on `clean` + N(0, σ²) noise.

  Use held-out images (not the ones the anchor is then evaluated on). Returns (params, PSNR);
  the PSNR is NaN for a method with a single setting (nothing is run).
  """
  if len(PARAMETER_GRIDS[method]) == 1:  # Nothing to choose (BM3D): skip the slow scoring.
    return dict(PARAMETER_GRIDS[method][0]), float("nan")
  clean = np.asarray(clean)
  x = clean.astype(np.float64) / 255.0 if clean.dtype == np.uint8 else clean.astype(np.float64)
  noisy = x + sigma * np.random.default_rng(seed).standard_normal(x.shape)
  best = None
  for params in PARAMETER_GRIDS[method]:
    score = float(np.mean(psnr_np(classical_denoise(method, noisy, sigma, params=params,
                                                    workers=workers), x)))
    if best is None or score > best[1]:
      best = (params, score)
  return best
