"""The attack benchmark of the paper's Table 1: clean-label poisoning in transfer learning.

Hong et al. (2024) measure how often the feature-collision attacks (Poison Frogs, Convex
Polytope, Bullseye Polytope) and two clean-label backdoors (label-consistent, hidden-trigger)
succeed against a fine-tuned victim, with and without their defense (noise of level σ added to
the whole training set and removed with one DDPM step), in the transfer-learning setting of
Schwarzschild et al.'s benchmark:

* Pretraining. A feature extractor is trained once. The paper pretrains on CIFAR-100, which
  cannot be downloaded here. With `pretrain_classes` the extractor is pretrained on every
  training image of those CIFAR-10 classes and the victim is fine-tuned, attacked and scored on
  the other classes (as the benchmark's class-disjoint designs, CIFAR-100 → CIFAR-10 and Tiny
  ImageNet classes 0–99 → 100–199); without, on one half of the training set (a seeded
  permutation) and fine-tuned on images of the other half. An extractor pretrained on the
  fine-tune classes keeps targets deep in their class's cluster: no attack succeeds even
  without the defense. Records say which (`pretraining`). A user checkpoint (`pretrained=`)
  replaces it.
* Fine-tune set. The benchmark's: the first `finetune_per_class` = 250 images per class of the
  fine-tune pool (2,500 images), with 25 poisons (1% of it) per trial.
* Trial i (key `fold_in(key(seed), i)`): a target test image, its class, a base class and the
  base images (`jaxpoison.attacks.sample_trial`; the same trial for every attack), the poisons
  crafted on the pretrained extractor (white-box) or on another architecture's or width's
  (black-box, `crafter=`), saved as a poison file and reused across σ and on reruns. The
  label-consistent backdoor crafts on an adversarially trained surrogate classifier
  (`surrogate`, trained on the fine-tune pool); the hidden-trigger backdoor collides the bases
  with trigger-patched training images of the target class (`backdoor_sources`).
* For each σ (0 = no defense): the whole poisoned fine-tune set is noised and denoised
  (`jaxpoison.diffusion.noise_and_denoise`), the victim is fine-tuned from the pretrained
  weights with a fresh linear head (`FineTuneConfig`: the benchmark's linear probe or the whole
  network, SGD in the head's own units, augmentation off by default), and the record says
  whether the target (with the trigger pasted, for a backdoor: `target_image`) is classified
  as the base class (attack success) and the clean accuracy on `num_eval` test images of the
  fine-tune classes (a fixed random subset, `eval_indices`). Several trials are fine-tuned at
  once, one model each on the classifier's model axis.

Keys of trial i: `t = fold_in(key(seed), i)`; sampling `fold_in(t, 0)`, crafting
`fold_in(t, 1)`, denoising at the s-th σ `fold_in(fold_in(t, 2), s)`, fine-tuning
`fold_in(t, 3)` (the same at every σ, so σ alone changes between the columns); the
hidden-trigger backdoor's patched images `fold_in(fold_in(t, 0), 1)`.

Files under the output directory:

    run.json                          the settings the results depend on; a rerun with other
                                      settings is refused, naming the settings that differ
    pretrained/victim, .../crafter,   the pretrained extractors and the backdoor's surrogate
      .../surrogate                   (`save_models`), reused
    poisons/<attack>/trial_XXX.npz    poison files (`save_poisons`), reused across σ and reruns
    results/<attack>/trial_XXX.json   one record per finished trial (written atomically)
    table.md, table.csv               the table in the shape of the paper's Table 1

The folder is a `jaxpoison.runs` run folder; a rerun skips finished trials, so an interrupted
run resumes where it stopped and gives the same records as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison import attacks, classifier, defenses
from jaxpoison._deprecation import deprecated_names
from jaxpoison.benchmarks import common
from jaxpoison.benchmarks.common import (CRAFT, FINETUNE, PRETRAIN_CRAFTER, PRETRAIN_SURROGATE,
                                         PRETRAIN_VICTIM, SAMPLE, Split, _config_dict, _denoise,
                                         _eval_pool, _pretrained_info, bound_label,
                                         dataset_fingerprint, denoise_key, eval_indices,
                                         load_or_pretrain, load_results, poison_path,
                                         poisoned_images, pretraining_note, split_training_set,
                                         trial_key, write_tables)
from jaxpoison.benchmarks.common import integer as _integer
from jaxpoison.benchmarks.transfer_config import (EXECUTION_FIELDS, FORMAT_VERSION, NO_POISON,
                                                  FineTuneConfig, TransferConfig)


def run_identity(config: TransferConfig, *, dataset, victim: dict, crafter: dict | None,
                 denoiser: dict | None) -> dict[str, Any]:
  """The settings a run's records depend on (compared against run.json on a rerun)."""
  settings = _config_dict(config)
  # The surrogate's recipe is checked against its checkpoint under pretrained/surrogate (by
  # load_or_pretrain) instead, so that adding the label-consistent backdoor to a run does not
  # change the identity of its other attacks.
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



