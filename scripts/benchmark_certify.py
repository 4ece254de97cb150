"""Certification throughput: chunks of concurrent models against one model at a time.

    PYTHONPATH=$PWD python scripts/benchmark_certify.py --data /tmp/cifar10.npz --num_train 2000 \
        --num_test 500 --trainer tiny --num_models 24 --models_per_step 1 8

Runs `pipeline.run_certification` once per --models_per_step value, in fresh folders under
--out, with the same seed, data, denoiser and trainer, and prints models per hour measured after
the first (compiling) chunk, with the ratio to the first value (the reference; 1 = one model at
a time, the paper's loop). Also checks that every setting produced the same votes.
"""

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np

from jaxpoison import cli


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True)
  parser.add_argument("--num_train", type=int, default=2000)
  parser.add_argument("--num_test", type=int, default=500)
  parser.add_argument("--trainer", default="tiny")
  parser.add_argument("--denoiser", default="default")
  parser.add_argument("--sigma", type=float, default=0.25)
  parser.add_argument("--num_models", type=int, default=24)
  parser.add_argument("--models_per_step", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--out", default="runs/benchmark_certify")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
  logging.getLogger("jaxpoison").setLevel(logging.INFO)

  import jax
  from jaxpoison import pipeline

  with cli.user_errors(ValueError, TypeError):  # Bad flag values, before any run.
    configs = [pipeline.CertifyConfig(
        sigmas=(args.sigma,), num_models=args.num_models, n0=max(1, args.num_models // 4),
        data=args.data, denoiser=args.denoiser, trainer=args.trainer, models_per_step=per_step,
        num_test=args.num_test, num_train=args.num_train).validate()
        for per_step in args.models_per_step]
  rows, reference_votes = [], None
  for per_step, config in zip(args.models_per_step, configs):
    out = Path(args.out) / f"models_per_step_{per_step}"
    shutil.rmtree(out, ignore_errors=True)
    summary = pipeline.run_certification(config, out, progress=False)
    timing = summary["timings"][f"{args.sigma:g}"]
    votes = pipeline.load_votes(out / f"sigma_{args.sigma:g}" / "votes", args.num_models,
                                args.num_test)
    same = reference_votes is None or bool(np.array_equal(votes, reference_votes))
    reference_votes = votes if reference_votes is None else reference_votes
    rows.append((per_step, timing, summary["sigmas"][f"{args.sigma:g}"], same))

  base = rows[0][1]["models_per_hour"]
  print(f"\ndevice: {jax.devices()[0].device_kind} × {jax.device_count()}")
  print("| models per step | s / model | models / h | ratio | denoise share | first chunk s "
        "| model acc | votes = reference |")
  print("|---:|---:|---:|---:|---:|---:|---:|:---:|")
  for per_step, timing, result, same in rows:
    print(f"| {per_step} | {timing['seconds_per_model']:.2f} | {timing['models_per_hour']:,.0f} "
          f"| {timing['models_per_hour'] / base:.2f} | {timing['denoise_fraction']:.0%} "
          f"| {timing['first_chunk_s']:.1f} | {result['model_accuracy_mean']:.3f} "
          f"| {'yes' if same else 'no'} |")
  print(json.dumps({str(r[0]): r[1] for r in rows}, indent=1))


if __name__ == "__main__":
  cli.run(main)
