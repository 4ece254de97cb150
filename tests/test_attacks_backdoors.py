"""The label-consistent and hidden-trigger backdoors (Hong et al.'s Table 1) and their triggers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison import attacks as A
from jaxpoison.attacks import testing
from jaxpoison.attacks.constraints import linf_budget

SHAPE = (32, 32, 3)  # CIFAR-sized, so that the triggers sit where the papers put them
NUM_POISONS = 4
NUM_CLASSES = 10
KEY = jax.random.key(0)
BUDGET = linf_budget(16 / 255)  # 16 grey levels
SURROGATE = testing.mlp_extractor(0, SHAPE, hidden=16, feature_dim=NUM_CLASSES)  # logits
EXTRACTORS = [testing.tiny_cnn_extractor(1), testing.mlp_extractor(2, SHAPE, hidden=16)]


def _images(seed, count=NUM_POISONS):
  return np.random.default_rng(seed).integers(0, 256, (count, *SHAPE), dtype=np.uint8)


def _offsets(poisons, bases):
  return np.asarray(poisons).astype(np.int64) - np.asarray(bases).astype(np.int64)


def _patch(images, position, size=5):
  row, col = position
  return np.asarray(images)[..., row:row + size, col:col + size, :]


def _outside(images, position, size=5):
  keep = np.ones(SHAPE[:2], bool)
  keep[position[0]:position[0] + size, position[1]:position[1] + size] = False
  return np.asarray(images)[..., keep, :]


# --- triggers ------------------------------------------------------------------------------------

def test_trigger_patterns():
  clbd, htbd = A.get_trigger("clbd"), A.get_trigger("htbd")
  for trigger in (clbd, htbd):
    assert trigger.shape == (5, 5, 3) and trigger.dtype == np.uint8
    assert not trigger.flags.writeable
  # clbd.png is a grey pattern (R = G = B) with black and white corners; htbd is coloured.
  assert np.all(clbd[..., 0] == clbd[..., 1]) and np.all(clbd[..., 1] == clbd[..., 2])
  assert clbd[0, 0, 0] == 0 and clbd[4, 4, 0] == 255 and clbd[0, 4, 0] == 255
  assert np.any(htbd[..., 0] != htbd[..., 1])
  np.testing.assert_array_equal(htbd[0, 0], [234, 214, 26])
  assert A.get_trigger("clbd", 8).shape == (8, 8, 3)  # resized like the benchmark's Resize
  with pytest.raises(ValueError, match="only the 5×5 resize"):
    A.get_trigger("htbd", 8)
  with pytest.raises(ValueError, match="trigger: expected one of"):
    A.get_trigger("badnets")


def test_triggers_sit_where_the_papers_put_them():
  assert A.trigger_position(A.LabelConsistentConfig(), SHAPE) == (27, 27)
  assert A.trigger_position(A.HiddenTriggerConfig(), SHAPE) == (22, 22)
  assert A.trigger_position("clbd", SHAPE[:2]) == (27, 27)
  assert A.trigger_position("hidden_trigger", SHAPE) == (22, 22)
  assert A.trigger_position(A.LabelConsistentConfig(position=(3, 4)), SHAPE) == (3, 4)
  assert A.trigger_position("htbd", (64, 64, 3)) == (54, 54)  # Tiny ImageNet
  images = _images(0, 3)
  original = images.copy()
  for name, position in (("clbd", (27, 27)), ("htbd", (22, 22))):
    trigger = A.get_trigger(name)
    pasted = A.paste_trigger(images, trigger, position)
    assert isinstance(pasted, np.ndarray) and pasted.dtype == np.uint8
    rows, cols = np.nonzero(np.any(pasted != images, axis=(0, 3)))
    assert rows.min() >= position[0] and rows.max() <= position[0] + 4
    assert cols.min() >= position[1] and cols.max() <= position[1] + 4
    np.testing.assert_array_equal(_patch(pasted, position), np.broadcast_to(trigger, (3, 5, 5, 3)))
    np.testing.assert_array_equal(_outside(pasted, position), _outside(images, position))
    # One image, and jax arrays under jit, give the same.
    np.testing.assert_array_equal(A.paste_trigger(images[1], trigger, position), pasted[1])
    jitted = jax.jit(lambda x, t=trigger, p=position: A.paste_trigger(x, t, p))
    np.testing.assert_array_equal(jitted(jnp.asarray(images)), pasted)
  np.testing.assert_array_equal(images, original)  # the input is not modified


@pytest.mark.parametrize("args, error, match", [
    (dict(images=np.zeros((2, *SHAPE), np.float32)), TypeError, "images: expected dtype uint8"),
    (dict(trigger=np.zeros((5, 5, 3), np.float32)), TypeError, "trigger: expected dtype uint8"),
    (dict(images=np.zeros((32, 32), np.uint8)), ValueError, r"images: expected uint8 \[N, H, W, C\]"),
    (dict(trigger=np.zeros((5, 5, 1), np.uint8)), ValueError, "the images' C = 3"),
    (dict(position=(28, 27)), ValueError, "does not fit in a 32×32 image"),
    (dict(position=(-1, 0)), ValueError, "does not fit"),
    (dict(position=(2.0, 3)), TypeError, "two integers"),
    (dict(trigger=np.zeros((40, 40, 3), np.uint8), position=(0, 0)), ValueError, "does not fit"),
])
def test_paste_trigger_rejects_bad_arguments(args, error, match):
  call = dict(images=np.zeros((2, *SHAPE), np.uint8), trigger=A.get_trigger("clbd"),
              position=(27, 27)) | args
  with pytest.raises(error, match=match):
    A.paste_trigger(**call)


# --- label-consistent backdoor -------------------------------------------------------------------

def _lcbd_trial(seed=0):
  bases = _images(seed)
  # The class the surrogate gives most of the bases: a low CE to start from.
  logits = testing.mlp_features(SURROGATE.params, jnp.asarray(bases, jnp.float32) / 255)
  label = int(np.bincount(np.argmax(logits, -1), minlength=NUM_CLASSES).argmax())
  return bases, label


LCBD = A.LabelConsistentConfig(num_steps=10)


def test_label_consistent_raises_the_surrogates_loss_and_keeps_the_bound():
  bases, label = _lcbd_trial()
  result = A.label_consistent_backdoor(KEY, SURROGATE, bases, label, LCBD)
  assert result.poisons.dtype == jnp.uint8 and result.poisons.shape == bases.shape
  assert result.coefficients is None
  initial, final = np.asarray(result.initial_loss), np.asarray(result.final_loss)
  history = np.asarray(result.loss_history)
  assert initial.shape == final.shape == (NUM_POISONS,)
  assert history.shape == (LCBD.num_steps, NUM_POISONS) and np.all(np.isfinite(history))
  assert np.all(final > initial + 1.0), (initial, final)  # untargeted PGD: CE on the true label
  assert np.all(history[-1] > history[0])
  # ℓ∞ bound in integer grey levels after quantization, everywhere (patch included); active.
  offsets = _offsets(result.poisons, bases)
  assert np.abs(offsets).max() == BUDGET
  # Inside the patch: the trigger, clipped into the ε-ball around the base (exact integers).
  position = (27, 27)
  trigger = A.get_trigger("clbd").astype(np.int64)
  base_patch = _patch(bases, position).astype(np.int64)
  expected = base_patch + np.clip(trigger - base_patch, -BUDGET, BUDGET)
  np.testing.assert_array_equal(_patch(result.poisons, position), expected)
  # The float poisons are in [0, 1] and within ε too (quantization alone would hide a missing
  # projection).
  x = np.asarray(result.poisons_float)
  assert x.min() >= 0 and x.max() <= 1
  assert np.abs(x - bases / 255.0).max() <= 16 / 255 + 1e-6


def test_label_consistent_step_is_a_projected_sign_ascent():
  bases, label = _lcbd_trial(1)
  config = A.LabelConsistentConfig(num_steps=1, random_start=False, step_size=3 / 255)
  result = A.label_consistent_backdoor(KEY, [SURROGATE], bases, np.int64(label), config)
  # Independent reference: one step of α·sign(∇ Σ CE) from the bases, clipped to the box.
  x = jnp.asarray(bases, jnp.float32) / 255

  def summed_ce(images):
    logits = testing.mlp_features(SURROGATE.params, images)
    return -jnp.sum(jax.nn.log_softmax(logits)[:, label])

  expected = np.clip(x + 3 / 255 * np.sign(jax.grad(summed_ce)(x)), 0, 1)
  np.testing.assert_allclose(_outside(result.poisons_float, (27, 27)),
                             _outside(expected, (27, 27)), rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(result.loss_history)[0], np.asarray(result.initial_loss),
                             rtol=1e-5)


def test_label_consistent_is_deterministic_in_its_key():
  bases, label = _lcbd_trial(2)
  first = A.label_consistent_backdoor(KEY, SURROGATE, bases, label, LCBD)
  again = A.label_consistent_backdoor(jax.random.key(0), SURROGATE, bases, label, LCBD)
  np.testing.assert_array_equal(first.poisons, again.poisons)
  np.testing.assert_array_equal(first.poisons_float, again.poisons_float)
  other = A.label_consistent_backdoor(jax.random.key(1), SURROGATE, bases, label, LCBD)
  assert not np.array_equal(first.poisons_float, other.poisons_float)  # the random start
  # Without the random start and without steps the key does not matter, and the poisons are the
  # bases with the clipped trigger.
  bare = A.LabelConsistentConfig(num_steps=0, random_start=False)
  a = A.label_consistent_backdoor(KEY, SURROGATE, bases, label, bare)
  b = A.label_consistent_backdoor(jax.random.key(5), SURROGATE, bases, label, bare)
  np.testing.assert_array_equal(a.poisons, b.poisons)
  assert a.loss_history.shape == (0, NUM_POISONS)
  np.testing.assert_array_equal(_outside(a.poisons, (27, 27)), _outside(bases, (27, 27)))
  assert np.abs(_offsets(a.poisons, bases)).max() == BUDGET


# --- hidden-trigger backdoor ---------------------------------------------------------------------

def _numpy_greedy(distances):
  d = np.array(distances, np.float64)
  match = np.full(len(d), -1)
  for _ in range(len(d)):
    i, j = np.unravel_index(np.argmin(d), d.shape)
    match[j] = i
    d[i, :] = np.inf
    d[:, j] = np.inf
  return match


def _numpy_benchmark_step(sources, features, assignment):
  """The reference's loop on explicit feature matrices; returns the new assignment."""
  current = sources[assignment]
  d = np.sqrt(np.square(current[:, None] - features[None]).sum(-1))
  new = assignment.copy()
  for _ in range(len(features)):
    i, j = np.unravel_index(np.argmin(d), d.shape)
    new[j] = assignment[i]
    d[i, j] = 1e5
  return new


