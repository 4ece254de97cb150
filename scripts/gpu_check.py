"""One command that settles the GPU fast path's open questions (≤ 8 minutes on one H100/H200).

  python scripts/gpu_check.py --data /path/to/cifar10.npz [--out runs/gpu_check] \
      [--budget_minutes 8]
  python scripts/gpu_check.py --dry_run        # every stage at toy sizes, on any machine
  JAX_PLATFORMS=cpu python scripts/gpu_check.py --aot h100 [--out runs/gpu_check_aot]
      # no GPU: every hot program compiled for an H100 (h200, or an XLA target-config .txtpb)
      # on this CPU (needs `pip install -e ".[aot]"`; ≤ 36 minutes on 2 cores): memory, kernel
      # census, flops, bytes, roofline (jaxpoison.benchmarks.aot_check); --small: toy sizes

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
Stages that would start after the budget are skipped and say so. On a GPU it also dumps XLA's
autotuning results (autotune.textproto in --out) for later AOT compiles
(--xla_gpu_load_autotune_results_from), and with --aot_results (the JSON of an earlier
`--aot` run for this GPU) prints measured beside predicted time and memory.
"""

from __future__ import annotations

import argparse
import json
import os
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
  parser.add_argument("--aot", default=None, metavar="TARGET",
                      help="compile for TARGET (h100, h200 or a target-config .txtpb) on this "
                           "host instead of measuring on a GPU")
  parser.add_argument("--small", action="store_true",
                      help="with --aot: toy sizes of the same programs (about 3 minutes)")
  parser.add_argument("--aot_results", default=None,
                      help="an earlier --aot run's gpu_check_aot.json: measured vs predicted")
  args = parser.parse_args(argv)
  with cli.user_errors(ValueError):
    if not args.budget_minutes > 0:
      raise ValueError(f"--budget_minutes: expected > 0, got {args.budget_minutes}")
    if args.small and not args.aot:
      raise ValueError("--small: only with --aot")
  if args.aot:
    return aot_main(args)
  autotune = Path(args.out).resolve() / "autotune.textproto"
  if "xla_gpu_dump_autotune_results_to" not in os.environ.get("XLA_FLAGS", ""):
    # Read when jax first starts its GPU backend, below: the kernels this device chose.
    autotune.parent.mkdir(parents=True, exist_ok=True)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_gpu_dump_autotune_results_to={autotune}").strip()

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
  if args.aot_results:
    with cli.user_errors(FileNotFoundError, ValueError):
      predicted = json.loads(Path(args.aot_results).read_text())
    print("\n" + gpu_check.measured_vs_predicted(results, predicted))
  print(f"\nwritten: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")


def aot_main(args):
  from jaxpoison import aot
  with cli.user_errors(ValueError):
    aot.load_spec(args.aot)  # A bad name or file: one line, before jax starts.
  from jaxpoison.benchmarks import aot_check
  from jaxpoison.io import atomic_write_json, atomic_write_text
  with cli.user_errors(aot.AotUnavailableError):
    results = aot_check.run(args.aot, small=args.small,
                            log=lambda m: print(m, file=sys.stderr, flush=True))
  block = aot_check.markdown(results)
  out = Path(args.out if args.out != "runs/gpu_check" else "runs/gpu_check_aot")
  atomic_write_json(out / "gpu_check_aot.json", results)
  atomic_write_text(out / "gpu_check_aot.md", block + "\n")
  print(block)
  print(f"\nwritten: {out / 'gpu_check_aot.json'}, {out / 'gpu_check_aot.md'}")


if __name__ == "__main__":
  cli.run(main)
