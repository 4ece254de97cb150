"""What a denoiser is worth downstream: clean accuracy of models trained on its denoised copies.

  python scripts/denoiser_downstream.py --denoisers OLD_DIR,default \
      [--config configs/certify_cpu_quick.py] [--sigma 0.25] [--num_models 16] \
      [--data ../shared/data/cifar10_jpeg.npz] [--out runs/denoiser_downstream]

For each denoiser, the certification pipeline (`pipeline.run_certification`, the config's
trainer, training subset and test points) trains --num_models models on independently noised
and denoised copies of the training set and records their votes in OUT/<i>_<name>/ (resumable,
like any certification folder). Model k of every denoiser gets the same noise draw (the keys
depend on seed, σ and k only), so the comparison is paired: the table gives each denoiser's
per-model clean accuracy (mean ± sd) and the mean paired difference to the first denoiser with
its 95% t-interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jaxpoison import cli  # noqa: E402 (after the path set-up)


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--denoisers", type=cli.comma_separated(str), required=True,
                      help="comma-separated: 'default', 'none' or load_denoiser folders")
  parser.add_argument("--config", default=str(REPO / "configs" / "certify_cpu_quick.py"))
  parser.add_argument("--sigma", type=float, default=0.25)
  parser.add_argument("--num_models", type=int, default=16)
  parser.add_argument("--data", default=None, help="overrides the config's data")
  parser.add_argument("--out", default="runs/denoiser_downstream")
  parser.add_argument("--no_progress", action="store_true")
  args = parser.parse_args(argv)
  with cli.user_errors(ValueError, TypeError):
    if len(args.denoisers) < 1:
      raise ValueError("--denoisers: expected at least one")
    if args.num_models < 2:  # The pipeline's n0 ≥ 1 selection model, and a spread to report.
      raise ValueError(f"--num_models: expected at least 2, got {args.num_models}")
    config = cli.load_config_file(args.config)
    changes = {"sigmas": (args.sigma,), "num_models": args.num_models,
               "n0": min(config.n0, args.num_models - 1)}
    if args.data:
      changes["data"] = args.data
    config = dataclasses.replace(config, **changes).validate()

  import numpy as np
  from scipy import stats
  from jaxpoison import pipeline

  pipeline.configure_cpu_devices()
  accuracy = {}
  for i, name in enumerate(args.denoisers):
    folder = Path(args.out) / f"{i}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)[-60:]}"
    with cli.user_errors(FileNotFoundError):
      pipeline.run_certification(dataclasses.replace(config, denoiser=name), folder,
                                 progress=not args.no_progress)
    found = pipeline.read_certified(folder)[args.sigma]
    labels = found["label"]
    votes = pipeline.load_votes(folder / f"sigma_{args.sigma:g}" / "votes", config.num_models,
                                len(labels))
    accuracy[name] = (votes == labels[None]).mean(axis=1)
  base = args.denoisers[0]
  print(f"σ = {args.sigma:g}, {config.num_models} models per denoiser, "
        f"{len(labels)} clean test points; trainer and data from {args.config}")
  print("| denoiser | per-model clean accuracy | paired difference to the first (95% CI) |")
  print("|---|---|---|")
  for name, acc in accuracy.items():
    line = f"| {name} | {100 * acc.mean():.1f}% ± {100 * acc.std(ddof=1):.1f} | "
    if name == base:
      line += "— |"
    else:
      diff = acc - accuracy[base]
      half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
      line += f"{100 * diff.mean():+.1f} ± {100 * half:.1f} points |"
    print(line)


if __name__ == "__main__":
  cli.run(main)
