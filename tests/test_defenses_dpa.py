"""DPA and its run-off election: partition, certificates (against brute force and a worked
example), and the base classifiers trained with the many-model trainer."""

import itertools

import jax
import numpy as np
import pytest

from jaxpoison import classifier
from jaxpoison.defenses import dpa

# ------------------------------------------------------------------------------ references


def _election(rankings: np.ndarray, num_classes: int) -> int:
  """The run-off election's winner from k strict rankings (each a tuple: best class first),
  straight from the definitions: round 1 by top-1 votes (ties to the smaller class), round 2
  by pairwise preference (a tie to the smaller class)."""
  counts = np.zeros(num_classes, int)
  for r in rankings:
    counts[r[0]] += 1
  c1, c2 = sorted(range(num_classes), key=lambda c: (-counts[c], c))[:2]
  for_c1 = sum(list(r).index(c1) < list(r).index(c2) for r in rankings)
  for_c2 = len(rankings) - for_c1
  if for_c1 != for_c2:
    return c1 if for_c1 > for_c2 else c2
  return min(c1, c2)


def _plurality(rankings, num_classes: int) -> int:
  counts = np.zeros(num_classes, int)
  for r in rankings:
    counts[r[0]] += 1
  return int(np.argmax(counts))


def _scores_from_rankings(rankings, num_classes: int) -> np.ndarray:
  """Scores [k, 1, C] whose descending order is each ranking."""
  scores = np.zeros((len(rankings), 1, num_classes))
  for i, r in enumerate(rankings):
    for position, c in enumerate(r):
      scores[i, 0, c] = num_classes - position
  return scores


def _robust_to(rankings, changes: int, num_classes: int, rule) -> bool:
  """Whether every way of replacing `changes` base classifiers by arbitrary rankings keeps
  `rule`'s outcome (brute force)."""
  base = rule(rankings, num_classes)
  perms = list(itertools.permutations(range(num_classes)))
  for who in itertools.combinations(range(len(rankings)), changes):
    for new in itertools.product(perms, repeat=changes):
      changed = list(rankings)
      for i, r in zip(who, new):
        changed[i] = r
      if rule(changed, num_classes) != base:
        return False
  return True


# ------------------------------------------------------------------------------ certificates


@pytest.mark.parametrize("num_models,num_classes,seed", [(5, 3, 0), (6, 3, 1), (5, 4, 2),
                                                         (7, 3, 3)])
def test_roe_certificate_is_sound_and_its_prediction_is_the_election(num_models, num_classes,
                                                                      seed):
  rng = np.random.default_rng(seed)
  perms = list(itertools.permutations(range(num_classes)))
  tight = 0
  trials = 25
  for _ in range(trials):
    # Skewed draws, so that large margins (radius ≥ 1) occur.
    weights = rng.dirichlet(np.full(len(perms), 0.3))
    rankings = [perms[i] for i in rng.choice(len(perms), num_models, p=weights)]
    cert = dpa.roe_certify(_scores_from_rankings(rankings, num_classes))
    assert cert.prediction[0] == _election(rankings, num_classes)
    radius = int(cert.radius[0])
    assert radius >= 0
    assert _robust_to(rankings, radius, num_classes, _election), (rankings, radius)
    tight += not _robust_to(rankings, radius + 1, num_classes, _election)
  # The certificate is a lower bound; it should rarely leave slack on such small elections.
  assert tight >= 0.8 * trials


@pytest.mark.parametrize("num_models,num_classes,seed", [(5, 3, 0), (6, 4, 1)])
def test_dpa_certificate_is_sound_and_tight(num_models, num_classes, seed):
  rng = np.random.default_rng(seed)
  perms = list(itertools.permutations(range(num_classes)))
  for _ in range(20):
    weights = rng.dirichlet(np.full(len(perms), 0.3))
    rankings = [perms[i] for i in rng.choice(len(perms), num_models, p=weights)]
    cert = dpa.dpa_certify(_scores_from_rankings(rankings, num_classes))
    assert cert.prediction[0] == _plurality(rankings, num_classes)
    radius = int(cert.radius[0])
    assert _robust_to(rankings, radius, num_classes, _plurality)
    assert not _robust_to(rankings, radius + 1, num_classes, _plurality)


