"""One command that settles the GPU fast path's open questions (≤ 8 minutes on one H100/H200).

  python scripts/gpu_check.py --data /path/to/cifar10.npz [--out runs/gpu_check] \
      [--budget_minutes 8]
  python scripts/gpu_check.py --dry_run        # every stage at toy sizes, on any machine

Stages (jaxpoison.benchmarks.gpu_check): denoising img/s of the 35.7M UNet (random init) in f32
and bf16 at batch 500/1000/2048 with XLA's and cuDNN's attention; the trainer's ms per step and s
per model, sequential against vmap at M = 1, 4, 16 (airbench94, full width, batch 1024); the
memory planner's choice; one full airbench94 run of 4 models (test accuracy with TTA; needs
--data); one end-to-end certification chunk and its split; diffusers' UNet on the same GPU
where PyTorch with CUDA is importable; ECLIPSE's purification (100 reverse steps, the paper's
52.5M UNet size, batch 500) in both loops and dtypes beside the authors' PyTorch loop; the
embedded denoiser's training step (shipped and double-width UNet, batch 64) and the minutes
24,000 steps take. No internet and no extra wheels are needed. Prints the
BENCHMARKS.md block, and writes it (gpu_check.md) and every figure (gpu_check.json) to --out.
Stages that would start after the budget are skipped and say so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxpoison import cli  # noqa: E402 (after the path set-up)


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default=None,
                      help="a CIFAR-10 .npz / JPEG pack (the accuracy stage needs it)")
  parser.add_argument("--out", default="runs/gpu_check")
  parser.add_argument("--budget_minutes", type=float, default=8.0)
  parser.add_argument("--dry_run", action="store_true",
                      help="toy sizes: checks that every stage runs (CPU is fine)")
  args = parser.parse_args(argv)
  with cli.user_errors(ValueError):
    if not args.budget_minutes > 0:
      raise ValueError(f"--budget_minutes: expected > 0, got {args.budget_minutes}")

  import jaxpoison
  from jaxpoison.benchmarks import gpu_check
  from jaxpoison.io import atomic_write_json, atomic_write_text

  data = None
  if args.data:
    with cli.user_errors(FileNotFoundError, ValueError):
      data = jaxpoison.load_cifar10(args.data)
  results = gpu_check.run(dry_run=args.dry_run, data=data, budget_s=60 * args.budget_minutes,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
  block = gpu_check.markdown(results)
  out = Path(args.out)
  atomic_write_json(out / "gpu_check.json", results)
  atomic_write_text(out / "gpu_check.md", block + "\n")
  print(block)
  print(f"\nwritten: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")


if __name__ == "__main__":
  cli.run(main)
