"""The attack benchmarks' tables: trial records in, the paper's Table 1/2 layout out.

Pure functions of trial records (`results/<attack>/trial_XXX.json`, see
`jaxpoison.benchmarks.common`): a row per attack, scenario, bound, fine-tuning recipe and
defense, a column per σ, each cell the attack's success rate with its Clopper–Pearson interval
and the victims' clean accuracy. Numpy and scipy only.
"""

from __future__ import annotations

import csv
import io as _io
from collections.abc import Sequence
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

from jaxpoison import io

ATTACK_TITLES = {
    "poison_frogs": "Poison Frogs",
    "convex_polytope": "Convex Polytope",
    "bullseye_polytope": "Bullseye Polytope",
    "label_consistent": "Label-consistent BD",
    "hidden_trigger": "Hidden-trigger BD",
    "witches_brew": "Witches' Brew",
    "sleeper_agent": "Sleeper Agent",
    "no_poison": "No poison (control)",
}
# Table rows: in this order, then any other attack by name.
ROW_ORDER = tuple(ATTACK_TITLES)


def sigma_label(sigma: float) -> str:
  return "σ = 0 (no defense)" if sigma == 0 else f"σ = {sigma:g}"


DEFAULT_BOUND = "ℓ∞ 16/255"  # Records written before the bound was recorded.
DEFAULT_FINETUNE = "linear_probe, augment none"

NO_DEFENSE = "none"


def _row_key(record) -> tuple:
  """Rows white-box first, then by attack (the paper's order), bound, fine-tuning, and the
  undefended row before the defenses'."""
  attack = record["attack"]
  order = ROW_ORDER.index(attack) if attack in ROW_ORDER else len(ROW_ORDER)
  scenario = record.get("scenario", "white-box")
  return (scenario != "white-box", scenario, order, attack, record.get("bound", DEFAULT_BOUND),
          record.get("finetune", DEFAULT_FINETUNE), record.get("defense", NO_DEFENSE))


def success_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
  """Clopper–Pearson interval of a success rate (with 20 trials, 50% reads [27%, 73%])."""
  if trials == 0:
    return (0.0, 1.0)
  interval = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence, "exact")
  return float(interval.low), float(interval.high)


def diverged(record: dict) -> list[bool]:
  """Per σ, whether the record's victim diverged (non-finite weights); records from before
  the check have no `diverged` and count as trained."""
  flags = record.get("diverged")
  return [False] * len(record["sigmas"]) if flags is None else [bool(f) for f in flags]


def summarize(results: Sequence[dict]) -> list[dict[str, Any]]:
  """Mean attack success and clean accuracy per row (attack, scenario, bound, fine-tuning,
  defense) and σ.

  Args:
    results: trial records (as written to results/<attack>/trial_XXX.json), each with
      `attack`, `scenario`, `sigmas` [S], `success` [S] (bool) and `clean_accuracy` [S], and
      optionally `bound`, `finetune` and `defense` (a baseline defense's label).

  Returns:
    One dict per row: attack, scenario, bound, finetune, defense, trials, and `cells`, a dict σ ->
    (success rate, mean clean accuracy, trials at that σ, (low, high) the 95% Clopper–Pearson
    interval of the success rate, diverged victims), fractions in [0, 1]. A victim whose
    training diverged (`diverged` in its record) is neither a failed attack nor a clean
    accuracy: it is counted apart, and the rate, accuracy and trials are the other victims'
    (NaN where none is left).
  """
  rows: dict[tuple, dict[float, list]] = {}
  counts: dict[tuple, int] = {}
  for record in results:
    key = _row_key(record)
    sigmas, success, accuracy = record["sigmas"], record["success"], record["clean_accuracy"]
    if not len(sigmas) == len(success) == len(accuracy) == len(record.get("diverged", sigmas)):
      raise ValueError(f"trial {record.get('trial')} of {record['attack']}: sigmas, success and "
                       "clean_accuracy (and diverged) must have one entry per σ")
    counts[key] = counts.get(key, 0) + 1
    cells = rows.setdefault(key, {})
    for sigma, hit, acc, broken in zip(sigmas, success, accuracy, diverged(record)):
      cells.setdefault(float(sigma), []).append(
          None if broken else (float(bool(hit)), float(acc)))
  summary = []
  for key in sorted(rows, key=lambda k: (*k[:6], k[6] != NO_DEFENSE, k[6])):
    cells = {}
    for sigma, entries in sorted(rows[key].items()):
      values = [v for v in entries if v is not None]
      hits = [h for h, _ in values]
      cells[sigma] = (float(np.mean(hits)) if values else float("nan"),
                      float(np.mean([a for _, a in values])) if values else float("nan"),
                      len(values), success_interval(int(sum(hits)), len(hits)),
                      len(entries) - len(values))
    summary.append({"attack": key[3], "scenario": key[1], "bound": key[4], "finetune": key[5],
                    "defense": key[6], "trials": counts[key], "cells": cells})
  return summary


