"""Clean-label poisoning attacks for transfer learning: Poison Frogs, Convex and Bullseye Polytope,
and the label-consistent and hidden-trigger backdoors of Hong et al.'s Table 1.

Each attack is a jitted function of a key, vectorized over the poisons of a trial and over the
ensemble of feature extractors:

    result = attacks.bullseye_polytope(key, extractors, target_image, base_images, config)
    result.poisons  # uint8 [P, H, W, C], within ε of the bases after quantization

The backdoors take no target image; their success is measured on the target with the trigger
pasted (`paste_trigger(target, get_trigger(...), trigger_position(config, target.shape))`):

    attacks.label_consistent_backdoor(key, surrogate_logits, base_images, base_label, config)
    attacks.hidden_trigger_backdoor(key, extractors, base_images, source_images, config)

`ATTACKS` holds the feature-collision attacks that `craft` runs; `BACKDOORS` the backdoors;
`ALL_ATTACKS` both (`get_attack`, `config_from_dict` and `ATTACK_KINDS` cover all of them).

Around them: the bounds and their projections (`project_linf`, `project_l2`,
`quantize_poisons`, `project_simplex`), the choice of a trial (`sample_trial`), and poison
files (`PoisonSet`, `save_poisons`, `load_poisons`, `apply_poisons`).

From-scratch attacks by gradient matching (Hong et al.'s Table 2) craft against surrogate
classifiers (`GradientModel`, e.g. `classifier.gradient_model(models, i)`):

    attacks.witches_brew(key, surrogates, target_image, target_label, base_images, base_labels,
                         config)
    attacks.sleeper_agent(key, surrogates, source_images, target_class, base_images, config,
                          retrain_fn)  # bases chosen by attacks.select_poisons

Indiscriminate, data-generated poisons (the "unlearnable examples" ECLIPSE is evaluated
against) perturb every training image by class, labels clean, with no model:

    attacks.urp_poison(key, images, labels, attacks.URPConfig())  # class-wise noise, ℓ∞ 8/255
    attacks.lsp_poison(key, images, labels, attacks.LSPConfig())  # linearly separable, ℓ2 1.0
    attacks.ar_poison(key, images, labels, attacks.ARConfig())    # autoregressive, ℓ2 1.0

(`INDISCRIMINATE_POISONS` maps "urp", "lsp", "ar" to them and their configs.)

The trained ones (`attacks.unlearnable`, `attacks.self_ensemble`) optimize every image's
perturbation, ℓ∞ 8/255, against a surrogate network: EM and REM train their surrogate between
noise updates (a `classifier.TrainConfig`, by default `em_surrogate_config()` /
`rem_surrogate_config()`), TAP attacks one trained on the clean data, SEP the checkpoints of one
training run on it:

    attacks.em_poison(key, images, labels, attacks.EMConfig())    # error-minimizing (min-min)
    attacks.tap_poison(key, surrogate, images, labels, attacks.TAPConfig())  # toward class y + 1
    attacks.rem_poison(key, images, labels, attacks.REMConfig())  # robust EM, adversary 4/255
    checkpoints = attacks.train_checkpoints(key, images, labels, attacks.sep_surrogate_config(), 15)
    attacks.sep_poison(key, checkpoints, images, labels, attacks.SEPConfig())  # self-ensemble

Each returns its uint8 poisons with the surrogate (EM, REM), the restarts' scores (TAP) or the
checkpoints' target rates (SEP); they need a model, so `INDISCRIMINATE_POISONS` (model-free
`poison(key, images, labels, config)`) leaves them out.
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
    GradientMatchingConfig,
    SleeperAgentConfig,
    WitchesBrewConfig,
    HiddenTriggerConfig,
    LabelConsistentConfig,
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
from jaxpoison.attacks.hidden_trigger import (
    benchmark_matching,
    greedy_matching,
    hidden_trigger_backdoor,
    pairwise_distances,
)
from jaxpoison.attacks.indiscriminate import (
    AR_REFERENCE_COEFFICIENTS,
    INDISCRIMINATE_POISONS,
    ARConfig,
    IndiscriminatePoison,
    LSPClasses,
    LSPConfig,
    URPConfig,
    ar_coefficients,
    ar_filters,
    ar_perturbations,
    ar_poison,
    ar_process,
    ar_residual,
    lsp_classes,
    lsp_perturbations,
    lsp_poison,
    patch_upsample,
    sample_ar_coefficients,
    urp_class_noise,
    urp_poison,
)
from jaxpoison.attacks.unlearnable import (
    EMConfig,
    EMResult,
    REMConfig,
    REMResult,
    TAPConfig,
    TAPResult,
    em_poison,
    em_surrogate_config,
    rem_poison,
    rem_surrogate_config,
    sign_pgd,
    tap_poison,
    target_classes,
)
from jaxpoison.attacks.self_ensemble import (
    SEPConfig,
    SEPResult,
    class_mean_features,
    sep_poison,
    sep_surrogate_config,
    train_checkpoints,
)
from jaxpoison.attacks.label_consistent import label_consistent_backdoor
from jaxpoison.attacks.poison_frogs import poison_frogs
from jaxpoison.attacks.polytope import bullseye_polytope, convex_polytope
from jaxpoison.attacks.trial import Trial, feature_distances, sample_trial
from jaxpoison.attacks.sleeper_agent import (
    SleeperAgentResult,
    gradient_norms,
    patch_images,
    select_poisons,
    sleeper_agent,
)
from jaxpoison.attacks.witches_brew import GradientModel, witches_brew, witches_brew_restarts
from jaxpoison.attacks.triggers import (
    CLBD_TRIGGER,
    HTBD_TRIGGER,
    SLEEPER_AGENT_TRIGGER,
    TRIGGERS,
    get_trigger,
    paste_trigger,
    paste_trigger_per_image,
    random_trigger_positions,
    trigger_position,
)

FEATURE_COLLISION = "feature_collision"
BACKDOOR = "backdoor"
FROM_SCRATCH = "from_scratch"


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
ALL_ATTACKS = {**ATTACKS, **BACKDOORS, **FROM_SCRATCH_ATTACKS}
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
}


def get_attack(name: str) -> Attack:
  """The attack registered under `name` (one of `ALL_ATTACKS`: `ATTACKS` or `BACKDOORS`)."""
  if name not in ALL_ATTACKS:
    raise ValueError(f"unknown attack {name!r}; expected one of {sorted(ALL_ATTACKS)}")
  return ALL_ATTACKS[name]


def attack_kind(name: str) -> str:
  """"feature_collision" or "backdoor"."""
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
  return attack.craft(key, extractors, target_image, base_images, config)
