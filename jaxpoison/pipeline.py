"""The certification run under its earlier name: everything is in `jaxpoison.certification`
(config, store, plan, devices, chunks, report, run). Kept so that `from jaxpoison import
pipeline` and every name it had keep working."""

from jaxpoison.certification.config import (DEFAULT_RADII, TRAINER_PRESETS, CertifyConfig,
                                            sigma_key, model_keys, DENOISE_DTYPES, CONCURRENCY,
                                            resolve_denoise_dtype, resolve_trainer, NOISE_ONLY,
                                            resolve_denoiser, subset_indices, load_data,
                                            train_subset)
from jaxpoison.certification.store import (SETTINGS_FILE, _CHUNK_RE, ResultsMismatch, _hash_arrays,
                                           pytree_fingerprint, _config_dict, _json_default_lenient,
                                           SETTINGS_VERSION, ENVIRONMENT, environment_settings,
                                           run_settings, _trainer_settings, claim_results_dir,
                                           sigma_dir, chunk_path, finished_models, pending_chunks,
                                           load_votes)
from jaxpoison.certification.report import (analyse_votes, write_certify_table, certified_curve,
                                            plot_certified_accuracy, plot_certified_panels,
                                            read_certified, write_sigma_reports, _timing_report)
from jaxpoison.certification.devices import (CPU_DEVICES_FLAG, configure_cpu_devices, models_mesh,
                                             replicate, shard_models, gather_to_host)
from jaxpoison.certification.plan import (CPU_MODELS_PER_DEVICE, MAX_MODELS_PER_DEVICE,
                                          MAX_VMAP_MODELS_PER_DEVICE, denoise_program_bytes,
                                          choose_models_per_step)
from jaxpoison.certification.chunks import ChunkComputer
from jaxpoison.certification.run import _device_description, run_certification, run_votes
