"""Deep Partition Aggregation (Levine & Feizi 2021) and its run-off election (Rezaei et al. 2023).

The training set is split into k parts by a hash of each image's content, one base classifier
is trained on each part, and a test input is labelled by the base classifiers' votes. Because
an image's part depends on that image alone, inserting or deleting one training image changes
one part, hence at most one base classifier; so a vote whose margin survives r arbitrary
changes of base classifiers is certified against r inserted or deleted training images (a
modified image is a deletion plus an insertion: two). The certificates here are those numbers:

* `dpa_certify` (plain DPA): the plurality of the base classifiers' top classes, ties to the
  smaller class; certified radius ⌊gap/2⌋ where gap = N₁ − N₂ − [c₂ < c₁].
* `roe_certify` (DPA + run-off election, "ROE" of Hong et al. Table 5): round 1 keeps the two
  classes with most top-1 votes; round 2 gives each base classifier one vote for whichever of
  the two it scores higher. The radius is the smallest number of base classifiers whose change
  can remove the winner in round 1, or in round 2 with the same or a new opponent (Rezaei et
  al. Theorem 1, with d = 1: one part per image).

Both are pure host-side functions of the base classifiers' scores [k, P, C] (logits), as
`jaxpoison.certify` is of vote counts. `train_partition_models` trains the k base classifiers
together with the many-model trainer: each part is one model's training set.

The base classifiers' recipe (`dpa_base_config`) is the reference's (k1rezaei/DPA-election,
`train/FiniteAggregation_train_cifar_nin_baseline.py`): 200 epochs of SGD, batch 128 with the
last partial batch kept (PyTorch's DataLoader default: a ~200-image part gets 2 steps per
epoch, ≈ 400 in all), lr 0.1 ×0.2 after epochs 60, 120 and 160, Nesterov momentum 0.9, weight
decay 5e-4 on every parameter, random crop (4-pixel zero padding) and flip, and inputs
normalized by the part's own channel mean and std. Its network is the Network-in-Network of
RotNet; here the caller's network (airbench94 or ResNet-18) trains with that recipe.

Partition (as the reference code, k1rezaei/DPA-election `FiniteAggregation_data_norm_hash.py`):
part = (sum of the image's uint8 pixel values) mod k; inside a part the images are ordered by
their content (a SHA-256 digest of label and pixels), so that a base classifier's training does
not depend on where its images sit in the dataset. Parts differ in size; the trainer needs one
array shape, so each part is padded to the largest by repeating its own images in that order.
With the reference recipe (drop_last False) each base classifier is told its part's size
(`train_models(num_examples=)`) and never sees the padding: its epochs are its own part's. With
a recipe that drops the last batch (the earlier behaviour) the padding is trained on, and the
repeated images weigh a little more (the certificate is unaffected either way: the base
classifier sees only its part's images).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import jax
import numpy as np

from jaxpoison._checks import check_images, check_labels, check_positive
from jaxpoison import backend
from jaxpoison.classifier.api import train_models
from jaxpoison.classifier.config import TrainConfig, head_lr_scale_for
from jaxpoison.classifier.train import TrainedModels

__all__ = [
    "PartitionCertificate", "PartitionedTrainingSet", "REFERENCE_EPOCHS", "dpa_base_config",
    "dpa_certify", "hash_partition", "partition_training_sets", "partitioned_certified_accuracy",
    "roe_certify", "train_partition_models",
]

REFERENCE_EPOCHS = 200
# The reference multiplies the rate by 0.2 at the end of epochs 60, 120 and 160 (of 200): the
# rate drops from epochs 61, 121 and 161 (counted from 0); other lengths keep the fractions.
_DROP_AFTER = (60, 120, 160)


def dpa_base_config(config: TrainConfig, epochs: int = REFERENCE_EPOCHS) -> TrainConfig:
  """The DPA reference's base-classifier recipe (module docstring) on `config`'s network
  (model, widths, normalization layer, classes and image shape kept; everything about the
  training replaced). `epochs` other than 200 scales the rate's milestones with it."""
  if not isinstance(config, TrainConfig):
    raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
  check_positive("epochs", epochs, integer=True)
  milestones = tuple(round(m * epochs / REFERENCE_EPOCHS) + 1 for m in _DROP_AFTER)
  return config.replace(
      epochs=int(epochs), batch_size=128, drop_last=False, lr=0.1, momentum=0.9, nesterov=True,
      weight_decay=5e-4, decoupled=False, bias_scaler=1.0, schedule="milestones",
      lr_milestones=milestones, lr_gamma=0.2, label_smoothing=0.0, lookahead=False,
      whiten_bias_epochs=0, flip="random", translate=4, pad_mode="zeros", shift="integer",
      input_norm="training_set", tta_level=0, head_lr_scale=head_lr_scale_for(config.model))


