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


# ----------------------------------------------------------------------------- hybrid loss


def _np_normal_cdf(x):
  return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _np_vlb_bits(schedule, eps, v, x, x_t, t):
  """improved-diffusion's `_vb_terms_bpd` (gaussian_diffusion.py, losses.py), float64 numpy,
  one sample at step t (arrays [H, W, C])."""
  b = D.betas(schedule).astype(np.float64)
  acp = np.cumprod(1 - b)
  acp_prev = np.append(1.0, acp[:-1])
  post_var = b * (1 - acp_prev) / (1 - acp)
  log_small = np.log(np.append(post_var[1], post_var[1:]))[t]
  coef1 = (b * np.sqrt(acp_prev) / (1 - acp))[t]
  coef2 = ((1 - acp_prev) * np.sqrt(1 - b) / (1 - acp))[t]
  x0_pred = (x_t - np.sqrt(1 - acp[t]) * eps) / np.sqrt(acp[t])
  mean_p = coef1 * x0_pred + coef2 * x_t
  mean_q = coef1 * x + coef2 * x_t
  frac = (v + 1) / 2
  logvar_p = frac * np.log(b[t]) + (1 - frac) * log_small
  if t == 0:
    inv = np.exp(-0.5 * logvar_p)
    cdf_plus = _np_normal_cdf(inv * (x - mean_p + 1 / 255))
    cdf_min = _np_normal_cdf(inv * (x - mean_p - 1 / 255))
    log_probs = np.where(x < -0.999, np.log(np.maximum(cdf_plus, 1e-12)),
                         np.where(x > 0.999, np.log(np.maximum(1 - cdf_min, 1e-12)),
                                  np.log(np.maximum(cdf_plus - cdf_min, 1e-12))))
    return -log_probs.mean() / np.log(2)
  kl = 0.5 * (-1 + logvar_p - log_small + np.exp(log_small - logvar_p)
              + (mean_q - mean_p) ** 2 * np.exp(-logvar_p))
  return kl.mean() / np.log(2)


def test_vlb_terms_match_improved_diffusion_and_train_the_variance_only():
  schedule = D.cosine_schedule(4000)
  rng = np.random.default_rng(0)
  t = np.array([0, 0, 1, 57, 99, 3999])
  shape = (len(t), 4, 4, 3)
  x = np.clip(np.round(rng.uniform(-1.1, 1.1, shape) * 127.5) / 127.5, -1, 1)  # edges too
  noise = rng.normal(size=shape)
  abar = alphas_cumprod(schedule)[t][:, None, None, None]
  x_t = np.sqrt(abar) * x + np.sqrt(1 - abar) * noise
  eps = noise + 0.1 * rng.normal(size=shape)
  v = rng.uniform(-1, 1, shape)
  args = [jnp.asarray(a, jnp.float32) for a in (eps, v, x, x_t)]
  ours = np.asarray(T.vlb_terms(schedule, *args, jnp.asarray(t)))
  reference = np.array([_np_vlb_bits(schedule, eps[i], v[i], x[i], x_t[i], t[i])
                        for i in range(len(t))])
  # float32 against float64: terms of order 1e-3..10 bits; the t = 3999 KL divides by a β̃ near
  # 1, the t = 1 one by a tiny β̃ (1e-7 relative rounding × 1/β̃-sized ratios).
  np.testing.assert_allclose(ours, reference, rtol=2e-3, atol=1e-5)
  # The mean is held fixed: no gradient reaches ε; v gets one.
  grad_eps, grad_v = jax.grad(lambda e, vv: T.vlb_terms(schedule, e, vv, *args[2:],
                                                      jnp.asarray(t)).sum(), argnums=(0, 1))(
      args[0], args[1])
  assert not np.asarray(grad_eps).any() and np.abs(np.asarray(grad_v)).sum() > 0
  # The exact ε with v = −1 (Σ = β̃, the true posterior's variance) makes every KL zero.
  exact = np.asarray(T.vlb_terms(schedule, jnp.asarray(noise, jnp.float32),
                                 -jnp.ones(shape, jnp.float32), *args[2:], jnp.asarray(t)))
  np.testing.assert_allclose(exact[2:], 0.0, atol=2e-3)


def test_hybrid_loss_needs_and_trains_the_variance_channels():
  with pytest.raises(ValueError, match="needs a UNet with 6 output channels"):
    _config(vlb_weight=0.001)
  # Without space-to-depth, conv_out's last axis is the output channels: [ε | v].
  learned = dataclasses.replace(TINY, out_channels=6, patch_size=1)
  cfg = _config(unet=learned, schedule=D.cosine_schedule(4000), vlb_weight=0.001,
                max_timestep=99)
  rng = np.random.default_rng(1)
  # Random weights from numpy: jax.random initialization compiles the PRNG for every parameter
  # shape (tens of seconds on a CPU), and any weights serve here.
  params = {name: jnp.asarray(rng.normal(0.0, 0.05, shape.shape), shape.dtype)
            for name, shape in D.param_shapes(learned).items()}
  x = jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32)
  t = jnp.array([0, 5, 50, 99])
  # Jitted: op by op, the UNet's forward and backward compile hundreds of small programs.
  loss_and_grad = jax.jit(jax.value_and_grad(T.loss_fn), static_argnums=(1,))
  hybrid_loss, grads = loss_and_grad(params, cfg, x, t, noise, None)
  simple_loss = jax.jit(T.loss_fn, static_argnums=(1,))(
      params, dataclasses.replace(cfg, vlb_weight=0.0), x, t, noise, None)
  assert hybrid_loss > simple_loss
  # The v half of the output conv gets a gradient (through the VLB term: L_simple ignores v;
  # that no gradient reaches ε through the VLB term is the vlb_terms test's).
  assert np.abs(np.asarray(grads["conv_out.kernel"])[..., 3:]).sum() > 0
