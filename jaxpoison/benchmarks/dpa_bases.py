"""How well DPA's base classifiers train: their clean test accuracy under a recipe, on the
parts of a hash partition (the paper's ROE ensemble's clean accuracy, 70.2% at k = 250 on
CIFAR-10, rests on base classifiers that each see ~200 images).

`measure` trains base classifiers of the first `num_models` parts of a `num_partitions`-part
partition (all of them by default) with each recipe given, the same keys and parts, and scores
each on the test images: per recipe, the base classifiers' mean and range of accuracy, their
steps, and the plurality vote's (plain DPA's) accuracy when every part was trained.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from jaxpoison import backend, classifier
from jaxpoison.defenses import dpa

__all__ = ["measure"]


def measure(images, labels, test_images, test_labels,
            recipes: dict[str, classifier.TrainConfig], *, num_partitions: int,
            num_models: int | None = None, seed: int = 0) -> dict:
  """Trains and scores the base classifiers of the first `num_models` parts with each recipe.

  Returns {recipe name: {accuracy_mean, accuracy_min, accuracy_max, steps (of the largest
  part), seconds, dpa_accuracy (plain DPA's plurality, only when all parts trained)}} and
  "parts": the part sizes' range.
  """
  parts = dpa.partition_training_sets(images, labels, num_partitions)
  count = num_partitions if num_models is None else min(num_models, num_partitions)
  key = jax.random.key(seed)
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(np.arange(count))
  part_images = np.asarray(images)[parts.indices[:count]]
  part_labels = np.asarray(labels, np.int32)[parts.indices[:count]]
  test_labels = np.asarray(test_labels)
  out = {"parts": [int(parts.sizes.min()), int(parts.sizes.max())], "trained": count,
         "num_partitions": num_partitions}
  for name, config in recipes.items():
    # As train_partition_models: one at a time on the CPU, many at once on an accelerator.
    config = config.replace(models_per_step=backend.resolve_models_at_once(config.models_per_step))
    start = time.perf_counter()
    sizes = None if config.drop_last else parts.sizes[:count]
    models = classifier.train_models(keys, part_images, part_labels, config, num_examples=sizes)
    scores = np.asarray(classifier.logits(models, test_images))
    seconds = time.perf_counter() - start
    accuracy = (scores.argmax(-1) == test_labels[None]).mean(axis=1)
    result = {"accuracy_mean": float(accuracy.mean()), "accuracy_min": float(accuracy.min()),
              "accuracy_max": float(accuracy.max()),
              "steps": classifier.total_steps(config, int(parts.sizes[:count].max())
                                              if not config.drop_last else parts.indices.shape[1]),
              "seconds": seconds}
    if count == num_partitions:
      certificate = dpa.dpa_certify(scores)
      result["dpa_accuracy"] = float((certificate.prediction == test_labels).mean())
      result["roe_accuracy"] = float((dpa.roe_certify(scores).prediction == test_labels).mean())
    out[name] = result
  return out
