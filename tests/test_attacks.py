import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from jaxpoison import attacks as A
from jaxpoison.attacks import core, testing
from jaxpoison.attacks.constraints import l2_budget, linf_budget

SHAPE = (8, 8, 3)
NUM_POISONS = 4
ENSEMBLE = [testing.tiny_cnn_extractor(0), testing.tiny_cnn_extractor(1),
            testing.mlp_extractor(2, SHAPE)]
KEY = jax.random.key(0)

CONFIGS = {
    ("poison_frogs", "linf"): A.PoisonFrogsConfig(num_steps=40, step_size=0.01),
    ("poison_frogs", "l2"): A.PoisonFrogsConfig(norm="l2", epsilon=1.0, num_steps=40,
                                                step_size=0.01, beta=0.5),
    ("convex_polytope", "linf"): A.ConvexPolytopeConfig(num_steps=60),
    ("convex_polytope", "l2"): A.ConvexPolytopeConfig(norm="l2", epsilon=1.0, num_steps=60),
    ("bullseye_polytope", "linf"): A.BullseyePolytopeConfig(num_steps=60),
    ("bullseye_polytope", "l2"): A.BullseyePolytopeConfig(norm="l2", epsilon=1.0, num_steps=60),
}


def _trial(seed=0, num_poisons=NUM_POISONS):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, SHAPE, dtype=np.uint8),
          rng.integers(0, 256, (num_poisons, *SHAPE), dtype=np.uint8))


def _offset_sizes(poisons, bases, norm):
  offsets = np.asarray(poisons).astype(np.int64) - bases.astype(np.int64)
  if norm == "linf":
    return np.abs(offsets).reshape(len(offsets), -1).max(axis=1)
  return np.square(offsets).reshape(len(offsets), -1).sum(axis=1)


# --- objectives and bounds ---------------------------------------------------------------------

@pytest.mark.parametrize("name, norm", sorted(CONFIGS))
def test_attack_lowers_its_objective_and_keeps_the_bound(name, norm):
  target, bases = _trial()
  config = CONFIGS[name, norm]
  result = A.craft(name, KEY, ENSEMBLE, target, bases, config)
  assert result.poisons.dtype == jnp.uint8 and result.poisons.shape == bases.shape
  initial, final = np.asarray(result.initial_loss), np.asarray(result.final_loss)
  history = np.asarray(result.loss_history)
  assert history.shape[0] == config.num_steps and np.all(np.isfinite(history))
  assert np.all(final < 0.8 * initial), (initial, final)
  assert np.all(history[-1] < history[0])
  # The bound holds exactly after quantization, in integer grey levels, and it is active.
  sizes = _offset_sizes(result.poisons, bases, norm)
  budget = linf_budget(config.epsilon) if norm == "linf" else l2_budget(config.epsilon)
  assert np.all(sizes <= budget)
  assert sizes.max() >= (budget if norm == "linf" else 0.9 * budget)
  # The float iterates themselves keep the bound: quantization alone would restore the integer
  # bound above and hide a missing projection step. (Tolerance: float32 rounding of base/255.)
  offsets = np.asarray(result.poisons_float, np.float64) - bases / 255
  offsets = offsets.reshape(len(offsets), -1)
  float_sizes = (np.abs(offsets).max(axis=1) if norm == "linf"
                 else np.sqrt(np.sum(offsets ** 2, axis=1)))
  assert np.all(float_sizes <= config.epsilon + 1e-6), float_sizes
  # The uint8 poisons are the bound-keeping quantization of those floats.
  np.testing.assert_array_equal(
      result.poisons, A.quantize_poisons(result.poisons_float, bases, norm, config.epsilon))


def _numpy_features(images):
  return [np.asarray(f, np.float64)
          for f in core.extract_features(ENSEMBLE, jnp.asarray(images, jnp.float32) / 255)]


