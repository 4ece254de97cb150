"""Deep k-NN (Peri et al. 2020): drop training images whose label disagrees with their
nearest neighbours' in a network's penultimate-layer features.

Every training image (poisons included) is mapped to features; its k nearest other training
images (ℓ2 in feature space) vote with their labels, and the image is removed when its own label
does not win the vote. Hong et al. (Table 4) use k = 500, "the best configuration of the
original study"; the feature extractor is unspecified there (for a transfer-learning attack
the pretrained network, for a from-scratch attack a network trained on the poisoned data).

Two rules:
* "plurality" (Peri et al., Hong et al.): kept when its label is a most common label among
  the neighbours (a tie for most common keeps it).
* "majority" (the Sleeper-Agent / Witches' Brew code, `forest/filtering_defenses.py`
  `_DeepKNN`, which also sets k = 2 · budget · N): kept when at least half of the neighbours
  share its label.

The search runs on the accelerator in blocks of queries against all N points (a [block, N]
distance matrix at a time, never N × N), with the image itself excluded by index (an exact
duplicate elsewhere in the set is a neighbour like any other). Distances equal up to float32
rounding may be ordered differently from an exact computation; ties go to the smaller index.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_positive

__all__ = ["DeepKnnResult", "RULES", "deep_knn_filter", "neighbour_label_counts",
           "removal_report"]

RULES = ("plurality", "majority")


class DeepKnnResult(NamedTuple):
  """keep: bool [N], the images that stay; label_counts: int32 [N, C], each image's k
  neighbours counted by label; k and rule: the setting."""
  keep: np.ndarray
  label_counts: np.ndarray
  k: int
  rule: str


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "block_size"))
def _label_counts(features, labels, *, k, num_classes, block_size):
  n = features.shape[0]
  x = features.astype(jnp.float32)
  sq = jnp.sum(x * x, axis=1)
  num_blocks = -(-n // block_size)
  padded = num_blocks * block_size
  starts = jnp.arange(num_blocks) * block_size
  queries = jnp.pad(x, ((0, padded - n), (0, 0)))
  query_sq = jnp.pad(sq, (0, padded - n))

  def block(start):
    rows = start + jnp.arange(block_size)
    q = jax.lax.dynamic_slice_in_dim(queries, start, block_size)
    d2 = (jax.lax.dynamic_slice_in_dim(query_sq, start, block_size)[:, None] + sq[None, :]
          - 2.0 * jnp.matmul(q, x.T, precision=jax.lax.Precision.HIGHEST))
    d2 = jnp.where(rows[:, None] == jnp.arange(n)[None, :], jnp.inf, d2)  # not itself
    _, nearest = jax.lax.top_k(-d2, k)  # equal distances: the smaller index first
    return jnp.sum(jax.nn.one_hot(labels[nearest], num_classes, dtype=jnp.int32), axis=1)

  counts = jax.lax.map(block, starts)
  return counts.reshape(padded, num_classes)[:n]


def neighbour_label_counts(features, labels, k: int, *, num_classes: int | None = None,
                           block_size: int = 512) -> np.ndarray:
  """int32 [N, C]: for each point, how many of its k nearest other points (ℓ2) carry each
  label.

  Args:
    features: float [N, D].
    labels: int [N] in [0, C).
    k: neighbours per point, 1 ≤ k < N.
    num_classes: C (default max(labels) + 1).
    block_size: query points per distance block ([block_size, N] floats at a time).
  """
  features = np.asarray(features) if not isinstance(features, jax.Array) else features
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"features: expected [N, D] with N >= 2, got shape {features.shape}")
  if not jnp.issubdtype(features.dtype, jnp.floating):
    raise TypeError(f"features: expected floats, got dtype {features.dtype}")
  labels = np.asarray(labels)
  if labels.shape != (features.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels: expected int [{features.shape[0]}] (one per feature row), got "
                     f"{labels.dtype} {labels.shape}")
  num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels: expected values in [0, {num_classes}), got "
                     f"[{labels.min()}, {labels.max()}]")
  check_positive("k", k, integer=True)
  if k >= features.shape[0]:
    raise ValueError(f"k: expected fewer neighbours than the other {features.shape[0] - 1} "
                     f"points allow (k < N = {features.shape[0]}), got {k}")
  check_positive("block_size", block_size, integer=True)
  block_size = min(int(block_size), features.shape[0])
  return np.asarray(_label_counts(jnp.asarray(features), jnp.asarray(labels, jnp.int32), k=int(k),
                                  num_classes=num_classes, block_size=block_size))


def deep_knn_filter(features, labels, k: int = 500, *, rule: str = "plurality",
                    num_classes: int | None = None, block_size: int = 512) -> DeepKnnResult:
  """Deep k-NN's decision for every training point (see the module docstring).

  Args:
    features: float [N, D], the penultimate-layer features of every training image
      (`classifier.features(models, images)[m]`).
    labels: int [N], the training labels (the poisons' labels as given: clean-label).
    k: neighbours (500 in Hong et al.).
    rule: "plurality" or "majority".
  """
  if rule not in RULES:
    raise ValueError(f"rule: expected one of {RULES}, got {rule!r}")
  counts = neighbour_label_counts(features, labels, k, num_classes=num_classes,
                                  block_size=block_size)
  own = counts[np.arange(counts.shape[0]), np.asarray(labels)]
  if rule == "plurality":
    keep = own == counts.max(axis=1)
  else:
    keep = 2 * own >= k
  return DeepKnnResult(keep, counts, int(k), rule)


def removal_report(result: DeepKnnResult, poison_indices) -> dict[str, int]:
  """Table 4's columns: poisons removed (true positives), clean images removed (false
  positives), and the counts they come from."""
  poison = np.zeros(result.keep.shape[0], bool)
  poison[np.asarray(poison_indices, np.int64)] = True
  removed = ~result.keep
  return {"true_positives": int((removed & poison).sum()),
          "false_positives": int((removed & ~poison).sum()),
          "poisons": int(poison.sum()), "removed": int(removed.sum()),
          "kept": int(result.keep.sum())}