def test_greedy_matching_equals_a_numpy_reference():
  rng = np.random.default_rng(0)
  for size in (1, 2, 7, 25):
    distances = rng.random((size, size)).astype(np.float32)
    match = np.asarray(jax.jit(A.greedy_matching)(distances))
    np.testing.assert_array_equal(match, _numpy_greedy(distances))
    assert sorted(match) == list(range(size))
  # Ties go to the first entry in row-major order, as numpy's (and torch's) first hit.
  ties = rng.integers(0, 3, (12, 12)).astype(np.float32)
  np.testing.assert_array_equal(A.greedy_matching(ties), _numpy_greedy(ties))
  # Greedy, not optimal: the first pick (0.1) forces the 0.9 pair.
  np.testing.assert_array_equal(A.greedy_matching(jnp.array([[0.1, 0.2], [0.3, 0.9]])), [0, 1])


def test_benchmark_matching_equals_the_reference_loop():
  rng = np.random.default_rng(1)
  sources = rng.normal(size=(9, 4))
  features = sources[rng.permutation(9)] + 0.8 * rng.normal(size=(9, 4))
  assignment = np.arange(9)
  for _ in range(3):  # the pairing carries over from step to step
    distances = A.pairwise_distances(jnp.asarray(sources[assignment], jnp.float32),
                                     jnp.asarray(features, jnp.float32))
    expected = _numpy_benchmark_step(sources, features, assignment)
    assignment = np.asarray(A.benchmark_matching(distances, jnp.asarray(assignment, jnp.int32)))
    np.testing.assert_array_equal(assignment, expected)
    features = features + 0.5 * rng.normal(size=features.shape)


