"""Certification statistics of randomized smoothing over training sets.

The defense of Hong, Carlini and Kurakin (2024) trains m classifiers, each on the training set
with fresh Gaussian noise of level σ added and removed by a diffusion denoiser, and takes their
votes on a test input. Every function here is a pure function of those votes:

* `predict` is PREDICT of Cohen et al. (2019): the majority class, or ABSTAIN when a two-sided
  binomial test cannot tell the top two classes apart at level α.
* `certify` is CERTIFY of Cohen et al. (2019): the top class ĉA from n0 selection votes, an
  exact one-sided Clopper–Pearson lower bound pA on its probability from n disjoint estimation
  votes, and the ℓ2 radius σ·Φ⁻¹(pA) when pA > 1/2.
* `poisoning_radius` is the dataset-level bound of Weber et al. (2023) used by the paper: r
  training samples, each moved by less than σ/(2√r)·(Φ⁻¹(pA) − Φ⁻¹(pB)) in ℓ2, cannot change
  the smoothed prediction.

Units: σ is the standard deviation of the Gaussian noise on images scaled to [0, 1] (the
convention of Cohen et al. and Carlini et al.), so every radius returned here is an ℓ2 distance
in [0, 1] pixel space (a 32×32×3 image has ℓ2 diameter √3072 ≈ 55.4 in these units).

Everything runs on the host in numpy/scipy and is vectorized over test points: these are
O(num_points × num_classes) computations next to hours of training.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import special, stats

from jaxpoison._checks import check_alpha, check_sigma

ABSTAIN = -1

# Chunk of models per bincount pass in `vote_counts`: bounds the int64 index buffer.
_VOTE_CHUNK = 1024


def vote_counts(votes, num_classes: int) -> np.ndarray:
  """Counts the models' votes per test point and class.

  Args:
    votes: integer array [num_models, num_points], each model's predicted class.
    num_classes: number of classes C; every vote must lie in [0, C).

  Returns:
    int64 array [num_points, num_classes]; row p sums to num_models.
  """
  votes = np.asarray(votes)
  if votes.ndim != 2:
    raise ValueError(f"votes: expected shape [num_models, num_points], got {votes.shape}")
  if not np.issubdtype(votes.dtype, np.integer):
    raise TypeError(f"votes: expected integer class indices, got dtype {votes.dtype}")
  if num_classes < 1:
    raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
  if votes.size and (votes.min() < 0 or votes.max() >= num_classes):
    raise ValueError(
        f"votes: classes must lie in [0, {num_classes - 1}], found values in "
        f"[{votes.min()}, {votes.max()}]")
  num_models, num_points = votes.shape
  offsets = np.arange(num_points, dtype=np.int64) * num_classes
  counts = np.zeros(num_points * num_classes, dtype=np.int64)
  for start in range(0, num_models, _VOTE_CHUNK):
    chunk = votes[start:start + _VOTE_CHUNK].astype(np.int64) + offsets
    counts += np.bincount(chunk.ravel(), minlength=num_points * num_classes)
  return counts.reshape(num_points, num_classes)


def lower_confidence_bound(k, n, alpha: float) -> np.ndarray:
  """Exact one-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion.

  The largest p with P[Binomial(n, p) ≥ k] ≤ α, i.e. the α quantile of Beta(k, n − k + 1);
  0 when k = 0. It equals statsmodels' `proportion_confint(k, n, alpha=2α, method="beta")[0]`
  (the form Cohen et al. use). When k = n it has the closed form α^(1/n), which is returned
  exactly: the paper's bound when all m models agree.

  Args:
    k: successes, integer array-like (broadcasts with n).
    n: trials, integer array-like, n ≥ 1 and 0 ≤ k ≤ n.
    alpha: failure probability in (0, 1).

  Returns:
    float64 array of lower bounds in [0, 1).
  """
  alpha = check_alpha(alpha)
  k, n = np.broadcast_arrays(np.asarray(k), np.asarray(n))
  if not (np.issubdtype(k.dtype, np.integer) and np.issubdtype(n.dtype, np.integer)):
    raise TypeError(f"k and n: expected integer counts, got dtypes {k.dtype} and {n.dtype}")
  if np.any(n < 1):
    raise ValueError(f"n: expected at least one trial, got min(n) = {n.min()}")
  if np.any((k < 0) | (k > n)):
    raise ValueError("k: expected 0 <= k <= n for every entry")
  k = k.astype(np.float64)
  n = n.astype(np.float64)
  interior = (k > 0) & (k < n)
  # betaincinv is only evaluated where both shape parameters are positive.
  bound = np.where(
      interior,
      special.betaincinv(np.where(interior, k, 1.0), np.where(interior, n - k + 1, 1.0), alpha),
      0.0)
  bound = np.where(k == n, alpha ** (1.0 / n), bound)
  return bound if bound.ndim else bound[()]


def _binomial_test_half(n_a: np.ndarray, n_b: np.ndarray) -> np.ndarray:
  """Two-sided exact binomial test p-value of n_a successes in n_a + n_b trials at p = 1/2.

  Binomial(n, 1/2) is symmetric, so the outcomes at least as extreme as min(n_a, n_b) are the two
  tails: p = min(1, 2·P[X ≤ min(n_a, n_b)]). Equal to `scipy.stats.binomtest(...).pvalue`.
  """
  total = n_a + n_b
  low = np.minimum(n_a, n_b)
  p = np.minimum(1.0, 2.0 * stats.binom.cdf(low, np.maximum(total, 1), 0.5))
  return np.where(total == 0, 1.0, p)


def _top_two(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  # Stable sort on the negated counts: among tied classes the lower index ranks first.
  order = np.argsort(-counts, axis=-1, kind="stable")
  top = order[..., 0]
  n_a = np.take_along_axis(counts, order[..., :1], axis=-1)[..., 0]
  n_b = (np.take_along_axis(counts, order[..., 1:2], axis=-1)[..., 0]
         if counts.shape[-1] > 1 else np.zeros_like(n_a))
  return top, n_a, n_b


def _check_counts(counts, name: str) -> np.ndarray:
  counts = np.asarray(counts)
  if counts.ndim != 2:
    raise ValueError(f"{name}: expected shape [num_points, num_classes], got {counts.shape}")
  if not np.issubdtype(counts.dtype, np.integer):
    raise TypeError(f"{name}: expected integer vote counts, got dtype {counts.dtype}")
  if counts.size and counts.min() < 0:
    raise ValueError(f"{name}: vote counts must be non-negative")
  return counts


def predict(counts, alpha: float) -> np.ndarray:
  """PREDICT of Cohen et al. (2019), vectorized over test points.

  Takes the two classes with most votes (nA ≥ nB) and returns the top one when the two-sided
  binomial test of nA successes in nA + nB trials at p = 1/2 rejects at level α; otherwise
  ABSTAIN (−1). The prediction is wrong with probability at most α.

  Args:
    counts: int [num_points, num_classes] vote counts (see `vote_counts`).
    alpha: failure probability in (0, 1).

  Returns:
    int64 [num_points]: predicted class or ABSTAIN.
  """
  alpha = check_alpha(alpha)
  counts = _check_counts(counts, "counts")
  top, n_a, n_b = _top_two(counts)
  p_value = _binomial_test_half(n_a, n_b)
  return np.where(p_value <= alpha, top, ABSTAIN).astype(np.int64)


class Certificate(NamedTuple):
  """CERTIFY's output per test point: the class (or ABSTAIN) and its ℓ2 radius."""
  labels: np.ndarray  # int64 [num_points]
  radii: np.ndarray   # float64 [num_points], in [0, 1] pixel units; 0.0 where abstaining


