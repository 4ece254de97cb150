"""Single-step denoising PSNR on CIFAR-10 test images, against the noisy input's PSNR.

  PYTHONPATH=$PWD python scripts/evaluate_denoiser.py --data /tmp/cifar10.npz \
      [--denoiser DIR (default: the embedded default)] [--num_images 1000] \
      [--sigmas 0.1,0.25,0.5,1.0] [--seed 0]

PSNR = 10·log10(1/MSE) per image in [0, 1] units, averaged over images. "noisy" is x + σε
(unclipped: exactly what the denoiser receives); "denoised" is noise_and_denoise's float output.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxpoison import cli  # noqa: E402 (after the path set-up)
from jaxpoison._checks import check_positive, check_sigma  # noqa: E402


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default="official")
  parser.add_argument("--denoiser", default=None)
  parser.add_argument("--num_images", type=int, default=1000)
  parser.add_argument("--sigmas", type=cli.comma_separated(float), default="0.1,0.25,0.5,1.0")
  parser.add_argument("--batch_size", type=int, default=250)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  with cli.user_errors(ValueError, TypeError):  # Bad flag values, before loading anything.
    for sigma in args.sigmas:
      check_sigma(sigma, name="--sigmas")
    check_positive("--num_images", args.num_images, integer=True)
    check_positive("--batch_size", args.batch_size, integer=True)

  import jax
  import numpy as np
  import jaxpoison
  from jaxpoison import diffusion as D

  den = D.load_denoiser(args.denoiser) if args.denoiser else D.default_denoiser()
  data = jaxpoison.load_cifar10(args.data)
  # A fixed random subset: some copies of CIFAR-10 are sorted by class.
  count = min(args.num_images, len(data.x_test))
  subset = np.sort(np.random.default_rng(0).choice(len(data.x_test), count, replace=False))
  x = np.asarray(data.x_test[subset], np.float32) / 255.0
  print(f"denoiser: {args.denoiser or 'default'} ({den.num_params:,} params), "
        f"{len(x)} CIFAR-10 test images (a fixed random subset)")
  print("| σ | t* | PSNR noisy (dB) | PSNR denoised (dB) | gain (dB) |")
  print("|---|---|---|---|---|")
  for i, sigma in enumerate(args.sigmas):
    t0 = time.time()
    r = D.denoising_psnr(den, x, sigma, jax.random.fold_in(jax.random.key(args.seed), i),
                         batch_size=args.batch_size)
    print(f"| {sigma} | {r['timestep']} | {r['psnr_noisy']:.2f} | {r['psnr_denoised']:.2f} | "
          f"{r['psnr_denoised'] - r['psnr_noisy']:+.2f} |", flush=True)
    print(f"  ({time.time() - t0:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
  cli.run(main)
