"""Certified accuracy of finished certification runs: a Markdown table and the paper's Figure 1.

  python scripts/certified_table.py --runs runs/figure1_cpu \
      "runs/figure1_cpu_noise_only=noise only" [--radii 0,0.05,0.1,0.25,0.5] \
      [--plot runs/figure1_cpu/figure1.png]

Each --runs entry is a results folder of scripts/certify.py, optionally "=label". The table has a
row per run and σ: models, per-model clean accuracy (mean ± sd over models), the smoothed
classifier's accuracy (PREDICT), certified accuracy at each radius, and the largest radius these
many models can certify at all. The plot's left panel is the first run, a curve per σ (the
paper's Fig. 1 left); the right panel, when several runs share a σ, puts their curves at that σ
side by side (Fig. 1 right: denoising against noise only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxpoison import cli  # noqa: E402 (after the path set-up)


def _run_spec(text: str) -> tuple[Path, str]:
  path, _, label = text.partition("=")
  return Path(path), label or Path(path).name


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", nargs="+", type=_run_spec, required=True,
                      help="results folders, each optionally FOLDER=label")
  parser.add_argument("--radii", type=cli.comma_separated(float), default="0,0.05,0.1,0.25,0.5")
  parser.add_argument("--plot", default=None, help="write the figure here (PNG)")
  args = parser.parse_args(argv)

  from jaxpoison import certify, pipeline

  with cli.user_errors(FileNotFoundError):
    results = [(label, pipeline.read_certified(path)) for path, label in args.runs]
  radii = [float(r) for r in args.radii]
  header = ["run", "σ", "models", "per-model acc.", "smoothed acc."] + [
      f"r = {r:g}" for r in radii] + ["max. radius"]
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for label, by_sigma in results:
    for sigma, found in sorted(by_sigma.items()):
      s = found["summary"]
      acc = certify.certified_accuracy(found["radius"], found["correct"], radii)
      print(f"| {label} | {sigma:g} | {s['num_models']} | "
            f"{100 * s['model_accuracy_mean']:.1f}% ± {100 * s['model_accuracy_sd']:.1f} | "
            f"{100 * s['smoothed_accuracy']:.1f}% | "
            + " | ".join(f"{100 * a:.1f}%" for a in acc)
            + f" | {s['max_certifiable_radius']:.3f} |")
  if args.plot:
    def curve(found):
      return pipeline.certified_curve(found["radius"], found["correct"],
                                      found["summary"]["max_certifiable_radius"],
                                      at_least=max(radii), points=300)

    first_label, first = results[0]
    panels = [(first_label, {f"σ = {sigma:g}": curve(found)
                             for sigma, found in sorted(first.items())})]
    shared = sorted(set.intersection(*[set(r) for _, r in results])) if len(results) > 1 else []
    if shared:
      panels.append(("same σ, different smoothing", {
          f"{label}, σ = {sigma:g}": curve(by_sigma[sigma])
          for sigma in shared for label, by_sigma in results}))
    pipeline.plot_certified_panels(Path(args.plot), panels)
    print(f"\nfigure: {args.plot}")


if __name__ == "__main__":
  cli.run(main)
