"""Attack benchmarks: a shared trial loop, tables and run folders (`common`, on top of
`jaxpoison.runs`), and one module per setting: `transfer` (the paper's Table 1: feature
collision and backdoor attacks against a fine-tuned victim) and `from_scratch` (Tables 2–3:
Witches' Brew and Sleeper Agent against a victim trained from scratch), each with its settings
apart (`transfer_config`, `from_scratch_config`). Baseline defenses and
ECLIPSE add modules here.
"""

import lazy_loader

# Lazy re-exports (PEP 562): importing the package, or one module of it, imports no sibling
# until one of these names is first used.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=[
        'common', 'dpa_speed', 'from_scratch', 'from_scratch_config', 'gpu_check',
        'matching_speed', 'peers', 'purification_speed', 'transfer', 'transfer_config'
    ],
    submod_attrs={
        'tables': ['ATTACK_TITLES', 'render_table', 'success_interval', 'summarize',
                   'write_tables'],
        'from_scratch_config': ['FromScratchConfig'],
        'common': [
            'CRAFT', 'DENOISE', 'EVAL_SUBSET', 'FINETUNE', 'PRETRAIN_CRAFTER', 'PRETRAIN_SURROGATE',
            'PRETRAIN_VICTIM', 'SAMPLE', 'SPLIT', 'DEFAULT_SIGMAS', 'MODEL_NAMES',
            'RUN_FILE', 'BenchmarkConfigError', 'Split', 'bound_label', 'check_run_file',
            'claim_run', 'dataset_fingerprint', 'denoise_key', 'denoiser_info', 'eval_indices',
            'finished_trials', 'load_or_pretrain', 'load_results', 'model_config',
            'params_fingerprint', 'poison_path', 'poisoned_images', 'pretraining_note',
            'result_path', 'run_trial_loop', 'split_training_set', 'trial_key'
        ],
        'transfer_config': [
            'AUGMENTATIONS', 'ATTACK_NAMES', 'EXECUTION_FIELDS', 'FINETUNE_MODES', 'FORMAT_VERSION',
            'NO_POISON', 'TransferConfig', 'NoPoisonConfig', 'FineTuneConfig',
        ],
        'transfer': [
            'BenchmarkConfig', 'craft_all',
            'craft_poisons', 'evaluate_trials', 'finetune_train_config', 'load_or_craft',
            'run_benchmark', 'run_identity', 'sample_benchmark_trial'
        ],
    },
)
