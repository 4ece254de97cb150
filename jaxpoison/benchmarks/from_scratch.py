"""The attack benchmark of the paper's Tables 2 and 3: clean-label poisons against a victim
trained from scratch (Witches' Brew, Sleeper Agent), with and without the denoising defense.

* Training set. The whole training set, or (`train_per_class`) the first that many images of
  each class in a seeded permutation (`training_subset`), for reduced runs.
* Surrogates. `num_surrogates` networks of the `surrogate` recipe (None: the victim's, i.e.
  white-box; another architecture or width: black-box) trained from scratch on the clean
  training set once per run (saved under pretrained/surrogate_K and reused by every trial; the
  reference code trains one per crafting run). They are the ensemble the poisons are crafted on.
* Trial i (key t = fold_in(key(seed), i)). Witches' Brew: a target test image, its class and a
  poison class (random, or with `poison_class` "runner_up" the surrogates' most probable wrong
  class for the target; with `correct_targets` the target is one the surrogates classify
  correctly), and `num_poisons` random training images of the poison class
  (`attacks.sample_trial`). Sleeper Agent: a source class (the class of `target_index`, a
  source test image) and a target class (`base_class`); the poisons are the target-class
  training images with the largest gradient norm (`attacks.select_poisons`). Poisons are
  crafted with key fold_in(t, 1), saved as a poison file, reused across σ and on reruns.
* For each σ (0 = no defense): the whole training set with the poisons in place of their bases
  is noised and denoised (key fold_in(fold_in(t, 2), s)), a victim is trained from scratch
  (key fold_in(t, 3), the same at every σ) and scored: the target's prediction (Sleeper Agent:
  the source test image with the trigger pasted), success when it is the poison class, the
  clean accuracy on `num_eval` random test images, and for Sleeper Agent also the fraction of
  all patched source-class test images classified as the target class (`source_success`, the
  reference's own measure). The no-poison control (bases unchanged) records the same measure
  with Sleeper Agent's trigger pasted as trial t's Sleeper Agent pastes it: what the trigger
  does without poisons. Trials are trained together, one model each on the trainer's
  model axis (`trials_per_step`).
* Warm start (Table 3, `warm_start_epochs` = K > 0): the victim first trains K epochs on the
  tampered (undenoised) set, once per trial, then every σ continues from those weights for the
  remaining epochs on its denoised set (a second run of the recipe's schedule over the
  remaining epochs; the paper leaves open whether the schedule restarts). `victim_init` (a
  `save_models` checkpoint, e.g. a network pretrained on another dataset) starts every victim
  from those weights with a fresh head instead (the out-of-domain row).
* Clean start (`clean_start_epochs` = K > 0, a reduction for small settings, not a row of the
  paper's): every victim starts from one network of the victim's recipe trained on the clean
  training set with its own key (fold_in(key(seed), PRETRAIN_VICTIM); not a surrogate: the
  attacker knows the recipe and the data, not these weights; saved under pretrained/clean_start),
  head kept (`clean_start_from` "surrogate": surrogate 0 instead, the network the poisons were
  crafted on), and trains K epochs of the recipe on its tampered, denoised set (with a warm
  start: the first `warm_start_epochs` of them on the tampered set). Small networks
  trained from scratch on a few thousand images scatter so far from seed to seed that no
  poison budget moves them consistently (BENCHMARKS.md, issue 15); a victim that continues from
  a clean optimum stays near the point the poisons were matched at.

Defenses (Hong et al. Tables 4 and 5, `defense`): DP-SGD, adversarial training and FrieNDs
change the victim's recipe (`DefenseConfig.training_config`); Deep k-NN trains a network of the
victim's recipe on the tampered (denoised) set, filters the set in its features and trains the
victim on what is kept; DPA + ROE trains one base classifier per hash partition and predicts by
the run-off election. After a clean start the recipe defenses act during the K epochs (from a
clean network of their architecture: DP-SGD's group norm has its own, pretrained/
clean_start_group), Deep k-NN's extractor and victim both start from the clean network, and
DPA + ROE is refused (its certificate needs base classifiers that saw only their partition).
The trials go to results/<attack>+<defense>/ on the run's own poisons (the
defense is not part of the run's identity; other settings of the same defense are refused), and
the tables show every defense run in the folder.

Keys and files follow the transfer benchmark (`jaxpoison.benchmarks.transfer`): run.json (the
identity), pretrained/, poisons/<attack>/trial_XXX.npz, results/<attack>/trial_XXX.json,
table.md and table.csv; a rerun resumes.

Its settings are `from_scratch_config`. Over the package's ~500-line guide: a third of it is
this description of the trial procedure, and the rest is one procedure (surrogates, crafting,
victims, the run) that reads best in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison import attacks, classifier, defenses
from jaxpoison.benchmarks import common
from jaxpoison.benchmarks.common import (CRAFT, FINETUNE, PRETRAIN_SURROGATE, SAMPLE, TRAIN_SUBSET,
                                         _config_dict, _denoise, bound_label, dataset_fingerprint,
                                         denoise_key, eval_indices, load_results, poison_path,
                                         poisoned_images, trial_key, write_tables)
from jaxpoison.benchmarks.tables import render_probability_table, render_source_table  # noqa: F401
from jaxpoison.benchmarks.from_scratch_config import (EXECUTION_FIELDS, FORMAT_VERSION,
                                                      FromScratchConfig)
from jaxpoison.benchmarks.transfer_config import NO_POISON


def training_subset(labels, per_class: int | None, seed: int | None = None, *,
                    key: jax.Array | None = None) -> np.ndarray:
  """Sorted training indices: all (None), or the first `per_class` of each class in the
  permutation `jax.random.permutation(fold_in(key, TRAIN_SUBSET), N)` (key default
  `jax.random.key(0)`; `seed` is the deprecated `key=jax.random.key(seed)`)."""
  labels = np.asarray(labels)
  if per_class is None:
    return np.arange(labels.size)
  order = np.asarray(jax.random.permutation(
      jax.random.fold_in(common._key_or_seed(key, seed, "seed"), TRAIN_SUBSET), labels.size))
  chosen = []
  for c in np.unique(labels):
    members = order[labels[order] == c]
    if members.size < per_class:
      raise ValueError(f"train_per_class: class {int(c)} has {members.size} training images, "
                       f"{per_class} were asked for")
    chosen.append(members[:per_class])
  return np.sort(np.concatenate(chosen))


# --- surrogates and crafting ----------------------------------------------------------------------


def _subset_split(subset: np.ndarray) -> common.Split:
  return common.Split(subset, subset, subset)


def load_or_train_surrogates(out_dir: Path, config: FromScratchConfig, dataset,
                             subset: np.ndarray, log=print, *,
                             trial: int | None = None) -> list[classifier.TrainedModels]:
  """The crafting ensemble, trained on the clean training set (or loaded from out_dir): the
  run's (pretrained/surrogate_K, key fold_in(S, K)), or with `trial` that trial's own
  (pretrained/trial_T/surrogate_K, key fold_in(fold_in(S, K), T)), S the surrogates' key."""
  key = jax.random.fold_in(jax.random.key(config.seed), PRETRAIN_SURROGATE)
  folder = out_dir / "pretrained" if trial is None else out_dir / "pretrained" / f"trial_{trial}"

  def member_key(k):
    member = jax.random.fold_in(key, k)
    return member if trial is None else jax.random.fold_in(member, trial)

  return [common.load_or_pretrain(folder / f"surrogate_{k}", dataset, _subset_split(subset),
                                  config.surrogate_config, member_key(k), log=log)
          for k in range(config.num_surrogates)]


