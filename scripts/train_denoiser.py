"""Trains a DDPM denoiser on CIFAR-10 (resumable), optionally installing it as the default.

  PYTHONPATH=$PWD python scripts/train_denoiser.py --data /tmp/cifar10.npz \
      --out runs/default_denoiser --max_minutes 55 [--config configs/default_denoiser.py]
      [--num_steps N] [--install]

Re-running with the same --out resumes from `OUT/state`. The EMA model is written to `OUT/ema`
(a `load_denoiser` directory) at every checkpoint; --install copies it to
jaxpoison/assets/default_denoiser/ at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jaxpoison import cli  # noqa: E402 (after the path set-up)


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default="official",
                      help="'official' (download once), 'tfds' or a CIFAR-10 .npz / JPEG pack")
  parser.add_argument("--out", required=True, help="run directory (resumed if it exists)")
  parser.add_argument("--config", default=str(REPO / "configs" / "default_denoiser.py"))
  parser.add_argument("--max_minutes", type=float, default=None)
  parser.add_argument("--num_steps", type=int, default=None)
  parser.add_argument("--checkpoint_minutes", type=float, default=5.0)
  parser.add_argument("--install", action="store_true",
                      help="copy the final EMA model to jaxpoison/assets/default_denoiser")
  args = parser.parse_args(argv)

  import jaxpoison
  from jaxpoison.diffusion import save_denoiser, train_denoiser
  from jaxpoison.diffusion.model import DEFAULT_DENOISER_PATH

  cfg = cli.load_config_file(args.config)
  if args.num_steps is not None:
    with cli.user_errors(ValueError, TypeError):  # The config checks its fields.
      cfg = dataclasses.replace(cfg, num_steps=args.num_steps)
  data = jaxpoison.load_cifar10(args.data)
  print(f"{len(data.x_train)} training images; config {cfg}", flush=True)
  t0 = time.time()
  den = train_denoiser(cfg, data.x_train, args.out, max_minutes=args.max_minutes,
                       checkpoint_minutes=args.checkpoint_minutes,
                       log=lambda m: print(m, flush=True))
  print(f"done in {(time.time() - t0) / 60:.1f} min; EMA model in {Path(args.out) / 'ema'}")
  if args.install:
    from jaxpoison.diffusion import read_denoiser_config
    extra = read_denoiser_config(Path(args.out) / "ema")[2]
    save_denoiser(den, DEFAULT_DENOISER_PATH, extra=extra)
    print(f"installed as {DEFAULT_DENOISER_PATH}")


if __name__ == "__main__":
  cli.run(main)
