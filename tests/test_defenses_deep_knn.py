"""Deep k-NN against a brute-force numpy reference."""

import numpy as np
import pytest

from jaxpoison.defenses import deep_knn


def _reference(features, labels, k, rule, num_classes):
  x = features.astype(np.float64)
  d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  counts = np.zeros((len(x), num_classes), int)
  for i in range(len(x)):
    for j in np.argsort(d[i], kind="stable")[:k]:
      counts[i, labels[j]] += 1
  own = counts[np.arange(len(x)), labels]
  keep = own == counts.max(1) if rule == "plurality" else 2 * own >= k
  return keep, counts


def _data(seed=0, n=300, dim=16, num_classes=4, separation=1.5):
  # Class clusters with overlap, and mislabelled points, so that both rules remove some.
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n)
  centers = rng.normal(size=(num_classes, dim)) * separation
  features = centers[labels] + rng.normal(size=(n, dim))
  flipped = rng.choice(n, 20, replace=False)
  labels[flipped] = (labels[flipped] + 1) % num_classes
  return features.astype(np.float32), labels, flipped


@pytest.mark.parametrize("rule,k,block", [("plurality", 25, 64), ("majority", 40, 300),
                                          ("plurality", 7, 1000)])
def test_matches_brute_force(rule, k, block):
  features, labels, _ = _data()
  result = deep_knn.deep_knn_filter(features, labels, k, rule=rule, block_size=block)
  keep, counts = _reference(features, labels, k, rule, 4)
  np.testing.assert_array_equal(result.label_counts, counts)
  np.testing.assert_array_equal(result.keep, keep)
  assert 0 < (~keep).sum() < len(keep)


def test_rules_differ():
  # With 4 classes a label can win the plurality without half of the votes.
  features, labels, _ = _data(seed=2, separation=0.4)
  plurality = deep_knn.deep_knn_filter(features, labels, 25, rule="plurality")
  majority = deep_knn.deep_knn_filter(features, labels, 25, rule="majority")
  np.testing.assert_array_equal(plurality.label_counts, majority.label_counts)
  assert (majority.keep <= plurality.keep).all() and (majority.keep < plurality.keep).any()


def test_removal_report_and_mislabelled_points_go():
  features, labels, flipped = _data(seed=1)
  result = deep_knn.deep_knn_filter(features, labels, 25)
  report = deep_knn.removal_report(result, flipped)
  # The mislabelled points sit in another class's cluster: nearly all are removed.
  assert report["true_positives"] >= 18
  assert report["true_positives"] + report["false_positives"] == report["removed"]
  assert report["removed"] + report["kept"] == len(labels)


def test_duplicates_are_neighbours_but_not_itself():
  features = np.zeros((5, 2), np.float32)
  features[4] = 10.0
  labels = np.array([0, 0, 1, 1, 1])
  counts = deep_knn.neighbour_label_counts(features, labels, 2)
  # Point 0's 2 nearest others: 1 and 2 (distance 0, smaller indices first), not itself.
  np.testing.assert_array_equal(counts[0], [1, 1])
  np.testing.assert_array_equal(counts[2], [2, 0])


def test_errors():
  features, labels, _ = _data()
  with pytest.raises(ValueError, match="rule"):
    deep_knn.deep_knn_filter(features, labels, 5, rule="vote")
  with pytest.raises(ValueError, match="k: expected fewer"):
    deep_knn.deep_knn_filter(features, labels, 300)
  with pytest.raises(ValueError, match="labels: expected int"):
    deep_knn.deep_knn_filter(features, labels[:10], 5)
  with pytest.raises(ValueError, match="features"):
    deep_knn.deep_knn_filter(features[0], labels, 5)