def load_or_train_clean_start(out_dir: Path, config: FromScratchConfig, dataset,
                              subset: np.ndarray, log=print, *,
                              defended: bool = False) -> classifier.TrainedModels:
  """The network every victim starts from under `clean_start_epochs`: the victim's recipe
  trained on the clean training set with its own key (not a surrogate's); `defended`: with
  the normalization the config's defense needs (`clean_start_config`)."""
  key = jax.random.fold_in(jax.random.key(config.seed), common.PRETRAIN_VICTIM)
  train_config = config.clean_start_config if defended else config.victim_config
  name = ("clean_start" if train_config.norm == config.victim_config.norm
          else f"clean_start_{train_config.norm}")
  return common.load_or_pretrain(out_dir / "pretrained" / name, dataset,
                                 _subset_split(subset), train_config, key, log=log)


def _gradient_models(models: Sequence[classifier.TrainedModels]):
  return [classifier.gradient_model(m, i) for m in models for i in range(m.num_models)]


def runner_up_class(surrogates: Sequence[classifier.TrainedModels], image,
                    true_class: int) -> int:
  """The class other than `true_class` with the highest mean softmax probability over the
  surrogate ensemble (every model of every TrainedModels) for one uint8 image [H, W, C]."""
  probabilities = _ensemble_probabilities(surrogates, np.asarray(image)[None])[0]
  probabilities[int(true_class)] = -np.inf
  return int(np.argmax(probabilities))


