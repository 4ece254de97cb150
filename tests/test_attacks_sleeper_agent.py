"""Sleeper Agent: random trigger placement, poison selection by gradient norm, and crafting with
surrogate retraining between spans of gradient-matching steps."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison.attacks import configs as attack_configs
from jaxpoison.attacks import constraints, triggers
sa = importlib.import_module("jaxpoison.attacks.sleeper_agent")
wb = importlib.import_module("jaxpoison.attacks.witches_brew")
from test_attacks_witches_brew import _images, _normalized_net, _surrogate


def _config(**changes):
  return attack_configs.SleeperAgentConfig(**{"num_steps": 9, "retrain_every": 3,
                                              "patch_size": 8, **changes})


def test_trigger_is_the_reference_patch_resized():
  trigger = triggers.get_trigger("sleeper_agent", 8)
  assert trigger.shape == (8, 8, 3) and trigger.dtype == np.uint8
  with pytest.raises(ValueError, match="only the 8×8 resize"):
    triggers.get_trigger("sleeper_agent", 5)


def test_patch_images_pastes_at_uniform_random_positions():
  images = _images(0, 2000, size=32)
  patched, positions = sa.patch_images(jax.random.key(0), images, _config())
  patched, positions = np.asarray(patched), np.asarray(positions)
  trigger = triggers.get_trigger("sleeper_agent", 8)
  for i in (0, 1, 1999):
    r, c = positions[i]
    np.testing.assert_array_equal(patched[i, r:r + 8, c:c + 8], trigger)
    np.testing.assert_array_equal(patched[i], triggers.paste_trigger(images[i], trigger, (r, c)))
  assert positions.min() == 0 and positions.max() == 32 - 8
  # 25 corners per axis, 2000 draws: each value expected 80 times; below 40 or above 130 has
  # probability < 1e-6 per value under the uniform law (binomial tails).
  for axis in range(2):
    counts = np.bincount(positions[:, axis], minlength=25)
    assert counts.min() > 40 and counts.max() < 130
  again, _ = sa.patch_images(jax.random.key(0), images, _config())
  np.testing.assert_array_equal(np.asarray(again), patched)


def test_gradient_norms_and_selection():
  a, b = _surrogate(0), _surrogate(1)
  images, labels = _images(1, 7), np.arange(7) % 3

  def norm(model, i):
    apply = lambda p, x: _normalized_net(p, model.state, x)
    grad = wb.parameter_gradient(apply, model.params, jnp.asarray(images[i:i + 1]) / 255.0,
                                 jnp.asarray(labels[i:i + 1]))
    return np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grad)))

  expected = np.array([(norm(a, i) + norm(b, i)) / 2 for i in range(7)])
  got = np.asarray(sa.gradient_norms([a, b], images, labels, batch_size=3))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  chosen = sa.select_poisons([a, b], images, labels, 3, batch_size=3)
  assert sorted(chosen) == sorted(np.argsort(expected)[-3:])
  with pytest.raises(ValueError, match="num_poisons"):
    sa.select_poisons([a, b], images, labels, 8)


def test_retraining_spans_and_their_models():
  surrogate = _surrogate(2)
  sources, bases = _images(2, 6), _images(3, 4)
  config = _config()
  assert config.retrain_steps == (3, 6)  # after steps 3 and 6 of 0..8, as the reference
  calls = []

  def retrain(key, poisons):
    calls.append(np.asarray(poisons))
    # The same network each time: spans of steps must then equal one uninterrupted run.
    return surrogate

  out = sa.sleeper_agent(jax.random.key(0), surrogate, sources, 1, bases, config, retrain)
  assert out.retrained_at == (3, 6) and len(calls) == 2
  for poisons in calls:
    assert poisons.dtype == np.uint8
    assert np.abs(poisons.astype(int) - bases.astype(int)).max() <= constraints.linf_budget(
        config.epsilon)
  no_retraining = sa.sleeper_agent(jax.random.key(0), surrogate, sources, 1, bases,
                                   config.__class__(**{**vars(config), "retrain_every": 0}))
  np.testing.assert_array_equal(np.asarray(out.result.poisons),
                                np.asarray(no_retraining.result.poisons))
  np.testing.assert_allclose(np.asarray(out.result.loss_history),
                             np.asarray(no_retraining.result.loss_history), rtol=1e-6)
  assert out.result.loss_history.shape == (9,)


def test_retrained_surrogates_take_over():
  first, second = _surrogate(3), _surrogate(4)
  sources, bases = _images(4, 6), _images(5, 4)
  config = _config(num_steps=5, retrain_every=2)
  out = sa.sleeper_agent(jax.random.key(1), first, sources, 0, bases, config,
                         lambda key, poisons: [second])
  # The final losses are computed against the last surrogates' source gradient.
  patched, _ = sa.patch_images(jax.random.fold_in(jax.random.key(1), 0), sources, config)
  grads = wb.target_gradients([second], jnp.asarray(patched, jnp.float32) / 255,
                              jnp.zeros(6, jnp.int32), batch_size=6)
  expected = wb.matching_loss([second], grads, jnp.asarray(out.result.poisons, jnp.float32) / 255,
                              jnp.zeros(4, jnp.int32), config)
  assert float(out.result.final_loss) == pytest.approx(float(expected), rel=1e-5)


def test_sleeper_agent_errors():
  surrogate, sources, bases = _surrogate(0), _images(0, 4), _images(1, 2)
  with pytest.raises(ValueError, match="retrain_fn"):
    sa.sleeper_agent(jax.random.key(0), surrogate, sources, 1, bases, _config())
  with pytest.raises(TypeError, match="SleeperAgentConfig"):
    sa.sleeper_agent(jax.random.key(0), surrogate, sources, 1, bases,
                     attack_configs.WitchesBrewConfig())
  with pytest.raises(ValueError, match="source_images"):
    sa.sleeper_agent(jax.random.key(0), surrogate, _images(0, 4, size=6), 1, bases,
                     _config(retrain_every=0))
