"""Denoiser training: the loss and its σ weighting, the lr schedule, resuming, config checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpoison import diffusion as D
from jaxpoison.diffusion import train as T
from jaxpoison.diffusion.schedule import alphas_cumprod

TINY = D.UNetConfig(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                    attention_resolutions=(4,), norm_num_groups=4, scale_shift_norm=True,
                    patch_size=2)


def _config(**changes):
  base = T.DenoiserTrainConfig(unet=TINY, schedule=D.linear_schedule(), batch_size=4,
                               learning_rate=1e-3, warmup_steps=2, ema_decay=0.9,
                               num_steps=4, steps_per_chunk=2, seed=0)
  return dataclasses.replace(base, **changes)


def test_loss_weights_normalized_monotone_and_sigma_power():
  cfg = _config(loss_weight_exponent=0.85)
  lo, hi = cfg.timestep_range()
  w = T.loss_weights(cfg)
  assert w.shape == (1000,) and (lo, hi) == (0, D.timestep_for_sigma(cfg.schedule, 1.0))
  assert np.all(w[hi + 1:] == 0)
  np.testing.assert_allclose(w[lo:hi + 1].mean(), 1.0, rtol=1e-6)
  assert np.all(np.diff(w[lo:hi + 1]) > 0)
  # w(t) ∝ σ(t)^γ with σ(t) the pixel-unit level whose step is t.
  abar = alphas_cumprod(cfg.schedule)
  sigma = np.sqrt((1 - abar) / abar) / 2
  t1, t2 = D.timestep_for_sigma(cfg.schedule, 0.1), D.timestep_for_sigma(cfg.schedule, 1.0)
  np.testing.assert_allclose(w[t2] / w[t1], (sigma[t2] / sigma[t1]) ** 0.85, rtol=1e-5)
  np.testing.assert_array_equal(T.loss_weights(_config())[lo:hi + 1], 1.0)


@pytest.mark.parametrize("gamma", [0.0, 0.85])
def test_loss_is_the_weighted_eps_error(gamma):
  cfg = _config(loss_weight_exponent=gamma)
  params = D.create_denoiser(TINY, cfg.schedule, jax.random.key(0)).params
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
  noise = rng.standard_normal(x.shape).astype(np.float32)
  t = np.array([0, 57, 396], np.int32)
  abar = alphas_cumprod(cfg.schedule)[t].astype(np.float32)[:, None, None, None]
  x_t = np.sqrt(abar) * x + np.sqrt(1 - abar) * noise
  eps = np.asarray(D.unet_apply(TINY, params, x_t, t))
  per_sample = ((eps - noise) ** 2).mean(axis=(1, 2, 3))
  sigma = np.sqrt((1 - abar.ravel()) / abar.ravel()) / 2
  full = np.sqrt((1 - alphas_cumprod(cfg.schedule)) / alphas_cumprod(cfg.schedule))[:397] / 2
  weights = sigma ** gamma / np.mean(full ** gamma)
  loss = float(T.loss_fn(params, cfg, x, t, noise, None))
  np.testing.assert_allclose(loss, np.mean(per_sample * weights), rtol=1e-4)


def test_cosine_schedule_decays_to_zero_and_constant_stays():
  cos = T._optimizer(_config(lr_schedule="cosine", num_steps=100, warmup_steps=10))
  const = T._optimizer(_config(num_steps=100, warmup_steps=10))

  def lr_at(opt, step):  # The chain's adamw state holds the schedule's step count.
    params = {"w": jnp.ones(())}
    state = opt.init(params)
    grads = {"w": jnp.ones(())}
    for _ in range(step + 1):
      updates, state = opt.update(grads, state, params)
    return -float(updates["w"])  # Adam's first step on a constant gradient moves by ≈ lr.

  assert lr_at(cos, 10) == pytest.approx(1e-3, rel=1e-2)
  assert lr_at(cos, 99) < 1e-6
  assert lr_at(const, 99) == pytest.approx(1e-3, rel=1e-2)


def test_resumed_training_equals_uninterrupted(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  cfg = _config(loss_weight_exponent=0.85, lr_schedule="cosine")
  whole = T.train_denoiser(cfg, images, tmp_path / "whole", log=lambda m: None)
  # max_minutes=0: stop (and checkpoint) after the first chunk of 2 steps, as a killed run would
  # have at its last checkpoint; then the same command again.
  T.train_denoiser(cfg, images, tmp_path / "resumed", max_minutes=0, log=lambda m: None)
  messages = []
  resumed = T.train_denoiser(cfg, images, tmp_path / "resumed", log=messages.append)
  assert any("resumed" in m and "step 2" in m for m in messages)
  for name in whole.params:
    np.testing.assert_array_equal(np.asarray(whole.params[name]),
                                  np.asarray(resumed.params[name]), err_msg=name)
  loaded = D.load_denoiser(tmp_path / "whole" / "ema")
  assert loaded.trained_timesteps == (0, D.timestep_for_sigma(cfg.schedule, 1.0))


def test_config_errors():
  with pytest.raises(ValueError, match="lr_schedule"):
    _config(lr_schedule="linear")
  with pytest.raises(ValueError, match="loss_weight_exponent"):
    _config(loss_weight_exponent=-1.0)
