"""What every benchmark harness shares: data splits, keys, fingerprints, pretraining,
denoising and the trial loop (the tables are `jaxpoison.benchmarks.tables`).

A harness (`transfer` now; from-scratch attacks, baseline defenses and ECLIPSE later) defines
its config, how one chunk of trials is crafted and evaluated into records, and the identity of
its run folder; the folder itself (claim, refusal naming differences, atomic records, resume,
progress) is `jaxpoison.runs`.

Records are JSON files, one per finished trial, under `results/<attack>/trial_XXX.json`; a
record has at least `attack`, `scenario`, `bound`, `sigmas` [S], `success` [S] and
`clean_accuracy` [S], which the tables summarize, and `diverged` [S] (the victim's weights or
logits not finite: the tables count it apart instead of as a failed attack).

Slightly over the package's ~500-line guide: every piece here is used by both harnesses, and
splitting it by piece would scatter what they share.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import re
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxpoison import attacks, classifier, defenses, diffusion, io, runs
from jaxpoison.keys import as_key
from jaxpoison.benchmarks.tables import (ATTACK_TITLES, DEFAULT_BOUND, DEFAULT_FINETUNE,  # noqa: F401
                                         NO_DEFENSE, ROW_ORDER, diverged, render_defense_table,
                                         render_table, success_interval, summarize,
                                         write_tables)

DEFAULT_SIGMAS = (0.0, 0.1, 0.25, 0.5, 1.0)
RUN_FILE = "run.json"
# Streams of a trial's key (see the transfer module's docstring).
SAMPLE, CRAFT, DENOISE, FINETUNE = range(4)
# Streams of the pretraining key.
SPLIT, PRETRAIN_VICTIM, PRETRAIN_CRAFTER, EVAL_SUBSET, PRETRAIN_SURROGATE, TRAIN_SUBSET = range(6)
_TRIAL_RE = re.compile(r"trial_(\d{3,})\.json")


class BenchmarkConfigError(runs.RunMismatch):
  """An output directory written with other settings than the ones given."""


def integer(name: str, value, *, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name}: expected an integer, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
  return int(value)


# --- data: the pretraining / fine-tuning split ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Split:
  """Training-set indices (sorted, disjoint): the pretraining images, the fine-tune pool and
  the fine-tune set drawn from the pool; `classes`, the fine-tune classes when the split is by
  class (None: every class on both sides)."""
  pretrain: np.ndarray
  pool: np.ndarray
  finetune: np.ndarray
  classes: tuple[int, ...] | None = None

  def test_pool(self, test_labels) -> np.ndarray:
    """Test images of the fine-tune classes (all of them for a split by images)."""
    test_labels = np.asarray(test_labels)
    if self.classes is None:
      return np.arange(test_labels.size)
    return np.flatnonzero(np.isin(test_labels, self.classes))


def _key_or_seed(key, seed, name: str) -> jax.Array:
  """The key a harness function draws from: `key`, or (the earlier interface, deprecated) the
  key of an integer seed, `jax.random.key(seed)`; both together is an error."""
  if key is not None:
    if seed is not None:
      raise TypeError(f"pass key or {name}, not both")
    return as_key(key)
  if seed is not None:
    warnings.warn(f"{name}= is deprecated; pass key=jax.random.key({name})", DeprecationWarning,
                  stacklevel=3)
    return jax.random.key(seed)
  return jax.random.key(0)


def split_training_set(labels, *, key: jax.Array | None = None, pretrain_seed: int | None = None,
                       finetune_per_class: int | None = 250,
                       pretrain_classes: Sequence[int] | None = None) -> Split:
  """Splits the training set into pretraining data and a fine-tune pool; takes the fine-tune
  set from the pool.

  Args:
    labels: int [N], the training labels.
    key: the pretraining key (default `jax.random.key(0)`); without `pretrain_classes`, the
      permutation `jax.random.permutation(fold_in(key, SPLIT), N)`: its first ⌊N/2⌋ entries are
      the pretraining half, the rest the fine-tune pool.
    pretrain_seed: deprecated, `key=jax.random.key(pretrain_seed)`.
    finetune_per_class: the fine-tune set is the first (lowest-index) this many images of each
      class in the pool, the benchmark's choice of the first 250 per class; None takes the pool.
    pretrain_classes: split by class instead: every image of these classes is pretraining
      data, every image of the others the pool, so no fine-tune class is seen in pretraining.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size < 2:
    raise ValueError(f"labels: expected a 1-D array of at least 2 labels, got shape "
                     f"{labels.shape}")
  classes = None
  if pretrain_classes is not None:
    present = np.unique(labels)
    pretrain_classes = np.unique(np.asarray(pretrain_classes))
    missing = np.setdiff1d(pretrain_classes, present)
    if missing.size:
      raise ValueError(f"pretrain_classes: {missing.tolist()} have no training image (the "
                       f"labels hold {present.tolist()})")
    classes = tuple(int(c) for c in np.setdiff1d(present, pretrain_classes))
    if not classes:
      raise ValueError("pretrain_classes: every class is a pretraining class; leave at least "
                       "two for fine-tuning")
    inside = np.isin(labels, pretrain_classes)
    pretrain, pool = np.flatnonzero(inside), np.flatnonzero(~inside)
  else:
    split_key = jax.random.fold_in(_key_or_seed(key, pretrain_seed, "pretrain_seed"), SPLIT)
    order = np.asarray(jax.random.permutation(split_key, labels.size))
    half = labels.size // 2
    pretrain, pool = np.sort(order[:half]), np.sort(order[half:])
  if finetune_per_class is None:
    return Split(pretrain, pool, pool, classes)
  chosen = []
  for c in np.unique(labels[pool]):
    members = pool[labels[pool] == c]
    if members.size < finetune_per_class:
      raise ValueError(
          f"finetune_per_class: class {int(c)} has {members.size} images in the fine-tune half; "
          f"{finetune_per_class} were asked for (use a smaller value or None for the whole half)")
    chosen.append(members[:finetune_per_class])
  return Split(pretrain, pool, np.sort(np.concatenate(chosen)), classes)