def _ensemble_probabilities(surrogates: Sequence[classifier.TrainedModels], images) -> np.ndarray:
  """The mean softmax over every model of every TrainedModels for uint8 images: [N, C]."""
  return np.concatenate([np.asarray(jax.nn.softmax(classifier.logits(m, images), axis=-1))
                         for m in surrogates]).mean(axis=0)


def correct_target_pool(surrogates: Sequence[classifier.TrainedModels], dataset,
                        batch_size: int = 1000) -> np.ndarray:
  """Sorted indices of the test images the surrogate ensemble (mean softmax over every model)
  classifies correctly: the targets `correct_targets` draws from."""
  x_test, y_test = np.asarray(dataset.x_test), np.asarray(dataset.y_test)
  probabilities = [_ensemble_probabilities(surrogates, x_test[start:start + batch_size])
                   for start in range(0, x_test.shape[0], batch_size)]
  return np.flatnonzero(np.concatenate(probabilities).argmax(-1) == y_test)


def sample_scratch_trial(config: FromScratchConfig, dataset, subset: np.ndarray, index: int,
                         surrogates: Sequence[classifier.TrainedModels] | None = None,
                         target_pool: np.ndarray | None = None) -> attacks.Trial:
  """Trial `index`'s target, classes and (random) bases from the training subset; with
  `poison_class` "runner_up" the poison class is the surrogates' (`runner_up_class`) and the
  bases are drawn from it with the same key; with `correct_targets` the target comes from
  `target_pool` (`correct_target_pool`, computed from the surrogates when not given)."""
  key = jax.random.fold_in(trial_key(config.seed, index), SAMPLE)
  num_poisons = config.poisons_for(subset.size)
  if config.correct_targets:
    if target_pool is None:
      if surrogates is None:
        raise ValueError("correct_targets needs the surrogates to choose the targets")
      target_pool = correct_target_pool(surrogates, dataset)
    trial = attacks.sample_trial(key, dataset, num_poisons, train_indices=subset,
                                 test_indices=np.asarray(target_pool))
  else:
    trial = attacks.sample_trial(key, dataset, num_poisons, train_indices=subset)
  if config.poison_class == "random":
    return trial
  if surrogates is None:
    raise ValueError('poison_class "runner_up" needs the surrogates to choose the class')
  base_class = runner_up_class(surrogates, dataset.x_test[trial.target_index], trial.target_class)
  return attacks.sample_trial(key, dataset, num_poisons, train_indices=subset,
                              test_indices=np.asarray([trial.target_index]),
                              base_class=base_class)


def _sleeper_sources(dataset, subset, trial) -> np.ndarray:
  """Training indices of the source class (the class of the trial's target image)."""
  return subset[np.asarray(dataset.y_train)[subset] == trial.target_class]


def source_test_indices(dataset, trial) -> np.ndarray:
  """Every test image of the source class: Sleeper Agent's evaluation sources."""
  return np.flatnonzero(np.asarray(dataset.y_test) == trial.target_class)


def patched_source_tests(config: FromScratchConfig, dataset, trial, index: int,
                         attack_config) -> tuple[np.ndarray, np.ndarray]:
  """(the patched target image [H, W, C], all patched source test images [S, H, W, C]); the
  trigger positions drawn from fold_in(fold_in(t, SAMPLE), 2), the target's included."""
  indices = source_test_indices(dataset, trial)
  key = jax.random.fold_in(jax.random.fold_in(trial_key(config.seed, index), SAMPLE), 2)
  patched, _ = attacks.patch_images(key, np.asarray(dataset.x_test[indices]), attack_config)
  patched = np.asarray(patched)
  return patched[int(np.searchsorted(indices, trial.target_index))], patched


def _retrain_fn(config: FromScratchConfig, train_images, train_labels, positions):
  """Sleeper Agent's retraining: the surrogate ensemble trained from scratch on the training set
  with the current poisons in place of their bases."""
  def retrain(key, poisons):
    images = np.array(train_images, copy=True)
    images[positions] = np.asarray(poisons)
    keys = jax.random.split(key, config.num_surrogates)
    models = classifier.train_models(keys, images, train_labels, config.surrogate_config)
    return _gradient_models([models])
  return retrain


