"""Certification runs (Algorithms 1 and 2 of Hong et al.): denoise, train, vote, certify,
resumably, many models at a time over every device.

* `config`: `CertifyConfig`, the per-(seed, σ, model) keys, the data and pieces a config names;
* `store`: the results folder (claimed settings, one atomic vote file per chunk of models);
* `plan`: how many models a chunk holds (requested, or planned from device memory);
* `devices`: CPU devices, the "models" mesh, transfers;
* `chunks`: `ChunkComputer`, one chunk's jitted, sharded denoise-train-vote programs;
* `report`: votes to certificates, summaries, tables and plots;
* `run`: `run_certification`, the whole run (`jaxpoison.pipeline` is its earlier name).

The statistics themselves are `jaxpoison.certify` (numpy/scipy only).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=["chunks", "config", "devices", "plan", "report", "run", "store"],
    submod_attrs={
        "config": [
            "DEFAULT_RADII", "TRAINER_PRESETS", "CertifyConfig", "sigma_key", "model_keys",
            "DENOISE_DTYPES", "CONCURRENCY", "resolve_denoise_dtype", "resolve_trainer",
            "NOISE_ONLY", "resolve_denoiser", "subset_indices", "load_data", "train_subset"
        ],
        "store": [
            "SETTINGS_FILE", "ResultsMismatch", "pytree_fingerprint", "SETTINGS_VERSION",
            "ENVIRONMENT", "environment_settings", "run_settings", "claim_results_dir", "sigma_dir",
            "chunk_path", "finished_models", "pending_chunks", "load_votes"
        ],
        "report": [
            "analyse_votes", "write_certify_table", "certified_curve", "plot_certified_accuracy",
            "plot_certified_panels", "read_certified", "write_sigma_reports"
        ],
        "devices": [
            "CPU_DEVICES_FLAG", "configure_cpu_devices", "models_mesh", "replicate", "shard_models",
            "gather_to_host"
        ],
        "plan": [
            "CPU_MODELS_PER_DEVICE", "MAX_MODELS_PER_DEVICE", "MAX_VMAP_MODELS_PER_DEVICE",
            "denoise_program_bytes", "choose_models_per_step"
        ],
        "chunks": [
            "ChunkComputer"
        ],
        "run": [
            "run_votes", "run_certification"
        ],
    },
)