def test_objectives_match_a_numpy_rederivation():
  target, bases = _trial(1)
  base_features = _numpy_features(bases)
  target_features = [f[0] for f in _numpy_features(target[None])]

  # Poison Frogs: Σ_m ‖f_m(x) − f_m(t)‖² + β‖x − b‖², per poison (here at the bases: β term 0).
  # (The configs of the first test are reused: same shapes, so no new compilation.)
  config = CONFIGS["poison_frogs", "l2"]
  result = A.poison_frogs(KEY, ENSEMBLE, target, bases, config)
  collision = sum(np.sum((f - t) ** 2, axis=1) for f, t in zip(base_features, target_features))
  np.testing.assert_allclose(np.asarray(result.initial_loss), collision, rtol=1e-4)
  poisons = np.asarray(result.poisons)
  poison_features = _numpy_features(poisons)
  final = sum(np.sum((f - t) ** 2, axis=1) for f, t in zip(poison_features, target_features))
  final += config.beta * np.sum((poisons / 255 - bases / 255) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(result.final_loss), final, rtol=1e-4)

  # Bullseye: mean over members of ‖mean_j f_m(x_j) − f_m(t)‖ / ‖f_m(t)‖.
  result = A.bullseye_polytope(KEY, ENSEMBLE, target, bases, CONFIGS["bullseye_polytope", "linf"])
  expected = np.mean([np.linalg.norm(f.mean(0) - t) / np.linalg.norm(t)
                      for f, t in zip(base_features, target_features)])
  np.testing.assert_allclose(float(result.initial_loss), expected, rtol=1e-4)

  # Convex Polytope: mean over members of min_{c ∈ simplex} ½‖Σ_j c_j f_m(x_j) − f_m(t)‖² / ‖f_m(t)‖².
  def best_fit(features, target_feature):
    num = features.shape[0]
    fit = optimize.minimize(
        lambda c: 0.5 * np.sum((c @ features - target_feature) ** 2), np.full(num, 1 / num),
        bounds=[(0, 1)] * num, method="SLSQP", options={"ftol": 1e-14},
        constraints=[{"type": "eq", "fun": lambda c: c.sum() - 1}])
    return fit.fun / np.sum(target_feature ** 2)

  result = A.convex_polytope(KEY, ENSEMBLE, target, bases, CONFIGS["convex_polytope", "linf"])
  expected = np.mean([best_fit(f, t) for f, t in zip(base_features, target_features)])
  np.testing.assert_allclose(float(result.initial_loss), expected, rtol=1e-3)


def test_polytope_coefficients():
  target, bases = _trial(2)
  convex = A.convex_polytope(KEY, ENSEMBLE, target, bases, CONFIGS["convex_polytope", "linf"])
  coefficients = np.asarray(convex.coefficients)
  assert coefficients.shape == (len(ENSEMBLE), NUM_POISONS)
  assert coefficients.min() >= 0
  np.testing.assert_allclose(coefficients.sum(1), 1, atol=1e-5)
  assert np.ptp(coefficients) > 0.05  # Fitted, not left uniform.
  bullseye = A.bullseye_polytope(KEY, ENSEMBLE, target, bases, CONFIGS["bullseye_polytope", "linf"])
  np.testing.assert_array_equal(np.asarray(bullseye.coefficients), 1 / NUM_POISONS)


# --- vectorization, determinism, compilation ---------------------------------------------------

# Batched vs one at a time (or vmapped) evaluates the extractors' sums in another order, and
# tens of attack steps amplify those float32 roundings by an amount no simple bound gives. A
# real mix-up (another poison's or trial's target, base or gradient) moves a poison by up to
# its budget ε, so the poisons are compared to 1% of ε and the losses to 0.1% of their value;
# the uint8 poisons may then differ by one grey level where a value lies at a rounding boundary.
POISON_ATOL_PER_EPSILON = 0.01
LOSS_RTOL = 1e-3