@pytest.mark.parametrize("matching", ["one_to_one", "benchmark"])
def test_hidden_trigger_matches_features_and_keeps_the_bound(matching):
  bases, sources = _images(3), _images(4)
  config = A.HiddenTriggerConfig(num_steps=25, learning_rate=0.1, stop_loss=0.0, matching=matching)
  result = A.hidden_trigger_backdoor(KEY, EXTRACTORS, bases, sources, config)
  history = np.asarray(result.loss_history)
  assert history.shape == (25,) and np.all(np.isfinite(history))
  assert np.asarray(result.initial_loss).shape == ()
  np.testing.assert_allclose(history[0], result.initial_loss, rtol=1e-5)
  assert result.final_loss < 0.3 * result.initial_loss, (result.initial_loss, result.final_loss)
  offsets = _offsets(result.poisons, bases)
  assert result.poisons.dtype == jnp.uint8 and np.abs(offsets).max() == BUDGET
  x = np.asarray(result.poisons_float)
  assert x.min() >= 0 and x.max() <= 1 and np.abs(x - bases / 255.0).max() <= 16 / 255 + 1e-6
  if matching == "one_to_one":
    # The loss is against the TRIGGERED sources (trigger at (22, 22)), one greedy matching per
    # ensemble member, summed.
    patched = A.paste_trigger(sources, A.get_trigger("htbd"), (22, 22))
    to_float = lambda images: jnp.asarray(images, jnp.float32) / 255
    expected = 0.0
    for f1, f2 in zip(A.extract_features(EXTRACTORS, to_float(patched)),
                      A.extract_features(EXTRACTORS, to_float(bases))):
      f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
      match = _numpy_greedy(np.sqrt(np.square(f1[:, None] - f2[None]).sum(-1)))
      expected += np.square(f1[match] - f2).sum()
    np.testing.assert_allclose(result.initial_loss, expected, rtol=1e-4)