def hash_partition(images, num_partitions: int) -> np.ndarray:
  """Each image's part, int64 [N]: the sum of its uint8 pixel values modulo `num_partitions`."""
  check_images(images, name="images", dtypes=("uint8",))
  check_positive("num_partitions", num_partitions, integer=True)
  sums = np.asarray(images).reshape(images.shape[0], -1).sum(axis=1, dtype=np.int64)
  return sums % int(num_partitions)


def _content_digest(image: np.ndarray, label: int) -> bytes:
  return hashlib.sha256(np.int64(label).tobytes() + np.ascontiguousarray(image).tobytes()).digest()


class PartitionedTrainingSet(NamedTuple):
  """The k base classifiers' training sets.

  Attributes:
    indices: int64 [k, n_max], part j's training-set indices in content order, padded to
      n_max = the largest part by repeating the part's own indices from its start.
    sizes: int64 [k], the parts' true sizes (indices[j, :sizes[j]] are distinct).
    part: int64 [N], each training image's part.
  """
  indices: np.ndarray
  sizes: np.ndarray
  part: np.ndarray


def partition_training_sets(images, labels, num_partitions: int) -> PartitionedTrainingSet:
  """The hash partition of (images uint8 [N, H, W, C], labels [N]) into `num_partitions` parts.

  Raises ValueError when a part is empty (too many parts for the data: each base classifier
  needs at least one image).
  """
  part = hash_partition(images, num_partitions)
  labels = np.asarray(labels)
  check_labels(labels, int(labels.max()) + 1 if labels.size else 1, name="labels",
               length=images.shape[0])
  members = []
  for j in range(num_partitions):
    idx = np.flatnonzero(part == j)
    digests = [_content_digest(images[i], int(labels[i])) for i in idx]
    members.append(idx[np.argsort(np.asarray(digests, dtype=object), kind="stable")]
                   if idx.size else idx)
  sizes = np.asarray([m.size for m in members], np.int64)
  if (sizes == 0).any():
    empty = np.flatnonzero(sizes == 0)
    raise ValueError(
        f"num_partitions: {num_partitions} parts of {images.shape[0]} images leave "
        f"{empty.size} part(s) empty (first: {int(empty[0])}); use fewer parts")
  n_max = int(sizes.max())
  indices = np.stack([np.resize(m, n_max) for m in members])  # np.resize repeats cyclically
  return PartitionedTrainingSet(indices.astype(np.int64), sizes, part)


def train_partition_models(key, images, labels, num_partitions: int,
                           config: TrainConfig) -> tuple[TrainedModels, PartitionedTrainingSet]:
  """Trains one base classifier per part with the many-model trainer.

  Base classifier j is model j, trained from key fold_in(key, j) on part j (padded as
  `partition_training_sets` says; with config.drop_last False, on its part alone, the padding
  masked); `config.models_per_step` (or the memory planner) sets how many train at once. On the CPU, where XLA runs the models' vmapped convolutions as grouped
  convolutions several times slower than one model's (scripts/bench_dpa.py: 8 base classifiers
  3.6× slower together than one after another), models_per_step = 0 means one at a time.
  Returns (the k models, the partition).
  """
  if not isinstance(config, TrainConfig):
    raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
  check_images(images, name="images", image_shape=config.image_shape, dtypes=("uint8",))
  parts = partition_training_sets(images, labels, num_partitions)
  config = config.replace(models_per_step=backend.resolve_models_at_once(config.models_per_step))
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(np.arange(num_partitions))
  images = np.asarray(images)
  labels = np.asarray(labels, np.int32)
  sizes = None if config.drop_last else parts.sizes
  models = train_models(keys, images[parts.indices], labels[parts.indices], config,
                        num_examples=sizes)
  return models, parts