def eval_indices(num_test: int, num_eval: int, *, key: jax.Array | None = None,
                 seed: int | None = None, pool: np.ndarray | None = None) -> np.ndarray:
  """The test images clean accuracy is measured on: `num_eval` of `num_test` (or of the
  indices `pool`, e.g. the fine-tune classes' test images), sorted.

  A random subset (`fold_in(key, EVAL_SUBSET)`, key default `jax.random.key(0)`; `seed` is the
  deprecated `key=jax.random.key(seed)`), not the first `num_eval`: test sets stored sorted by
  label (as some CIFAR-10 copies are) would otherwise give one class.
  """
  candidates = num_test if pool is None else len(pool)
  if not 1 <= num_eval <= candidates:
    raise ValueError(f"num_eval: expected 1 to {candidates} (the test images"
                     f"{'' if pool is None else ' of the fine-tune classes'}), got {num_eval}")
  subset_key = jax.random.fold_in(_key_or_seed(key, seed, "seed"), EVAL_SUBSET)
  chosen = np.asarray(jax.random.permutation(subset_key, candidates))[:num_eval]
  return np.sort(chosen if pool is None else np.asarray(pool)[chosen])


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

def params_fingerprint(tree) -> str:
  """SHA-256 of every leaf of a parameter pytree (shapes, dtypes and values)."""
  return runs.fingerprint_pytree(tree)


dataset_fingerprint = runs.dataset_fingerprint


def _config_dict(config) -> Any:
  """A JSON-able description of a (nested) config dataclass (`runs.config_json`, tagged)."""
  return runs.config_json(config, tagged=True)


def claim_run(out_dir: str | Path, identity: dict[str, Any]) -> runs.RunFolder:
  """Claims `out_dir` for a run with this identity (`runs.claim`; the file is run.json).

  Pretrained extractors are saved into the folder before the identity (which fingerprints
  them) is known, so a non-empty folder without run.json is accepted.

  Raises:
    BenchmarkConfigError: the directory holds results of a run with other settings; the
      message names every setting that differs.
  """
  return runs.claim(out_dir, identity, settings_file=RUN_FILE,
                    what="the benchmark", require_empty=False, version_key="format_version",
                    error=BenchmarkConfigError)


def check_run_file(out_dir: str | Path, identity: dict[str, Any]) -> None:
  """`claim_run` without the folder (the name earlier versions exported)."""
  claim_run(out_dir, identity)

# --- defenses in the records -------------------------------------------------------------------

def checked_defense(value):
  """A config's `defense` field: a defenses.DefenseConfig (None: no defense)."""
  if value is None:
    return defenses.DefenseConfig()
  if not isinstance(value, defenses.DefenseConfig):
    raise TypeError(f"defense: expected a jaxpoison.defenses.DefenseConfig or None, got "
                    f"{type(value).__name__}")
  return value


