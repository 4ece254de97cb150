"""Baseline defenses against poisoning. Each either filters the training set before training or
plugs into the many-model trainer (`jaxpoison.classifier.TrainConfig`).

* `adversarial_training`: Madry-style ℓ∞ PGD adversarial training (`adversarial_config`), the
  attack itself (`pgd_linf`) and the robust accuracy of trained models (`robust_accuracy`).
"""

from jaxpoison.defenses.adversarial_training import adversarial_config, pgd_linf, robust_accuracy

__all__ = ["adversarial_config", "pgd_linf", "robust_accuracy"]
