"""Trained indiscriminate poisons ("unlearnable examples"): EM, TAP and REM, one module each
(`em`, `tap`, `rem`) over the pieces they share (`trained`, also used by SEP). The
data-generated poisons URP, LSP and AR live here too (`urp`, `lsp`, `ar` over `base`; their
documentation is `jaxpoison.attacks.indiscriminate`, where their names also stay).

ECLIPSE (Wang et al., ESORICS'24, §2.1 and Table 1) evaluates its purification against, among
others, three poisons crafted with a surrogate network. Like URP, LSP and AR
(`jaxpoison.attacks.indiscriminate`) each perturbs *every* training image within ℓ∞ ε = 8/255
and keeps the labels clean; unlike them each perturbation is optimized, per image, against a
network:

* **EM**, error-minimizing noise (Huang et al. 2021, "Unlearnable Examples"; sample-wise): a
  bi-level min-min. Rounds alternate a few SGD steps of a surrogate on the currently perturbed
  data with sign-gradient descent of every image's cross-entropy (its true label) over δ, until
  the surrogate classifies the perturbed training set almost perfectly: the noise is a shortcut
  the network learns instead of the images (`em_poison`).
* **TAP**, targeted adversarial poisoning (Fowl et al. 2021, "Adversarial Examples Make Strong
  Poisons"): a surrogate trained on clean data; every image is pushed by PGD, through
  differentiable shifts and flips, towards the class (y + 1) mod K. A network trained on them
  learns features that the surrogate ties to the wrong class (`tap_poison`).
* **REM**, robust error-minimizing noise (Fu et al. 2022, "Robust Unlearnable Examples"): EM's
  min-min made to survive adversarial training: δ (ℓ∞ 8/255) minimizes the loss after an
  adversary's ascent ρ (ℓ∞ ρ_a = 4/255), in expectation over the training augmentation, while
  the surrogate is itself trained adversarially (with ρ) on the perturbed data (`rem_poison`).

Units: images uint8 [N, H, W, C] in and out, perturbations in [0, 1] pixel units, ε in [0, 1]
units (8/255). None of the references normalizes the perturbation's step: our networks normalize
their inputs themselves, so every step and bound is in [0, 1] pixel units as in the references
(TAP's normalized-space step ε/std·τ is ε·τ in pixels).

Randomness comes from an explicit `key` only. Per-image draws (starts, augmentations, the inner
adversary's starts) come from `fold_in(·, i)` with i the image's position in `images`, so the
poisons do not depend on the batch sizes used to compute them; the surrogate's initialization,
shuffling and augmentation come from the classifier's trainer with its own key. Same key ⇒ same
poisons (on one device and XLA version).

Quantization. EM and TAP go through `constraints.quantize_poisons` (round to nearest, toward the
clean image where rounding would break ε), so that every uint8 poison is within ⌊255ε⌋ grey
levels of its image. REM's reference stores its noise as whole grey levels
(`(δ·255).round()` as int8) and trains on x + noise, so REM rounds δ to grey levels in [−8, 8]
and adds them with clipping (as URP does).

References read (for facts; no code copied):
* HanxunH/Unlearnable-Examples: perturbation.py (`sample_wise_perturbation`,
  `samplewise_perturbation_eval`, the argument defaults), toolbox.py
  (`PerturbationTool.min_min_attack`), trainer.py (`train_batch`),
  scripts/cifar10/min-min-noise/samplewise-noise/exp_setting.sh and
  search_perturbation_noise.sh, configs/cifar10/resnet18.yaml.
* lhfowl/adversarial_poisons: README.md (the CIFAR-10 command), village/options.py,
  village/shop/forgemaster_base.py (`_initialize_forge`, `_run_trial`, `_batched_step`,
  `_pgd_step`), village/shop/forgemaster_targeted.py (`_label_map`),
  village/materials/furnace.py (`initialize_poison`, `RandomTransform(shift=8)`),
  village/materials/diff_data_augmentation.py, village/consts.py.
* fshp971/robust-unlearnable-examples: README.md and scripts/cifar10/gen_rem.sh (the CIFAR-10
  settings), generate_robust_em.py (the loop), attacks/robust_workers.py
  (`RobustMinimaxPGDDefender`), attacks/pgd_attacker.py (`PGDAttacker`), utils/generic.py
  (`get_transforms`, the loaders), utils/argument.py.
"""

import importlib

import lazy_loader

_lazy_getattr, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["ar", "base", "efp", "em", "lsp", "rem", "tap", "trained", "urp"],
    submod_attrs={
        "trained": ["SurrogateRun", "TrainedPoisonConfig", "best_restart", "check_config",
                    "check_data", "check_surrogate_config", "check_target_offset",
                    "class_mean_features", "cross_entropy", "forge_deltas", "fraction",
                    "map_batches",
                    "nnx_logits", "perturbed", "sign_pgd", "target_classes"],
        "efp": ["EFP_EPSILON", "EFP_RECIPES", "EFP_REFERENCE_EPSILON", "EFPConfig", "EFPResult",
                "efp_losses", "efp_poison", "efp_reference_config"],
        "em": ["EM_EPSILON", "EMConfig", "EMResult", "em_poison", "em_surrogate_config"],
        "tap": ["TAP_EPSILON", "TAPConfig", "TAPResult", "tap_poison"],
        "rem": ["REM_ADVERSARIAL_EPSILON", "REM_EPSILON", "REMConfig", "REMResult", "rem_poison",
                "rem_surrogate_config"],
        "base": ["PoisonConfig", "indexed_keys"],
        "urp": ["URP_EPSILON", "URPConfig", "urp_poison"],
        "lsp": ["LSP_EPSILON", "LSPConfig", "lsp_poison"],
        "ar": ["AR_EPSILON", "ARConfig", "ar_poison"],
    },
)

# Names these pieces had while EM, TAP and REM were one module: (module, name there).
_TRAINED = "jaxpoison.attacks.unlearnable.trained"
_EARLIER_NAMES = {
    "_SurrogateRun": (_TRAINED, "SurrogateRun"),
    "_TrainedPoisonConfig": (_TRAINED, "TrainedPoisonConfig"),
    "_cross_entropy": (_TRAINED, "cross_entropy"),
    "_target_offset": (_TRAINED, "check_target_offset"),
    "_check_config": (_TRAINED, "check_config"),
    "_check_data": (_TRAINED, "check_data"),
    "_map_batches": (_TRAINED, "map_batches"),
    "_perturbed": (_TRAINED, "perturbed"),
    "_indexed_keys": ("jaxpoison.attacks.unlearnable.base", "indexed_keys"),
    "_flip_crop": ("jaxpoison.classifier.augment", "flip_crop_per_image"),
    "_rem_perturbations": ("jaxpoison.attacks.unlearnable.rem", "_rem_perturbations"),
}


def __getattr__(name):
  if name in _EARLIER_NAMES:
    module, attribute = _EARLIER_NAMES[name]
    return getattr(importlib.import_module(module), attribute)
  return _lazy_getattr(name)