def test_hidden_trigger_stops_early():
  bases, sources = _images(5), _images(6)
  extractor = EXTRACTORS[1]
  # A huge stop_loss: the first step is still taken (as the benchmark does), then it stops.
  stopped = A.hidden_trigger_backdoor(
      KEY, extractor, bases, sources,
      A.HiddenTriggerConfig(num_steps=6, learning_rate=0.5, stop_loss=1e30))
  one_step = A.hidden_trigger_backdoor(
      KEY, extractor, bases, sources,
      A.HiddenTriggerConfig(num_steps=1, learning_rate=0.5, stop_loss=0.0))
  history = np.asarray(stopped.loss_history)
  assert np.isfinite(history[0]) and np.all(np.isnan(history[1:]))
  np.testing.assert_array_equal(stopped.poisons_float, one_step.poisons_float)
  assert not np.array_equal(stopped.poisons, bases)
  # No steps at all: the bases come back.
  none = A.hidden_trigger_backdoor(KEY, extractor, bases, sources,
                                   A.HiddenTriggerConfig(num_steps=0))
  np.testing.assert_array_equal(none.poisons, bases)
  assert none.loss_history.shape == (0,)


# --- configs, registry, errors -------------------------------------------------------------------

def test_published_defaults_and_round_trip():
  lcbd = A.LabelConsistentConfig()
  assert (lcbd.norm, lcbd.epsilon, lcbd.num_steps, lcbd.step_size, lcbd.random_start,
          lcbd.patch_size, lcbd.trigger, lcbd.position) == (
              "linf", 16 / 255, 20, 2 / 255, True, 5, "clbd", None)
  htbd = A.HiddenTriggerConfig()
  assert (htbd.norm, htbd.epsilon, htbd.num_steps, htbd.learning_rate, htbd.lr_decay,
          htbd.decay_every, htbd.stop_loss, htbd.patch_size, htbd.trigger, htbd.position) == (
              "linf", 16 / 255, 5000, 1e-3, 0.95, 2000, 10.0, 5, "htbd", None)
  for name, config in [("label_consistent", A.LabelConsistentConfig(position=(1, 2))),
                       ("hidden_trigger", A.HiddenTriggerConfig(position=[3, 4],
                                                                matching="benchmark"))]:
    assert A.config_from_dict(name, config.to_dict()) == config
    assert hash(config) == hash(A.config_from_dict(name, config.to_dict()))