# --- crafting -----------------------------------------------------------------------------------

def sample_benchmark_trial(config: TransferConfig, dataset, split: Split, index: int,
                           extractors=None) -> attacks.Trial:
  """Trial `index`: the target from the whole test set, the bases from the fine-tune set."""
  num_poisons = config.poisons_for(split.finetune.size)
  return attacks.sample_trial(
      jax.random.fold_in(trial_key(config.seed, index), SAMPLE), dataset, num_poisons,
      base_selection=config.base_selection, extractors=extractors,
      train_indices=split.finetune,
      test_indices=None if split.classes is None else split.test_pool(dataset.y_test))


class CraftingModels(NamedTuple):
  """What the poisons are crafted on: the feature extractors (white-box: the victim's; black-box:
  the crafting model's) and, for the label-consistent backdoor, the surrogate classifier's
  logits (None when no run needs it)."""
  extractors: Sequence[attacks.FeatureExtractor]
  surrogate: attacks.FeatureExtractor | None = None


def _crafting_models(models) -> CraftingModels:
  if isinstance(models, CraftingModels):
    return models
  return CraftingModels(list(models) if isinstance(models, Sequence) else [models])


def backdoor_sources(config: TransferConfig, dataset, split: Split, index: int,
                     trial: attacks.Trial) -> np.ndarray:
  """The hidden-trigger backdoor's patched images of trial `index`: as many random training
  images of the target class as there are poisons (the benchmark draws them from the whole
  training set; here from the fine-tune pool, never from the bases' class), key
  `fold_in(fold_in(t, SAMPLE), 1)`."""
  candidates = split.pool[np.asarray(dataset.y_train)[split.pool] == trial.target_class]
  if candidates.size < trial.base_indices.size:
    raise ValueError(f"trial {index}: the target class {trial.target_class} has "
                     f"{candidates.size} training images in the pool, the hidden-trigger "
                     f"backdoor needs {trial.base_indices.size}")
  key = jax.random.fold_in(jax.random.fold_in(trial_key(config.seed, index), SAMPLE), 1)
  chosen = np.asarray(jax.random.choice(key, candidates.size, (trial.base_indices.size,),
                                        replace=False))
  return candidates[chosen]


def target_image(poison_set: attacks.PoisonSet, dataset) -> np.ndarray:
  """The test image the trial's victim is scored on: the target, with the trigger pasted at the
  papers' place for a backdoor (success is counted on the triggered target)."""
  image = np.asarray(dataset.x_test[poison_set.target_index])
  if poison_set.attack == NO_POISON or attacks.attack_kind(poison_set.attack) != "backdoor":
    return image
  config = attacks.config_from_dict(poison_set.attack, poison_set.config)
  trigger = attacks.get_trigger(config.trigger, config.patch_size)
  return attacks.paste_trigger(image, trigger,
                               attacks.trigger_position(config, image.shape))


def craft_poisons(config: TransferConfig, attack: str, dataset, split: Split, index: int,
                  extractors) -> attacks.PoisonSet:
  """Samples trial `index` and crafts its poisons with `attack` on `extractors` (a
  `CraftingModels`, or a sequence of feature extractors for the feature-collision attacks)."""
  models = _crafting_models(extractors)
  trial = sample_benchmark_trial(config, dataset, split, index, models.extractors)
  key = jax.random.fold_in(trial_key(config.seed, index), CRAFT)
  attack_config = config.attack_config(attack)
  bases = np.asarray(dataset.x_train[trial.base_indices])
  if attack == NO_POISON:
    result = attacks.AttackResult(bases, bases, None, None, None)
  elif attack == "label_consistent":
    if models.surrogate is None:
      raise ValueError("label_consistent: needs the surrogate classifier (CraftingModels"
                       ".surrogate)")
    result = attacks.label_consistent_backdoor(key, models.surrogate, bases, trial.base_class,
                                               attack_config)
  elif attack == "hidden_trigger":
    sources = np.asarray(dataset.x_train[backdoor_sources(config, dataset, split, index, trial)])
    result = attacks.hidden_trigger_backdoor(key, models.extractors, bases, sources,
                                             attack_config)
  else:
    result = attacks.craft(attack, key, models.extractors,
                           np.asarray(dataset.x_test[trial.target_index]), bases, attack_config)
  return attacks.make_poison_set(dataset, trial, np.asarray(result.poisons), attack=attack,
                                 config=attack_config, key=key)