def top_class_lower_bound(counts_select, counts_estimate, alpha: float):
  """The selection step of CERTIFY: ĉA = argmax of the selection counts, and the one-sided
  (1 − α) lower bound pA on its probability from the disjoint estimation counts.

  Returns:
    (c_a, p_a): int64 [num_points] and float64 [num_points].
  """
  counts_select = _check_counts(counts_select, "counts_select")
  counts_estimate = _check_counts(counts_estimate, "counts_estimate")
  if counts_select.shape != counts_estimate.shape:
    raise ValueError(
        f"counts_select {counts_select.shape} and counts_estimate {counts_estimate.shape} "
        "must have the same shape [num_points, num_classes]")
  c_a = np.argmax(counts_select, axis=-1)
  n_a = np.take_along_axis(counts_estimate, c_a[:, None], axis=-1)[:, 0]
  n = counts_estimate.sum(axis=-1)
  if np.any(n == 0):
    raise ValueError("counts_estimate: every test point needs at least one estimation vote")
  return c_a.astype(np.int64), lower_confidence_bound(n_a, n, alpha)


def certify(counts_select, counts_estimate, sigma: float, alpha: float) -> Certificate:
  """CERTIFY of Cohen et al. (2019), vectorized over test points.

  ĉA is the top class of the n0 selection votes; pA is the exact one-sided Clopper–Pearson
  lower bound at level α on its probability from the n estimation votes (which must come from
  models disjoint from the selection ones). When pA > 1/2 the smoothed classifier returns ĉA
  with probability ≥ 1 − α and is robust within the ℓ2 radius σ·Φ⁻¹(pA); otherwise the point
  abstains with radius 0.

  Args:
    counts_select: int [num_points, num_classes] votes of the n0 selection models.
    counts_estimate: int [num_points, num_classes] votes of the n estimation models.
    sigma: noise level in [0, 1] pixel units; radii come out in the same units.
    alpha: failure probability in (0, 1).

  Returns:
    Certificate(labels, radii): labels ĉA or ABSTAIN (−1); radii float64, 0.0 when abstaining.
  """
  sigma = check_sigma(sigma)
  c_a, p_a = top_class_lower_bound(counts_select, counts_estimate, alpha)
  certified = p_a > 0.5
  radii = np.where(certified, sigma * stats.norm.ppf(np.where(certified, p_a, 0.75)), 0.0)
  return Certificate(np.where(certified, c_a, ABSTAIN).astype(np.int64), radii)