def craft_trial(config: FromScratchConfig, attack: str, dataset, subset: np.ndarray, index: int,
                surrogates: Sequence[classifier.TrainedModels],
                target_pool: np.ndarray | None = None) -> attacks.PoisonSet:
  """Samples trial `index` and crafts its poisons with `attack` on the surrogate ensemble."""
  trial = sample_scratch_trial(config, dataset, subset, index, surrogates, target_pool)
  key = jax.random.fold_in(trial_key(config.seed, index), CRAFT)
  attack_config = config.attack_config(attack)
  ensemble = _gradient_models(surrogates)
  if attack == "sleeper_agent":
    candidates = subset[np.asarray(dataset.y_train)[subset] == trial.base_class]
    chosen = attacks.select_poisons(ensemble, np.asarray(dataset.x_train[candidates]),
                                    np.full(candidates.size, trial.base_class),
                                    trial.base_indices.size)
    trial = trial._replace(base_indices=candidates[chosen].astype(np.int64))
  bases = np.asarray(dataset.x_train[trial.base_indices])
  if attack == NO_POISON:
    poisons = bases
  elif attack == "witches_brew":
    poisons = attacks.witches_brew(key, ensemble, np.asarray(dataset.x_test[trial.target_index]),
                                   trial.base_class, bases, trial.base_class,
                                   attack_config).poisons
  else:
    train_images = np.asarray(dataset.x_train[subset])
    positions = np.searchsorted(subset, trial.base_indices)
    sources = np.asarray(dataset.x_train[_sleeper_sources(dataset, subset, trial)])
    poisons = attacks.sleeper_agent(
        key, ensemble, sources, trial.base_class, bases, attack_config,
        _retrain_fn(config, train_images, np.asarray(dataset.y_train[subset], np.int32),
                    positions)).result.poisons
  return attacks.make_poison_set(dataset, trial, np.asarray(poisons), attack=attack,
                                 config=attack_config, key=key)


def load_or_craft(out_dir: Path, config: FromScratchConfig, attack: str, dataset,
                  subset: np.ndarray, index: int, surrogates,
                  target_pool: np.ndarray | None = None) -> attacks.PoisonSet:
  """Trial `index`'s poisons from their file (checked against this run), or crafted and saved."""
  path = poison_path(out_dir, attack, index)
  if path.is_file():
    poison_set = attacks.load_poisons(path, dataset)
    trial = sample_scratch_trial(config, dataset, subset, index, surrogates, target_pool)
    expected = config.attack_config(attack).to_dict()
    # Sleeper Agent's bases are chosen while crafting, so only the target is the trial's.
    common.check_poison_file(path, poison_set, attack, expected, trial, check_bases=False)
    return poison_set
  poison_set = craft_trial(config, attack, dataset, subset, index, surrogates, target_pool)
  attacks.save_poisons(path, poison_set)
  return poison_set


# --- victims ----------------------------------------------------------------------------------


def _train(config, keys, images, labels, init=None):
  labels = np.broadcast_to(labels, images.shape[:2])
  return classifier.train_models(keys, images, labels, config, init=init)


def _source_success(predictions, base_class) -> float:
  return float((np.asarray(predictions) == base_class).mean())


