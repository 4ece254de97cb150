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
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison import attacks, classifier, defenses
from jaxpoison._checks import check_perturbation_bound, check_positive, check_sigma
from jaxpoison._deprecation import deprecated_names
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks.configs import BENCHMARK_NUM_POISONS, LINF_EPSILON
from jaxpoison.benchmarks import common
from jaxpoison.benchmarks.common import (CRAFT, DEFAULT_SIGMAS, FINETUNE, PRETRAIN_CRAFTER,
                                         PRETRAIN_SURROGATE, PRETRAIN_VICTIM, SAMPLE, Split, _config_dict,
                                         _denoise, _eval_pool, _pretrained_info, bound_label,
                                         dataset_fingerprint, denoise_key, eval_indices,
                                         load_or_pretrain, load_results, poison_path,
                                         poisoned_images, pretraining_note,
                                         split_training_set, trial_key, write_tables)
from jaxpoison.benchmarks.common import integer as _integer

ATTACK_NAMES = tuple(attacks.ATTACKS)
# 2: clean accuracy on a random test subset (was the first num_eval); 3: the head's learning
# rate in its own units, fine-tuning mode and augmentation, class-disjoint splits.
FORMAT_VERSION = 3
# The control: the trial's bases left as they are. Its success is how often a victim trained on
# clean data alone gives the target the (randomly drawn) base class: the floor that any
# attack's or defended cell's success should be read against.
NO_POISON = "no_poison"


@dataclasses.dataclass(frozen=True)
class NoPoisonConfig:
  """The control's "attack config": the run's bound, which the unchanged bases keep."""
  norm: str
  epsilon: float

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