def load_or_craft(out_dir, config: TransferConfig, attack: str, dataset, split: Split,
                  index: int, extractors) -> tuple[attacks.PoisonSet, bool]:
  """The poisons of trial `index` from their file, or crafted and saved; (poisons, crafted).

  A file that exists is checked against the dataset (`load_poisons`) and against this run's
  trial and attack config, so a stale file is refused rather than silently reused.
  """
  path = poison_path(out_dir, attack, index)
  if path.is_file():
    poison_set = attacks.load_poisons(path, dataset)
    expected = config.attack_config(attack).to_dict()
    trial = sample_benchmark_trial(
        config, dataset, split, index,
        _crafting_models(extractors).extractors if config.base_selection == "nearest" else None)
    common.check_poison_file(path, poison_set, attack, expected, trial)
    return poison_set, False
  poison_set = craft_poisons(config, attack, dataset, split, index, extractors)
  attacks.save_poisons(path, poison_set)
  return poison_set, True



def finetune_train_config(victim, finetune: FineTuneConfig):
  """The victim's fine-tuning recipe: its pretraining config with `finetune`'s settings.

  The final linear layer is re-initialized and trains with lr and weight decay in its own units
  (`head_lr_scale`); the linear probe freezes the extractor (batch norm on its running
  statistics), whole-network fine-tuning trains every layer; plain SGD with PyTorch's (coupled)
  weight decay and a cosine schedule; augmentation as `finetune.augment` says; no test-time
  augmentation (the benchmark scores the target once).
  """
  augment = ({"flip": "none", "translate": 0} if finetune.augment == "none"
             else {"flip": "random", "translate": 4})
  return dataclasses.replace(
      victim, epochs=finetune.epochs, batch_size=finetune.batch_size, lr=finetune.learning_rate,
      momentum=finetune.momentum, nesterov=False, weight_decay=finetune.weight_decay,
      decoupled=False, bias_scaler=1.0, schedule="cosine", label_smoothing=0.0, lookahead=False,
      trainable="head" if finetune.mode == "linear_probe" else "all", reinit_head=True,
      head_lr_scale=classifier.head_lr_scale_for(victim.model), tta_level=0,
      whiten_bias_epochs=0, **augment)



def _finetune_and_score(train_config, keys, images, labels, init, targets, eval_images,
                        eval_labels):
  """Fine-tunes M victims (`train_models`: compiled once per shape, and on the CPU with the
  steps called from Python, see TrainConfig.loop) and scores them (`score_victims`)."""
  # The labels are the same for every trial (clean-label poisons keep the bases' labels);
  # given per model, [M, N], like the images.
  labels = np.broadcast_to(labels, images.shape[:2])
  models = classifier.train_models(keys, images, labels, train_config, init=init)
  return common.score_victims(models, targets, eval_images, eval_labels)