# ------------------------------------------------------------------------------ certificates


class PartitionCertificate(NamedTuple):
  """prediction int64 [P]; radius int64 [P]: the number of inserted or deleted training
  images (changed base classifiers) that provably cannot change the prediction."""
  prediction: np.ndarray
  radius: np.ndarray


def _check_scores(scores) -> np.ndarray:
  scores = np.asarray(scores)
  if scores.ndim != 3 or scores.shape[0] < 1 or scores.shape[2] < 2:
    raise ValueError(
        f"scores: expected the base classifiers' scores [k, P, C] with k >= 1 and C >= 2, "
        f"got shape {scores.shape}")
  if not np.issubdtype(scores.dtype, np.floating) and not np.issubdtype(scores.dtype,
                                                                         np.integer):
    raise TypeError(f"scores: expected real scores (logits), got dtype {scores.dtype}")
  if np.issubdtype(scores.dtype, np.floating) and not np.isfinite(scores).all():
    raise ValueError("scores: found NaN or infinite values")
  return scores


def _ranks(scores: np.ndarray) -> np.ndarray:
  """rank[k, p, c]: 0 for each base classifier's top class; equal scores rank the smaller
  class first (a strict order, so every pairwise preference is defined)."""
  order = np.argsort(-scores, axis=-1, kind="stable")
  ranks = np.empty_like(order)
  np.put_along_axis(ranks, order, np.arange(scores.shape[-1])[None, None, :], axis=-1)
  return ranks