def poisoning_radius(p_a, p_b=None, *, sigma: float, r) -> np.ndarray:
  """Dataset-level ℓ2 bound per poisoned training sample (Weber et al. 2023, as used by the paper).

  If r training samples are each perturbed by an ℓ2 norm below
      σ / (2√r) · (Φ⁻¹(pA) − Φ⁻¹(pB)),
  the smoothed classifier's prediction cannot change. r = 1 is one poisoned image; r = the
  training-set size is the worst case where every image is perturbed.

  Args:
    p_a: lower bound on the top class's probability (e.g. from `top_class_lower_bound`).
    p_b: upper bound on the runner-up's probability; defaults to 1 − pA (Cohen et al.), which
      turns the bound into σ·Φ⁻¹(pA)/√r.
    sigma: noise level in [0, 1] pixel units; the radius is in the same units.
    r: number of perturbed training samples, ≥ 1 (broadcasts with p_a).

  Returns:
    float64 radius per sample, 0.0 where pA ≤ pB (nothing is certified).
  """
  sigma = check_sigma(sigma)
  p_a = np.asarray(p_a, dtype=np.float64)
  p_b = 1.0 - p_a if p_b is None else np.asarray(p_b, dtype=np.float64)
  r = np.asarray(r, dtype=np.float64)
  if np.any(r < 1):
    raise ValueError(f"r: expected at least one perturbed training sample, got min(r) = {r.min()}")
  if np.any((p_a < 0) | (p_a > 1) | (p_b < 0) | (p_b > 1)):
    raise ValueError("p_a and p_b must be probabilities in [0, 1]")
  gap = stats.norm.ppf(p_a) - stats.norm.ppf(p_b)
  radius = sigma / (2.0 * np.sqrt(r)) * gap
  radius = np.where(p_a > p_b, radius, 0.0)
  return radius if radius.ndim else radius[()]


def certified_accuracy(radii, correct, radius_grid) -> np.ndarray:
  """Certified accuracy at each radius: the fraction of test points that are classified
  correctly with a certified radius at least that large (abstentions count as wrong).

  Args:
    radii: float [num_points], in [0, 1] pixel units (0.0 for abstentions).
    correct: bool [num_points], whether the certified label equals the true label.
    radius_grid: float [num_radii].

  Returns:
    float64 [num_radii].
  """
  radii = np.asarray(radii, dtype=np.float64)
  correct = np.asarray(correct, dtype=bool)
  grid = np.asarray(radius_grid, dtype=np.float64)
  if radii.ndim != 1 or radii.shape != correct.shape:
    raise ValueError(
        f"radii {radii.shape} and correct {correct.shape} must be 1-D arrays of equal length")
  if radii.size == 0:
    raise ValueError("radii: no test points")
  ok = correct[None, :] & (radii[None, :] >= np.atleast_1d(grid)[:, None])
  result = ok.mean(axis=-1)
  return result if grid.ndim else result[0]
