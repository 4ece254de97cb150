import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from jaxpoison import certify as C


def cohen_certify_reference(counts_select, counts_estimate, sigma, alpha):
  """Cohen et al.'s Smooth.certify, one point at a time, with statsmodels and scipy."""
  labels, radii = [], []
  for sel, est in zip(counts_select, counts_estimate):
    c_a = int(sel.argmax())
    p_a = proportion_confint(int(est[c_a]), int(est.sum()), alpha=2 * alpha, method="beta")[0]
    if p_a > 0.5:
      labels.append(c_a)
      radii.append(sigma * stats.norm.ppf(p_a))
    else:
      labels.append(C.ABSTAIN)
      radii.append(0.0)
  return np.array(labels), np.array(radii)


def cohen_predict_reference(counts, alpha):
  out = []
  for row in counts:
    order = np.argsort(-row, kind="stable")
    n_a, n_b = int(row[order[0]]), int(row[order[1]])
    if n_a + n_b == 0:
      out.append(C.ABSTAIN)
      continue
    p = stats.binomtest(n_a, n_a + n_b, 0.5).pvalue
    out.append(int(order[0]) if p <= alpha else C.ABSTAIN)
  return np.array(out)


# --- vote_counts ------------------------------------------------------------------------------

def test_vote_counts_matches_loop():
  rng = np.random.default_rng(0)
  votes = rng.integers(0, 7, size=(53, 11))
  expected = np.zeros((11, 7), np.int64)
  for m in range(53):
    for p in range(11):
      expected[p, votes[m, p]] += 1
  np.testing.assert_array_equal(C.vote_counts(votes, 7), expected)


def test_vote_counts_chunking(monkeypatch):
  rng = np.random.default_rng(1)
  votes = rng.integers(0, 3, size=(10, 4)).astype(np.int32)
  expected = C.vote_counts(votes, 3)
  monkeypatch.setattr(C, "_VOTE_CHUNK", 3)
  np.testing.assert_array_equal(C.vote_counts(votes, 3), expected)
  assert expected.sum(axis=1).tolist() == [10] * 4


@pytest.mark.parametrize("votes, match", [
    (np.zeros((3,), np.int32), "num_models, num_points"),
    (np.zeros((3, 2), np.float32), "integer"),
    (np.full((3, 2), 10), r"\[0, 9\]"),
    (np.full((3, 2), -1), r"\[0, 9\]"),
])
def test_vote_counts_errors(votes, match):
  with pytest.raises((ValueError, TypeError), match=match):
    C.vote_counts(votes, 10)


# --- lower_confidence_bound -------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
def test_lower_bound_matches_scipy_beta_and_statsmodels(alpha):
  n = np.array([1, 2, 5, 10, 100, 1000, 10000])
  for n_i in n:
    k = np.unique(np.linspace(0, n_i, 23).astype(int))
    got = C.lower_confidence_bound(k, n_i, alpha)
    beta_ref = np.where(k > 0, stats.beta.ppf(alpha, np.maximum(k, 1), n_i - k + 1), 0.0)
    sm_ref = np.array([proportion_confint(int(ki), int(n_i), alpha=2 * alpha, method="beta")[0]
                       for ki in k])
    np.testing.assert_allclose(got, beta_ref, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got, sm_ref, rtol=1e-8, atol=1e-12)


def test_lower_bound_edge_cases():
  assert C.lower_confidence_bound(0, 10, 0.01) == 0.0
  assert C.lower_confidence_bound(0, 1, 0.01) == 0.0
  # n = 1, k = 1: the bound is α itself.
  assert C.lower_confidence_bound(1, 1, 0.01) == pytest.approx(0.01, rel=1e-15)
  # Broadcasting of k and n, and a scalar comes back as a numpy scalar.
  out = C.lower_confidence_bound(np.array([[1], [2]]), np.array([2, 4, 8]), 0.05)
  assert out.shape == (2, 3)
  assert np.ndim(C.lower_confidence_bound(3, 4, 0.05)) == 0


@pytest.mark.parametrize("m", [1, 2, 10, 100, 1000, 10000])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_unanimous_vote_bound_is_alpha_to_one_over_m(m, alpha):
  # The paper's remark: when all m models agree, pA = α^(1/m), and it is returned exactly.
  assert C.lower_confidence_bound(m, m, alpha) == alpha ** (1.0 / m)
  # It also agrees with the general Beta quantile.
  assert C.lower_confidence_bound(m, m, alpha) == pytest.approx(
      stats.beta.ppf(alpha, m, 1), rel=1e-12)