def _defended_trial(defense: defenses.DefenseConfig, victim, key, images, labels, positions,
                    target, sources, base_class, eval_images, eval_labels, init=None) -> dict:
  """One trial's victim under a filtering defense (Deep k-NN) or DPA + ROE, scored: the
  target's prediction, clean accuracy, source success (Sleeper Agent) and the defense's own
  numbers (`details`). `init`: where Deep k-NN's extractor and victim start (a clean start)."""
  queries = np.concatenate([target[None], eval_images] + ([sources] if sources is not None
                                                          else []))
  num_eval = eval_images.shape[0]
  if defense.name == "deep_knn":
    # The feature extractor: a network of the victim's recipe trained on the tampered set.
    extractor = _train(victim, jax.random.fold_in(key, 1)[None], images[None], labels, init)
    features = classifier.features(extractor, images)[0]
    result = defenses.deep_knn_filter(features, labels, defense.knn_k, rule=defense.knn_rule,
                                      num_classes=victim.num_classes)
    kept = np.flatnonzero(result.keep)
    model = _train(victim, key[None], images[kept][None], labels[kept], init)
    query_logits = np.asarray(classifier.logits(model, queries))[0]  # predict's argmax input
    predictions = query_logits.argmax(-1)
    # A diverged extractor's NaN features make the filter's removals meaningless too.
    broken = not (classifier.finite_models(extractor)[0]
                  and common.finite_victims(model, query_logits[None, 0])[0])
    details = defenses.removal_report(result, positions)
    poison_probability = float(jax.nn.softmax(query_logits[0])[base_class])  # the target
  else:  # dpa_roe
    models, parts = defenses.train_partition_models(key, images, labels,
                                                    defense.dpa_partitions,
                                                    defense.partition_config(victim))
    scores = np.asarray(classifier.logits(models, queries))
    # A diverged base classifier (NaN logits) breaks the ensemble: the trial is flagged, and
    # the vote still counted (that classifier's scores zeroed, a vote for class 0, as an
    # argmax of NaN would be) so that the record is complete.
    finite = common.finite_victims(models, scores)
    broken = not finite.all()
    scores = np.where(finite[:, None, None], scores, 0.0)
    roe, plain = defenses.roe_certify(scores), defenses.dpa_certify(scores)
    predictions = roe.prediction
    poison_probability = None  # no single victim; the base classifiers' votes stand for it
    details = {"certified_poisons": int(roe.radius[0]),
               "dpa_target_prediction": int(plain.prediction[0]),
               "dpa_certified_poisons": int(plain.radius[0]),
               "dpa_clean_accuracy": float((plain.prediction[1:1 + num_eval]
                                            == eval_labels).mean()),
               "partition_sizes": [int(parts.sizes.min()), int(parts.sizes.max())],
               # Each base classifier's own accuracy (the paper's ROE clean accuracy is the
               # ensemble's; the base classifiers' says how well each part trains).
               "base_classifier_accuracy": float((scores[:, 1:1 + num_eval].argmax(-1)
                                                  == eval_labels[None]).mean()),
               "poison_class_votes": float((scores[:, 0].argmax(-1) == base_class).mean()),
               "diverged_base_classifiers": int((~finite).sum())}
  out = {"target_prediction": int(predictions[0]),
         "clean_accuracy": float((predictions[1:1 + num_eval] == eval_labels).mean()),
         "details": details, "diverged": broken}
  if poison_probability is not None:
    out["target_poison_probability"] = poison_probability
  if sources is not None:
    out["source_success"] = _source_success(predictions[1 + num_eval:], base_class)
  return out