def _round_one(ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(top-1 vote counts [P, C], first class [P], second class [P]); ties to smaller class."""
  num_classes = ranks.shape[-1]
  top = np.argmin(ranks, axis=-1)  # [k, P]
  counts = np.zeros((ranks.shape[1], num_classes), np.int64)
  for c in range(num_classes):
    counts[:, c] = (top == c).sum(axis=0)
  order = np.argsort(-counts, axis=-1, kind="stable")
  return counts, order[:, 0], order[:, 1]


def _gap(counts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """N_a − N_b − [b < a]: how far a is ahead of b in round 1 (≥ 0 iff a ranks first)."""
  rows = np.arange(counts.shape[0])
  return counts[rows, a] - counts[rows, b] - (b < a)


def dpa_certify(scores) -> PartitionCertificate:
  """Plain DPA: the plurality class of the base classifiers' top-1 votes and ⌊gap/2⌋.

  Args:
    scores: [k, P, C] each base classifier's scores (e.g. logits) for P test inputs.
  """
  counts, first, second = _round_one(_ranks(_check_scores(scores)))
  return PartitionCertificate(first.astype(np.int64), (_gap(counts, first, second) // 2))


def _two_gap_tolerance(gap_a: np.ndarray, gap_b: np.ndarray) -> np.ndarray:
  """The changes of base classifiers tolerated before classes a and b both overtake the
  leader, whose leads are gap_a and gap_b (≥ 0). A change moves one vote: from the leader to
  a (leads −2, −1), to b (−1, −2), or less; the fewest moves x to a and y to b with
  2x + y ≥ gap_a + 1 and x + 2y ≥ gap_b + 1, minus one."""
  gap_a = np.asarray(gap_a, np.int64)
  gap_b = np.asarray(gap_b, np.int64)
  xs = np.arange(int(max(gap_a.max(initial=0), 0)) + 2)  # x beyond gap_a + 1 never helps
  need_a = gap_a[..., None] + 1 - 2 * xs          # still needed from y for lead a
  need_b = -(-(gap_b[..., None] + 1 - xs) // 2)   # ceil((gap_b + 1 − x) / 2)
  ys = np.maximum(np.maximum(need_a, need_b), 0)
  return (xs + ys).min(axis=-1) - 1


def roe_certify(scores) -> PartitionCertificate:
  """DPA with the run-off election (Rezaei et al. 2023, d = 1) and its certified radius.

  Round 1: the two classes with most top-1 votes, c₁ ahead of c₂ (ties to the smaller class).
  Round 2: base classifier i votes for c₁ when it ranks c₁ above c₂ (its scores; equal scores
  rank the smaller class first), else for c₂; the majority wins (a tie to the smaller class).
  The radius is the least of: the changes the winner w survives in round 1 (w = c₁: two other
  classes must overtake it; w = c₂: one class must overtake c₂), in round 2 against the same
  opponent (⌊(h(w, l) − [l < w]) / 2⌋, h the head-to-head margin), and in round 2 against a
  new opponent c₃ that displaces the loser l in round 1 and beats w head-to-head (one change
  moves a round-1 vote from l to c₃ and a round-2 preference from w to c₃ at once:
  ⌊max(gap(l, c₃), h(w, c₃) − [c₃ < w]) / 2⌋), minimized over c₃.

  Args:
    scores: [k, P, C] each base classifier's scores (e.g. logits) for P test inputs.
  """
  ranks = _ranks(_check_scores(scores))
  num_models, num_points, num_classes = ranks.shape
  counts, first, second = _round_one(ranks)
  rows = np.arange(num_points)
  # prefer[p, a, b] = base classifiers ranking a above b; h = prefer − prefer.T = 2·prefer − k.
  prefer = np.zeros((num_points, num_classes, num_classes), np.int64)
  for i in range(num_models):
    prefer += ranks[i][:, :, None] < ranks[i][:, None, :]
  head_to_head = 2 * prefer - num_models
  duel = head_to_head[rows, first, second]
  first_wins = (duel > 0) | ((duel == 0) & (first < second))
  winner = np.where(first_wins, first, second)
  loser = np.where(first_wins, second, first)

  # Round 2, same opponent.
  radius = (head_to_head[rows, winner, loser] - (loser < winner)) // 2
  never = np.iinfo(np.int64).max
  for third in range(num_classes):
    c3 = np.full(num_points, third)
    valid = (c3 != first) & (c3 != second)
    if not valid.any():
      continue
    # Round 1: the winner eliminated.
    if_first = _two_gap_tolerance(np.maximum(_gap(counts, first, second), 0),
                                  np.maximum(_gap(counts, first, c3), 0))
    if_second = np.maximum(_gap(counts, second, c3), 0) // 2
    case1 = np.where(first_wins, if_first, if_second)
    # Round 2 against the new opponent.
    case2 = np.maximum(_gap(counts, loser, c3),
                       head_to_head[rows, winner, c3] - (c3 < winner)) // 2
    radius = np.minimum(radius, np.where(valid, np.minimum(case1, case2), never))
  return PartitionCertificate(winner.astype(np.int64), radius.astype(np.int64))


def partitioned_certified_accuracy(certificate: PartitionCertificate, labels,
                                   radii) -> np.ndarray:
  """Fraction of test points predicted correctly with certified radius ≥ r, for each r in
  `radii` (numbers of poisoned training images), float64 [len(radii)]."""
  labels = np.asarray(labels)
  if labels.shape != certificate.prediction.shape:
    raise ValueError(f"labels: expected shape {certificate.prediction.shape} (one per test "
                     f"point), got {labels.shape}")
  radii = np.asarray(radii)
  correct = certificate.prediction == labels
  return (correct[None, :] & (certificate.radius[None, :] >= radii[:, None])).mean(axis=1)