def test_poison_frogs_batch_equals_one_poison_at_a_time():
  target, bases = _trial(3)
  config = CONFIGS["poison_frogs", "linf"]
  batch = A.poison_frogs(KEY, ENSEMBLE, target, bases, config)
  singles = [A.poison_frogs(KEY, ENSEMBLE, target, bases[i:i + 1], config)
             for i in range(NUM_POISONS)]
  np.testing.assert_allclose(np.concatenate([s.poisons_float for s in singles]),
                             np.asarray(batch.poisons_float), rtol=0,
                             atol=POISON_ATOL_PER_EPSILON * config.epsilon)
  grey_levels = (np.concatenate([s.poisons for s in singles]).astype(np.int16)
                 - np.asarray(batch.poisons, np.int16))
  assert np.abs(grey_levels).max() <= 1
  np.testing.assert_allclose(np.concatenate([s.loss_history for s in singles], axis=1),
                             np.asarray(batch.loss_history), rtol=LOSS_RTOL)


def test_vmap_over_trials_equals_one_trial_at_a_time():
  (t0, b0), (t1, b1) = _trial(4), _trial(5)
  config = CONFIGS["bullseye_polytope", "linf"]
  batched = jax.vmap(lambda t, b: A.bullseye_polytope(KEY, ENSEMBLE, t, b, config))(
      jnp.stack([t0, t1]), jnp.stack([b0, b1]))
  for i, (t, b) in enumerate([(t0, b0), (t1, b1)]):
    single = A.bullseye_polytope(KEY, ENSEMBLE, t, b, config)
    np.testing.assert_allclose(np.asarray(batched.poisons_float[i]),
                               np.asarray(single.poisons_float), rtol=0,
                               atol=POISON_ATOL_PER_EPSILON * config.epsilon)


@pytest.mark.parametrize("name", sorted(A.ATTACKS))
def test_same_key_same_poisons_and_the_key_drives_dropout(name):
  target, bases = _trial(6)
  stochastic = [testing.tiny_cnn_extractor(3, dropout=0.3)]
  config = A.get_attack(name).config_type(num_steps=15)
  first = A.craft(name, KEY, stochastic, target, bases, config)
  second = A.craft(name, jax.random.key(0), stochastic, target, bases, config)
  np.testing.assert_array_equal(first.poisons, second.poisons)
  np.testing.assert_array_equal(first.poisons_float, second.poisons_float)
  other = A.craft(name, jax.random.key(1), stochastic, target, bases, config)
  assert not np.array_equal(first.poisons_float, other.poisons_float)
  # With deterministic extractors the key does not matter.
  plain = [ENSEMBLE[2]]
  np.testing.assert_array_equal(A.craft(name, KEY, plain, target, bases, config).poisons_float,
                                A.craft(name, jax.random.key(1), plain, target, bases,
                                        config).poisons_float)


@pytest.mark.parametrize("name", sorted(A.ATTACKS))
def test_no_recompilation_for_same_shapes(name):
  traces = []

  def counting_features(params, images):
    traces.append(images.shape)  # Runs only while jax traces the crafting program.
    return testing.mlp_features(params, images)

  extractor = A.FeatureExtractor(counting_features, testing.mlp_extractor(7, SHAPE).params)
  config = A.get_attack(name).config_type(num_steps=3)
  target, bases = _trial(7)
  jax.block_until_ready(A.craft(name, KEY, extractor, target, bases, config))
  traced = len(traces)
  assert traced > 0
  other_params = A.FeatureExtractor(counting_features, testing.mlp_extractor(8, SHAPE).params)
  target, bases = _trial(8)
  jax.block_until_ready(A.craft(name, jax.random.key(3), other_params, target, bases, config))
  assert len(traces) == traced


