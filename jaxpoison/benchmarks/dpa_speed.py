"""Models per hour of DPA's base classifiers: the many-model trainer (the parts' classifiers
trained together, one compiled program per chunk) against the same classifiers trained one at a
time (one program, called once per part), in the same run on the same device.

Both train the same base classifiers (same keys, same padded parts, the same recipe) from the
hash partition of the given training set into `num_partitions` parts; `num_models` of them are
timed each way (the first ones), after one untimed call of each program compiles it. One model
at a time is what a loop over `train_models` with M = 1 does, the way the reference trains its
250 base classifiers (one process after another).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from jaxpoison import classifier
from jaxpoison.defenses import dpa

__all__ = ["measure"]


def measure(images, labels, config: classifier.TrainConfig, *, num_partitions: int = 250,
            num_models: int = 16, models_per_step: int | None = None) -> dict:
  """Times the first `num_models` base classifiers of a `num_partitions`-part DPA both ways.

  Returns a dict: seconds and models per hour each way, their ratio (many-model / one at a
  time), the part sizes, the device, and the two sets of models' largest logit difference on
  a few training images (they must agree: the same training).
  """
  parts = dpa.partition_training_sets(images, labels, num_partitions)
  chosen = parts.indices[:num_models]
  part_images = np.asarray(images)[chosen]
  part_labels = np.asarray(labels, np.int32)[chosen]
  key = jax.random.key(0)
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(np.arange(num_models))
  together = config.replace(models_per_step=models_per_step or num_models)
  alone = config.replace(models_per_step=1)

  def run_together():
    return jax.block_until_ready(classifier.train_models(keys, part_images, part_labels,
                                                         together))

  def run_alone():
    return [jax.block_until_ready(classifier.train_models(
        keys[j:j + 1], part_images[j:j + 1], part_labels[j:j + 1], alone))
        for j in range(num_models)]

  classifier.train_models(keys[:1], part_images[:1], part_labels[:1], alone)  # compile
  classifier.train_models(keys, part_images, part_labels, together)  # compile
  start = time.perf_counter()
  many = run_together()
  together_s = time.perf_counter() - start
  start = time.perf_counter()
  single = run_alone()
  alone_s = time.perf_counter() - start
  probe = np.asarray(images[:8])
  difference = max(float(np.abs(np.asarray(classifier.logits(classifier.select(many, j), probe))
                                - np.asarray(classifier.logits(single[j], probe))).max())
                   for j in range(num_models))
  return {
      "device": jax.devices()[0].device_kind, "num_partitions": num_partitions,
      "part_sizes": [int(parts.sizes.min()), int(parts.sizes.max())],
      "padded_size": int(parts.indices.shape[1]), "num_models": num_models,
      "models_per_step": together.models_per_step,
      "together_s": round(together_s, 4), "one_at_a_time_s": round(alone_s, 4),
      "together_models_per_hour": round(3600 * num_models / together_s, 1),
      "one_at_a_time_models_per_hour": round(3600 * num_models / alone_s, 1),
      "speedup": round(alone_s / together_s, 2),
      "max_logit_difference": difference,
  }
