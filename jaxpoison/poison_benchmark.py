"""The attack benchmark of the paper's Table 1: clean-label poisoning in transfer learning.

Hong et al. (2024) measure how often the feature-collision attacks (Poison Frogs, Convex
Polytope, Bullseye Polytope) succeed against a fine-tuned victim, with and without their
defense (noise of level σ added to the whole training set and removed with one DDPM step), in
the transfer-learning setting of Schwarzschild et al.'s benchmark:

* Pretraining. A feature extractor is trained once. The paper pretrains on CIFAR-100, which
  cannot be downloaded here: by default the extractor is pretrained on one half of the CIFAR-10
  training set (indices fixed by a seeded permutation) and the victim is fine-tuned on images of
  the other half, so no pretraining image is ever poisoned or fine-tuned on. Results say so
  (`pretraining` in every record). A user checkpoint (`pretrained=`) replaces it.
* Fine-tune set. The benchmark's: the first `finetune_per_class` = 250 images per class of the
  fine-tune half (2,500 images), with 25 poisons (1% of it) per trial.
* Trial i (key `fold_in(key(seed), i)`): a target test image, its class, a base class and the
  base images (`jaxpoison.attacks.sample_trial`; the same trial for every attack), the poisons
  crafted on the pretrained extractor (white-box) or on another architecture's (black-box,
  `crafter=`), saved as a poison file and reused across σ and on reruns.
* For each σ (0 = no defense): the whole poisoned fine-tune set is noised and denoised
  (`jaxpoison.diffusion.noise_and_denoise`), the victim is fine-tuned from the pretrained
  weights with a fresh linear head and the extractor frozen (the benchmark's linear probe:
  SGD, momentum 0.9, lr 0.01, weight decay 2e-4, 40 epochs, batch 128), and the record says
  whether the target is classified as the base class (attack success) and the clean accuracy
  on `num_eval` test images (a fixed random subset, `eval_indices`). Several trials are
  fine-tuned at once, one model each on the classifier's model axis.

Keys of trial i: `t = fold_in(key(seed), i)`; sampling `fold_in(t, 0)`, crafting
`fold_in(t, 1)`, denoising at the s-th σ `fold_in(fold_in(t, 2), s)`, fine-tuning
`fold_in(t, 3)` (the same at every σ, so σ alone changes between the columns).

Files under the output directory:

    run.json                          the settings the results depend on; a rerun with other
                                      settings is refused, naming the settings that differ
    pretrained/victim, .../crafter    the pretrained extractors (`save_models`), reused
    poisons/<attack>/trial_XXX.npz    poison files (`save_poisons`), reused across σ and reruns
    results/<attack>/trial_XXX.json   one record per finished trial (written atomically)
    table.md, table.csv               the table in the shape of the paper's Table 1

A rerun skips finished trials, so an interrupted run resumes where it stopped and gives the
same records as an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io as _io
import json
import math
import numbers
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison import attacks, classifier, io
from jaxpoison._checks import check_perturbation_bound, check_positive, check_sigma
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks.configs import BENCHMARK_NUM_POISONS, LINF_EPSILON

ATTACK_NAMES = tuple(attacks.ATTACKS)
ATTACK_TITLES = {
    "poison_frogs": "Poison Frogs",
    "convex_polytope": "Convex Polytope",
    "bullseye_polytope": "Bullseye Polytope",
}
DEFAULT_SIGMAS = (0.0, 0.1, 0.25, 0.5, 1.0)
RUN_FILE = "run.json"
FORMAT_VERSION = 2  # 2: clean accuracy on a random test subset (was the first num_eval)
# Streams of a trial's key (see the module docstring).
SAMPLE, CRAFT, DENOISE, FINETUNE = range(4)
# Streams of the pretraining key.
SPLIT, PRETRAIN_VICTIM, PRETRAIN_CRAFTER, EVAL_SUBSET = range(4)


class BenchmarkConfigError(ValueError):
  """An output directory written with other settings than the ones given."""


def _integer(name: str, value, *, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name}: expected an integer, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
  return int(value)


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
  """How the victim is fine-tuned: the benchmark's linear probe on the frozen extractor.

  Attributes:
    epochs: passes over the fine-tune set (benchmark: 40).
    batch_size: images per step (128).
    learning_rate: SGD step (0.01).
    momentum: SGD momentum (0.9).
    weight_decay: L2 weight decay (2e-4).
  """
  epochs: int = 40
  batch_size: int = 128
  learning_rate: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 2e-4

  def __post_init__(self):
    _store(self, "epochs", _integer("finetune.epochs", self.epochs))
    _store(self, "batch_size", _integer("finetune.batch_size", self.batch_size))
    _store(self, "learning_rate", check_positive("finetune.learning_rate", self.learning_rate))
    momentum = float(self.momentum)
    if not 0 <= momentum < 1:
      raise ValueError(f"finetune.momentum: expected a value in [0, 1), got {self.momentum!r}")
    _store(self, "momentum", momentum)
    decay = float(self.weight_decay)
    if not math.isfinite(decay) or decay < 0:
      raise ValueError(f"finetune.weight_decay: expected a value >= 0, got {self.weight_decay!r}")
    _store(self, "weight_decay", decay)


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  """Settings of an attack benchmark run (defaults: the paper's Table 1 setting).

  Attributes:
    attacks: attacks to run, names of `jaxpoison.attacks.ATTACKS`.
    num_trials: trials per attack (100); a rerun with more trials extends a run.
    seed: trial i uses the key fold_in(key(seed), i).
    sigmas: noise levels in [0, 1] pixel units; 0 means no defense (no denoising).
    num_poisons: poisons per trial (the benchmark's 25); None when `budget` is given.
    budget: poisons as a fraction of the fine-tune set (e.g. 0.01); overrides nothing, so set
      `num_poisons=None` with it.
    finetune_per_class: the fine-tune set is the first this many images per class of the
      fine-tune half (250, the benchmark's 2,500 images); None takes the whole half.
    pretrain_seed: fixes the half split (a permutation of the training set: first half
      pretraining, second half fine-tune pool) and the pretraining keys.
    num_eval: clean accuracy is measured on this many test images, a fixed random subset
      (`eval_indices`; a prefix would be one class in a copy sorted by label).
    victim: `jaxpoison.classifier.TrainConfig` to pretrain the victim's extractor with (None:
      `resnet18_config()`, the paper's); unused when a pretrained checkpoint is given.
    crafter: TrainConfig of the model the poisons are crafted on, pretrained the same way on
      the same half (black-box); None crafts on the victim's own pretrained extractor
      (white-box).
    norm, epsilon: the poisons' bound (ℓ∞ 16/255 by default, in [0, 1] pixel units).
    craft_steps: crafting iterations (None: each attack's published default).
    base_selection: "random" or "nearest" (see `sample_trial`).
    finetune: the victim's fine-tuning recipe.
    trials_per_step: trials fine-tuned at once (the classifier's model axis); does not change
      the results, only speed and memory.
    denoise_batch_size: images per denoiser call; does not change the results.
  """
  attacks: tuple[str, ...] = ATTACK_NAMES
  num_trials: int = 100
  seed: int = 0
  sigmas: tuple[float, ...] = DEFAULT_SIGMAS
  num_poisons: int | None = BENCHMARK_NUM_POISONS
  budget: float | None = None
  finetune_per_class: int | None = 250
  pretrain_seed: int = 0
  num_eval: int = 1000
  victim: Any = None
  crafter: Any = None
  norm: str = "linf"
  epsilon: float = LINF_EPSILON
  craft_steps: int | None = None
  base_selection: str = "random"
  finetune: FineTuneConfig = FineTuneConfig()
  trials_per_step: int = 1
  denoise_batch_size: int = 256

  def __post_init__(self):
    names = (self.attacks,) if isinstance(self.attacks, str) else tuple(self.attacks)
    if not names:
      raise ValueError("attacks: expected at least one attack")
    for name in names:
      attacks.get_attack(name)
    if len(set(names)) != len(names):
      raise ValueError(f"attacks: {list(names)} names an attack twice")
    _store(self, "attacks", names)
    _store(self, "num_trials", _integer("num_trials", self.num_trials))
    _store(self, "seed", _integer("seed", self.seed, minimum=0))
    sigmas = tuple(check_sigma(s, name="sigmas", allow_zero=True) for s in self.sigmas)
    if not sigmas:
      raise ValueError("sigmas: expected at least one noise level (0 = no defense)")
    if len(set(sigmas)) != len(sigmas):
      raise ValueError(f"sigmas: {list(sigmas)} lists a noise level twice")
    _store(self, "sigmas", sigmas)
    if (self.num_poisons is None) == (self.budget is None):
      raise ValueError(
          f"num_poisons={self.num_poisons!r}, budget={self.budget!r}: set exactly one (a count, "
          "e.g. the benchmark's 25, or a fraction of the fine-tune set, e.g. 0.01)")
    if self.num_poisons is not None:
      _store(self, "num_poisons", _integer("num_poisons", self.num_poisons))
    else:
      budget = check_positive("budget", self.budget)
      if budget >= 1:
        raise ValueError(f"budget: expected a fraction of the fine-tune set in (0, 1), got "
                         f"{self.budget!r}")
      _store(self, "budget", budget)
    if self.finetune_per_class is not None:
      _store(self, "finetune_per_class",
             _integer("finetune_per_class", self.finetune_per_class))
    _store(self, "pretrain_seed", _integer("pretrain_seed", self.pretrain_seed, minimum=0))
    _store(self, "num_eval", _integer("num_eval", self.num_eval))
    _store(self, "epsilon", check_perturbation_bound(self.norm, self.epsilon))
    if self.craft_steps is not None:
      _store(self, "craft_steps", _integer("craft_steps", self.craft_steps))
    if self.base_selection not in ("random", "nearest"):
      raise ValueError(f"base_selection: expected 'random' or 'nearest', got "
                       f"{self.base_selection!r}")
    if not isinstance(self.finetune, FineTuneConfig):
      raise TypeError(f"finetune: expected a FineTuneConfig, got {type(self.finetune).__name__}")
    for name in ("victim", "crafter"):
      value = getattr(self, name)
      if value is not None and not dataclasses.is_dataclass(value):
        raise TypeError(f"{name}: expected a jaxpoison.classifier.TrainConfig or None, got "
                        f"{type(value).__name__}")
    _store(self, "trials_per_step", _integer("trials_per_step", self.trials_per_step))
    _store(self, "denoise_batch_size", _integer("denoise_batch_size", self.denoise_batch_size))

  @property
  def white_box(self) -> bool:
    return self.crafter is None

  def attack_config(self, name: str):
    """The attack's config: its published defaults with this run's bound and step count."""
    overrides = {"norm": self.norm, "epsilon": self.epsilon}
    if self.craft_steps is not None:
      overrides["num_steps"] = self.craft_steps
    return attacks.get_attack(name).config_type(**overrides)

  def poisons_for(self, finetune_size: int) -> int:
    """Poisons per trial for a fine-tune set of `finetune_size` images."""
    if self.num_poisons is not None:
      return self.num_poisons
    return max(1, int(round(self.budget * finetune_size)))


# --- data: the pretraining / fine-tuning split ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Split:
  """Training-set indices (sorted, disjoint): the pretraining half, the fine-tune pool (the
  other half) and the fine-tune set drawn from the pool."""
  pretrain: np.ndarray
  pool: np.ndarray
  finetune: np.ndarray


def split_training_set(labels, *, pretrain_seed: int = 0,
                       finetune_per_class: int | None = 250) -> Split:
  """Halves the training set with a seeded permutation; takes the fine-tune set from the pool.

  Args:
    labels: int [N], the training labels.
    pretrain_seed: the permutation is `jax.random.permutation(fold_in(key(seed), 0), N)`; its
      first ⌊N/2⌋ entries are the pretraining half, the rest the fine-tune pool.
    finetune_per_class: the fine-tune set is the first (lowest-index) this many images of each
      class in the pool, the benchmark's choice of the first 250 per class; None takes the pool.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size < 2:
    raise ValueError(f"labels: expected a 1-D array of at least 2 labels, got shape "
                     f"{labels.shape}")
  key = jax.random.fold_in(jax.random.key(pretrain_seed), SPLIT)
  order = np.asarray(jax.random.permutation(key, labels.size))
  half = labels.size // 2
  pretrain, pool = np.sort(order[:half]), np.sort(order[half:])
  if finetune_per_class is None:
    return Split(pretrain, pool, pool)
  chosen = []
  for c in np.unique(labels):
    members = pool[labels[pool] == c]
    if members.size < finetune_per_class:
      raise ValueError(
          f"finetune_per_class: class {int(c)} has {members.size} images in the fine-tune half; "
          f"{finetune_per_class} were asked for (use a smaller value or None for the whole half)")
    chosen.append(members[:finetune_per_class])
  return Split(pretrain, pool, np.sort(np.concatenate(chosen)))


def eval_indices(num_test: int, num_eval: int, *, seed: int = 0) -> np.ndarray:
  """The test images clean accuracy is measured on: `num_eval` of `num_test`, sorted.

  A seeded random subset (`fold_in(key(seed), EVAL_SUBSET)`), not the first `num_eval`: test
  sets stored sorted by label (as some CIFAR-10 copies are) would otherwise give one class.
  """
  if not 1 <= num_eval <= num_test:
    raise ValueError(f"num_eval: expected 1 to {num_test} (the test images), got {num_eval}")
  key = jax.random.fold_in(jax.random.key(seed), EVAL_SUBSET)
  return np.sort(np.asarray(jax.random.permutation(key, num_test))[:num_eval])


def poisoned_images(finetune_images: np.ndarray, finetune_indices: np.ndarray,
                    poison_set: attacks.PoisonSet) -> np.ndarray:
  """The fine-tune images (uint8 [N, H, W, C], training indices `finetune_indices`, sorted) with
  the poisons in place of their bases (a copy)."""
  positions = np.searchsorted(finetune_indices, poison_set.indices)
  inside = (positions < finetune_indices.size)
  inside[inside] = finetune_indices[positions[inside]] == poison_set.indices[inside]
  if not inside.all():
    raise attacks.PoisonFileError(
        f"base indices {poison_set.indices[~inside][:10].tolist()} are not in the fine-tune set")
  images = np.array(finetune_images, copy=True)
  images[positions] = poison_set.images
  return images


# --- keys ---------------------------------------------------------------------------------------

def trial_key(seed: int, index: int) -> jax.Array:
  """The key of trial `index`: fold_in(key(seed), index)."""
  return jax.random.fold_in(jax.random.key(seed), index)


def denoise_key(key: jax.Array, sigma_index: int) -> jax.Array:
  """The key the s-th σ's noise of a trial is drawn from."""
  return jax.random.fold_in(jax.random.fold_in(key, DENOISE), sigma_index)


# --- fingerprints: what a results folder depends on ---------------------------------------------

def _sha256_arrays(arrays: Iterable) -> str:
  digest = hashlib.sha256()
  for array in arrays:
    array = np.ascontiguousarray(np.asarray(array))
    digest.update(str((array.shape, array.dtype.str)).encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def params_fingerprint(tree) -> str:
  """SHA-256 of every leaf of a parameter pytree (shapes, dtypes and values)."""
  leaves = [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape")]
  return _sha256_arrays(leaves)


def dataset_fingerprint(dataset) -> dict[str, Any]:
  return {
      "name": str(getattr(dataset, "name", "unknown")),
      "train_shape": [int(n) for n in dataset.x_train.shape],
      "test_shape": [int(n) for n in dataset.x_test.shape],
      "sha256": _sha256_arrays([dataset.x_train, dataset.y_train, dataset.x_test,
                                dataset.y_test]),
  }


def _config_dict(config) -> Any:
  """A JSON-able description of a (nested) config dataclass."""
  if config is None:
    return None
  if dataclasses.is_dataclass(config):
    return {"type": type(config).__name__,
            **{f.name: _config_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}}
  if isinstance(config, tuple):
    return [_config_dict(v) for v in config]
  if isinstance(config, (str, bool, int, float)) or config is None:
    return config
  return repr(config)


# Fields that change neither the trials nor their records: they may differ between runs that
# share an output directory.
EXECUTION_FIELDS = ("attacks", "num_trials", "trials_per_step", "denoise_batch_size")


def run_identity(config: BenchmarkConfig, *, dataset, victim: dict, crafter: dict | None,
                 denoiser: dict | None) -> dict[str, Any]:
  """The settings a run's records depend on (compared against run.json on a rerun)."""
  settings = _config_dict(config)
  for name in EXECUTION_FIELDS + ("victim", "crafter"):
    settings.pop(name)
  settings.pop("type")
  return {
      "format_version": FORMAT_VERSION,
      "settings": settings,
      "dataset": dataset_fingerprint(dataset),
      "victim": victim,
      "crafter": crafter,
      "denoiser": denoiser,
  }


def _differences(expected, given, prefix: str = "") -> list[str]:
  if isinstance(expected, dict) and isinstance(given, dict):
    out = []
    for key in sorted(set(expected) | set(given)):
      name = f"{prefix}.{key}" if prefix else str(key)
      if key not in expected or key not in given:
        out.append(f"{name} (only in the {'given settings' if key in given else 'folder'})")
      else:
        out.extend(_differences(expected[key], given[key], name))
    return out
  if expected != given:
    return [f"{prefix or 'settings'}: folder has {_short(expected)}, given {_short(given)}"]
  return []


def _short(value) -> str:
  text = json.dumps(value, sort_keys=True)
  return text if len(text) <= 80 else text[:77] + "..."


def check_run_file(out_dir: str | Path, identity: dict[str, Any]) -> None:
  """Writes run.json into a new output directory, or checks that it matches `identity`.

  Raises:
    BenchmarkConfigError: the directory holds results of a run with other settings; the
      message names every setting that differs.
  """
  path = Path(out_dir) / RUN_FILE
  identity = json.loads(json.dumps(identity, default=io._json_default))
  if path.is_file():
    try:
      existing = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise BenchmarkConfigError(f"{path}: unreadable ({e}); remove it or use another output "
                                 "directory") from e
    differences = _differences(existing, identity)
    if differences:
      raise BenchmarkConfigError(
          f"{path.parent} holds results of a run with other settings; differing: "
          + "; ".join(differences)
          + ". Use another output directory, or the folder's settings to resume it.")
    return
  io.atomic_write_json(path, identity)


# --- crafting -----------------------------------------------------------------------------------

def poison_path(out_dir: str | Path, attack: str, trial: int) -> Path:
  return Path(out_dir) / "poisons" / attack / f"trial_{trial:03d}.npz"


def result_path(out_dir: str | Path, attack: str, trial: int) -> Path:
  return Path(out_dir) / "results" / attack / f"trial_{trial:03d}.json"


def sample_benchmark_trial(config: BenchmarkConfig, dataset, split: Split, index: int,
                           extractors=None) -> attacks.Trial:
  """Trial `index`: the target from the whole test set, the bases from the fine-tune set."""
  num_poisons = config.poisons_for(split.finetune.size)
  return attacks.sample_trial(
      jax.random.fold_in(trial_key(config.seed, index), SAMPLE), dataset, num_poisons,
      base_selection=config.base_selection, extractors=extractors,
      train_indices=split.finetune)


def craft_poisons(config: BenchmarkConfig, attack: str, dataset, split: Split, index: int,
                  extractors) -> attacks.PoisonSet:
  """Samples trial `index` and crafts its poisons with `attack` on `extractors`."""
  trial = sample_benchmark_trial(config, dataset, split, index, extractors)
  key = jax.random.fold_in(trial_key(config.seed, index), CRAFT)
  attack_config = config.attack_config(attack)
  result = attacks.craft(attack, key, extractors, np.asarray(dataset.x_test[trial.target_index]),
                         np.asarray(dataset.x_train[trial.base_indices]), attack_config)
  return attacks.make_poison_set(dataset, trial, np.asarray(result.poisons), attack=attack,
                                 config=attack_config, key=key)


def load_or_craft(out_dir, config: BenchmarkConfig, attack: str, dataset, split: Split,
                  index: int, extractors) -> tuple[attacks.PoisonSet, bool]:
  """The poisons of trial `index` from their file, or crafted and saved; (poisons, crafted).

  A file that exists is checked against the dataset (`load_poisons`) and against this run's
  trial and attack config, so a stale file is refused rather than silently reused.
  """
  path = poison_path(out_dir, attack, index)
  if path.is_file():
    poison_set = attacks.load_poisons(path, dataset)
    expected = config.attack_config(attack).to_dict()
    trial = sample_benchmark_trial(config, dataset, split, index,
                                   extractors if config.base_selection == "nearest" else None)
    problems = []
    if poison_set.attack != attack:
      problems.append(f"attack {poison_set.attack!r}, expected {attack!r}")
    if poison_set.config != expected:
      problems.append(f"attack config {poison_set.config}, expected {expected}")
    if (poison_set.target_index != trial.target_index
        or not np.array_equal(poison_set.indices, trial.base_indices)):
      problems.append("target or base images differ from this run's trial")
    if problems:
      raise attacks.PoisonFileError(f"{path}: does not belong to this run: "
                                    + "; ".join(problems))
    return poison_set, False
  poison_set = craft_poisons(config, attack, dataset, split, index, extractors)
  attacks.save_poisons(path, poison_set)
  return poison_set, True


# --- the table ----------------------------------------------------------------------------------

def _sigma_label(sigma: float) -> str:
  return "σ = 0 (no defense)" if sigma == 0 else f"σ = {sigma:g}"


def _row_key(record) -> tuple[int, str, bool, str]:
  """Rows in attack order, white-box before black-box."""
  attack = record["attack"]
  order = ATTACK_NAMES.index(attack) if attack in ATTACK_NAMES else len(ATTACK_NAMES)
  scenario = record.get("scenario", "white-box")
  return order, attack, scenario != "white-box", scenario


def summarize(results: Sequence[dict]) -> list[dict[str, Any]]:
  """Mean attack success and clean accuracy per (attack, scenario) row and σ.

  Args:
    results: trial records (as written to results/<attack>/trial_XXX.json), each with
      `attack`, `scenario`, `sigmas` [S], `success` [S] (bool) and `clean_accuracy` [S].

  Returns:
    One dict per row, in attack order: attack, scenario, trials, and `cells`, a dict σ ->
    (success rate, mean clean accuracy, trials at that σ), fractions in [0, 1].
  """
  rows: dict[tuple, dict[float, list]] = {}
  counts: dict[tuple, int] = {}
  for record in results:
    key = _row_key(record)
    sigmas, success, accuracy = record["sigmas"], record["success"], record["clean_accuracy"]
    if not len(sigmas) == len(success) == len(accuracy):
      raise ValueError(f"trial {record.get('trial')} of {record['attack']}: sigmas, success and "
                       "clean_accuracy must have one entry per σ")
    counts[key] = counts.get(key, 0) + 1
    cells = rows.setdefault(key, {})
    for sigma, hit, acc in zip(sigmas, success, accuracy):
      cells.setdefault(float(sigma), []).append((float(bool(hit)), float(acc)))
  summary = []
  for key in sorted(rows):
    cells = {sigma: (float(np.mean([h for h, _ in values])), float(np.mean([a for _, a in values])),
                     len(values))
             for sigma, values in sorted(rows[key].items())}
    summary.append({"attack": key[1], "scenario": key[3], "trials": counts[key], "cells": cells})
  return summary


def render_table(results: Sequence[dict], *, format: str = "markdown") -> str:
  """The paper's Table 1 layout: a row per attack (and scenario), a column per σ.

  Each cell is "success% (clean accuracy%)" averaged over the row's trials; "—" where no trial
  has that σ. Pure: depends only on `results` (trial records, see `summarize`).

  Args:
    results: trial records.
    format: "markdown" (a GitHub table) or "csv" (columns attack, scenario, trials, then per σ
      "success % σ=…" and "clean accuracy % σ=…", numbers with one decimal).
  """
  if format not in ("markdown", "csv"):
    raise ValueError(f"format: expected 'markdown' or 'csv', got {format!r}")
  summary = summarize(results)
  sigmas = sorted({sigma for row in summary for sigma in row["cells"]})
  if format == "csv":
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["attack", "scenario", "trials"]
                    + [f"{name} % σ={sigma:g}" for sigma in sigmas
                       for name in ("success", "clean accuracy")])
    for row in summary:
      values = []
      for sigma in sigmas:
        cell = row["cells"].get(sigma)
        values += ["", ""] if cell is None else [f"{100 * cell[0]:.1f}", f"{100 * cell[1]:.1f}"]
      writer.writerow([row["attack"], row["scenario"], row["trials"]] + values)
    return buffer.getvalue()
  lines = ["| attack | scenario | trials | " + " | ".join(map(_sigma_label, sigmas)) + " |",
           "|---|---|---:|" + "---:|" * len(sigmas)]
  for row in summary:
    cells = []
    for sigma in sigmas:
      cell = row["cells"].get(sigma)
      cells.append("—" if cell is None else f"{100 * cell[0]:.1f}% ({100 * cell[1]:.1f}%)")
    title = ATTACK_TITLES.get(row["attack"], row["attack"])
    lines.append(f"| {title} | {row['scenario']} | {row['trials']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def load_results(out_dir: str | Path, attack_names: Sequence[str] | None = None) -> list[dict]:
  """Every finished trial's record under out_dir/results, by attack then trial."""
  root = Path(out_dir) / "results"
  records = []
  names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
  if attack_names is not None:
    names = [n for n in attack_names if n in names]
  for name in names:
    for path in sorted((root / name).glob("trial_*.json")):
      records.append(json.loads(path.read_text()))
  return records


def write_tables(out_dir: str | Path, results: Sequence[dict]) -> tuple[Path, Path]:
  """Writes table.md and table.csv under out_dir (atomically)."""
  out_dir = Path(out_dir)
  return (io.atomic_write_text(out_dir / "table.md", render_table(results)),
          io.atomic_write_text(out_dir / "table.csv", render_table(results, format="csv")))


# --- the victim: pretraining and fine-tuning -----------------------------------------------------

MODEL_NAMES = ("resnet18", "airbench94", "tiny_resnet18", "tiny_airbench94")


def model_config(name: str, **changes):
  """The classifier's TrainConfig for an architecture name (`MODEL_NAMES`): resnet18 (the
  paper's victim), airbench94, or their tiny test versions; `changes` override fields."""
  builders = {
      "resnet18": classifier.resnet18_config,
      "airbench94": classifier.airbench94_config,
      "tiny_resnet18": functools.partial(classifier.tiny_config, "resnet18"),
      "tiny_airbench94": functools.partial(classifier.tiny_config, "airbench94"),
  }
  if name not in builders:
    raise ValueError(f"model: expected one of {MODEL_NAMES}, got {name!r}")
  return builders[name](**changes)


def finetune_train_config(victim, finetune: FineTuneConfig):
  """The victim's fine-tuning recipe: its pretraining config with a linear probe's settings.

  Only the final linear layer trains (re-initialized; the extractor is frozen and its batch
  norm uses the running statistics); plain SGD with PyTorch's (coupled) weight decay and a
  cosine schedule; the victim's augmentation is kept.
  """
  return dataclasses.replace(
      victim, epochs=finetune.epochs, batch_size=finetune.batch_size, lr=finetune.learning_rate,
      momentum=finetune.momentum, nesterov=False, weight_decay=finetune.weight_decay,
      decoupled=False, bias_scaler=1.0, schedule="cosine", label_smoothing=0.0, lookahead=False,
      trainable="head", reinit_head=True)


def _pretrained_info(source: str, models, pretraining: str | None) -> dict[str, Any]:
  info = {"source": source, "model": models.config.model,
          "config": _config_dict(models.config), "params_sha256": params_fingerprint(models.state)}
  if pretraining is not None:
    info["pretraining"] = pretraining
  return info


def pretraining_note(dataset, split: Split) -> str:
  """What the default extractor was pretrained on, for the records."""
  return (f"pretrained on {split.pretrain.size} images of {dataset.name}: half of the training "
          "set, disjoint from the fine-tune set (the paper pretrains on CIFAR-100)")


def load_or_pretrain(path: str | Path, dataset, split: Split, train_config, key: jax.Array,
                     *, log: Callable[[str], None] = print):
  """The extractor pretrained on the split's pretraining half: loaded from `path` when a
  finished checkpoint is there (its config must equal `train_config`), else trained and saved.
  """
  path = Path(path)
  done = path / "pretrained.json"
  if done.is_file():
    models = classifier.load_models(path / "models")
    if models.config != train_config:
      raise BenchmarkConfigError(
          f"{path}: pretrained with {_short(_config_dict(models.config))}, this run asks for "
          f"{_short(_config_dict(train_config))}")
    return models
  if path.exists():  # A pretraining run that stopped before it finished saving.
    shutil.rmtree(path)
  log(f"pretraining {train_config.model} on {split.pretrain.size} images ...")
  start = time.perf_counter()
  models = classifier.train_models(
      jax.random.split(key, 1), dataset.x_train[split.pretrain], dataset.y_train[split.pretrain],
      train_config)
  classifier.save_models(path / "models", models)
  seconds = time.perf_counter() - start
  num_test = min(1000, dataset.x_test.shape[0])
  subset = eval_indices(dataset.x_test.shape[0], num_test)
  accuracy = float(classifier.evaluate(models, dataset.x_test[subset],
                                       dataset.y_test[subset])[0])
  io.atomic_write_json(done, {"seconds": seconds, "test_accuracy": accuracy,
                              "num_test": num_test, "num_images": int(split.pretrain.size)})
  log(f"pretrained {train_config.model} in {seconds:.0f} s, test accuracy {accuracy:.3f} "
      f"(on {num_test} random test images)")
  return models


@jax.jit
def _score(models, targets, eval_images, eval_labels):
  # predictions [M, M]: model m's prediction of every trial's target; its own is the diagonal.
  predictions = jnp.diagonal(classifier.predict(models, targets))
  return predictions, classifier.evaluate(models, eval_images, eval_labels)


def _finetune_and_score(train_config, keys, images, labels, init, targets, eval_images,
                        eval_labels):
  """Fine-tunes M victims (`train_models`: compiled once per shape, and on the CPU with the
  steps called from Python, see TrainConfig.loop) and scores them."""
  # The labels are the same for every trial (clean-label poisons keep the bases' labels);
  # given per model, [M, N], like the images.
  labels = np.broadcast_to(labels, images.shape[:2])
  models = classifier.train_models(keys, images, labels, train_config, init=init)
  return _score(models, targets, eval_images, eval_labels)


def _denoise(denoiser, images: np.ndarray, sigma: float, key, batch_size: int) -> np.ndarray:
  if sigma == 0:
    return images
  from jaxpoison import diffusion
  return np.asarray(diffusion.noise_and_denoise(denoiser, images, sigma, key,
                                                batch_size=batch_size))


def denoiser_info(denoiser, source: str) -> dict[str, Any]:
  return {"source": source, "unet": _config_dict(denoiser.unet),
          "schedule": _config_dict(denoiser.schedule),
          "params_sha256": params_fingerprint(denoiser.params)}


def evaluate_trials(config: BenchmarkConfig, poison_sets: Sequence[attacks.PoisonSet],
                    keys: Sequence[jax.Array], *, finetune_images: np.ndarray,
                    finetune_labels: np.ndarray, finetune_indices: np.ndarray, dataset,
                    victim, denoiser, pad_to: int | None = None) -> list[dict[str, list]]:
  """Fine-tunes one victim per trial and σ; returns per trial its predictions and accuracies.

  The trials are fine-tuned together (one model each on the classifier's model axis); with
  `pad_to`, the batch is padded to that many models by repeating the last trial, so that a
  short last batch reuses the compiled program.
  """
  train_config = finetune_train_config(victim.config, config.finetune)
  num = len(poison_sets)
  width = max(num, pad_to or num)
  order = list(range(num)) + [num - 1] * (width - num)
  poisoned = [poisoned_images(finetune_images, finetune_indices, p) for p in poison_sets]
  targets = np.stack([dataset.x_test[p.target_index] for p in poison_sets])[order]
  train_keys = jnp.stack([jax.random.fold_in(keys[i], FINETUNE) for i in order])
  subset = eval_indices(dataset.x_test.shape[0], config.num_eval, seed=config.seed)
  eval_images = dataset.x_test[subset]
  eval_labels = dataset.y_test[subset]
  out = [{"target_prediction": [], "clean_accuracy": []} for _ in range(num)]
  for s, sigma in enumerate(config.sigmas):
    images = np.stack([_denoise(denoiser, poisoned[i], sigma, denoise_key(keys[i], s),
                                config.denoise_batch_size) for i in range(num)])[order]
    predictions, accuracy = _finetune_and_score(train_config, train_keys, images,
                                                finetune_labels, victim, targets, eval_images,
                                                eval_labels)
    predictions, accuracy = np.asarray(predictions), np.asarray(accuracy)
    for i in range(num):
      out[i]["target_prediction"].append(int(predictions[i]))
      out[i]["clean_accuracy"].append(float(accuracy[i]))
  return out


# --- the run ------------------------------------------------------------------------------------

def _scenario(config: BenchmarkConfig, victim, crafter) -> str:
  if crafter is None:
    return "white-box"
  return f"black-box ({crafter.config.model} → {victim.config.model})"


def _extractors(config: BenchmarkConfig, dataset, split: Split, out_dir: Path, pretrained,
                crafter_pretrained, log):
  """(victim, its description, crafter or None, its description): given or pretrained."""
  pretrain_key = jax.random.key(config.pretrain_seed)

  def resolve(given, train_config, role, name):
    if given is None:
      train_config = train_config if train_config is not None else classifier.resnet18_config()
      models = load_or_pretrain(out_dir / "pretrained" / name, dataset, split, train_config,
                                jax.random.fold_in(pretrain_key, role), log=log)
      return classifier.select(models, 0), _pretrained_info(
          f"pretrained/{name}", models, pretraining_note(dataset, split))
    if isinstance(given, (str, Path)):
      models, source = classifier.load_models(given), str(given)
    else:
      models, source = given, "given TrainedModels"
    return classifier.select(models, 0), _pretrained_info(source, models, None)

  victim, victim_meta = resolve(pretrained, config.victim, PRETRAIN_VICTIM, "victim")
  crafter, crafter_meta = None, None
  if not config.white_box or crafter_pretrained is not None:
    crafter, crafter_meta = resolve(crafter_pretrained, config.crafter, PRETRAIN_CRAFTER,
                                    "crafter")
  return victim, victim_meta, crafter, crafter_meta


def craft_all(config: BenchmarkConfig, dataset, out_dir: str | Path, *, pretrained=None,
              crafter_pretrained=None, time_limit_s: float | None = None,
              log: Callable[[str], None] = print) -> int:
  """Pretrains (if needed) and crafts every trial's poisons, without fine-tuning.

  The poison files are the ones `run_benchmark` reuses (e.g. craft on one machine, evaluate on
  another, or craft while the denoiser is still training). Returns how many were crafted.
  """
  start = time.perf_counter()
  out_dir = Path(out_dir)
  split = split_training_set(dataset.y_train, pretrain_seed=config.pretrain_seed,
                             finetune_per_class=config.finetune_per_class)
  victim, _, crafter, _ = _extractors(config, dataset, split, out_dir, pretrained,
                                      crafter_pretrained, log)
  craft_on = [classifier.feature_extractor(crafter if crafter is not None else victim)]
  crafted = 0
  for attack in config.attacks:
    for i in range(config.num_trials):
      if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
        log(f"time limit of {time_limit_s:.0f} s reached; rerun to resume")
        return crafted
      begin = time.perf_counter()
      _, new = load_or_craft(out_dir, config, attack, dataset, split, i, craft_on)
      if new:
        crafted += 1
        log(f"{attack}: crafted trial {i} in {time.perf_counter() - begin:.1f} s")
  return crafted


def run_benchmark(config: BenchmarkConfig, dataset, out_dir: str | Path, *, denoiser=None,
                  pretrained=None, crafter_pretrained=None, stop_after: int | None = None,
                  time_limit_s: float | None = None,
                  log: Callable[[str], None] = print) -> list[dict]:
  """Runs (or resumes) the benchmark and writes its records and tables under `out_dir`.

  Args:
    config: the settings.
    dataset: a `jaxpoison.Dataset` (e.g. CIFAR-10).
    out_dir: output directory (see the module docstring); finished trials there are skipped.
    denoiser: a `jaxpoison.diffusion.Denoiser`; None loads `default_denoiser()` (only when a
      σ > 0 is asked for).
    pretrained: a path to `save_models` output or `TrainedModels` (the first model is used):
      the victim's initialization and, white-box, the crafting model. None pretrains
      `config.victim` on half the training set (saved under out_dir/pretrained/victim).
    crafter_pretrained: the same for the black-box crafting model (`config.crafter`).
    stop_after: finish at most this many trials in this call (then return; a rerun resumes).
    time_limit_s: start no new batch of trials after this many seconds.
    log: progress messages.

  Returns:
    Every finished record under out_dir (also rendered to table.md and table.csv).
  """
  if not isinstance(config, BenchmarkConfig):
    raise TypeError(f"config: expected a BenchmarkConfig, got {type(config).__name__}")
  if stop_after is not None:
    stop_after = _integer("stop_after", stop_after, minimum=0)
  start = time.perf_counter()
  out_dir = Path(out_dir)
  if config.num_eval > dataset.x_test.shape[0]:
    raise ValueError(f"num_eval: {config.num_eval} exceeds the {dataset.x_test.shape[0]} test "
                     "images")
  split = split_training_set(dataset.y_train, pretrain_seed=config.pretrain_seed,
                             finetune_per_class=config.finetune_per_class)
  victim, victim_meta, crafter, crafter_meta = _extractors(
      config, dataset, split, out_dir, pretrained, crafter_pretrained, log)
  if any(sigma > 0 for sigma in config.sigmas):
    from jaxpoison import diffusion
    if denoiser is None:
      denoiser, denoiser_source = diffusion.default_denoiser(), "default_denoiser()"
    elif isinstance(denoiser, (str, Path)):
      denoiser, denoiser_source = diffusion.load_denoiser(denoiser), str(denoiser)
    else:
      denoiser_source = "given Denoiser"
    denoiser_meta = denoiser_info(denoiser, denoiser_source)
  else:
    denoiser, denoiser_meta = None, None
  check_run_file(out_dir, run_identity(config, dataset=dataset, victim=victim_meta,
                                       crafter=crafter_meta, denoiser=denoiser_meta))

  craft_on = [classifier.feature_extractor(crafter if crafter is not None else victim)]
  scenario = _scenario(config, victim, crafter)
  finetune_images = np.asarray(dataset.x_train[split.finetune])
  finetune_labels = np.asarray(dataset.y_train[split.finetune], np.int32)
  finished = 0
  stopped = False
  for attack in config.attacks:
    todo = [i for i in range(config.num_trials)
            if not result_path(out_dir, attack, i).is_file()]
    for begin in range(0, len(todo), config.trials_per_step):
      if stop_after is not None and finished >= stop_after:
        stopped = True
        break
      if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
        log(f"time limit of {time_limit_s:.0f} s reached; rerun to resume")
        stopped = True
        break
      chunk = todo[begin:begin + config.trials_per_step]
      if stop_after is not None:
        chunk = chunk[:stop_after - finished]
      chunk_start = time.perf_counter()
      poison_sets = [load_or_craft(out_dir, config, attack, dataset, split, i, craft_on)[0]
                     for i in chunk]
      craft_seconds = time.perf_counter() - chunk_start
      keys = [trial_key(config.seed, i) for i in chunk]
      scores = evaluate_trials(config, poison_sets, keys, finetune_images=finetune_images,
                               finetune_labels=finetune_labels,
                               finetune_indices=split.finetune, dataset=dataset, victim=victim,
                               denoiser=denoiser, pad_to=config.trials_per_step)
      seconds = time.perf_counter() - chunk_start
      for i, poison_set, score in zip(chunk, poison_sets, scores):
        record = {
            "attack": attack,
            "scenario": scenario,
            "trial": i,
            "target_index": poison_set.target_index,
            "target_class": poison_set.target_class,
            "base_class": poison_set.base_class,
            "num_poisons": poison_set.num_poisons,
            "finetune_size": int(split.finetune.size),
            "sigmas": list(config.sigmas),
            "target_prediction": score["target_prediction"],
            "success": [p == poison_set.base_class for p in score["target_prediction"]],
            "clean_accuracy": score["clean_accuracy"],
            "victim": victim.config.model,
            "crafted_on": (crafter if crafter is not None else victim).config.model,
            "pretraining": victim_meta.get("pretraining", victim_meta["source"]),
            "poison_file": str(poison_path(out_dir, attack, i).relative_to(out_dir)),
            "seconds": {"craft": craft_seconds / len(chunk), "total": seconds / len(chunk)},
        }
        io.atomic_write_json(result_path(out_dir, attack, i), record)
      finished += len(chunk)
      hits = np.array([[p == poison_set.base_class for p in score["target_prediction"]]
                       for poison_set, score in zip(poison_sets, scores)])
      rates = ", ".join(f"σ={sigma:g}: {rate:.2f}"
                        for sigma, rate in zip(config.sigmas, hits.mean(axis=0)))
      trials = f"trial {chunk[0]}" if len(chunk) == 1 else f"trials {chunk[0]}–{chunk[-1]}"
      log(f"{attack}: {trials} done in {seconds:.1f} s (success {rates})")
    if stopped:
      break
  results = load_results(out_dir, config.attacks)
  write_tables(out_dir, results)
  return results