def render_table(results: Sequence[dict], *, format: str = "markdown") -> str:
  """The paper's Table 1 layout: a row per attack, scenario and bound, a column per σ.

  Each cell is "success% [95% interval] (clean accuracy%)" over the row's trials; "—" where no
  trial has that σ; ", k diverged" where k victims diverged (left out of the cell's numbers). A fine-tuning column appears when the records mix fine-tuning recipes, a
  defense column when any record ran under a baseline defense (Hong et al. Tables 4 and 5).
  Pure: depends only on `results` (trial records, see `summarize`).

  Args:
    results: trial records.
    format: "markdown" (a GitHub table) or "csv" (columns attack, scenario, bound, finetune,
      defense, trials, then per σ "success % σ=…", its interval's ends, "clean accuracy % σ=…"
      and "diverged σ=…", numbers with one decimal, empty where every victim diverged).
  """
  if format not in ("markdown", "csv"):
    raise ValueError(f"format: expected 'markdown' or 'csv', got {format!r}")
  summary = summarize(results)
  sigmas = sorted({sigma for row in summary for sigma in row["cells"]})
  if format == "csv":
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["attack", "scenario", "bound", "finetune", "defense", "trials"]
                    + [f"{name} σ={sigma:g}" for sigma in sigmas
                       for name in ("success %", "success low %", "success high %",
                                    "clean accuracy %", "diverged")])
    for row in summary:
      values = []
      for sigma in sigmas:
        cell = row["cells"].get(sigma)
        values += (["", "", "", "", ""] if cell is None else
                   [f"{100 * v:.1f}" if cell[2] else ""
                    for v in (cell[0], cell[3][0], cell[3][1], cell[1])] + [str(cell[4])])
      writer.writerow([row["attack"], row["scenario"], row["bound"], row["finetune"],
                       row["defense"], row["trials"]] + values)
    return buffer.getvalue()
  mixed = len({row["finetune"] for row in summary}) > 1
  defended = any(row["defense"] != NO_DEFENSE for row in summary)
  lines = ["| attack | scenario | bound | " + ("fine-tuning | " if mixed else "")
           + ("defense | " if defended else "") + "trials | "
           + " | ".join(map(sigma_label, sigmas)) + " |",
           "|---|---|---|" + ("---|" if mixed else "") + ("---|" if defended else "") + "---:|"
           + "---:|" * len(sigmas)]
  for row in summary:
    cells = []
    for sigma in sigmas:
      cell = row["cells"].get(sigma)
      if cell is None:
        cells.append("—")
        continue
      text = (f"{100 * cell[0]:.0f}% [{100 * cell[3][0]:.0f}, {100 * cell[3][1]:.0f}] "
              f"({100 * cell[1]:.1f}%)" if cell[2] else "—")
      cells.append(text + (f", {cell[4]} diverged" if cell[4] else ""))
    title = ATTACK_TITLES.get(row["attack"], row["attack"])
    lines.append(f"| {title} | {row['scenario']} | {row['bound']} | "
                 + (f"{row['finetune']} | " if mixed else "")
                 + (f"{row['defense']} | " if defended else "") + f"{row['trials']} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def render_defense_table(results: Sequence[dict]) -> str:
  """The defenses' own numbers per row and σ (Markdown; "" without them): Deep k-NN's poisons
  and clean images removed (Hong et al. Table 4, means per trial), and DPA + ROE's certified
  number of poisons for the target with plain DPA's beside it and the share of base
  classifiers voting the poison class on it (means over trials)."""
  rows: dict[tuple, dict[float, list[dict]]] = {}
  for record in results:
    for sigma, details in zip(record["sigmas"], record.get("defense_details", [])):
      key = (ATTACK_TITLES.get(record["attack"], record["attack"]), record["scenario"], record["bound"],
             record["defense"], record["num_poisons"])
      rows.setdefault(key, {}).setdefault(float(sigma), []).append(details)
  if not rows:
    return ""
  lines = ["Defenses' own numbers (means over trials):", "",
           "| attack | scenario | bound | defense | σ | trials | result |",
           "|---|---|---|---|---:|---:|---|"]
  for (title, scenario, bound, defense, poisons), cells in sorted(rows.items()):
    for sigma, details in sorted(cells.items()):
      if "true_positives" in details[0]:
        tp = np.mean([d["true_positives"] for d in details])
        fp = np.mean([d["false_positives"] for d in details])
        text = f"removed {tp:.1f} of {poisons} poisons and {fp:.1f} clean images"
      else:
        roe = np.mean([d["certified_poisons"] for d in details])
        dpa = np.mean([d["dpa_certified_poisons"] for d in details])
        text = f"target certified against {roe:.2f} poisons (plain DPA: {dpa:.2f})"
        votes = [d["poison_class_votes"] for d in details if "poison_class_votes" in d]
        if votes:  # records from before the vote share existed have none
          text += f"; {np.mean(votes):.0%} of base classifiers vote the poison class"
      lines.append(f"| {title} | {scenario} | {bound} | {defense} | {sigma:g} | {len(details)} "
                   f"| {text} |")
  return "\n".join(lines) + "\n"


def write_tables(out_dir: str | Path, results: Sequence[dict],
                 sections: Sequence[str] = ()) -> tuple[Path, Path]:
  """Writes table.md (the success table, then `sections` and the defenses' own numbers, each
  where non-empty) and table.csv under out_dir (atomically)."""
  out_dir = Path(out_dir)
  parts = [render_table(results)] + [t for t in (*sections, render_defense_table(results)) if t]
  return (io.atomic_write_text(out_dir / "table.md", "\n".join(parts)),
          io.atomic_write_text(out_dir / "table.csv", render_table(results, format="csv")))


def _per_sigma_means(results: Sequence[dict], field: str, title: str, columns: Sequence[str],
                     cell: Callable[[float], str]) -> str:
  """A Markdown table of the mean over trials of the per-σ list `field`, one row per distinct
  value of the record fields `columns` ("" without records that have `field`)."""
  defaults = {"finetune": "", "defense": NO_DEFENSE}
  rows: dict[tuple, dict[float, list[float]]] = {}
  for record in results:
    if field not in record:
      continue
    key = tuple(record.get(c, defaults.get(c)) for c in columns)
    for sigma, value, broken in zip(record["sigmas"], record[field], diverged(record)):
      if not broken:  # a diverged victim's numbers are NaN's argmaxes (counted in the table)
        rows.setdefault(key, {}).setdefault(float(sigma), []).append(value)
  if not rows:
    return ""
  sigmas = sorted({s for cells in rows.values() for s in cells})
  names = {"finetune": "training"}
  lines = [title, "", "| " + " | ".join(names.get(c, c) for c in columns) + " | trials | "
           + " | ".join(sigma_label(s) for s in sigmas) + " |",
           "|" + "---|" * len(columns) + "---:|" + "---:|" * len(sigmas)]
  for key, cells in sorted(rows.items()):
    trials = max(len(v) for v in cells.values())
    lines.append("| " + " | ".join(map(str, key)) + f" | {trials} | "
                 + " | ".join(cell(np.mean(cells[s])) if s in cells else "—" for s in sigmas)
                 + " |")
  return "\n".join(lines) + "\n"


def render_source_table(results: Sequence[dict]) -> str:
  """Sleeper Agent's own measure: the mean fraction of patched source-class test images
  classified as the target class, per row and σ (Markdown); "" without such records."""
  return _per_sigma_means(
      results, "source_success", "Sleeper Agent, patched source-class test images classified "
      "as the target class (mean over trials; the no-poison control: the trigger without "
      "poisons):", ("attack", "scenario", "bound", "finetune", "defense"),
      lambda rate: f"{100 * rate:.1f}%")


def render_probability_table(results: Sequence[dict]) -> str:
  """The victims' mean softmax probability of the poison class on their targets, per row and
  σ, with the attack's name (Markdown; "" without such records): how far the poisons move the
  targets where few predictions change, beside the no-poison control's row."""
  return _per_sigma_means(
      results, "target_poison_probability", "The victims' probability of the poison class on "
      "their targets (mean over trials):", ("attack", "scenario", "bound", "finetune", "defense"),
      lambda p: f"{p:.3f}")