def evaluate_trials(config: TransferConfig, poison_sets: Sequence[attacks.PoisonSet],
                    keys: Sequence[jax.Array], *, finetune_images: np.ndarray,
                    finetune_labels: np.ndarray, finetune_indices: np.ndarray, dataset,
                    victim, denoiser, pad_to: int | None = None,
                    eval_pool: np.ndarray | None = None) -> list[dict[str, list]]:
  """Fine-tunes one victim per trial and σ; returns per trial its predictions and accuracies.

  The trials are fine-tuned together (one model each on the classifier's model axis); with
  `pad_to`, the batch is padded to that many models by repeating the last trial, so that a
  short last batch reuses the compiled program.
  """
  defense = config.defense
  train_config = defense.training_config(finetune_train_config(victim.config, config.finetune))
  num = len(poison_sets)
  width = max(num, pad_to or num)
  order = list(range(num)) + [num - 1] * (width - num)
  poisoned = [poisoned_images(finetune_images, finetune_indices, p) for p in poison_sets]
  targets = np.stack([target_image(p, dataset) for p in poison_sets])[order]
  train_keys = jnp.stack([jax.random.fold_in(keys[i], FINETUNE) for i in order])
  subset = eval_indices(dataset.x_test.shape[0], config.num_eval,
                        key=jax.random.key(config.seed), pool=eval_pool)
  eval_images = dataset.x_test[subset]
  eval_labels = dataset.y_test[subset]
  out = [{"target_prediction": [], "clean_accuracy": [], "defense_details": [], "diverged": []}
         for _ in range(num)]
  for s, sigma in enumerate(config.sigmas):
    images = np.stack([_denoise(denoiser, poisoned[i], sigma, denoise_key(keys[i], s),
                                config.denoise_batch_size) for i in range(num)])[order]
    if defense.name == "deep_knn":
      # Deep k-NN in the pretrained extractor's features (Hong et al.'s choice for BP); the
      # kept sets differ in size, so each trial fine-tunes on its own.
      for i in range(num):
        features = classifier.features(victim, images[i])[0]
        result = defenses.deep_knn_filter(features, finetune_labels, defense.knn_k,
                                          rule=defense.knn_rule,
                                          num_classes=victim.config.num_classes)
        kept = np.flatnonzero(result.keep)
        predictions, accuracy, broken = _finetune_and_score(
            train_config, train_keys[i:i + 1], images[i][kept][None],
            np.asarray(finetune_labels)[kept], victim, targets[i:i + 1], eval_images,
            eval_labels)
        out[i]["target_prediction"].append(int(np.asarray(predictions)[0]))
        out[i]["clean_accuracy"].append(float(np.asarray(accuracy)[0]))
        out[i]["diverged"].append(bool(broken[0]))
        out[i]["defense_details"].append(defenses.removal_report(
            result, np.searchsorted(finetune_indices, poison_sets[i].indices)))
      continue
    predictions, accuracy, broken = _finetune_and_score(train_config, train_keys, images,
                                                        finetune_labels, victim, targets,
                                                        eval_images, eval_labels)
    predictions, accuracy = np.asarray(predictions), np.asarray(accuracy)
    for i in range(num):
      out[i]["target_prediction"].append(int(predictions[i]))
      out[i]["clean_accuracy"].append(float(accuracy[i]))
      out[i]["diverged"].append(bool(broken[i]))
  return out


# --- the run ------------------------------------------------------------------------------------


def _scenario(config: TransferConfig, victim, crafter) -> str:
  if crafter is None:
    return "white-box"
  def name(models):
    config = models.config
    if crafter.config.model == victim.config.model:  # The same architecture: say the widths.
      return f"{config.model} {'/'.join(map(str, config.widths))}"
    return config.model
  return f"black-box ({name(crafter)} → {name(victim)})"