@pytest.mark.parametrize("p, n, alpha", [(0.3, 20, 0.05), (0.7, 100, 0.05), (0.95, 50, 0.01),
                                         (0.5, 1000, 0.1)])
def test_lower_bound_coverage(p, n, alpha):
  draws = 40_000
  k = np.random.default_rng(42).binomial(n, p, size=draws)
  coverage = np.mean(C.lower_confidence_bound(k, n, alpha) <= p)
  # Clopper–Pearson covers with probability >= 1 − α; allow 4 standard errors of simulation noise.
  se = np.sqrt(alpha * (1 - alpha) / draws)
  assert coverage >= 1 - alpha - 4 * se, coverage


@pytest.mark.parametrize("k, n, alpha, match", [
    (3, 0, 0.05, "at least one trial"),
    (5, 4, 0.05, "0 <= k <= n"),
    (-1, 4, 0.05, "0 <= k <= n"),
    (1.5, 4, 0.05, "integer"),
    (1, 4, 0.0, r"\(0, 1\)"),
    (1, 4, 1.0, r"\(0, 1\)"),
])
def test_lower_bound_errors(k, n, alpha, match):
  with pytest.raises((ValueError, TypeError), match=match):
    C.lower_confidence_bound(k, n, alpha)


# --- predict ----------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_predict_matches_binomtest(alpha):
  rng = np.random.default_rng(3)
  # Counts skewed towards a majority so both outcomes (class and abstain) occur.
  probs = rng.dirichlet(np.full(5, 0.3), size=400)
  counts = np.stack([rng.multinomial(rng.integers(1, 200), p) for p in probs])
  got = C.predict(counts, alpha)
  np.testing.assert_array_equal(got, cohen_predict_reference(counts, alpha))
  assert (got == C.ABSTAIN).any() and (got != C.ABSTAIN).any()


def test_predict_ties_abstain_and_clear_majority_wins():
  counts = np.array([
      [50, 50, 0],    # tie between the top two classes: p-value 1
      [0, 30, 30],    # tie, not at index 0
      [100, 0, 0],    # unanimous
      [0, 0, 100],
      [0, 0, 0],      # no votes at all
  ])
  np.testing.assert_array_equal(C.predict(counts, 0.001), [-1, -1, 0, 2, -1])


def test_predict_all_abstain():
  counts = np.array([[5, 4, 1], [3, 3, 4], [1, 1, 1]])
  assert (C.predict(counts, 0.001) == C.ABSTAIN).all()


def test_predict_single_class():
  np.testing.assert_array_equal(C.predict(np.array([[20], [3]]), 0.01), [0, -1])


# --- certify ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma, alpha", [(0.25, 0.001), (0.5, 0.01), (1.0, 0.05)])
def test_certify_matches_cohen_reference(sigma, alpha):
  rng = np.random.default_rng(7)
  num_points, num_classes, n0, n = 300, 10, 100, 1000
  probs = rng.dirichlet(np.full(num_classes, 0.2), size=num_points)
  sel = np.stack([rng.multinomial(n0, p) for p in probs])
  est = np.stack([rng.multinomial(n, p) for p in probs])
  labels, radii = C.certify(sel, est, sigma, alpha)
  ref_labels, ref_radii = cohen_certify_reference(sel, est, sigma, alpha)
  np.testing.assert_array_equal(labels, ref_labels)
  np.testing.assert_allclose(radii, ref_radii, rtol=1e-8, atol=1e-12)
  assert (labels == C.ABSTAIN).any() and (labels != C.ABSTAIN).any()
  assert (radii[labels == C.ABSTAIN] == 0).all() and (radii[labels != C.ABSTAIN] > 0).all()


def test_certify_unanimous_radius_and_units():
  sel = np.array([[0, 100, 0]])
  est = np.array([[0, 10000, 0]])
  cert = C.certify(sel, est, 0.25, 0.001)
  assert cert.labels.tolist() == [1]
  assert cert.radii[0] == pytest.approx(0.25 * stats.norm.ppf(0.001 ** (1 / 10000)), rel=1e-12)
  # Radii scale linearly with σ: they are ℓ2 distances in the same [0, 1] pixel units.
  assert C.certify(sel, est, 0.5, 0.001).radii[0] == pytest.approx(2 * cert.radii[0], rel=1e-12)


