"""jaxpoison: certified defense against clean-label poisoning by diffusion denoising, in JAX.

Public API, re-exported from the submodules:

* data: `load_cifar10`, `load_tiny_imagenet`, `load_dataset`, `Dataset`; the augmentations
  `random_flip`, `random_translate`, `cutout` (from `classifier.augment`).
* certification statistics: the module `certify` (`certify.predict` and `certify.certify` are
  Cohen et al.'s PREDICT and CERTIFY; the names would clash with the classifier's `predict`
  at the top level), and `vote_counts`, `lower_confidence_bound`, `poisoning_radius`,
  `certified_accuracy`.
* attacks: the subpackage `attacks` (Poison Frogs, Convex and Bullseye Polytope, the
  label-consistent and hidden-trigger backdoors, their bounds, triggers, trials and poison
  files), and `poison_frogs`, `convex_polytope`, `bullseye_polytope`,
  `label_consistent_backdoor`, `hidden_trigger_backdoor`, `sample_trial`, `PoisonSet`,
  `save_poisons`, `load_poisons`, `apply_poisons`.
* defenses: the subpackage `defenses` (adversarial training, also the backdoor's surrogate; Deep
  k-NN; DP-SGD and its accounting; FrieNDs; DPA with the run-off election and their
  certificates).
* denoising: the subpackage `diffusion` (DDPM schedules, the Flax UNet, checkpoint conversion,
  training), and `noise_and_denoise`, `default_denoiser`, `load_denoiser`, `Denoiser`.
* attack benchmarks (the paper's Table 1): the subpackage `benchmarks` (`common`: trial loop,
  splits, tables; `transfer`: the transfer-learning setting; `poison_benchmark` is its earlier
  name), and `TransferConfig` (`BenchmarkConfig` before, deprecated), `FineTuneConfig`,
  `run_benchmark`, `render_table`.
* run folders: the module `runs` (claimed settings, refusal naming differences, atomic
  per-unit records, resume, progress), under both the certification pipeline and the
  benchmarks.
* certification runs: the subpackage `certification` (`CertifyConfig`, `run_certification`, the
  results folder, the plan and the chunk computer behind scripts/certify.py; `pipeline` is its
  earlier name), and `multihost` (its launch over several
  processes with `jax.distributed`, and the steps at which they agree).
* ECLIPSE: the module `eclipse` (sparse DDPM, purification, compensation, `run_eclipse`).
* classifiers: the subpackage `classifier` (airbench94 and ResNet-18 trained many at a time,
  `classifier.predict`, `classifier.evaluate`, checkpoints), and `train_models`, `TrainConfig`,
  `airbench94_config`, `resnet18_config`. `predict` is not re-exported: use
  `classifier.predict` (the top-level name would clash with `certify.predict`).
"""

import lazy_loader

from jaxpoison._version import __version__

# PEP 562 lazy re-exports: `import jaxpoison` (or `import jaxpoison.certify`, which runs this
# file first) imports no submodule, and so no jax, until a name below is first used.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=[
        "attacks", "benchmarks", "certification", "certify", "classifier", "data", "defenses",
        "diffusion", "eclipse", "io", "multihost", "pipeline", "poison_benchmark", "runs",
    ],
    submod_attrs={
        "attacks": [
            "PoisonSet", "apply_poisons", "bullseye_polytope", "convex_polytope",
            "hidden_trigger_backdoor", "label_consistent_backdoor", "load_poisons",
            "poison_frogs", "sample_trial", "save_poisons",
        ],
        "classifier": ["TrainConfig", "airbench94_config", "resnet18_config", "train_models"],
        "certify": [
            "ABSTAIN", "Certificate", "certified_accuracy", "lower_confidence_bound",
            "poisoning_radius", "top_class_lower_bound", "vote_counts",
        ],
        "data": [
            "CIFAR10", "TINY_IMAGENET", "DataError", "Dataset", "DatasetSpec",
            "load_cifar10", "load_dataset", "load_image_folder", "load_npz", "load_tiny_imagenet",
            "make_dataset",
        ],
        "classifier.augment": ["cutout", "random_flip", "random_translate"],
        "diffusion": ["Denoiser", "default_denoiser", "load_denoiser", "noise_and_denoise"],
        "io": ["atomic_save_npz", "atomic_write_json", "atomic_write_text"],
        "benchmarks": [
            "TransferConfig", "BenchmarkConfig", "FineTuneConfig", "render_table", "run_benchmark",
        ],
        "certification": ["CertifyConfig", "run_certification"],
    },
)