def _extractors(config: TransferConfig, dataset, split: Split, out_dir: Path, pretrained,
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


def _crafting(config: TransferConfig, dataset, split: Split, out_dir: Path, victim, crafter,
              log) -> CraftingModels:
  """The models the poisons are crafted on; the surrogate is pretrained (or loaded) only when
  the label-consistent backdoor is among the attacks."""
  extractors = [classifier.feature_extractor(crafter if crafter is not None else victim)]
  surrogate = None
  if "label_consistent" in config.attacks:
    models = load_or_pretrain(out_dir / "pretrained" / "surrogate", dataset, split,
                              config.surrogate_config(),
                              jax.random.fold_in(jax.random.key(config.pretrain_seed),
                                                 PRETRAIN_SURROGATE), log=log, on_pool=True)
    surrogate = classifier.logits_extractor(models)
  return CraftingModels(extractors, surrogate)


def craft_all(config: TransferConfig, dataset, out_dir: str | Path, *, pretrained=None,
              crafter_pretrained=None, time_limit_s: float | None = None,
              log: Callable[[str], None] = print) -> int:
  """Pretrains (if needed) and crafts every trial's poisons, without fine-tuning.

  The poison files are the ones `run_benchmark` reuses (e.g. craft on one machine, evaluate on
  another, or craft while the denoiser is still training). Returns how many were crafted.
  """
  start = time.perf_counter()
  out_dir = Path(out_dir)
  split = split_training_set(dataset.y_train, key=jax.random.key(config.pretrain_seed),
                             finetune_per_class=config.finetune_per_class,
                             pretrain_classes=config.pretrain_classes)
  victim, _, crafter, _ = _extractors(config, dataset, split, out_dir, pretrained,
                                      crafter_pretrained, log)
  craft_on = _crafting(config, dataset, split, out_dir, victim, crafter, log)
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


def run_benchmark(config: TransferConfig, dataset, out_dir: str | Path, *, denoiser=None,
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
  if not isinstance(config, TransferConfig):
    raise TypeError(f"config: expected a TransferConfig, got {type(config).__name__}")
  if stop_after is not None:
    stop_after = _integer("stop_after", stop_after, minimum=0)
  start = time.perf_counter()
  out_dir = Path(out_dir)
  if config.num_eval > dataset.x_test.shape[0]:
    raise ValueError(f"num_eval: {config.num_eval} exceeds the {dataset.x_test.shape[0]} test "
                     "images")
  split = split_training_set(dataset.y_train, key=jax.random.key(config.pretrain_seed),
                             finetune_per_class=config.finetune_per_class,
                             pretrain_classes=config.pretrain_classes)
  victim, victim_meta, crafter, crafter_meta = _extractors(
      config, dataset, split, out_dir, pretrained, crafter_pretrained, log)
  denoiser, denoiser_meta = common.resolve_denoiser(denoiser, config.sigmas)
  folder = common.claim_run(out_dir, run_identity(config, dataset=dataset, victim=victim_meta,
                                                  crafter=crafter_meta, denoiser=denoiser_meta))

  craft_on = _crafting(config, dataset, split, out_dir, victim, crafter, log)
  scenario = _scenario(config, victim, crafter)
  finetune_images = np.asarray(dataset.x_train[split.finetune])
  finetune_labels = np.asarray(dataset.y_train[split.finetune], np.int32)
  crafted_on = (crafter if crafter is not None else victim).config.model
  surrogate_label = (f"{config.surrogate_config().model} (adversarially trained surrogate)"
                     if "label_consistent" in config.attacks else None)

  defense = config.defense
  units = [common.defense_unit(attack, defense) for attack in config.attacks]
  for unit in units:
    common.check_defense_records(out_dir, unit, defense)
  train_config = defense.training_config(finetune_train_config(victim.config, config.finetune))

  def run_chunk(unit: str, chunk: list[int]) -> list[dict]:
    attack = common.attack_of_unit(unit)
    chunk_start = time.perf_counter()
    poison_sets = [load_or_craft(out_dir, config, attack, dataset, split, i, craft_on)[0]
                   for i in chunk]
    craft_seconds = time.perf_counter() - chunk_start
    keys = [trial_key(config.seed, i) for i in chunk]
    scores = evaluate_trials(config, poison_sets, keys, finetune_images=finetune_images,
                             finetune_labels=finetune_labels, finetune_indices=split.finetune,
                             dataset=dataset, victim=victim, denoiser=denoiser,
                             pad_to=config.trials_per_step, eval_pool=_eval_pool(split, dataset))
    seconds = time.perf_counter() - chunk_start
    return [{
        "attack": attack,
        "scenario": scenario,
        "bound": bound_label(config.norm, config.epsilon),
        "finetune": f"{config.finetune.mode}, augment {config.finetune.augment}",
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
        "diverged": score["diverged"],
        "victim": victim.config.model,
        "crafted_on": surrogate_label if attack == "label_consistent" else crafted_on,
        "pretraining": victim_meta.get("pretraining", victim_meta["source"]),
        "poison_file": str(poison_path(out_dir, attack, i).relative_to(out_dir)),
        "seconds": {"craft": craft_seconds / len(chunk), "total": seconds / len(chunk)},
        **common.defense_fields(defense, score["defense_details"], train_config=train_config,
                                num_train=int(split.finetune.size)),
    } for i, poison_set, score in zip(chunk, poison_sets, scores)]

  common.run_trial_loop(folder, units, config.num_trials, config.trials_per_step,
                        run_chunk, stop_after=stop_after, time_limit_s=time_limit_s,
                        started=start, log=log)
  results = load_results(out_dir, common.ordered_units(out_dir, units))
  write_tables(out_dir, results)
  return results


# Names this module had before; each use warns, and they go in the next release.
__getattr__ = deprecated_names(__name__, "jaxpoison.benchmarks", {"BenchmarkConfig": ("TransferConfig", TransferConfig)})
