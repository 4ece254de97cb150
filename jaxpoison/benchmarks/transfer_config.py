"""The transfer-learning benchmark's settings (the paper's Table 1): `TransferConfig`, its
fine-tuning recipe (`FineTuneConfig`), the no-poison control's config, and the constants a
run's records name. `benchmarks.transfer` runs them."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxpoison import attacks, classifier, defenses
from jaxpoison._checks import check_perturbation_bound, check_positive, check_sigma
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks.configs import BENCHMARK_NUM_POISONS, LINF_EPSILON
from jaxpoison.benchmarks import common
from jaxpoison.benchmarks.common import DEFAULT_SIGMAS
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