def defense_unit(attack: str, defense) -> str:
  """The results folder of `attack`'s trials under `defense` (a defenses.DefenseConfig): the
  attack's name, or "<attack>+<defense>"; the poisons are the attack's either way."""
  return attack if not defense.active else f"{attack}+{defense.name}"


def attack_of_unit(unit: str) -> str:
  return unit.split("+")[0]


# What a record's defense settings hold beside the settings themselves (computed from them).
DERIVED_DEFENSE_FIELDS = ("epsilon_at_delta", "neighbouring_relation", "epsilon_replace_one",
                          "dp_batch_capacity", "dp_overflow_probability")


def check_defense_records(out_dir: str | Path, unit: str, defense) -> None:
  """Refuses to add trials to a results folder whose records used other defense settings."""
  folder = Path(out_dir) / "results" / unit
  if not defense.active or not folder.is_dir():
    return
  wanted = runs.jsonable(defense.settings())
  for record in load_results(out_dir, [unit])[:1]:
    recorded = dict(record.get("defense_settings", {}))
    for derived in DERIVED_DEFENSE_FIELDS:
      recorded.pop(derived, None)
    if (defense.name == "dp_sgd" and recorded.get("dp_sampling", "shuffle") == "shuffle"
        and defense.dp_sampling == "poisson"):
      raise ValueError(
          f"{folder}: its DP-SGD trials drew shuffled batches" +
          ("" if "dp_sampling" in recorded else
           " and record an ε computed for Poisson sampling, which does not hold for what ran "
           "(before jaxpoison's Poisson-sampling DP-SGD)") +
          "; this run samples Poisson batches. Use another --out (or --dp_sampling shuffle "
          "to add to the old trials, accounted without amplification)")
    # A record from before a setting existed lacks it (DefenseConfig.ADDED_FIELDS).
    if runs.differences(recorded, wanted):
      raise ValueError(
          f"{folder}: its trials ran with defense settings {runs.short_json(recorded)}, this "
          f"run asks for {runs.short_json(wanted)}; use another --out (or the same settings)")


def defense_fields(defense, details: list, *, train_config=None, num_train: int = 0) -> dict:
  """A trial record's defense fields: its label and settings (DP-SGD: ε at δ of the victim's
  run), and the defense's own numbers per σ where it has them."""
  if not defense.active:
    return {}
  settings = defense.settings()
  if defense.name == "dp_sgd" and train_config is not None:
    settings.update(defenses.privacy_record(train_config, num_train, defense.dp_delta))
  out = {"defense": defense.label(), "defense_settings": settings}
  if any(details):
    out["defense_details"] = list(details)
  return out


def ordered_units(out_dir: str | Path, units: Sequence[str]) -> list[str]:
  """This run's result units first (in order), then the folder's others (other defenses'
  trials on the same poisons), so that the tables show them together."""
  root = Path(out_dir) / "results"
  others = sorted(p.name for p in root.iterdir()
                  if p.is_dir() and p.name not in units) if root.is_dir() else []
  return list(units) + others


def load_results(out_dir: str | Path, attack_names: Sequence[str] | None = None) -> list[dict]:
  """Every finished trial's record under out_dir/results, by attack then trial."""
  root = Path(out_dir) / "results"
  records = []
  names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
  if attack_names is not None:
    names = [n for n in attack_names if n in names]
  for name in names:
    for match in runs.list_units(root / name, _TRIAL_RE):
      records.append(json.loads((root / name / match.string).read_text()))
  return records


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



def _pretrained_info(source: str, models, pretraining: str | None) -> dict[str, Any]:
  info = {"source": source, "model": models.config.model,
          "config": _config_dict(models.config), "params_sha256": params_fingerprint(models.state)}
  if pretraining is not None:
    info["pretraining"] = pretraining
  return info


def pretraining_note(dataset, split: Split) -> str:
  """What the default extractor was pretrained on, for the records."""
  if split.classes is not None:
    return (f"pretrained on {split.pretrain.size} images of {dataset.name} classes "
            f"{sorted(set(range(dataset.num_classes)) - set(split.classes))}; fine-tuned on "
            f"classes {list(split.classes)} (the paper pretrains on CIFAR-100)")
  return (f"pretrained on {split.pretrain.size} images of {dataset.name}: half of the training "
          "set, disjoint from the fine-tune set (the paper pretrains on CIFAR-100)")