def test_ensemble_members_of_one_architecture_are_stacked():
  groups = core.group_ensemble(ENSEMBLE)
  assert [g.members for g in groups] == [(0, 1), (2,)]
  assert [g.size for g in groups] == [2, 1]
  # The vmapped group gives each member's own features.
  images = jnp.asarray(_trial(9)[1], jnp.float32) / 255
  together = core.extract_features(ENSEMBLE[:2], images)
  for member, features in zip(ENSEMBLE[:2], together):
    alone = np.asarray(member.apply_fn(member.params, images))
    # Stacked members sum in another order: float32 sums of K terms (K the largest fan-in,
    # over L layers) differ by at most ~L·K·eps·max|output|.
    kernels = [a for a in jax.tree.leaves(member.params) if a.ndim >= 2]
    fan_in = max(int(np.prod(a.shape[:-1])) for a in kernels)
    atol = len(kernels) * fan_in * np.finfo(np.float32).eps * np.abs(alone).max()
    np.testing.assert_allclose(np.asarray(features), alone, rtol=0, atol=atol)


def test_registry_and_config_round_trip():
  target, bases = _trial(10)
  config = A.ConvexPolytopeConfig(num_steps=3, decay_steps=(1, 2), input_std=None)
  assert A.config_from_dict("convex_polytope", config.to_dict()) == config
  config = A.BullseyePolytopeConfig(num_steps=3, decay_steps=(1, 2), input_std=None)
  assert A.config_from_dict("bullseye_polytope", config.to_dict()) == config
  np.testing.assert_array_equal(
      A.craft("bullseye_polytope", KEY, ENSEMBLE[2:], target, bases, config).poisons,
      A.bullseye_polytope(KEY, ENSEMBLE[2:], target, bases, config).poisons)
  with pytest.raises(ValueError, match="unknown attack 'frogs'"):
    A.get_attack("frogs")


def test_published_defaults():
  frogs = A.PoisonFrogsConfig()
  assert (frogs.norm, frogs.epsilon, frogs.num_steps, frogs.step_size, frogs.watermark,
          frogs.step_decay, frogs.tol) == ("linf", 16 / 255, 120, 1e-3, 0.3, 0.2, 1e-5)
  assert frogs.proximal_weight == 0.0
  assert A.PoisonFrogsConfig(norm="l2", epsilon=A.L2_EPSILON).proximal_weight == 4.0
  for config in (A.ConvexPolytopeConfig(), A.BullseyePolytopeConfig()):
    assert (config.num_steps, config.learning_rate, config.momentum, config.decay_steps,
            config.input_std) == (1200, 0.04, 0.9, (), A.BENCHMARK_CIFAR10_STD)
  assert (A.ConvexPolytopeConfig().coeff_tol, A.ConvexPolytopeConfig().coeff_max_iters) == (1e-6, 10_000)


# --- errors ------------------------------------------------------------------------------------

def _bad_output_extractor():
  return A.FeatureExtractor(lambda p, x: x, None)


def _failing_extractor():
  return A.FeatureExtractor(lambda p, x: x.reshape(x.shape[0], 5, -1) @ jnp.ones((3, 2)), None)


@pytest.mark.parametrize("change, error, match", [
    (dict(extractors=[]), ValueError, "ensemble is empty"),
    (dict(extractors=[ENSEMBLE[0], "cnn"]), TypeError, r"extractors\[1\]: expected a FeatureExtractor"),
    (dict(extractors=lambda p, x: x), TypeError, "expected a FeatureExtractor or a sequence"),
    (dict(extractors=[_bad_output_extractor()]), ValueError, r"expected features of shape \[batch, D\]"),
    (dict(extractors=[_failing_extractor()]), ValueError, "apply_fn.*failed on float32 images"),
    (dict(target_image=np.zeros(SHAPE, np.float32)), TypeError, "target_image: expected dtype uint8"),
    (dict(target_image=np.zeros((1, *SHAPE), np.uint8)), ValueError, "target_image: expected a 3-D"),
    (dict(base_images=np.zeros((2, 4, 4, 3), np.uint8)), ValueError, r"base_images: expected images of shape \(8, 8, 3\)"),
    (dict(base_images=np.zeros(SHAPE, np.uint8)), ValueError, "base_images: expected a 4-D"),
    (dict(base_images=np.zeros((0, *SHAPE), np.uint8)), ValueError, "at least one base image"),
    (dict(base_images=np.zeros((2, *SHAPE), np.float32)), TypeError, "base_images: expected dtype uint8"),
    (dict(key=0), TypeError, "key: expected a PRNG key"),
    (dict(key=jax.random.split(KEY, 2)), ValueError, "expected a single PRNG key"),
])
@pytest.mark.parametrize("name", sorted(A.ATTACKS))
def test_attacks_reject_bad_arguments(name, change, error, match):
  target, bases = _trial()
  args = dict(key=KEY, extractors=ENSEMBLE[2:], target_image=target, base_images=bases,
              config=A.get_attack(name).config_type(num_steps=2)) | change
  with pytest.raises(error, match=match):
    A.get_attack(name).craft(**args)