def test_registry_and_craft():
  assert A.ATTACK_KINDS["label_consistent"] == A.ATTACK_KINDS["hidden_trigger"] == "backdoor"
  assert A.attack_kind("poison_frogs") == "feature_collision"
  assert A.get_attack("hidden_trigger") == (A.hidden_trigger_backdoor, A.HiddenTriggerConfig,
                                            "backdoor")
  assert A.get_attack("bullseye_polytope").kind == "feature_collision"
  assert set(A.ALL_ATTACKS) == set(A.ATTACKS) | {"label_consistent", "hidden_trigger",
                                                 "witches_brew", "sleeper_agent", "urp", "lsp",
                                                 "ar", "em", "tap", "rem", "sep", "efp"}
  assert A.attack_kind("witches_brew") == A.attack_kind("sleeper_agent") == "from_scratch"
  assert {A.attack_kind(n) for n in ("urp", "lsp", "ar")} == {"indiscriminate"}
  assert {A.attack_kind(n) for n in ("em", "tap", "rem", "sep", "efp")} == {
      "trained_indiscriminate"}
  assert A.get_attack("sep") == (A.sep_poison, A.SEPConfig, "trained_indiscriminate")
  assert A.get_attack("efp") == (A.efp_poison, A.EFPConfig, "trained_indiscriminate")
  assert set(A.ATTACK_KINDS.values()) == set(A.KINDS)
  # Every poison's config round-trips through the registry, as every attack's does.
  for name in ("urp", "lsp", "ar", "em", "tap", "rem", "sep", "efp"):
    config = A.get_attack(name).config_type()
    assert A.config_from_dict(name, dataclasses.asdict(config)) == config
  bases = _images(7)
  for name, function in [("label_consistent", "label_consistent_backdoor"),
                         ("hidden_trigger", "hidden_trigger_backdoor")]:
    with pytest.raises(TypeError, match=f"is a backdoor attack.*call jaxpoison.attacks.{function}"):
      A.craft(name, KEY, EXTRACTORS, bases[0], bases)
  with pytest.raises(TypeError, match="'lsp' poisons every training image.*call "
                     r"jaxpoison.attacks.lsp_poison\(key, images, labels, config\)"):
    A.craft("lsp", KEY, EXTRACTORS, bases[0], bases)


@pytest.mark.parametrize("config_type", [A.LabelConsistentConfig, A.HiddenTriggerConfig])
@pytest.mark.parametrize("fields, error, match", [
    (dict(norm="l2", epsilon=3.48), ValueError, "supports only 'linf'.*not run the backdoor"),
    (dict(epsilon=16), ValueError, "not \\[0, 255\\]"),
    (dict(epsilon=0.001), ValueError, "below one grey level"),
    (dict(num_steps=-1), ValueError, "num_steps"),
    (dict(num_steps=2.5), TypeError, "num_steps: expected an integer"),
    (dict(patch_size=0), ValueError, "patch_size"),
    (dict(trigger="badnets"), ValueError, "trigger: expected one of"),
    (dict(position=(1, 2, 3)), TypeError, "position: expected None or \\(row, col\\)"),
    (dict(position=(-1, 2)), ValueError, "position"),
])
def test_config_validation(config_type, fields, error, match):
  with pytest.raises(error, match=match):
    config_type(**fields)


