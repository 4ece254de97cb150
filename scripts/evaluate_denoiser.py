"""Single-step denoising PSNR on CIFAR-10 test images, beside classical anchors and the noisy input.

  PYTHONPATH=$PWD python scripts/evaluate_denoiser.py --data /tmp/cifar10.npz \
      [--denoisers default,DIR,...] [--anchors bm3d,wavelet,nl_means] [--num_images 1000] \
      [--sigmas 0.1,0.25,0.5,1.0] [--seed 0] [--anchor_workers 2] [--cache DIR] [--out FILE.json]

Every method sees the same images (a fixed random subset of the test set) and the same noise: image
i at σ gets x + σ·ε_i with ε_i from fold_in(fold_in(key(seed), σ index), i), exactly the noise
`noise_and_denoise` adds. "noisy" is that unclipped input; the denoisers' outputs are clipped
to [0, 1]. PSNR = 10·log10(1/MSE) per image in [0, 1] units, averaged over images (± the 95%
normal interval of the mean).

The classical anchors (jaxpoison.diffusion.classical) are told σ, and each uses the setting of
its small grid that is best on 32 CIFAR-10 *training* images at that σ (BM3D has no grid). BM3D
takes about 1 s per image and σ on one core, so anchor results are cached in --cache (default
runs/denoiser_anchors), keyed by a fingerprint of the noisy inputs: a rerun with the same
images, noise and setting reuses them, and an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxpoison import cli  # noqa: E402 (after the path set-up)
from jaxpoison._checks import check_positive, check_sigma  # noqa: E402

ANCHOR_NAMES = {"bm3d": "BM3D", "wavelet": "wavelet (skimage)", "nl_means": "NL-means (skimage)"}


def _interval(values) -> str:
  import numpy as np
  values = np.asarray(values, np.float64)
  half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
  return f"{values.mean():.2f} ± {half:.2f}"


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default="official")
  parser.add_argument("--denoisers", "--denoiser", type=cli.comma_separated(str),
                      default="default",
                      help="comma-separated: 'default' (the embedded one) or load_denoiser dirs")
  parser.add_argument("--anchors", type=cli.comma_separated(str), default="bm3d,wavelet,nl_means",
                      help="classical denoisers to run beside them ('' for none)")
  parser.add_argument("--num_images", type=int, default=1000)
  parser.add_argument("--sigmas", type=cli.comma_separated(float), default="0.1,0.25,0.5,1.0")
  parser.add_argument("--batch_size", type=int, default=250)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--anchor_workers", type=int, default=1)
  parser.add_argument("--calibration_images", type=int, default=32)
  parser.add_argument("--cache", default="runs/denoiser_anchors")
  parser.add_argument("--out", default=None, help="also write every per-σ mean as JSON here")
  args = parser.parse_args(argv)
  with cli.user_errors(ValueError, TypeError):  # Bad flag values, before loading anything.
    for sigma in args.sigmas:
      check_sigma(sigma, name="--sigmas")
    check_positive("--num_images", args.num_images, integer=True)
    check_positive("--batch_size", args.batch_size, integer=True)
    check_positive("--anchor_workers", args.anchor_workers, integer=True)
    check_positive("--calibration_images", args.calibration_images, integer=True)
    from jaxpoison.diffusion.classical import CLASSICAL_DENOISERS
    anchors = [a for a in args.anchors if a]
    for a in anchors:
      if a not in CLASSICAL_DENOISERS:
        raise ValueError(f"--anchors: expected names from {CLASSICAL_DENOISERS}, got {a!r}")
    if not args.denoisers:
      raise ValueError("--denoisers: expected at least one ('default' or a directory)")

  import jax
  import numpy as np
  import jaxpoison
  from jaxpoison import diffusion as D
  from jaxpoison import runs
  from jaxpoison.diffusion import classical
  from jaxpoison.io import atomic_save_npz, atomic_write_json

  from jaxpoison.pipeline import NOISE_ONLY, resolve_denoiser
  with cli.user_errors(ValueError, FileNotFoundError):
    if NOISE_ONLY in args.denoisers:
      raise ValueError("--denoisers: 'none' has no network to evaluate (the 'noisy' column is it)")
    denoisers = {name: resolve_denoiser(name) for name in args.denoisers}
  data = jaxpoison.load_cifar10(args.data)
  # A fixed random subset: some copies of CIFAR-10 are sorted by class.
  count = min(args.num_images, len(data.x_test))
  subset = np.sort(np.random.default_rng(0).choice(len(data.x_test), count, replace=False))
  images = np.asarray(data.x_test[subset])
  x = images.astype(np.float32) / 255.0
  calib = np.asarray(data.x_train[np.random.default_rng(1).choice(
      len(data.x_train), args.calibration_images, replace=False)])
  for name, den in denoisers.items():
    print(f"denoiser {name}: {den.num_params:,} params, trained steps {den.trained_timesteps}")
  print(f"{len(x)} CIFAR-10 test images (a fixed random subset), seed {args.seed}")
  cache = Path(args.cache)
  columns = ["noisy"] + [ANCHOR_NAMES[a] for a in anchors] + list(denoisers)
  rows, results = [], {}
  for i, sigma in enumerate(args.sigmas):
    key = jax.random.fold_in(jax.random.key(args.seed), i)
    noise = np.asarray(D.image_noise(key, np.arange(len(x)), x.shape[1:]))
    noisy = x + np.float32(sigma) * noise
    per = {"noisy": classical.psnr_np(noisy, x)}
    settings = {}
    for a in anchors:
      t0 = time.time()
      params, calib_psnr = classical.calibrate_classical(a, calib, sigma,
                                                         workers=args.anchor_workers)
      settings[a] = params
      tag = runs.fingerprint_arrays([noisy], length=16)
      file = cache / f"{a}_sigma{sigma:g}_{tag}_{runs.fingerprint_pytree(params, length=8)}.npz"
      if file.exists():
        per[a] = np.load(file)["psnr"]
      else:
        out = classical.classical_denoise(a, noisy, sigma, params=params,
                                          workers=args.anchor_workers)
        per[a] = classical.psnr_np(out, x)
        atomic_save_npz(file, psnr=per[a], params=json.dumps(params))
      print(f"  σ={sigma}: {a} {params} (calibration {calib_psnr:.2f} dB) "
            f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    for name, den in denoisers.items():
      with cli.user_errors(D.UntrainedSigmaError):
        out = D.noise_and_denoise(den, x, sigma, key, batch_size=args.batch_size)
      per[name] = classical.psnr_np(np.asarray(out), x)
    rows.append(f"| {sigma} | " + " | ".join(
        _interval(per[k]) for k in ["noisy"] + anchors + list(denoisers)) + " |")
    results[str(sigma)] = {"psnr_mean": {k: float(np.mean(v)) for k, v in per.items()},
                           "anchor_settings": settings}
    print(rows[-1], flush=True)
  print()
  print("PSNR (dB, mean ± 95% interval over images)")
  print("| σ | " + " | ".join(columns) + " |")
  print("|---|" + "---|" * len(columns))
  print("\n".join(rows))
  if args.out:
    atomic_write_json(args.out, {"num_images": len(x), "seed": args.seed,
                                 "denoisers": list(denoisers), "anchors": anchors,
                                 "sigmas": results})


if __name__ == "__main__":
  cli.run(main)
