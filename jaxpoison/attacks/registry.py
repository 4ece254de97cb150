"""The attack registry: every attack and poison's crafting function, config type and kind, by name.

Kinds: "feature_collision" (`ATTACKS`, the transfer-learning attacks `craft` runs), "backdoor"
(`BACKDOORS`), "from_scratch" (`FROM_SCRATCH_ATTACKS`, gradient matching against surrogate
classifiers), "indiscriminate" (`DATA_POISONS`: every training image perturbed by a rule, no
model: `poison(key, images, labels, config)`) and "trained_indiscriminate" (`TRAINED_POISONS`:
every image optimized against a surrogate network; own signatures). `ALL_ATTACKS` holds them all;
`get_attack`, `attack_kind`, `config_from_dict` and `ATTACK_KINDS` cover every name.

`run(name, ...)` calls any of them with its own arguments and returns the one result type,
`PoisonResult(poisons, info)`: the uint8 poisons on the host and everything else the attack
reports (losses, restarts, surrogates) by name. The functions themselves keep their richer
result types (`AttackResult`, `SleeperAgentResult`, `EMResult`, ...); `as_poison_result`
turns any of them into a `PoisonResult`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jaxpoison.attacks.configs import (
    AttackResult,
    BullseyePolytopeConfig,
    ConvexPolytopeConfig,
    HiddenTriggerConfig,
    LabelConsistentConfig,
    PoisonFrogsConfig,
    SleeperAgentConfig,
    WitchesBrewConfig,
)
from jaxpoison.attacks.hidden_trigger import hidden_trigger_backdoor
from jaxpoison.attacks.unlearnable.ar import ARConfig, ar_poison
from jaxpoison.attacks.unlearnable.lsp import LSPConfig, lsp_poison
from jaxpoison.attacks.unlearnable.urp import URPConfig, urp_poison
from jaxpoison.attacks.label_consistent import label_consistent_backdoor
from jaxpoison.attacks.poison_frogs import poison_frogs
from jaxpoison.attacks.polytope import bullseye_polytope, convex_polytope
from jaxpoison.attacks.self_ensemble import SEPConfig, sep_poison
from jaxpoison.attacks.sleeper_agent import sleeper_agent
from jaxpoison.attacks.unlearnable.efp import EFPConfig, efp_poison
from jaxpoison.attacks.unlearnable.em import EMConfig, em_poison
from jaxpoison.attacks.unlearnable.rem import REMConfig, rem_poison
from jaxpoison.attacks.unlearnable.tap import TAPConfig, tap_poison
from jaxpoison.attacks.witches_brew import witches_brew

FEATURE_COLLISION = "feature_collision"
BACKDOOR = "backdoor"
FROM_SCRATCH = "from_scratch"
INDISCRIMINATE = "indiscriminate"
TRAINED_INDISCRIMINATE = "trained_indiscriminate"
KINDS = (FEATURE_COLLISION, BACKDOOR, FROM_SCRATCH, INDISCRIMINATE, TRAINED_INDISCRIMINATE)


class Attack(NamedTuple):
  """An attack's crafting function, its config type, and its kind.

  kind: "feature_collision" (`craft(key, extractors, target_image, base_images, config)`),
  "backdoor" (own signature, see the function; success is judged on the triggered target) or
  "from_scratch" (gradient matching against surrogate classifiers, own signatures; run by
  `jaxpoison.benchmarks.from_scratch`).
  """
  craft: Callable[..., AttackResult]
  config_type: type
  kind: str = FEATURE_COLLISION


# The attacks `craft` runs: the transfer-learning feature-collision attacks. (The backdoors are
# kept out of this dict because its users call every entry with the feature-collision
# signature.)
ATTACKS = {
    "poison_frogs": Attack(poison_frogs, PoisonFrogsConfig),
    "convex_polytope": Attack(convex_polytope, ConvexPolytopeConfig),
    "bullseye_polytope": Attack(bullseye_polytope, BullseyePolytopeConfig),
}
BACKDOORS = {
    "label_consistent": Attack(label_consistent_backdoor, LabelConsistentConfig, BACKDOOR),
    "hidden_trigger": Attack(hidden_trigger_backdoor, HiddenTriggerConfig, BACKDOOR),
}
FROM_SCRATCH_ATTACKS = {
    "witches_brew": Attack(witches_brew, WitchesBrewConfig, FROM_SCRATCH),
    "sleeper_agent": Attack(sleeper_agent, SleeperAgentConfig, FROM_SCRATCH),
}
DATA_POISONS = {
    "urp": Attack(urp_poison, URPConfig, INDISCRIMINATE),
    "lsp": Attack(lsp_poison, LSPConfig, INDISCRIMINATE),
    "ar": Attack(ar_poison, ARConfig, INDISCRIMINATE),
}
TRAINED_POISONS = {
    "em": Attack(em_poison, EMConfig, TRAINED_INDISCRIMINATE),
    "tap": Attack(tap_poison, TAPConfig, TRAINED_INDISCRIMINATE),
    "rem": Attack(rem_poison, REMConfig, TRAINED_INDISCRIMINATE),
    "sep": Attack(sep_poison, SEPConfig, TRAINED_INDISCRIMINATE),
    "efp": Attack(efp_poison, EFPConfig, TRAINED_INDISCRIMINATE),
}
ALL_ATTACKS = {**ATTACKS, **BACKDOORS, **FROM_SCRATCH_ATTACKS, **DATA_POISONS, **TRAINED_POISONS}
ATTACK_KINDS = {name: attack.kind for name, attack in ALL_ATTACKS.items()}
_BACKDOOR_CALLS = {
    "label_consistent": "jaxpoison.attacks.label_consistent_backdoor(key, surrogate, "
                        "base_images, base_label, config)",
    "hidden_trigger": "jaxpoison.attacks.hidden_trigger_backdoor(key, extractors, base_images, "
                      "source_images, config)",
    "witches_brew": "jaxpoison.attacks.witches_brew(key, surrogates, target_image, target_label, "
                    "base_images, base_labels, config)",
    "sleeper_agent": "jaxpoison.attacks.sleeper_agent(key, surrogates, source_images, "
                     "target_class, base_images, config, retrain_fn)",
    **{name: f"jaxpoison.attacks.{attack.craft.__name__}(key, images, labels, config)"
       for name, attack in DATA_POISONS.items()},
    "em": "jaxpoison.attacks.em_poison(key, images, labels, config, train_config=...)",
    "tap": "jaxpoison.attacks.tap_poison(key, surrogate, images, labels, config)",
    "rem": "jaxpoison.attacks.rem_poison(key, images, labels, config, train_config=...)",
    "sep": "jaxpoison.attacks.sep_poison(key, checkpoints, images, labels, config)",
    "efp": "jaxpoison.attacks.efp_poison(key, reference, images, labels, config)",
}


def get_attack(name: str) -> Attack:
  """The attack or poison registered under `name` (any of `ALL_ATTACKS`)."""
  if name not in ALL_ATTACKS:
    raise ValueError(f"unknown attack {name!r}; expected one of {sorted(ALL_ATTACKS)}")
  return ALL_ATTACKS[name]


def attack_kind(name: str) -> str:
  """One of `KINDS`: "feature_collision", "backdoor", "from_scratch", "indiscriminate" or
  "trained_indiscriminate"."""
  return get_attack(name).kind


def config_from_dict(name: str, values: dict):
  """Rebuilds an attack's config from `config.to_dict()` (e.g. `PoisonSet.config`)."""
  config_type = get_attack(name).config_type
  return config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def craft(name: str, key, extractors, target_image, base_images, config=None) -> AttackResult:
  """Runs the feature-collision attack `name` (see `ATTACKS`) with `config` (default: its
  published defaults). The backdoors have their own signatures (see `BACKDOORS`)."""
  attack = get_attack(name)
  if attack.kind == BACKDOOR:
    raise TypeError(
        f"craft: {name!r} is a backdoor attack, which takes no target image; call "
        f"{_BACKDOOR_CALLS[name]} instead")
  if attack.kind == FROM_SCRATCH:
    raise TypeError(
        f"craft: {name!r} crafts against surrogate classifiers, not feature extractors; call "
        f"{_BACKDOOR_CALLS[name]} instead")
  if attack.kind in (INDISCRIMINATE, TRAINED_INDISCRIMINATE):
    raise TypeError(
        f"craft: {name!r} poisons every training image, with no target; call "
        f"{_BACKDOOR_CALLS[name]} instead")
  return attack.craft(key, extractors, target_image, base_images, config)