def evaluate_trials(config: FromScratchConfig, poison_sets: Sequence[attacks.PoisonSet],
                    trials: Sequence[int], *, dataset, subset: np.ndarray, denoiser,
                    victim_init: classifier.TrainedModels | None = None,
                    clean_start: classifier.TrainedModels | None = None,
                    pad_to: int | None = None) -> list[dict[str, list]]:
  """Trains one victim per trial and σ from scratch (or from `victim_init`, or warm-started on
  the tampered set, or for `clean_start_epochs` from `clean_start`: the network
  `load_or_train_clean_start` gives, or surrogate 0) under the config's defense, and scores
  it; per trial: target_prediction,
  clean_accuracy, for Sleeper Agent source_success, and with Deep k-NN or DPA + ROE the
  defense's numbers (defense_details), one entry per σ; except under DPA + ROE (no single
  victim; its details hold the base classifiers' poison-class vote share) also
  target_poison_probability (the victim's softmax probability of the poison class on the
  target: Sleeper Agent's is the patched target's)."""
  defense = config.defense
  victim = defense.training_config(config.victim_config)
  if config.sleeper_agent_victim_epochs and all(p.attack == "sleeper_agent"
                                                for p in poison_sets):
    victim = victim.replace(epochs=config.sleeper_agent_victim_epochs)
  num = len(poison_sets)
  width = max(num, pad_to or num)
  order = list(range(num)) + [num - 1] * (width - num)
  train_images = np.asarray(dataset.x_train[subset])
  train_labels = np.asarray(dataset.y_train[subset], np.int32)
  tampered = [poisoned_images(train_images, subset, p) for p in poison_sets]
  keys = [trial_key(config.seed, i) for i in trials]
  targets, sources = [], []
  for p, index in zip(poison_sets, trials):
    if p.attack in ("sleeper_agent", NO_POISON):
      trial = attacks.Trial(p.target_index, p.target_class, p.base_class, p.indices)
      trigger = (attacks.config_from_dict(p.attack, p.config) if p.attack == "sleeper_agent"
                 else config.attack_config("sleeper_agent"))
      target, patched = patched_source_tests(config, dataset, trial, index, trigger)
      # The control's target stays clean (its success is Witches' Brew's control).
      targets.append(target if p.attack == "sleeper_agent"
                     else np.asarray(dataset.x_test[p.target_index]))
      sources.append(patched)
    else:
      targets.append(np.asarray(dataset.x_test[p.target_index]))
      sources.append(None)
  targets = np.stack(targets)[order]
  train_keys = jnp.stack([jax.random.fold_in(keys[i], FINETUNE) for i in order])
  subset_eval = eval_indices(dataset.x_test.shape[0], config.num_eval,
                             key=jax.random.key(config.seed))
  eval_images, eval_labels = dataset.x_test[subset_eval], dataset.y_test[subset_eval]
  if victim_init is not None:
    victim = victim.replace(reinit_head=True)
  init, remaining = victim_init, victim
  if config.clean_start_epochs:
    if clean_start is None or victim_init is not None:
      raise ValueError("clean_start_epochs: pass the clean-trained network as clean_start "
                       "(and no victim_init)")
    victim = victim.replace(epochs=config.clean_start_epochs)
    init, remaining = clean_start, victim
  elif clean_start is not None:
    raise ValueError("clean_start: given, but the config's clean_start_epochs is 0")
  if config.warm_start_epochs:
    first = victim.replace(epochs=config.warm_start_epochs)
    init = _train(first, train_keys, np.stack(tampered)[order], train_labels, init)
    remaining = victim.replace(epochs=victim.epochs - config.warm_start_epochs, reinit_head=False)
    train_keys = jnp.stack([jax.random.fold_in(k, 1) for k in train_keys])
  out = [{"target_prediction": [], "clean_accuracy": [], "source_success": [],
          "defense_details": [], "target_poison_probability": [], "diverged": []}
         for _ in range(num)]
  for s, sigma in enumerate(config.sigmas):
    denoised = [_denoise(denoiser, tampered[i], sigma, denoise_key(keys[i], s),
                         config.denoise_batch_size) for i in range(num)]
    if defense.name in ("deep_knn", "dpa_roe"):
      # Per trial: the filtered sets differ in size, and DPA trains k models per trial.
      for i in range(num):
        positions = np.searchsorted(subset, poison_sets[i].indices)
        score = _defended_trial(defense, remaining, train_keys[i], np.asarray(denoised[i]),
                                train_labels, positions, targets[i], sources[i],
                                poison_sets[i].base_class, np.asarray(eval_images),
                                np.asarray(eval_labels), init)
        out[i]["target_prediction"].append(score["target_prediction"])
        out[i]["clean_accuracy"].append(score["clean_accuracy"])
        out[i]["defense_details"].append(score["details"])
        out[i]["diverged"].append(score["diverged"])
        if "source_success" in score:
          out[i]["source_success"].append(score["source_success"])
        if "target_poison_probability" in score:
          out[i]["target_poison_probability"].append(score["target_poison_probability"])
      continue
    images = np.stack(denoised)[order]
    models = _train(remaining, train_keys, images, train_labels, init)
    own_logits = common.own_target_logits(models, targets)
    predictions, accuracy, broken = (np.asarray(a) for a in common.score_victims(
        models, targets, eval_images, eval_labels, own_logits))
    # Each victim's softmax on its own trial's target: how far the attack moved it, even where
    # the prediction did not change (the effect a handful of trials can show).
    own_probabilities = np.asarray(jax.nn.softmax(own_logits, axis=-1))
    for i in range(num):
      out[i]["target_prediction"].append(int(predictions[i]))
      out[i]["clean_accuracy"].append(float(accuracy[i]))
      out[i]["diverged"].append(bool(broken[i]))
      out[i]["target_poison_probability"].append(
          float(own_probabilities[i, poison_sets[i].base_class]))
      if sources[i] is not None:
        one = classifier.select(models, i)
        out[i]["source_success"].append(_source_success(
            np.asarray(classifier.predict(one, sources[i]))[0], poison_sets[i].base_class))
  return out


# --- the run ------------------------------------------------------------------------------------


def run_identity(config: FromScratchConfig, *, dataset, surrogates, denoiser, victim_init,
                 clean_start=None):
  settings = _config_dict(config)
  for name in EXECUTION_FIELDS + ("type", "defense"):
    settings.pop(name)
  # Runs from before these settings existed keep their identity.
  if settings["poison_class"] == "random":
    settings.pop("poison_class")
  for name, paper in (("clean_start_epochs", 0), ("clean_start_from", "own"),
                      ("correct_targets", False), ("surrogates_per_trial", False),
                      ("sleeper_agent_victim_epochs", None)):
    if settings[name] == paper:
      settings.pop(name)
  settings["victim"] = _config_dict(config.victim_config)
  settings["surrogate"] = _config_dict(config.surrogate_config)
  return {
      "format_version": FORMAT_VERSION,
      "benchmark": "from_scratch",
      "settings": settings,
      "dataset": dataset_fingerprint(dataset),
      "surrogates": [common.params_fingerprint(m.state) for m in surrogates],
      "denoiser": denoiser,
      "victim_init": victim_init,
  } | ({} if clean_start is None
       else {"clean_start": common.params_fingerprint(clean_start.state)})


