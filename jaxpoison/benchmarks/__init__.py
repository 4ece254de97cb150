"""Attack benchmarks: a shared trial loop, tables and run folders (`common`, on top of
`jaxpoison.runs`), and one module per setting: `transfer` (the paper's Table 1: feature
collision and backdoor attacks against a fine-tuned victim) and `from_scratch` (Tables 2–3:
Witches' Brew and Sleeper Agent against a victim trained from scratch). Baseline defenses and
ECLIPSE add modules here.
"""

from jaxpoison.benchmarks import common, from_scratch, transfer
from jaxpoison.benchmarks.from_scratch import FromScratchConfig
from jaxpoison.benchmarks.common import (CRAFT, DENOISE, EVAL_SUBSET, FINETUNE, PRETRAIN_CRAFTER,
                                         PRETRAIN_SURROGATE, PRETRAIN_VICTIM, SAMPLE, SPLIT,
                                         ATTACK_TITLES, DEFAULT_SIGMAS, MODEL_NAMES, RUN_FILE,
                                         BenchmarkConfigError, Split, bound_label,
                                         check_run_file, claim_run, dataset_fingerprint,
                                         denoise_key, denoiser_info, eval_indices,
                                         finished_trials, load_or_pretrain, load_results,
                                         model_config, params_fingerprint, poison_path,
                                         poisoned_images, pretraining_note, render_table,
                                         result_path, run_trial_loop, split_training_set,
                                         success_interval, summarize, trial_key, write_tables)
from jaxpoison.benchmarks.transfer import (AUGMENTATIONS, ATTACK_NAMES, EXECUTION_FIELDS,
                                           FINETUNE_MODES, FORMAT_VERSION, NO_POISON, BenchmarkConfig,
                                           NoPoisonConfig,
                                           FineTuneConfig, craft_all, craft_poisons,
                                           evaluate_trials, finetune_train_config,
                                           load_or_craft, run_benchmark, run_identity,
                                           sample_benchmark_trial)

__all__ = [name for name in dir() if not name.startswith("_")]