def load_or_pretrain(path: str | Path, dataset, split: Split, train_config, key: jax.Array,
                     *, log: Callable[[str], None] = print, on_pool: bool = False):
  """The extractor pretrained on the split's pretraining images (`on_pool`: on the fine-tune
  pool, e.g. the label-consistent backdoor's surrogate classifier, which must know the
  fine-tune classes): loaded from `path` when a finished checkpoint is there (its config must
  equal `train_config`), else trained and saved.
  """
  indices = split.pool if on_pool else split.pretrain
  path = Path(path)
  done = path / "pretrained.json"
  if done.is_file():
    models = classifier.load_models(path / "models")
    if models.config != train_config:
      raise BenchmarkConfigError(
          f"{path}: pretrained with {runs.short_json(_config_dict(models.config))}, this run asks for "
          f"{runs.short_json(_config_dict(train_config))}")
    return models
  if path.exists():  # A pretraining run that stopped before it finished saving.
    shutil.rmtree(path)
  log(f"pretraining {train_config.model} on {indices.size} images ...")
  start = time.perf_counter()
  models = classifier.train_models(
      jax.random.split(key, 1), dataset.x_train[indices], dataset.y_train[indices],
      train_config)
  classifier.save_models(path / "models", models)
  seconds = time.perf_counter() - start
  # Measured on the test images of the classes it was trained on (all of them for a split by
  # images).
  pool = np.arange(dataset.x_test.shape[0])
  if split.classes is not None:
    fine_tune_classes = split.test_pool(dataset.y_test)
    pool = fine_tune_classes if on_pool else np.setdiff1d(pool, fine_tune_classes)
  num_test = min(1000, pool.size)
  subset = eval_indices(dataset.x_test.shape[0], num_test, pool=pool)
  accuracy = float(classifier.evaluate(models, dataset.x_test[subset],
                                       dataset.y_test[subset])[0])
  io.atomic_write_json(done, {"seconds": seconds, "test_accuracy": accuracy,
                              "num_test": num_test, "num_images": int(indices.size)})
  log(f"pretrained {train_config.model} in {seconds:.0f} s, test accuracy {accuracy:.3f} "
      f"(on {num_test} random test images)")
  return models



def _denoise(denoiser, images: np.ndarray, sigma: float, key, batch_size: int) -> np.ndarray:
  if sigma == 0:
    return images
  return np.asarray(diffusion.noise_and_denoise(denoiser, images, sigma, key,
                                                batch_size=batch_size))


def denoiser_info(denoiser, source: str) -> dict[str, Any]:
  return {"source": source, "unet": _config_dict(denoiser.unet),
          "schedule": _config_dict(denoiser.schedule),
          "params_sha256": params_fingerprint(denoiser.params)}



def _eval_pool(split: Split, dataset) -> np.ndarray | None:
  return None if split.classes is None else split.test_pool(dataset.y_test)


def bound_label(norm: str, epsilon: float) -> str:
  """"ℓ2 6.43" or "ℓ∞ 16/255" (in 1/255 units when that is a whole number)."""
  if norm == "l2":
    return f"ℓ2 {epsilon:g}"
  scaled = epsilon * 255
  return f"ℓ∞ {round(scaled)}/255" if abs(scaled - round(scaled)) < 1e-6 else f"ℓ∞ {epsilon:g}"




def resolve_denoiser(denoiser, sigmas: Sequence[float]):
  """(Denoiser or None, its description for the identity): `denoiser` as given, loaded from a
  path, or the embedded default; None when no σ > 0 needs one."""
  if not any(sigma > 0 for sigma in sigmas):
    return None, None
  # The identity records where the denoiser came from, in these words since the first runs.
  source = ("default_denoiser()" if denoiser is None else
            str(denoiser) if isinstance(denoiser, (str, Path)) else "given Denoiser")
  resolved = diffusion.resolve_denoiser(denoiser)
  if resolved is None:
    raise ValueError(f"denoiser: {denoiser!r} (noise only) is not a denoiser; the "
                               "benchmarks' σ = 0 column is the undefended one")
  return resolved, denoiser_info(resolved, source)


# --- the trial loop -------------------------------------------------------------------------------

def poison_path(out_dir: str | Path, attack: str, trial: int) -> Path:
  return Path(out_dir) / "poisons" / attack / f"trial_{trial:03d}.npz"


def check_poison_file(path: Path, poison_set: attacks.PoisonSet, attack: str,
                      expected_config: dict, trial: attacks.Trial, *,
                      check_bases: bool = True) -> None:
  """Refuses a poison file that does not belong to this run's trial and attack config (a stale
  file must not be silently reused); `check_bases=False` where the bases are chosen while
  crafting (Sleeper Agent's selection) rather than by the trial."""
  problems = []
  if poison_set.attack != attack:
    problems.append(f"attack {poison_set.attack!r}, expected {attack!r}")
  if poison_set.config != expected_config:
    problems.append(f"attack config {poison_set.config}, expected {expected_config}")
  if poison_set.target_index != trial.target_index or (
      check_bases and not np.array_equal(poison_set.indices, trial.base_indices)):
    problems.append("target or base images differ from this run's trial")
  if problems:
    raise attacks.PoisonFileError(f"{path}: does not belong to this run: " + "; ".join(problems))