def _training_label(config: FromScratchConfig, victim_init_source: str | None) -> str:
  victim = config.victim_config
  text = f"from scratch, {victim.epochs:g} epochs"
  if config.warm_start_epochs:
    text = (f"warm start: {config.warm_start_epochs} epochs tampered, then "
            f"{victim.epochs - config.warm_start_epochs:g} denoised")
  if victim_init_source is not None:
    text = f"from {victim_init_source}, {victim.epochs:g} epochs"
  if config.clean_start_epochs:
    start = ("the surrogate" if config.clean_start_from == "surrogate"
             else "a clean-trained network")
    text = f"from {start}, {config.clean_start_epochs} epochs"
    if config.warm_start_epochs:
      text = (f"from {start}: {config.warm_start_epochs} epochs tampered, then "
              f"{config.clean_start_epochs - config.warm_start_epochs} denoised")
  return text


def _scenario(config: FromScratchConfig) -> str:
  if config.white_box:
    return "white-box"
  name = lambda c: f"{c.model} {'/'.join(map(str, c.widths))}"
  return f"black-box ({name(config.surrogate_config)} → {name(config.victim_config)})"


def run_benchmark(config: FromScratchConfig, dataset, out_dir: str | Path, *, denoiser=None,
                  victim_init=None, stop_after: int | None = None,
                  time_limit_s: float | None = None,
                  log: Callable[[str], None] = print) -> list[dict]:
  """Runs (or resumes) the from-scratch benchmark under `out_dir`; returns every record.

  Args:
    config: the settings.
    dataset: a `jaxpoison.Dataset`.
    out_dir: the run folder (see the module docstring).
    denoiser: a Denoiser, a path, or None for the embedded default (only when a σ > 0 is asked).
    victim_init: a `save_models` path or TrainedModels to start every victim from (fresh head):
      the out-of-domain initialization of Table 3; None trains from scratch.
    stop_after, time_limit_s: stop early (a rerun resumes).
    log: progress messages.
  """
  if not isinstance(config, FromScratchConfig):
    raise TypeError(f"config: expected a FromScratchConfig, got {type(config).__name__}")
  start = time.perf_counter()
  out_dir = Path(out_dir)
  if config.num_eval > dataset.x_test.shape[0]:
    raise ValueError(f"num_eval: {config.num_eval} exceeds the {dataset.x_test.shape[0]} test "
                     "images")
  subset = training_subset(dataset.y_train, config.train_per_class,
                           key=jax.random.key(config.subset_seed))
  init_meta, init_source = None, None
  if victim_init is not None:
    if isinstance(victim_init, (str, Path)):
      init_source = str(victim_init)
      victim_init = classifier.load_models(victim_init)
    else:
      init_source = "given TrainedModels"
    victim_init = classifier.select(victim_init, 0)
    if victim_init.config.model != config.victim_config.model:
      raise ValueError(f"victim_init: a {victim_init.config.model} checkpoint cannot start a "
                       f"{config.victim_config.model} victim")
    init_meta = common._pretrained_info(init_source, victim_init, None)
    if config.clean_start_epochs:
      raise ValueError("victim_init: the config's clean_start_epochs already sets where the "
                       "victims start; give one")
  # One ensemble for the run, or (surrogates_per_trial) one per trial, trained when the trial
  # is crafted.
  surrogates = ([] if config.surrogates_per_trial
                else load_or_train_surrogates(out_dir, config, dataset, subset, log))
  clean_start = start_for_victims = None
  if config.clean_start_from == "surrogate":
    clean_start = start_for_victims = surrogates[0]  # config: white-box, the victim's norm
  elif config.clean_start_epochs:
    # The run's identity holds the undefended start; a defense that changes the architecture
    # (DP-SGD's group norm) starts from its own, trained with the same key.
    clean_start = start_for_victims = load_or_train_clean_start(out_dir, config, dataset,
                                                                subset, log)
    if config.clean_start_config.norm != config.victim_config.norm:
      start_for_victims = load_or_train_clean_start(out_dir, config, dataset, subset, log,
                                                    defended=True)
  target_pool = (correct_target_pool(surrogates, dataset)
                 if config.correct_targets and not config.surrogates_per_trial else None)
  denoiser, denoiser_meta = common.resolve_denoiser(denoiser, config.sigmas)
  folder = common.claim_run(out_dir, run_identity(config, dataset=dataset, surrogates=surrogates,
                                                  denoiser=denoiser_meta, victim_init=init_meta,
                                                  clean_start=clean_start))
  scenario = _scenario(config)
  training = _training_label(config, init_source)

  defense = config.defense
  units = [common.defense_unit(attack, defense) for attack in config.attacks]
  for unit in units:
    common.check_defense_records(out_dir, unit, defense)
  victim_config = defense.training_config(config.victim_config)
  if config.clean_start_epochs:
    # The defended training is the K epochs on the tampered set (DP-SGD's ε counts those; the
    # clean start saw only clean data).
    victim_config = victim_config.replace(epochs=config.clean_start_epochs)

  def trial_surrogates(attack: str, trial: int):
    """(the surrogates, the correct-target pool) trial `trial` crafts with."""
    if not config.surrogates_per_trial:
      return surrogates, target_pool
    needed = (attack != NO_POISON or config.poison_class == "runner_up"
              or config.correct_targets)
    if not needed:  # the control samples its target and class without them
      return [], None
    own = load_or_train_surrogates(out_dir, config, dataset, subset, log, trial=trial)
    return own, correct_target_pool(own, dataset) if config.correct_targets else None

  def run_chunk(unit: str, chunk: list[int]) -> list[dict]:
    attack = common.attack_of_unit(unit)
    chunk_start = time.perf_counter()
    poison_sets = [load_or_craft(out_dir, config, attack, dataset, subset, i,
                                 *trial_surrogates(attack, i)) for i in chunk]
    craft_seconds = time.perf_counter() - chunk_start
    scores = evaluate_trials(config, poison_sets, chunk, dataset=dataset, subset=subset,
                             denoiser=denoiser, victim_init=victim_init,
                             clean_start=start_for_victims, pad_to=config.trials_per_step)
    seconds = time.perf_counter() - chunk_start
    records = []
    for i, poison_set, score in zip(chunk, poison_sets, scores):
      record = {
          "attack": attack, "scenario": scenario, "bound": bound_label(config.norm, config.epsilon),
          "finetune": (f"from scratch, {config.sleeper_agent_victim_epochs:g} epochs"
                       if attack == "sleeper_agent" and config.sleeper_agent_victim_epochs
                       else training), "trial": i, "target_index": poison_set.target_index,
          "target_class": poison_set.target_class, "base_class": poison_set.base_class,
          "num_poisons": poison_set.num_poisons, "train_size": int(subset.size),
          "sigmas": list(config.sigmas), "target_prediction": score["target_prediction"],
          "success": [p == poison_set.base_class for p in score["target_prediction"]],
          "clean_accuracy": score["clean_accuracy"], "diverged": score["diverged"],
          "victim": config.victim_config.model,
          "crafted_on": f"{config.num_surrogates} × {config.surrogate_config.model}"
                        + (", the trial's own" if config.surrogates_per_trial else ""),
          "poison_file": str(poison_path(out_dir, attack, i).relative_to(out_dir)),
          "seconds": {"craft": craft_seconds / len(chunk), "total": seconds / len(chunk)}}
      if score["target_poison_probability"]:
        record["target_poison_probability"] = score["target_poison_probability"]
      if attack == "sleeper_agent":
        record["success_measure"] = "the single patched source test image (target_index)"
        record["source_success"] = score["source_success"]
      if attack == NO_POISON:
        record["source_measure"] = ("source-class test images with Sleeper Agent's trigger "
                                    "pasted as in this trial, no poisons")
        record["source_success"] = score["source_success"]
      record.update(common.defense_fields(defense, score["defense_details"],
                                          train_config=victim_config,
                                          num_train=int(subset.size)))
      records.append(record)
    return records

  common.run_trial_loop(folder, units, config.num_trials, config.trials_per_step,
                        run_chunk, stop_after=stop_after, time_limit_s=time_limit_s,
                        started=start, log=log)
  results = load_results(out_dir, common.ordered_units(out_dir, units))
  write_scratch_tables(out_dir, results)
  return results


def write_scratch_tables(out_dir: str | Path, results: Sequence[dict]) -> tuple[Path, Path]:
  """table.md (the success table, single-target success; then Sleeper Agent's source-image
  rates, the poison-class probabilities and the defenses' own numbers) and table.csv."""
  return write_tables(out_dir, results, sections=(render_source_table(results),
                                                  render_probability_table(results)))