class PoisonResult(NamedTuple):
  """Every attack's and poison's result, through `run`.

  poisons: uint8 [P, H, W, C] on the host (every training image for the indiscriminate
    poisons), within the attack's bound after quantization.
  info: the attack's other outputs by field name (host arrays where they were device arrays;
    e.g. final_loss, loss_history, restart_losses, surrogate, target_rate).
  """
  poisons: np.ndarray
  info: dict[str, Any]


def _host(value):
  return np.asarray(value) if isinstance(value, jax.Array) else value


def as_poison_result(result) -> PoisonResult:
  """Any attack's return value as a `PoisonResult`: a bare uint8 array (URP, LSP, AR), a result
  with `poisons` (AttackResult, EMResult, TAPResult, REMResult, SEPResult), or one wrapping an
  `AttackResult` in `result` (Sleeper Agent, a Witches' Brew run with its restarts)."""
  if isinstance(result, PoisonResult):
    return result
  if isinstance(result, (np.ndarray, jax.Array)):
    fields = {"poisons": result}
  elif hasattr(result, "_asdict"):
    fields = dict(result._asdict())
    inner = fields.pop("result", None)
    if inner is not None:
      fields = {**dict(inner._asdict()), **fields}
  else:
    raise TypeError(f"result: expected an attack's result, got {type(result).__name__}")
  if "poisons" not in fields:
    raise TypeError(f"result: {type(result).__name__} has no poisons")
  poisons = np.asarray(fields.pop("poisons"))
  if poisons.dtype != np.uint8:
    raise TypeError(f"result: expected uint8 poisons, got {poisons.dtype}")
  return PoisonResult(poisons, {name: _host(value) for name, value in fields.items()})


def run(name: str, *args, **kwargs) -> PoisonResult:
  """Runs the attack or poison registered as `name` with its own arguments (`_BACKDOOR_CALLS`
  and each function's docstring give them) and returns a `PoisonResult`."""
  return as_poison_result(get_attack(name).craft(*args, **kwargs))
