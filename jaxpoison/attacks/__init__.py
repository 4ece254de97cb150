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
`ALL_ATTACKS` both (`get_attack`, `config_from_dict` and `ATTACK_KINDS` cover all of them; they
live in `attacks.registry`).

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
    reference = classifier.train_models(keys, images, labels, attacks.efp_reference_config())
    attacks.efp_poison(key, reference, images, labels, attacks.EFPConfig())  # entangled features

Each returns its uint8 poisons with the surrogate (EM, REM), the restarts' scores (TAP, EFP) or
the checkpoints' target rates (SEP); EFP (Wen et al. 2023) moves every image's feature under an
adversarially trained reference away from its class's centroid; they need a model, so `INDISCRIMINATE_POISONS` (model-free
`poison(key, images, labels, config)`) leaves them out.
"""

import lazy_loader

# Lazy re-exports (PEP 562): importing the package, or one module of it, imports no sibling
# until one of these names is first used.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=[
        'configs', 'constraints', 'core', 'hidden_trigger', 'indiscriminate',
        'label_consistent', 'poison_files', 'polytope', 'registry', 'self_ensemble', 'testing',
        'trial', 'triggers', 'unlearnable'
    ],
    submod_attrs={
        'configs': [
            'BENCHMARK_NUM_POISONS', 'BENCHMARK_CIFAR10_STD', 'CIFAR10_STD', 'L2_EPSILON',
            'L2_EPSILON_TRANSFER', 'LINF_EPSILON', 'AttackResult', 'BullseyePolytopeConfig',
            'ConvexPolytopeConfig', 'GradientMatchingConfig', 'SleeperAgentConfig',
            'WitchesBrewConfig',
            'HiddenTriggerConfig', 'LabelConsistentConfig', 'PoisonFrogsConfig'
        ],
        'constraints': [
            'l2_budget', 'linf_budget', 'project', 'project_l2', 'project_linf', 'project_simplex',
            'quantize_poisons', 'simplex_least_squares'
        ],
        'core': ['FeatureExtractor', 'NNXApply', 'extract_features', 'nnx_extractor'],
        'poison_files': [
            'PoisonFileError', 'PoisonSet', 'apply_poisons', 'dataset_fingerprint',
            'trial_fingerprint', 'load_poisons', 'make_poison_set', 'save_poisons', 'verify_poisons'
        ],
        'hidden_trigger': [
            'benchmark_matching', 'greedy_matching', 'hidden_trigger_backdoor', 'pairwise_distances'
        ],
        'indiscriminate': [
            'AR_REFERENCE_COEFFICIENTS', 'INDISCRIMINATE_POISONS', 'ARConfig',
            'IndiscriminatePoison', 'LSPClasses', 'LSPConfig', 'URPConfig', 'ar_coefficients',
            'ar_filters', 'ar_perturbations', 'ar_poison', 'ar_process', 'ar_residual',
            'lsp_classes', 'lsp_perturbations', 'lsp_poison', 'patch_upsample',
            'sample_ar_coefficients', 'urp_class_noise', 'urp_poison'
        ],
        'unlearnable': [
            'EMConfig', 'EMResult', 'REMConfig', 'REMResult', 'TAPConfig', 'TAPResult', 'em_poison',
            'em_surrogate_config', 'rem_poison', 'rem_surrogate_config', 'sign_pgd', 'tap_poison',
            'target_classes', 'EFPConfig', 'EFPResult', 'efp_poison', 'efp_reference_config'
        ],
        'self_ensemble': [
            'SEPConfig', 'SEPResult', 'class_mean_features', 'sep_poison', 'sep_surrogate_config',
            'train_checkpoints'
        ],
        'label_consistent': ['label_consistent_backdoor'],
        'poison_frogs': ['poison_frogs'],
        'polytope': ['bullseye_polytope', 'convex_polytope'],
        'trial': ['Trial', 'feature_distances', 'sample_trial'],
        'sleeper_agent': [
            'SleeperAgentResult', 'gradient_norms', 'patch_images', 'select_poisons',
            'sleeper_agent'
        ],
        'witches_brew': ['GradientModel', 'witches_brew', 'witches_brew_restarts'],
        'triggers': [
            'CLBD_TRIGGER', 'HTBD_TRIGGER', 'SLEEPER_AGENT_TRIGGER', 'TRIGGERS', 'get_trigger',
            'paste_trigger', 'paste_trigger_per_image', 'random_trigger_positions',
            'trigger_position'
        ],
        'registry': [
            'ATTACKS', 'ALL_ATTACKS', 'ATTACK_KINDS', 'BACKDOOR', 'BACKDOORS', 'FEATURE_COLLISION',
            'DATA_POISONS', 'TRAINED_POISONS', 'INDISCRIMINATE', 'TRAINED_INDISCRIMINATE', 'KINDS',
            'PoisonResult', 'as_poison_result', 'run',
            'FROM_SCRATCH', 'FROM_SCRATCH_ATTACKS', 'Attack', 'attack_kind', 'config_from_dict',
            'craft', 'get_attack'
        ],
    },
)