@jax.jit
def own_target_logits(models, targets):
  """Model m's logits on target m, [M, C] (each trial's victim on its own trial's target)."""
  # logits [M, M, C]: every model on every trial's target; a model's own is the diagonal.
  return jax.numpy.diagonal(classifier.logits(models, targets), axis1=0, axis2=1).T


def finite_victims(models, logits) -> np.ndarray:
  """Whether each model trained without diverging, bool [M]: its weights and `logits`
  ([M, ..., C], the model axis first) all finite."""
  logits = np.asarray(logits)
  return classifier.finite_models(models) & np.isfinite(logits).reshape(len(logits), -1).all(1)


def score_victims(models, targets, eval_images, eval_labels, own_logits=None):
  """(model m's prediction of target m [M], each model's accuracy on the eval images [M],
  whether model m diverged [M] (non-finite weights or logits on its target; see
  `diverged`)); `own_logits` ([M, C], `own_target_logits`) when the caller has them already."""
  if own_logits is None:
    own_logits = own_target_logits(models, targets)
  predictions = jax.numpy.argmax(own_logits, axis=-1).astype(jax.numpy.int32)
  broken = ~finite_victims(models, own_logits)
  return predictions, classifier.evaluate(models, eval_images, eval_labels), broken


def result_path(out_dir: str | Path, attack: str, trial: int) -> Path:
  return Path(out_dir) / "results" / attack / f"trial_{trial:03d}.json"


def finished_trials(out_dir: str | Path, attack: str) -> set[int]:
  """Trials of `attack` with a record in out_dir (complete files only: records are atomic)."""
  return {int(m.group(1)) for m in runs.list_units(Path(out_dir) / "results" / attack,
                                                      _TRIAL_RE)}


def run_trial_loop(folder: runs.RunFolder, attack_names: Sequence[str], num_trials: int,
                   trials_per_step: int,
                   run_chunk: Callable[[str, list[int]], list[dict]], *,
                   stop_after: int | None = None, time_limit_s: float | None = None,
                   started: float | None = None, log: Callable[[str], None] = print) -> bool:
  """Runs every unfinished trial of every attack, `trials_per_step` at a time, and writes each
  chunk's records atomically as soon as the chunk is done.

  `run_chunk(attack, trials)` returns one record per trial (a JSON-able dict with `success`
  per σ). Stops early, to be resumed by a rerun, after `stop_after` trials or once
  `time_limit_s` seconds have passed since `started`; returns whether it stopped early.
  """
  started = time.perf_counter() if started is None else started
  todo = {attack: [i for i in range(num_trials)
                   if i not in finished_trials(folder.path, attack)]
          for attack in attack_names}
  total = len(attack_names) * num_trials
  progress = runs.Progress(total, done=total - sum(map(len, todo.values())), unit="trials",
                           log=log)
  finished = 0
  for attack in attack_names:
    for begin in range(0, len(todo[attack]), trials_per_step):
      if stop_after is not None and finished >= stop_after:
        return True
      if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
        log(f"time limit of {time_limit_s:.0f} s reached; rerun to resume")
        return True
      chunk = todo[attack][begin:begin + trials_per_step]
      if stop_after is not None:
        chunk = chunk[:stop_after - finished]
      chunk_start = time.perf_counter()
      records = run_chunk(attack, chunk)
      for i, record in zip(chunk, records):
        folder.write_json(result_path("", attack, i), record)
      finished += len(chunk)
      hits = np.array([record["success"] for record in records], float).mean(axis=0)
      broken = np.array([diverged(record) for record in records]).sum(axis=0)
      rates = ", ".join(f"σ={sigma:g}: {rate:.2f}" + (f" ({k} diverged)" if k else "")
                        for sigma, rate, k in zip(records[0]["sigmas"], hits, broken))
      trials = f"trial {chunk[0]}" if len(chunk) == 1 else f"trials {chunk[0]}–{chunk[-1]}"
      progress.update(len(chunk), f"{attack}: {trials} done in "
                      f"{time.perf_counter() - chunk_start:.1f} s (success {rates})")
  return False
