"""From votes to certificates on disk: per-point CERTIFY/PREDICT, summaries, tables and plots."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from jaxpoison import certify as certify_lib
from jaxpoison.certification.config import DEFAULT_RADII
from jaxpoison.io import atomic_save_npz, atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger("jaxpoison.certification")

# ---------------------------------------------------------------------------------------------
# Analysis: from votes to the certificate and the summary.


def analyse_votes(votes: np.ndarray, labels: np.ndarray, *, n0: int, sigma: float,
                  alpha: float, num_classes: int, num_train: int,
                  radii: Sequence[float] = DEFAULT_RADII) -> tuple[dict, dict]:
  """Cohen et al.'s CERTIFY on the votes; returns (per-point arrays, summary dict)."""
  votes = np.asarray(votes)
  labels = np.asarray(labels)
  counts_select = certify_lib.vote_counts(votes[:n0], num_classes)
  counts_estimate = certify_lib.vote_counts(votes[n0:], num_classes)
  c_a, p_a = certify_lib.top_class_lower_bound(counts_select, counts_estimate, alpha)
  cert = certify_lib.certify(counts_select, counts_estimate, sigma, alpha)
  correct = cert.labels == labels
  # PREDICT (Algorithm 2) on every model's vote: the smoothed classifier's prediction, wrong
  # with probability at most α; abstentions count as wrong.
  counts_all = counts_select + counts_estimate
  smoothed = certify_lib.predict(counts_all, alpha)
  majority = np.argmax(counts_all, axis=-1)
  model_acc = (votes == labels[None]).mean(axis=1)
  certified = cert.labels != certify_lib.ABSTAIN
  grid = np.asarray(radii, np.float64)
  cert_acc = certify_lib.certified_accuracy(cert.radii, correct, grid)
  n = votes.shape[0] - n0
  poison_r = {"1": 1, "1%": max(1, int(round(0.01 * num_train))), "100%": num_train}
  poisoning = {}
  for name, r in poison_r.items():
    per_point = np.where(certified & correct,
                         certify_lib.poisoning_radius(np.where(certified, p_a, 0.5),
                                                      sigma=sigma, r=r), 0.0)
    best = max(0.0, float(certify_lib.poisoning_radius(alpha ** (1.0 / n), sigma=sigma, r=r)))
    poisoning[name] = {
        "r": r,
        "median_certified_correct": float(np.median(per_point[certified & correct]))
        if (certified & correct).any() else 0.0,
        "mean_over_test_points": float(per_point.mean()) if len(per_point) else 0.0,
        "max_with_these_models": best,
    }
  summary = {
      "sigma": sigma,
      "num_models": int(votes.shape[0]),
      "n0": int(n0),
      "alpha": float(alpha),
      "num_test": int(len(labels)),
      "model_accuracy_mean": float(model_acc.mean()),
      "model_accuracy_sd": float(model_acc.std(ddof=1)) if len(model_acc) > 1 else 0.0,
      # PREDICT's accuracy: the smoothed classifier's clean accuracy (abstentions wrong).
      "smoothed_accuracy": float((smoothed == labels).mean()),
      "smoothed_abstention_rate": float((smoothed == certify_lib.ABSTAIN).mean()),
      # The plain majority vote of all models (ties to the lower class), no test.
      "majority_vote_accuracy": float((majority == labels).mean()),
      # CERTIFY's label accuracy: by construction the certified accuracy at radius 0.
      "certify_accuracy": float(correct.mean()),
      "abstention_rate": float((~certified).mean()),
      "certified_accuracy": {f"{r:g}": float(a) for r, a in zip(grid, cert_acc)},
      # When all n estimation models agree, pA = α^(1/n): no radius beyond this is certifiable.
      "max_certifiable_radius": max(0.0, float(sigma * stats.norm.ppf(alpha ** (1.0 / n)))),
      "poisoning_radius": poisoning,
  }
  per_point = {"label": labels, "predict": cert.labels, "radius": cert.radii,
               "smoothed_predict": smoothed,
               "correct": correct.astype(np.int64), "p_a": p_a, "c_a": c_a,
               "counts_select": counts_select, "counts_estimate": counts_estimate}
  return per_point, summary