def test_roe_worked_example():
  # k = 11 base classifiers, 3 classes. Rankings (best first) and how many classifiers hold
  # each: 5 × (0, 2, 1), 4 × (1, 2, 0), 2 × (2, 1, 0).
  # Round 1: N = (5, 4, 2): c₁ = 0, c₂ = 1. Round 2: 5 prefer 0 over 1, 6 prefer 1 → 1 wins,
  # while plain DPA predicts 0 (gap 5 − 4 − 0 = 1, radius 0).
  # ROE radius for the winner 1 (loser 0):
  #   same opponent: h(1, 0) = 6 − 5 = 1, minus [0 < 1] = 0 → ⌊0/2⌋ = 0.
  # So one changed classifier (a (1, 2, 0) voter turning to (0, ...)) flips the outcome: 0.
  rankings = [(0, 2, 1)] * 5 + [(1, 2, 0)] * 4 + [(2, 1, 0)] * 2
  scores = _scores_from_rankings(rankings, 3)
  roe = dpa.roe_certify(scores)
  plain = dpa.dpa_certify(scores)
  assert (roe.prediction[0], roe.radius[0]) == (1, 0)
  assert (plain.prediction[0], plain.radius[0]) == (0, 0)

  # Now 9 × (1, 0, 2), 6 × (0, 1, 2), 5 × (2, 1, 0) (k = 20).
  # Round 1: N = (6, 9, 5): c₁ = 1, c₂ = 0. Round 2: 1 over 0 by 9 + 5 = 14 vs 6: h = 8.
  #   same opponent: ⌊(8 − [0 < 1]) / 2⌋ = ⌊7/2⌋ = 3.
  #   round 1 (winner c₁ = 1 must fall behind 0 and 2): leads 9 − 6 − [0 < 1] = 2 and
  #     9 − 5 − [2 < 1] = 4; moves (−2, −1) to class 0 or (−1, −2) to class 2: the fewest
  #     with 2x + y ≥ 3 and x + 2y ≥ 5 is x = 1, y = 2 (3 moves) → 2 tolerated.
  #   new opponent 2 (displaces 0 in round 1, beats 1 head-to-head): gap(0, 2) = 6 − 5 −
  #     [2 < 0] = 1; h(1, 2) = (9 + 6) − 5 = 10, minus [2 < 1] = 0 → ⌊max(1, 10)/2⌋ = 5.
  #   radius = min(3, 2, 5) = 2; plain DPA: gap(1, 0) = 2 → radius 1.
  rankings = [(1, 0, 2)] * 9 + [(0, 1, 2)] * 6 + [(2, 1, 0)] * 5
  scores = _scores_from_rankings(rankings, 3)
  roe = dpa.roe_certify(scores)
  plain = dpa.dpa_certify(scores)
  assert (roe.prediction[0], roe.radius[0]) == (1, 2)
  assert (plain.prediction[0], plain.radius[0]) == (1, 1)


def test_two_gap_tolerance_is_the_fewest_moves_minus_one():
  # Leads i, j of the leader over two challengers; a change moves one of the leader's votes
  # to a challenger (leads −2, −1 or −1, −2). Fewest moves by exhaustive search.
  size = 25
  moves = np.arange(size + 2)
  x, y = np.meshgrid(moves, moves, indexing="ij")
  for i in range(size):
    for j in range(size):
      settle = (i - 2 * x - y < 0) & (j - x - 2 * y < 0)
      assert dpa._two_gap_tolerance(np.array(i), np.array(j)) == (x + y)[settle].min() - 1


def test_roe_round_one_case_where_the_reference_table_overclaims():
  # The reference code's table (k1rezaei/DPA-election dp_calc.py) gives (j + 1) // 2 for
  # leads i ≤ 1 and j ≥ 2, one more than the truth for odd j. With 4 classes, 14 rankings,
  # N = (5, 5, 2, 2): c₁ = 0, c₂ = 1, leads i = 0, j = 3 over class 2; round 2: 0 beats 1
  # 9 to 5 (h = 4 → 2 tolerated); the table would certify 2, but moving two of class 0's
  # votes to class 2 gives N = (3, 5, 4, 2) and eliminates 0 in round 1: the radius is 1.
  rankings = ([(0, 1, 2, 3)] * 5 + [(1, 2, 3, 0)] * 5 + [(2, 0, 1, 3)] * 2
              + [(3, 0, 1, 2)] * 2)
  cert = dpa.roe_certify(_scores_from_rankings(rankings, 4))
  assert (cert.prediction[0], cert.radius[0]) == (0, 1)
  moved = [(2, 0, 1, 3)] * 2 + rankings[2:]
  assert _election(moved, 4) != 0
  assert _robust_to(rankings, 1, 4, _election)


def test_certificates_vectorize_over_points_and_break_score_ties_by_class():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(9, 50, 4))
  together = dpa.roe_certify(scores)
  for p in range(0, 50, 7):
    alone = dpa.roe_certify(scores[:, p:p + 1])
    assert (alone.prediction[0], alone.radius[0]) == (together.prediction[p],
                                                      together.radius[p])
  # Equal scores rank the smaller class first: every classifier votes 0 here.
  flat = np.zeros((3, 1, 4))
  assert dpa.dpa_certify(flat).prediction[0] == 0
  assert dpa.roe_certify(flat).prediction[0] == 0
  assert dpa.dpa_certify(flat).radius[0] == 1  # gap 3 − 0 − 0 = 3 → 1


def test_certified_accuracy():
  cert = dpa.PartitionCertificate(np.array([0, 1, 2, 1]), np.array([3, 0, 5, 2]))
  acc = dpa.partitioned_certified_accuracy(cert, np.array([0, 1, 1, 1]), [0, 1, 3, 4])
  np.testing.assert_allclose(acc, [0.75, 0.5, 0.25, 0.0])


