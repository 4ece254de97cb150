"""The one registry: every attack and poison by name, and the one result type through `run`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison import attacks as A
from jaxpoison.attacks.sleeper_agent import SleeperAgentResult
from jaxpoison.attacks.unlearnable.em import EMResult
from jaxpoison.attacks.witches_brew import BrewResult


def _attack_result(p=3):
  poisons = jnp.full((p, 4, 4, 3), 7, jnp.uint8)
  return A.AttackResult(poisons, poisons.astype(jnp.float32) / 255, jnp.zeros(p), jnp.ones(p),
                        jnp.zeros((5, p)))


def test_every_result_type_becomes_a_poison_result_on_the_host():
  result = A.as_poison_result(_attack_result())
  assert isinstance(result.poisons, np.ndarray) and result.poisons.dtype == np.uint8
  assert set(result.info) == {"poisons_float", "initial_loss", "final_loss", "loss_history",
                              "coefficients"}
  assert all(not isinstance(v, jax.Array) for v in result.info.values())
  np.testing.assert_array_equal(result.info["final_loss"], np.ones(3))
  # Results that wrap an AttackResult keep its fields and add their own.
  brew = A.as_poison_result(BrewResult(_attack_result(), np.array([0.5, 0.2]), 1))
  assert brew.info["best_restart"] == 1 and "loss_history" in brew.info
  np.testing.assert_array_equal(brew.poisons, np.full((3, 4, 4, 3), 7, np.uint8))
  sleeper = A.as_poison_result(SleeperAgentResult(_attack_result(), jnp.zeros((2, 2), jnp.int32),
                                                  (50,)))
  assert sleeper.info["retrained_at"] == (50,)
  assert isinstance(sleeper.info["source_positions"], np.ndarray)
  # The trained poisons' results keep their non-array outputs (a surrogate) as they are.
  surrogate = object()
  em = A.as_poison_result(EMResult(np.zeros((2, 4, 4, 3), np.uint8), surrogate,
                                   np.array([0.5, 0.99]), True))
  assert em.info["surrogate"] is surrogate and em.info["converged"] is True
  # A bare array (the data-generated poisons), and a PoisonResult, pass through.
  bare = A.as_poison_result(jnp.zeros((2, 4, 4, 3), jnp.uint8))
  assert bare.info == {} and isinstance(bare.poisons, np.ndarray)
  assert A.as_poison_result(bare) is bare


@pytest.mark.parametrize("value, match", [
    (np.zeros((2, 4, 4, 3), np.float32), "expected uint8 poisons, got float32"),
    ("poisons", "expected an attack's result, got str"),
    (A.Trial(0, 1, 2, np.arange(2)), "Trial has no poisons"),
])
def test_what_is_not_a_result_is_refused(value, match):
  with pytest.raises(TypeError, match=match):
    A.as_poison_result(value)


def test_run_calls_the_registered_function_and_returns_a_poison_result():
  key = jax.random.key(3)
  images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  labels = np.array([0, 1, 2, 0, 1, 2])
  config = A.URPConfig(num_classes=3)
  result = A.run("urp", key, images, labels, config)
  assert isinstance(result, A.PoisonResult) and result.info == {}
  np.testing.assert_array_equal(result.poisons, np.asarray(A.urp_poison(key, images, labels,
                                                                          config)))
  with pytest.raises(ValueError, match="unknown attack 'urpp'"):
    A.run("urpp", key, images, labels, config)