FINETUNE_MODES = ("linear_probe", "whole_network")
AUGMENTATIONS = ("none", "flip_translate")


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
  """How the victim is fine-tuned from its pretrained weights, with a fresh linear head.

  The learning rate and weight decay are PyTorch SGD's (coupled decay, loss averaged over the
  batch) **in the head's own units**: the head trains as the benchmark's fresh `nn.Linear`
  would at this lr, whatever logit scale the architecture's head carries (airbench's 1/9 is
  undone with `TrainConfig.head_lr_scale`, see `classifier.head_lr_scale_for`); without that,
  an airbench head fine-tuned at lr 0.01 moves 81× slower in logit space and never fits the
  poisons.

  Attributes:
    mode: "linear_probe" (the benchmark's: extractor frozen, batch norm on its running
      statistics, only the head trains) or "whole_network" (every layer trains at this lr, the
      head in its own units; Hong et al. leave open which they used, their 93% clean accuracy
      suggests this one).
    augment: "none" (the attacks' own evaluations, e.g. Bullseye's trainer.py, train the head on
      the stored pixels) or "flip_translate" (the benchmark's poison_test.py: random flips and
      4-pixel translations; here with reflection padding, the benchmark pads with zeros).
    epochs: passes over the fine-tune set (benchmark: 40).
    batch_size: images per step (128).
    learning_rate: SGD step (0.01), cosine-decayed (the benchmark: ×0.1 at epoch 30).
    momentum: SGD momentum (0.9).
    weight_decay: L2 weight decay (2e-4).
  """
  epochs: int = 40
  batch_size: int = 128
  learning_rate: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 2e-4
  mode: str = "linear_probe"
  augment: str = "none"

  def __post_init__(self):
    if self.mode not in FINETUNE_MODES:
      raise ValueError(f"finetune.mode: expected one of {FINETUNE_MODES}, got {self.mode!r}")
    if self.augment not in AUGMENTATIONS:
      raise ValueError(f"finetune.augment: expected one of {AUGMENTATIONS}, got "
                       f"{self.augment!r}")
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
class TransferConfig:
  """Settings of an attack benchmark run (defaults: the paper's Table 1 setting).

  Attributes:
    attacks: attacks to run, names of `jaxpoison.attacks.ALL_ATTACKS`, and "no_poison" (the
      control: every trial's bases unchanged).
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
    pretrain_classes: None (the half split above), or the classes the extractor is pretrained
      on: every training image of these classes is pretraining data, the other classes'
      images are the fine-tune pool, and targets and clean accuracy come from the other
      classes' test images (the benchmark's class-disjoint designs: CIFAR-100 → CIFAR-10,
      Tiny ImageNet classes 0–99 → 100–199).
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
    surrogate: TrainConfig of the label-consistent backdoor's surrogate classifier, trained on
      the fine-tune pool (it must know the fine-tune classes: the attack raises its loss on the
      bases' true label); None: the crafting model's recipe with Madry PGD adversarial training
      (ℓ∞ 8/255, 7 steps of 2/255), the benchmark's surrogate being an adversarially trained
      ResNet-18 of unpublished recipe.
    defense: a `defenses.DefenseConfig` (None: none besides the σ grid). Deep k-NN filters
      the fine-tune set in the pretrained extractor's features; DP-SGD, adversarial training
      and FrieNDs change the fine-tuning recipe; DPA + ROE needs its base classifiers trained
      from scratch and does not apply here (as the paper notes). The trials sit in
      results/<attack>+<defense>/, on the run's own poisons.
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
  pretrain_classes: tuple[int, ...] | None = None
  num_eval: int = 1000
  victim: Any = None
  crafter: Any = None
  norm: str = "linf"
  epsilon: float = LINF_EPSILON
  craft_steps: int | None = None
  base_selection: str = "random"
  finetune: FineTuneConfig = FineTuneConfig()
  surrogate: Any = None
  defense: Any = None
  trials_per_step: int = 1
  denoise_batch_size: int = 256

  def __post_init__(self):
    names = (self.attacks,) if isinstance(self.attacks, str) else tuple(self.attacks)
    if not names:
      raise ValueError("attacks: expected at least one attack")
    for name in names:
      if name != NO_POISON and attacks.attack_kind(name) == attacks.FROM_SCRATCH:
        raise ValueError(f"attacks: {name!r} trains the victim from scratch; run it with "
                         "jaxpoison.benchmarks.from_scratch (scripts/poison_benchmark.py with a "
                         "FromScratchConfig, e.g. configs/poison_benchmark_from_scratch.py)")
      if name != NO_POISON and attacks.attack_kind(name) not in (attacks.FEATURE_COLLISION,
                                                                 attacks.BACKDOOR):
        raise ValueError(f"attacks: {name!r} poisons every training image without a target; "
                         "run it with jaxpoison.eclipse (scripts/eclipse.py --poison)")
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
    if self.pretrain_classes is not None:
      classes = tuple(_integer("pretrain_classes", c, minimum=0) for c in self.pretrain_classes)
      if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"pretrain_classes: expected distinct classes, got "
                         f"{self.pretrain_classes!r}")
      _store(self, "pretrain_classes", tuple(sorted(classes)))
    _store(self, "num_eval", _integer("num_eval", self.num_eval))
    _store(self, "epsilon", check_perturbation_bound(self.norm, self.epsilon))
    if self.craft_steps is not None:
      _store(self, "craft_steps", _integer("craft_steps", self.craft_steps))
    if self.base_selection not in ("random", "nearest"):
      raise ValueError(f"base_selection: expected 'random' or 'nearest', got "
                       f"{self.base_selection!r}")
    if not isinstance(self.finetune, FineTuneConfig):
      raise TypeError(f"finetune: expected a FineTuneConfig, got {type(self.finetune).__name__}")
    backdoors = [name for name in names
                 if name != NO_POISON and attacks.attack_kind(name) == "backdoor"]
    if backdoors and self.norm != "linf":
      raise ValueError(f"attacks: {backdoors} are run with an ℓ∞ bound only (the paper has no ℓ2 "
                       "backdoor rows); run them with norm='linf'")
    for name in ("victim", "crafter", "surrogate"):
      value = getattr(self, name)
      if value is not None and not dataclasses.is_dataclass(value):
        raise TypeError(f"{name}: expected a jaxpoison.classifier.TrainConfig or None, got "
                        f"{type(value).__name__}")
    _store(self, "defense", common.checked_defense(self.defense))
    if self.defense.name == "dpa_roe":
      raise ValueError("defense: DPA + ROE trains its base classifiers from scratch on the "
                       "partitions, which the transfer-learning setting does not (Hong et al. "
                       "leave its cell N/A); use a FromScratchConfig")
    _store(self, "trials_per_step", _integer("trials_per_step", self.trials_per_step))
    _store(self, "denoise_batch_size", _integer("denoise_batch_size", self.denoise_batch_size))

  @property
  def white_box(self) -> bool:
    return self.crafter is None

  def surrogate_config(self):
    """The label-consistent backdoor's surrogate recipe (see `surrogate`)."""
    if self.surrogate is not None:
      return self.surrogate
    base = self.crafter if self.crafter is not None else self.victim
    return defenses.adversarial_config(base if base is not None else classifier.resnet18_config())

  def attack_config(self, name: str):
    if name == NO_POISON:
      return NoPoisonConfig(self.norm, self.epsilon)
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



EXECUTION_FIELDS = ("attacks", "num_trials", "trials_per_step", "denoise_batch_size",
                    "surrogate", "defense")


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