def test_certificate_errors():
  with pytest.raises(ValueError, match=r"scores: expected .*\[k, P, C\]"):
    dpa.roe_certify(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="NaN"):
    dpa.dpa_certify(np.full((2, 1, 3), np.nan))
  with pytest.raises(ValueError, match="labels: expected shape"):
    dpa.partitioned_certified_accuracy(dpa.PartitionCertificate(np.zeros(3), np.zeros(3)),
                                       np.zeros(2), [0])


# ------------------------------------------------------------------------------ partition


def _images(n, seed=0, size=8):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 3, n)


def test_partition_depends_on_content_only():
  images, labels = _images(200)
  parts = dpa.partition_training_sets(images, labels, 7)
  np.testing.assert_array_equal(parts.part, images.reshape(200, -1).sum(1) % 7)
  assert parts.sizes.sum() == 200
  for j in range(7):
    members = parts.indices[j, :parts.sizes[j]]
    assert len(set(members.tolist())) == parts.sizes[j]
    assert (parts.part[members] == j).all()
    # Padding repeats the part's own images from its start.
    np.testing.assert_array_equal(parts.indices[j, parts.sizes[j]:],
                                  np.resize(members, parts.indices.shape[1])[parts.sizes[j]:])
  # Shuffled data: every part holds the same images in the same order.
  perm = np.random.default_rng(1).permutation(200)
  shuffled = dpa.partition_training_sets(images[perm], labels[perm], 7)
  for j in range(7):
    np.testing.assert_array_equal(images[parts.indices[j]], images[perm][shuffled.indices[j]])
  # Inserting one image changes exactly one part's contents.
  extra, extra_label = _images(1, seed=5)
  grown = dpa.partition_training_sets(np.concatenate([images, extra]),
                                      np.concatenate([labels, extra_label]), 7)
  changed = [j for j in range(7)
             if grown.sizes[j] != parts.sizes[j]
             or not np.array_equal(images[parts.indices[j, :parts.sizes[j]]],
                                   np.concatenate([images, extra])[
                                       grown.indices[j, :grown.sizes[j]]])]
  assert changed == [int(extra.reshape(-1).sum() % 7)]


def test_partition_errors():
  images, labels = _images(5)
  with pytest.raises(ValueError, match=r"leave .* empty"):
    dpa.partition_training_sets(images, labels, 50)
  with pytest.raises(TypeError, match="images: expected dtype uint8"):
    dpa.hash_partition(images.astype(np.float32) / 255, 3)


def test_partition_models_train_each_on_its_part():
  images, labels = _images(96, size=32)
  config = classifier.tiny_config(num_classes=3, epochs=1,
                                  batch_size=16, whitening_images=16)
  models, parts = dpa.train_partition_models(jax.random.key(0), images, labels, 3, config)
  assert models.num_models == 3
  # Model 2 equals a model trained alone on part 2 with key fold_in(key, 2).
  alone = classifier.train_models(jax.random.fold_in(jax.random.key(0), 2)[None],
                                  images[parts.indices[2]], labels[parts.indices[2]], config)
  np.testing.assert_allclose(classifier.logits(classifier.select(models, 2), images[:20]),
                             classifier.logits(alone, images[:20]), rtol=1e-5, atol=1e-5)
  scores = np.asarray(classifier.logits(models, images[:30]))
  cert = dpa.roe_certify(scores)
  assert cert.prediction.shape == (30,) and (cert.radius <= 1).all()  # k = 3: at most ⌊3/2⌋


def test_reference_recipe_trains_each_base_classifier_on_its_part_alone():
  # The DPA reference's recipe keeps each epoch's last partial batch: base classifier j takes
  # ceil(n_j / batch) steps per epoch on its own n_j images (never the padding), and is the
  # model trained alone on its part (same key), up to the vmapped batch's float rounding.
  images, labels = _images(96, size=32)
  victim = classifier.tiny_config(num_classes=3, whitening_images=16)
  config = dpa.dpa_base_config(victim, epochs=2).replace(batch_size=16, models_per_step=3)
  assert not config.drop_last and config.input_norm == "training_set"
  models, parts = dpa.train_partition_models(jax.random.key(0), images, labels, 3, config)
  assert parts.sizes.min() < parts.indices.shape[1]  # some part is padded
  j = int(np.argmin(parts.sizes))
  own = parts.indices[j, :parts.sizes[j]]
  alone = classifier.train_models(jax.random.fold_in(jax.random.key(0), j)[None],
                                  images[own], labels[own], config.replace(models_per_step=1))
  np.testing.assert_allclose(classifier.logits(classifier.select(models, j), images[:20]),
                             classifier.logits(alone, images[:20]), rtol=1e-4, atol=1e-4)
  # Its input statistics are its part's.
  stats = np.asarray(classifier.select(models, j).state["input_statistics"][...])[0]
  np.testing.assert_allclose(stats[0], (images[own] / 255.0).mean(axis=(0, 1, 2)), rtol=1e-5)
