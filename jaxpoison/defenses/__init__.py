"""Baseline defenses against poisoning (Hong et al. Tables 4 and 5). Each either filters the
training set before training or plugs into the many-model trainer
(`jaxpoison.classifier.TrainConfig`); `DefenseConfig` names one with its settings, as the attack
benchmarks apply it (`--defense`).

* `adversarial_training`: Madry-style ℓ∞ PGD adversarial training (`adversarial_config`), the
  attack itself (`pgd_linf`) and the robust accuracy of trained models (`robust_accuracy`).
* `deep_knn`: Deep k-NN filtering of the training set in feature space (`deep_knn_filter`,
  `removal_report`: Table 4's true and false positives).
* `dp_sgd`: DP-SGD (per-example clipping and Gaussian noise in the trainer, group norm in
  place of batch norm; `dp_sgd_config`) and its privacy accounting (`privacy_spent`,
  `noise_multiplier_for_epsilon`, with dp-accounting).
* `friends`: FrieNDs (friendly noise computed mid-run by the trainer, then random noise on
  every batch; `friends_config`, `friendly_noise`; `friendliness`: whether the noise's step
  size suits a network).
* `dpa`: Deep Partition Aggregation over a hash partition (`train_partition_models`: one base
  classifier per part, trained together) with plain DPA's and the run-off election's
  certificates (`dpa_certify`, `roe_certify`).
* `iss`: Image Shortcut Squeezing, ECLIPSE's cheap baselines against unlearnable poisons: JPEG
  at quality 10 (`iss_jpeg`) and grayscale (`iss_grayscale`) applied to the training images.
"""

import lazy_loader

# Lazy re-exports (PEP 562): importing the package, or one module of it, imports no sibling
# until one of these names is first used.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules=['adversarial_training', 'config', 'deep_knn', 'dp_sgd', 'dpa', 'friends', 'iss'],
    submod_attrs={
        'adversarial_training': ['adversarial_config', 'pgd_linf', 'robust_accuracy'],
        'config': ['DEFENSES', 'TRAINING_DEFENSES', 'DefenseConfig'],
        'deep_knn': [
            'DeepKnnResult', 'deep_knn_filter', 'neighbour_label_counts', 'removal_report'
        ],
        'dp_sgd': ['dp_sgd_config', 'noise_multiplier_for_epsilon', 'privacy_record',
                   'privacy_spent'],
        'friends': ['Friendliness', 'friendliness', 'friendly_noise', 'friends_config'],
        'iss': ['ISS_JPEG_QUALITY', 'iss_grayscale', 'iss_jpeg'],
        'dpa': [
            'PartitionCertificate', 'PartitionedTrainingSet', 'REFERENCE_EPOCHS', 'dpa_base_config',
            'dpa_certify', 'hash_partition',
            'partition_training_sets', 'partitioned_certified_accuracy', 'roe_certify',
            'train_partition_models'
        ],
    },
)
