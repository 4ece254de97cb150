"""Clean-label poisoning attacks for transfer learning: Poison Frogs, Convex and Bullseye Polytope.

Each attack is a jitted function of a key, vectorized over the poisons of a trial and over the
ensemble of feature extractors:

    result = attacks.bullseye_polytope(key, extractors, target_image, base_images, config)
    result.poisons  # uint8 [P, H, W, C], within ε of the bases after quantization

Around them: the bounds and their projections (`project_linf`, `project_l2`,
`quantize_poisons`, `project_simplex`), the choice of a trial (`sample_trial`), and poison
files (`PoisonSet`, `save_poisons`, `load_poisons`, `apply_poisons`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from jaxpoison.attacks.configs import (
    BENCHMARK_NUM_POISONS,
    CIFAR10_STD,
    L2_EPSILON,
    L2_EPSILON_TRANSFER,
    LINF_EPSILON,
    AttackResult,
    BullseyePolytopeConfig,
    ConvexPolytopeConfig,
    PoisonFrogsConfig,
)
from jaxpoison.attacks.constraints import (
    l2_budget,
    linf_budget,
    project,
    project_l2,
    project_linf,
    project_simplex,
    quantize_poisons,
    simplex_least_squares,
)
from jaxpoison.attacks.core import FeatureExtractor, NNXApply, extract_features, nnx_extractor
from jaxpoison.attacks.poison_files import (
    PoisonFileError,
    PoisonSet,
    apply_poisons,
    dataset_fingerprint,
    load_poisons,
    make_poison_set,
    save_poisons,
    verify_poisons,
)
from jaxpoison.attacks.poison_frogs import poison_frogs
from jaxpoison.attacks.polytope import bullseye_polytope, convex_polytope
from jaxpoison.attacks.trial import Trial, feature_distances, sample_trial


class Attack(NamedTuple):
  """An attack's crafting function and its config type."""
  craft: Callable[..., AttackResult]
  config_type: type


ATTACKS = {
    "poison_frogs": Attack(poison_frogs, PoisonFrogsConfig),
    "convex_polytope": Attack(convex_polytope, ConvexPolytopeConfig),
    "bullseye_polytope": Attack(bullseye_polytope, BullseyePolytopeConfig),
}


def get_attack(name: str) -> Attack:
  """The attack registered under `name` (one of `ATTACKS`)."""
  if name not in ATTACKS:
    raise ValueError(f"unknown attack {name!r}; expected one of {sorted(ATTACKS)}")
  return ATTACKS[name]


def config_from_dict(name: str, values: dict):
  """Rebuilds an attack's config from `config.to_dict()` (e.g. `PoisonSet.config`)."""
  config_type = get_attack(name).config_type
  return config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def craft(name: str, key, extractors, target_image, base_images, config=None) -> AttackResult:
  """Runs the attack `name` (see `ATTACKS`) with `config` (default: its published defaults)."""
  return get_attack(name).craft(key, extractors, target_image, base_images, config)
