"""The from-scratch benchmark's settings (the paper's Tables 2 and 3): `FromScratchConfig` and
the constants a run's records name. `benchmarks.from_scratch` runs them."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxpoison import attacks, classifier
from jaxpoison._checks import check_perturbation_bound, check_positive, check_sigma
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks.configs import LINF_EPSILON
from jaxpoison.benchmarks import common
from jaxpoison.benchmarks.common import DEFAULT_SIGMAS
from jaxpoison.benchmarks.common import integer as _integer
from jaxpoison.benchmarks.transfer_config import NO_POISON, NoPoisonConfig

ATTACK_NAMES = ("witches_brew", "sleeper_agent")
POISON_CLASS_RULES = ("random", "runner_up")
CLEAN_START_SOURCES = ("own", "surrogate")
FORMAT_VERSION = 1
_CONFIG_TYPES = {"witches_brew": attacks.WitchesBrewConfig,
                 "sleeper_agent": attacks.SleeperAgentConfig}


@dataclasses.dataclass(frozen=True)
class FromScratchConfig:
  """Settings of a from-scratch benchmark run (defaults: the paper's Table 2 setting).

  Attributes:
    attacks: names in `ATTACK_NAMES`, and "no_poison" (the control: bases unchanged).
    num_trials: trials per attack (100).
    seed: trial i uses fold_in(key(seed), i).
    sigmas: noise levels (0 = no defense).
    num_poisons / budget: poisons per trial, a count (which takes precedence) or a fraction of
      the training set (1%: 500 of 50,000).
    train_per_class: None (the whole training set) or this many images per class
      (`training_subset`, seeded by `subset_seed`).
    subset_seed: the seed of that subset.
    num_eval: clean accuracy on this many random test images.
    victim: the victim's TrainConfig (None: `classifier.conservative_config()`, ResNet-18 with
      the reference's 40-epoch recipe).
    surrogate: the surrogates' TrainConfig (None: the victim's, white-box).
    num_surrogates: the crafting ensemble's size (1; Hong et al.'s "ensemble of four" most
      likely means 4 here, and the paper config's 4).
    surrogates_per_trial: False: one ensemble per run, trained once and shared by every trial
      (cheap; the trials' poisons are then correlated through it, and Clopper–Pearson
      intervals over them are optimistic); True (the paper config's): every trial trains its
      own ensemble with its own keys, as the references train one per crafting run.
    sleeper_agent_victim_epochs: Sleeper Agent's victims train this many epochs (None: the
      victim recipe's; the paper config's 80: Sleeper Agent's reference evaluates victims
      trained 80 epochs, its schedule's milestones scaling with them).
    poison_class: how a trial's poison class is chosen: "random" (the paper's and the
      benchmark's: uniform over the other classes) or "runner_up" (the class the clean
      surrogate ensemble ranks second for the target, i.e. the most probable wrong class: a
      reduction for small settings, where a random class is often out of any attack's reach).
    norm, epsilon: the bound (ℓ∞ 16/255; ℓ2 3.48).
    craft_steps, restarts: crafting iterations and restarts (None: the attack's defaults, 250
      and 8 for Witches' Brew, 250 and 1 for Sleeper Agent).
    retrain_every: Sleeper Agent's surrogate retraining interval (None: 50; 0: never).
    warm_start_epochs: Table 3's in-domain warm start (0: off), see the module docstring; with
      `clean_start_epochs` the first this many of those epochs.
    clean_start_epochs: 0 (victims from scratch, the paper's) or K: victims start from a
      clean-trained network of their recipe and train K epochs (module docstring).
    clean_start_from: that network: "own" (trained with the harness's own key; the attacker
      knows the recipe and the data, not the weights) or "surrogate" (surrogate 0, the
      network the attacker crafts on: a victim that fine-tunes a known network, the threat
      model of the transfer-learning Table 1; white-box only).
    correct_targets: draw each trial's target among the test images the clean surrogate
      ensemble classifies correctly (False: among all, the paper's). With `poison_class`
      "runner_up" many random targets are already classified as that class.
    defense: a `defenses.DefenseConfig` (None: no defense besides the σ grid), see "Defenses"
      in the module docstring.
    trials_per_step: victims trained at once (speed and memory only).
    denoise_batch_size: images per denoiser call (speed and memory only).
  """
  attacks: tuple[str, ...] = ATTACK_NAMES
  num_trials: int = 100
  seed: int = 0
  sigmas: tuple[float, ...] = DEFAULT_SIGMAS
  num_poisons: int | None = None
  budget: float | None = 0.01
  train_per_class: int | None = None
  subset_seed: int = 0
  num_eval: int = 1000
  victim: Any = None
  surrogate: Any = None
  num_surrogates: int = 1
  surrogates_per_trial: bool = False
  sleeper_agent_victim_epochs: float | None = None
  poison_class: str = "random"
  norm: str = "linf"
  epsilon: float = LINF_EPSILON
  craft_steps: int | None = None
  restarts: int | None = None
  retrain_every: int | None = None
  warm_start_epochs: int = 0
  clean_start_epochs: int = 0
  clean_start_from: str = "own"
  correct_targets: bool = False
  defense: Any = None
  trials_per_step: int = 1
  denoise_batch_size: int = 256

  def __post_init__(self):
    names = (self.attacks,) if isinstance(self.attacks, str) else tuple(self.attacks)
    if not names or len(set(names)) != len(names):
      raise ValueError(f"attacks: expected distinct names, got {list(names)}")
    for name in names:
      if name not in ATTACK_NAMES + (NO_POISON,):
        raise ValueError(f"attacks: {name!r} is not a from-scratch attack; expected names in "
                         f"{ATTACK_NAMES + (NO_POISON,)}")
    _store(self, "attacks", names)
    _store(self, "num_trials", _integer("num_trials", self.num_trials))
    _store(self, "seed", _integer("seed", self.seed, minimum=0))
    sigmas = tuple(check_sigma(s, name="sigmas", allow_zero=True) for s in self.sigmas)
    if not sigmas or len(set(sigmas)) != len(sigmas):
      raise ValueError(f"sigmas: expected distinct noise levels, got {list(self.sigmas)}")
    _store(self, "sigmas", sigmas)
    if self.num_poisons is None and self.budget is None:
      raise ValueError("num_poisons, budget: set one (a count, or a fraction of the training set "
                       "such as 0.01)")
    if self.num_poisons is not None:  # A count replaces the default budget.
      _store(self, "num_poisons", _integer("num_poisons", self.num_poisons))
      _store(self, "budget", None)
    else:
      budget = check_positive("budget", self.budget)
      if budget >= 1:
        raise ValueError(f"budget: expected a fraction in (0, 1), got {self.budget!r}")
      _store(self, "budget", budget)
    if self.train_per_class is not None:
      _store(self, "train_per_class", _integer("train_per_class", self.train_per_class))
    _store(self, "subset_seed", _integer("subset_seed", self.subset_seed, minimum=0))
    _store(self, "num_eval", _integer("num_eval", self.num_eval))
    for name in ("victim", "surrogate"):
      value = getattr(self, name)
      if value is not None and not isinstance(value, classifier.TrainConfig):
        raise TypeError(f"{name}: expected a jaxpoison.classifier.TrainConfig or None, got "
                        f"{type(value).__name__}")
    _store(self, "num_surrogates", _integer("num_surrogates", self.num_surrogates))
    if not isinstance(self.surrogates_per_trial, bool):
      raise TypeError(f"surrogates_per_trial: expected a bool, got {self.surrogates_per_trial!r}")
    if self.sleeper_agent_victim_epochs is not None:
      _store(self, "sleeper_agent_victim_epochs",
             float(check_positive("sleeper_agent_victim_epochs",
                                  self.sleeper_agent_victim_epochs)))
    if self.poison_class not in POISON_CLASS_RULES:
      raise ValueError(f"poison_class: expected one of {POISON_CLASS_RULES}, got "
                       f"{self.poison_class!r}")
    _store(self, "epsilon", check_perturbation_bound(self.norm, self.epsilon))
    for name in ("craft_steps", "restarts"):
      if getattr(self, name) is not None:
        _store(self, name, _integer(name, getattr(self, name)))
    if self.retrain_every is not None:
      _store(self, "retrain_every", _integer("retrain_every", self.retrain_every, minimum=0))
    _store(self, "warm_start_epochs",
           _integer("warm_start_epochs", self.warm_start_epochs, minimum=0))
    _store(self, "clean_start_epochs",
           _integer("clean_start_epochs", self.clean_start_epochs, minimum=0))
    total = self.clean_start_epochs or self.victim_config.epochs
    if self.warm_start_epochs and self.warm_start_epochs >= total:
      raise ValueError(f"warm_start_epochs: {self.warm_start_epochs} leaves no epoch of the "
                       f"victim's {total} for the denoised data")
    _store(self, "defense", common.checked_defense(self.defense))
    if self.clean_start_from not in CLEAN_START_SOURCES:
      raise ValueError(f"clean_start_from: expected one of {CLEAN_START_SOURCES}, got "
                       f"{self.clean_start_from!r}")
    if self.clean_start_from == "surrogate":
      if not self.clean_start_epochs:
        raise ValueError('clean_start_from: "surrogate" needs clean_start_epochs > 0')
      if not self.white_box:
        raise ValueError('clean_start_from: "surrogate" starts the victims from the attacker\'s '
                         "network, so the surrogate's recipe must be the victim's (white-box)")
      if self.clean_start_config.norm != self.victim_config.norm:
        raise ValueError(f'clean_start_from: "surrogate" cannot start a {self.defense.name} '
                         f"victim ({self.clean_start_config.norm} norm) from a "
                         f"{self.victim_config.norm}-norm surrogate; use \"own\"")
    if self.clean_start_from == "surrogate" and self.surrogates_per_trial:
      raise ValueError('clean_start_from: "surrogate" starts every victim from the run\'s one '
                       "surrogate; with surrogates_per_trial there is one per trial; use \"own\"")
    if self.sleeper_agent_victim_epochs is not None and (self.clean_start_epochs
                                                         or self.warm_start_epochs):
      raise ValueError("sleeper_agent_victim_epochs: sets the from-scratch victims' epochs; "
                       "a clean or warm start sets its own")
    if not isinstance(self.correct_targets, bool):
      raise TypeError(f"correct_targets: expected a bool, got {self.correct_targets!r}")
    if self.defense.name == "dpa_roe" and self.clean_start_epochs:
      raise ValueError("defense: DPA + ROE's certificate needs base classifiers that see only "
                       "their own partition; a clean start has seen the whole training set")
    if self.defense.active and self.warm_start_epochs:
      raise ValueError(f"defense: {self.defense.name} with a warm start is not a setting of the "
                       "paper's; run them separately")
    _store(self, "trials_per_step", _integer("trials_per_step", self.trials_per_step))
    _store(self, "denoise_batch_size", _integer("denoise_batch_size", self.denoise_batch_size))

  @property
  def victim_config(self) -> classifier.TrainConfig:
    return self.victim if self.victim is not None else classifier.conservative_config()

  @property
  def surrogate_config(self) -> classifier.TrainConfig:
    return self.surrogate if self.surrogate is not None else self.victim_config

  @property
  def clean_start_config(self) -> classifier.TrainConfig:
    """The recipe of the network victims start from under `clean_start_epochs`: the victim's,
    with the parameters of the defended recipe's normalization (DP-SGD's group norm; its
    frozen batch norm has batch norm's, so it starts from the victim's own clean network);
    the defense itself acts during the K epochs on the tampered set."""
    defended = self.defense.training_config(self.victim_config)
    return self.victim_config.replace(norm=defended.parameter_norm)

  @property
  def white_box(self) -> bool:
    return self.surrogate is None or self.surrogate == self.victim_config

  def poisons_for(self, train_size: int) -> int:
    if self.num_poisons is not None:
      return self.num_poisons
    return max(1, int(round(self.budget * train_size)))

  def attack_config(self, name: str):
    """The attack's config: its reference defaults with this run's bound and overrides."""
    if name == NO_POISON:
      return NoPoisonConfig(self.norm, self.epsilon)
    overrides = {"norm": self.norm, "epsilon": self.epsilon}
    for field, value in (("num_steps", self.craft_steps), ("restarts", self.restarts)):
      if value is not None:
        overrides[field] = value
    if name == "sleeper_agent" and self.retrain_every is not None:
      overrides["retrain_every"] = self.retrain_every
    return _CONFIG_TYPES[name](**overrides)


EXECUTION_FIELDS = ("attacks", "num_trials", "trials_per_step", "denoise_batch_size")