def write_certify_table(path: Path, test_indices: np.ndarray, per_point: dict) -> Path:
  """Cohen et al.'s certify output: idx label predict radius correct (tab-separated)."""
  lines = ["idx\tlabel\tpredict\tradius\tcorrect"]
  for idx, label, pred, radius, correct in zip(test_indices, per_point["label"],
                                               per_point["predict"], per_point["radius"],
                                               per_point["correct"]):
    lines.append(f"{int(idx)}\t{int(label)}\t{int(pred)}\t{radius:.4f}\t{int(correct)}")
  return atomic_write_text(path, "\n".join(lines) + "\n")


def certified_curve(radius, correct, max_certifiable: float, *, at_least: float = 0.0,
                    points: int = 200) -> tuple[np.ndarray, np.ndarray]:
  """(radius grid, certified accuracy) for a plot: out to the largest radius certified, and at
  least to the largest certifiable with these many models (all agreeing) and to `at_least`, so
  an empty curve still shows the scale."""
  reach = max(float(np.max(radius, initial=0.0)), float(max_certifiable), float(at_least))
  grid = np.linspace(0.0, max(reach, 1e-3) * 1.05, points)
  return grid, certify_lib.certified_accuracy(radius, correct, grid)


def plot_certified_accuracy(path: Path, curves: dict[float, tuple[np.ndarray, np.ndarray]],
                            title: str = "") -> Path:
  """Certified accuracy versus ℓ2 radius, one line per σ, saved atomically as a PNG."""
  lines = {f"σ = {sigma:g}": curve for sigma, curve in sorted(curves.items())}
  return plot_certified_panels(path, [(title, lines)])


def plot_certified_panels(path: Path, panels, suptitle: str = "") -> Path:
  """Side-by-side panels of certified accuracy versus ℓ2 radius, saved atomically as a PNG.

  panels: a sequence of (title, {line label: (radius grid, certified accuracy)}).
  """
  import io as _io

  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
  for ax, (title, lines) in zip(axes[0], panels):
    for label, (grid, acc) in lines.items():
      ax.plot(grid, acc, label=label)
    ax.set_xlabel("ℓ2 radius ([0, 1] pixel units)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
      ax.set_title(title)
  if suptitle:
    fig.suptitle(suptitle)
  buffer = _io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
  plt.close(fig)
  return atomic_write_bytes(path, buffer.getvalue())


def read_certified(out: str | os.PathLike) -> dict[float, dict]:
  """A finished results folder's certificates: {σ: {"radius", "correct", "label", "summary"}}.

  radius: float [num_test] (0 where CERTIFY abstained); correct: bool [num_test], the certified
  label is the true one; label: the test points' true labels; summary: that σ's summary.json.
  """
  out = Path(out)
  found = {}
  for directory in sorted(out.glob("sigma_*")):
    if not (directory / "counts.npz").exists() or not (directory / "summary.json").exists():
      continue
    summary = json.loads((directory / "summary.json").read_text())
    with np.load(directory / "counts.npz") as counts:
      found[float(summary["sigma"])] = {
          "radius": counts["radius"], "correct": counts["predict"] == counts["label"],
          "label": counts["label"], "summary": summary}
  if not found:
    raise FileNotFoundError(f"{out}: no finished σ (sigma_*/counts.npz and summary.json); "
                            "run scripts/certify.py to the end first")
  return found


def write_sigma_reports(directory: Path, test_indices, per_point: dict, summary: dict) -> None:
  write_certify_table(directory / "certify.tsv", test_indices, per_point)
  atomic_save_npz(directory / "counts.npz", test_indices=test_indices,
                  counts_select=per_point["counts_select"],
                  counts_estimate=per_point["counts_estimate"], label=per_point["label"],
                  predict=per_point["predict"], radius=per_point["radius"], p_a=per_point["p_a"],
                  smoothed_predict=per_point["smoothed_predict"])
  atomic_write_json(directory / "summary.json", summary)


def _timing_report(timing: dict) -> dict:
  report = dict(timing)
  total = timing["denoise_s"] + timing["train_vote_s"]
  if timing["models"] and total > 0:
    report["seconds_per_model"] = total / timing["models"]
    report["models_per_hour"] = 3600 * timing["models"] / total
    report["denoise_fraction"] = timing["denoise_s"] / total
  return report
