"""FrieNDs: the friendly noise (bound, objective, reference update), the training noise, and the
mid-run switch in the trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison import classifier
from jaxpoison.classifier.friendly import friendly_perturbation
from jaxpoison.defenses import friends


def _linear_logits(seed=0, classes=3, scale=0.1):
  # Input sensitivity of the order of a trained network's.
  w = scale * jax.random.normal(jax.random.key(seed), (4 * 4 * 3, classes))
  return lambda z: z.reshape(z.shape[0], -1) @ w


def _kl(logits_fn, x, delta):
  p0 = jax.nn.log_softmax(logits_fn(x))
  p = jax.nn.log_softmax(logits_fn(jnp.clip(x + delta, 0, 1)))
  return float(jnp.mean(jnp.sum(jnp.exp(p0) * (p0 - p), -1)))


def test_friendly_noise_is_bounded_large_and_keeps_the_prediction():
  logits_fn = _linear_logits()
  x = jax.random.uniform(jax.random.key(1), (16, 4, 4, 3), minval=0.2, maxval=0.8)
  delta = friendly_perturbation(logits_fn, x, jax.random.key(2), clamp=16 / 255)
  assert float(jnp.abs(delta).max()) <= 16 / 255 + 1e-7
  # The size reward pushes pixels to the bound (the start has mean |δ| = 4/255) ...
  assert float(jnp.mean(jnp.abs(delta))) > 12 / 255
  # ... where the output moves far less than under noise of the same size, random signs.
  signs = jnp.where(jax.random.bernoulli(jax.random.key(3), 0.5, x.shape), 1.0, -1.0)
  assert _kl(logits_fn, x, delta) < 0.2 * _kl(logits_fn, x, signs * jnp.abs(delta))


def test_friendly_noise_matches_a_numpy_reference_of_the_update():
  # SGD with Nesterov momentum on (1/128)·Σ KL − μ·mean(clamp(δ)²), as PyTorch runs it.
  logits_fn = _linear_logits(3, scale=1.0)
  w = np.asarray(jax.random.normal(jax.random.key(3), (48, 3)), np.float64)
  x = np.asarray(jax.random.uniform(jax.random.key(4), (5, 4, 4, 3), minval=0.3, maxval=0.7))
  key = jax.random.key(5)
  delta = np.asarray(jax.random.uniform(key, x.shape, jnp.float32, -8 / 255, 8 / 255),
                     np.float64)
  lr, mu, clamp, steps = 20.0, 1.0, 16 / 255, 4

  def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  p0 = softmax(x.reshape(5, -1) @ w)
  buf = np.zeros_like(delta)
  for _ in range(steps):
    inside = np.abs(delta) < clamp
    bounded = np.clip(delta, -clamp, clamp)
    z = np.clip(x + bounded, 0, 1)
    p = softmax(z.reshape(5, -1) @ w)
    # d KL(p0 ‖ p) / d logits = p − p0; through the linear map, the clip of x + δ, the clamp.
    g_kl = ((p - p0) @ w.T).reshape(x.shape) * ((x + bounded > 0) & (x + bounded < 1))
    g = (g_kl - mu * 2 * bounded / 48) * inside / 128
    buf = 0.9 * buf + g
    delta = delta - lr * (g + 0.9 * buf)
  expected = np.clip(delta, -clamp, clamp)
  got = friendly_perturbation(logits_fn, jnp.asarray(x, jnp.float32), key, steps=steps, lr=lr,
                              mu=mu, clamp=clamp)
  np.testing.assert_allclose(got, expected, atol=2e-6)


def _data(n=64, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 3, n)


def test_training_noise_statistics():
  from jaxpoison.classifier.train import _train_noise
  shape = (200_000,)
  for kind, mean_abs, std in (("bernoulli", 0.1, 0.1), ("uniform", 0.05, 0.1 / np.sqrt(3)),
                              ("gaussian", 0.1 * np.sqrt(2 / np.pi), 0.1)):
    config = classifier.tiny_config(noise=kind, noise_scale=0.1)
    z = np.asarray(_train_noise(config, jax.random.key(0), shape))
    # 200k draws: the sample moments are within ~1% (6σ of their sampling error).
    assert abs(np.abs(z).mean() / mean_abs - 1) < 0.01, kind
    assert abs(z.std() / std - 1) < 0.01, kind
    assert abs(z.mean()) < 6 * std / np.sqrt(shape[0]), kind
  values = np.unique(np.asarray(_train_noise(
      classifier.tiny_config(noise="bernoulli", noise_scale=0.1), jax.random.key(1), (50,))))
  np.testing.assert_allclose(values, [-0.1, 0.1], rtol=1e-6)


def test_trainer_switches_to_friendly_images_mid_run():
  images, labels = _data()
  keys = jax.random.split(jax.random.key(0), 2)
  config = friends.friends_config(
      classifier.tiny_config(num_classes=3, epochs=2, batch_size=16, whitening_images=16,
                             lookahead=False),
      begin_epoch=1, steps=3)
  parts = classifier.make_train_parts(config)
  assert parts.switch_step(64) == 4  # one epoch of 4 steps
  models = classifier.train_models(keys, images, labels, config)
  # The same run by hand: 4 steps on the clean images, the switch, 4 steps on its output.
  step = jax.jit(parts.body)
  carry = jax.jit(parts.start)(keys, jnp.asarray(images), jnp.asarray(labels))
  for t in range(4):
    carry = step(carry, jnp.int32(t), keys, images, labels)
  switched = jax.jit(parts.switch)(carry, keys, jnp.asarray(images))
  assert switched.shape == (2, 64, 32, 32, 3) and switched.dtype == jnp.uint8
  diff = np.asarray(switched, int) - images[None].astype(int)
  assert np.abs(diff).max() <= 16 and np.abs(diff).mean() > 2  # rounded δ, |δ| ≤ 16/255
  assert not np.array_equal(switched[0], switched[1])  # each model its own noise
  for t in range(4, 8):
    carry = step(carry, jnp.int32(t), keys, switched, labels)
  by_hand = parts.finish(carry, 8)
  np.testing.assert_allclose(classifier.logits(models, images[:8]),
                             classifier.logits(by_hand, images[:8]), atol=1e-5)


def test_friendly_noise_of_trained_models_and_errors():
  images, labels = _data(32)
  config = classifier.tiny_config(num_classes=3, epochs=1, batch_size=16, whitening_images=16)
  models = classifier.train_models(jax.random.split(jax.random.key(0), 2), images, labels,
                                   config)
  noise = friends.friendly_noise(models, images[:10], jax.random.key(1), steps=2,
                                 batch_size=4)
  assert noise.shape == (2, 10, 32, 32, 3)
  assert float(jnp.abs(noise).max()) <= 16 / 255 + 1e-7
  with pytest.raises(ValueError, match="friendly_epoch"):
    classifier.tiny_config(epochs=2, friendly_epoch=2)
  with pytest.raises(ValueError, match="noise_scale"):
    classifier.tiny_config(noise="bernoulli")
  with pytest.raises(ValueError, match="noise: expected"):
    classifier.tiny_config(noise="salt", noise_scale=0.1)


def test_friendliness_measures_size_bound_and_kept_predictions():
  images, labels = _data(32)
  config = classifier.tiny_config(num_classes=3, epochs=1, batch_size=16, whitening_images=16)
  models = classifier.train_models(jax.random.split(jax.random.key(0), 2), images, labels,
                                   config)
  options = dict(steps=3, lr=50.0, batch_size=8)
  report = friends.friendliness(models, images[:12], jax.random.key(1), **options)
  # The same noise friendly_noise gives, measured independently.
  noise = np.asarray(friends.friendly_noise(models, images[:12], jax.random.key(1), **options))
  x = images[:12].astype(np.float32) / 255
  np.testing.assert_allclose(report.mean_abs, np.abs(noise).reshape(2, -1).mean(1) * 255,
                             rtol=1e-5)
  np.testing.assert_allclose(report.at_bound, (np.abs(noise) >= 15.5 / 255).reshape(2, -1)
                             .mean(1))
  for m in range(2):
    one = classifier.select(models, m)
    expected = (np.asarray(classifier.predict(one, np.clip(x + noise[m], 0, 1)))[0]
                == np.asarray(classifier.predict(one, images[:12]))[0]).mean()
    assert report.kept[m] == pytest.approx(expected)
  # A zero-size step keeps the uniform start: nothing at the bound, mean |δ| ≈ 4/255.
  still = friends.friendliness(models, images[:12], jax.random.key(1), steps=3, lr=1e-12,
                               batch_size=8)
  np.testing.assert_array_equal(still.at_bound, 0.0)
  # 2·12·3072 draws of |U(±8)|: mean 4 grey levels, standard error ≈ 0.01.
  np.testing.assert_allclose(still.mean_abs, 4.0, atol=0.1)


def test_noise_before_the_bilinear_shift_keeps_two_thirds_of_its_std():
  # FrieNDs' reference adds its ±8/255 Bernoulli noise before RandomTransform, whose bilinear
  # interpolation averages neighbouring noise values with the weights of a uniform real shift:
  # E[(1 − a)² + a²] = 2/3 of the variance per axis, so the std falls to 2/3. Added after an
  # integer shift (the earlier order) the noise keeps its full std.
  from jaxpoison.classifier.train import _augment, add_train_noise
  scale = 8 / 255
  grey = np.full((256, 32, 32, 3), 128, np.uint8)
  keys = jax.random.split(jax.random.key(0), 256)
  idx = jnp.arange(256)

  def interior_noise_std(config, before):
    def one(key):
      x = grey[:1]
      if before:
        x = add_train_noise(config, key, 0, x)
      x = _augment(config, key, 0, 0, x, idx[:1], 256)
      if not before:
        x = add_train_noise(config, key, 0, x)
      return x[0]
    out = np.asarray(jax.vmap(one)(keys)) - 128 / 255
    return out[:, 6:-6, 6:-6].std() / scale  # away from the fill at the borders

  bilinear = friends.friends_config(classifier.tiny_config(translate=4, flip="random",
                                                           epochs=8))
  assert bilinear.noise_before_augment and bilinear.shift == "bilinear"
  ratio = interior_noise_std(bilinear, True)
  # 256 images × 20 × 20 × 3 values, correlated over ~2×2 neighbourhoods: the sample std is
  # within ~1% of its expectation; 2/3 ± 0.03 also holds the finite-shift variation.
  assert abs(ratio - 2 / 3) < 0.03, ratio
  old = friends.friends_config(classifier.tiny_config(translate=4, flip="random", epochs=8),
                               noise_before_augment=False, shift="integer")
  assert abs(interior_noise_std(old, False) - 1.0) < 0.01