def test_certify_uses_selection_class_not_estimation_majority():
  # Selection picks class 0; the estimation votes favour class 1, so pA for class 0 is small.
  cert = C.certify(np.array([[60, 40]]), np.array([[100, 900]]), 0.5, 0.001)
  assert cert.labels.tolist() == [C.ABSTAIN] and cert.radii.tolist() == [0.0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(sigma=0.0), "> 0"),
    (dict(sigma=-0.1), "> 0"),
    (dict(sigma=float("nan")), "finite"),
    (dict(sigma=64.0), "pixel units"),
    (dict(alpha=1.5), r"\(0, 1\)"),
    (dict(counts_estimate=np.ones((2, 4), np.int64)), "same shape"),
    (dict(counts_estimate=np.zeros((2, 3), np.int64)), "at least one estimation vote"),
    (dict(counts_select=np.ones((2, 3)) * 0.5), "integer"),
    (dict(counts_select=np.ones((6,), np.int64)), "num_points, num_classes"),
])
def test_certify_errors(kwargs, match):
  args = dict(counts_select=np.ones((2, 3), np.int64), counts_estimate=np.ones((2, 3), np.int64),
              sigma=0.25, alpha=0.001)
  args.update(kwargs)
  with pytest.raises((ValueError, TypeError), match=match):
    C.certify(**args)


# --- poisoning_radius -------------------------------------------------------------------------

def test_poisoning_radius_is_where_the_worst_case_classes_tie():
  # The bound's defining property, not its closed form: r samples each moved by δ shift the
  # concatenated noisy training set by Δ = √r·δ in ℓ2. By Neyman–Pearson the worst such shift
  # leaves class A with probability Φ(Φ⁻¹(pA) − Δ/σ) and can raise B to Φ(Φ⁻¹(pB) + Δ/σ); the
  # certified radius is the δ at which the two meet (A still wins just inside it).
  p_a, p_b, sigma = np.array([0.9, 0.99, 0.6]), np.array([0.05, 0.005, 0.3]), 0.25
  for r in (1, 500, 50_000):
    radius = C.poisoning_radius(p_a, p_b, sigma=sigma, r=r)
    worst = lambda delta: (stats.norm.cdf(stats.norm.ppf(p_a) - np.sqrt(r) * delta / sigma),
                           stats.norm.cdf(stats.norm.ppf(p_b) + np.sqrt(r) * delta / sigma))
    a, b = worst(radius)
    np.testing.assert_allclose(a, b, rtol=1e-9)
    a, b = worst(radius * (1 - 1e-6))
    assert np.all(a > b)
    a, b = worst(radius * (1 + 1e-6))
    assert np.all(a < b)


def test_poisoning_radius_default_runner_up_matches_certified_radius():
  # With pB = 1 − pA and r = 1 the bound is Cohen's radius σΦ⁻¹(pA); r samples share it as 1/√r.
  est = np.array([[990, 10], [700, 300]])
  cert = C.certify(est, est, 0.5, 0.001)
  _, p_a = C.top_class_lower_bound(est, est, 0.001)
  np.testing.assert_allclose(C.poisoning_radius(p_a, sigma=0.5, r=1), cert.radii, rtol=1e-12)
  np.testing.assert_allclose(C.poisoning_radius(p_a, sigma=0.5, r=100), cert.radii / 10,
                             rtol=1e-12)


def test_poisoning_radius_zero_when_not_separated():
  assert C.poisoning_radius(0.4, 0.5, sigma=0.25, r=1) == 0.0
  assert C.poisoning_radius(0.5, sigma=0.25, r=1) == 0.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(r=0), "at least one"),
    (dict(p_a=1.2), "probabilities"),
    (dict(sigma=0.0), "> 0"),
])
def test_poisoning_radius_errors(kwargs, match):
  args = dict(p_a=0.9, sigma=0.25, r=1)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    C.poisoning_radius(**args)


# --- certified_accuracy -----------------------------------------------------------------------

def test_certified_accuracy():
  radii = np.array([0.0, 0.1, 0.3, 0.5, 0.0])
  correct = np.array([False, True, True, False, True])
  grid = np.array([0.0, 0.1, 0.2, 0.3, 0.6])
  np.testing.assert_allclose(C.certified_accuracy(radii, correct, grid),
                             [3 / 5, 2 / 5, 1 / 5, 1 / 5, 0.0])
  assert C.certified_accuracy(radii, correct, 0.0) == pytest.approx(0.6)


def test_certified_accuracy_non_increasing():
  rng = np.random.default_rng(0)
  curve = C.certified_accuracy(rng.random(100), rng.random(100) < 0.7, np.linspace(0, 1, 50))
  assert np.all(np.diff(curve) <= 0)


def test_certified_accuracy_errors():
  with pytest.raises(ValueError, match="equal length"):
    C.certified_accuracy(np.zeros(3), np.zeros(4, bool), [0.0])
  with pytest.raises(ValueError, match="no test points"):
    C.certified_accuracy(np.zeros(0), np.zeros(0, bool), [0.0])