@pytest.mark.parametrize("fields, error, match", [
    (dict(step_size=0), ValueError, "step_size"),
    (dict(random_start="yes"), TypeError, "random_start: expected True or False"),
])
def test_label_consistent_config_validation(fields, error, match):
  with pytest.raises(error, match=match):
    A.LabelConsistentConfig(**fields)


@pytest.mark.parametrize("fields, error, match", [
    (dict(learning_rate=0), ValueError, "learning_rate"),
    (dict(lr_decay=0), ValueError, "lr_decay: expected a factor in \\(0, 1\\]"),
    (dict(lr_decay=1.5), ValueError, "lr_decay"),
    (dict(decay_every=0), ValueError, "decay_every"),
    (dict(stop_loss=-1), ValueError, "stop_loss"),
    (dict(trigger="htbd", patch_size=8), ValueError, "only the 5×5 resize"),
    (dict(matching="hungarian"), ValueError, "matching: expected one of"),
])
def test_hidden_trigger_config_validation(fields, error, match):
  with pytest.raises(error, match=match):
    A.HiddenTriggerConfig(**fields)


def _lcbd_call(**change):
  args = dict(key=KEY, surrogate=SURROGATE, base_images=_images(8), base_label=1,
              config=A.LabelConsistentConfig(num_steps=1)) | change
  return A.label_consistent_backdoor(**args)


def _htbd_call(**change):
  args = dict(key=KEY, extractors=EXTRACTORS, base_images=_images(8), source_images=_images(9),
              config=A.HiddenTriggerConfig(num_steps=1)) | change
  return A.hidden_trigger_backdoor(**args)


@pytest.mark.parametrize("call, change, error, match", [
    (_lcbd_call, dict(base_label=NUM_CLASSES), ValueError, r"base_label: expected a class in \[0, 9\]"),
    (_lcbd_call, dict(base_label=-1), ValueError, "base_label"),
    (_lcbd_call, dict(base_label=1.0), TypeError, "base_label: expected an integer"),
    (_lcbd_call, dict(base_label=np.array([1])), TypeError, "one integer class index"),
    (_lcbd_call, dict(base_images=_images(8).astype(np.float32)), TypeError, "base_images: expected dtype uint8"),
    (_lcbd_call, dict(base_images=_images(8)[:0]), ValueError, "at least one base image"),
    (_lcbd_call, dict(surrogate=[SURROGATE, EXTRACTORS[1]]), ValueError, "same classes"),
    (_lcbd_call, dict(config=A.LabelConsistentConfig(position=(30, 0))), ValueError, "does not fit in a 32×32"),
    (_lcbd_call, dict(config=A.HiddenTriggerConfig()), TypeError, "expected a LabelConsistentConfig"),
    (_lcbd_call, dict(key=0), TypeError, "key: expected a PRNG key"),
    (_htbd_call, dict(source_images=_images(9, 3)), ValueError, "one target-class image per base \\(4\\), got 3"),
    (_htbd_call, dict(source_images=np.zeros((4, 16, 16, 3), np.uint8)), ValueError, "source_images: expected images of shape"),
    (_htbd_call, dict(source_images=_images(9).astype(np.float32)), TypeError, "source_images: expected dtype uint8"),
    (_htbd_call, dict(base_images=_images(8)[0]), ValueError, "base_images: expected a 4-D"),
    (_htbd_call, dict(extractors=[]), ValueError, "ensemble is empty"),
    (_htbd_call, dict(config=A.HiddenTriggerConfig(position=(0, 28))), ValueError, "does not fit"),
    (_htbd_call, dict(config=A.LabelConsistentConfig()), TypeError, "expected a HiddenTriggerConfig"),
])
def test_backdoors_reject_bad_arguments(call, change, error, match):
  with pytest.raises(error, match=match):
    call(**change)