def test_attacks_reject_mismatched_configs():
  target, bases = _trial()
  with pytest.raises(TypeError, match="expected a PoisonFrogsConfig, got ConvexPolytopeConfig"):
    A.poison_frogs(KEY, ENSEMBLE, target, bases, A.ConvexPolytopeConfig())
  with pytest.raises(TypeError, match="expected a BullseyePolytopeConfig for bullseye_polytope"):
    A.bullseye_polytope(KEY, ENSEMBLE, target, bases, A.ConvexPolytopeConfig())
  with pytest.raises(ValueError, match=r"input_std: expected one value per channel \(3\), got 2"):
    A.bullseye_polytope(KEY, ENSEMBLE, target, bases, A.BullseyePolytopeConfig(input_std=(1, 1)))
  with pytest.raises(ValueError, match="exceeds the diameter"):  # √(8·8·3) ≈ 13.9
    A.convex_polytope(KEY, ENSEMBLE, target, bases, A.ConvexPolytopeConfig(norm="l2", epsilon=20.0))


@pytest.mark.parametrize("make, error, match", [
    (lambda: A.PoisonFrogsConfig(num_steps=0), ValueError, "num_steps: expected a finite value > 0"),
    (lambda: A.PoisonFrogsConfig(num_steps=2.5), TypeError, "num_steps: expected an integer"),
    (lambda: A.PoisonFrogsConfig(num_steps=True), TypeError, "num_steps: expected an integer"),
    (lambda: A.PoisonFrogsConfig(epsilon=16), ValueError, r"not \[0, 255\]"),
    (lambda: A.PoisonFrogsConfig(epsilon=-1 / 255), ValueError, "positive, finite"),
    (lambda: A.PoisonFrogsConfig(norm="l1"), ValueError, "norm: expected one of"),
    (lambda: A.PoisonFrogsConfig(step_size=0), ValueError, "step_size"),
    (lambda: A.PoisonFrogsConfig(beta=-1), ValueError, "beta"),
    (lambda: A.PoisonFrogsConfig(watermark=1.0), ValueError, "watermark"),
    (lambda: A.PoisonFrogsConfig(step_decay=0), ValueError, "step_decay"),
    (lambda: A.ConvexPolytopeConfig(learning_rate=-0.1), ValueError, "learning_rate"),
    (lambda: A.ConvexPolytopeConfig(momentum=1.0), ValueError, "momentum"),
    (lambda: A.ConvexPolytopeConfig(decay_steps=(-1,)), ValueError, "decay_steps"),
    (lambda: A.ConvexPolytopeConfig(input_std=(0.2, 0.0, 0.2)), ValueError, "input_std"),
    (lambda: A.ConvexPolytopeConfig(input_std=()), ValueError, "input_std"),
    (lambda: A.ConvexPolytopeConfig(coeff_tol=0), ValueError, "coeff_tol"),
    (lambda: A.ConvexPolytopeConfig(coeff_max_iters=1.5), TypeError, "coeff_max_iters"),
    (lambda: A.BullseyePolytopeConfig(norm="l2", epsilon=0.001), ValueError, "below one grey level"),
])
def test_configs_reject_bad_values(make, error, match):
  with pytest.raises(error, match=match):
    make()
