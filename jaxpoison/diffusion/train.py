"""DDPM training with the simple ε-prediction loss (or improved DDPM's hybrid loss), for the
single-step denoising range of σ.

Loss: E‖ε − ε_θ(√ᾱ_t·x + √(1−ᾱ_t)·ε, t)‖² (Ho et al.'s L_simple), x a CIFAR-10 image in
[−1, 1] (random horizontal flips), ε ~ N(0, I), AdamW with linear warm-up, gradient clipping,
and an exponential moving average (EMA) of the params, which is the model that gets shipped.

Time steps: certification denoises at σ ∈ [0.05, 1.0] (pixel units), i.e. at the steps
t(0.05) .. t(1.0) of the schedule (26 .. 396 for the linear DDPM schedule). Rather than
spreading a small training budget over all T = 1000 steps, t is drawn uniformly from
[min_timestep, max_timestep], by default [0, t(σ_max = 1.0)]: every single-step denoising level
of the certification range, plus the steps below it that the multi-step reverse process
(`denoise_multistep`) walks through on its way to 0. The model is undefined for t > max_timestep.

The whole chunk of `steps_per_chunk` steps is one jitted `lax.scan` on the device (data in device
memory, batches drawn with `fold_in(key, step)`), and the state is checkpointed between chunks, so
a run can be stopped and resumed (same result as an uninterrupted one, chunk boundaries aside).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpoison.diffusion.model import Denoiser, create_denoiser, save_denoiser, unet_apply
from jaxpoison.diffusion.denoise import reverse_process_table
from jaxpoison.diffusion.schedule import (ScheduleConfig, alphas_cumprod, sigmas,
                                         timestep_for_sigma)
from jaxpoison.diffusion.unet import UNetConfig, count_params
from jaxpoison.io import atomic_write_dir
from jaxpoison import backend
from jaxpoison.keys import as_key


@dataclasses.dataclass(frozen=True)
class DenoiserTrainConfig:
  """Hyper-parameters of `train_denoiser` (frozen, hashable).

  min_timestep/max_timestep: the range t is drawn from, uniformly; None = derived from
  sigma_min/sigma_max (max = t(sigma_max), min = 0 when include_low_steps else t(sigma_min)).
  loss_weight_exponent: γ; each sample's ε error is weighted by σ_t^γ (σ_t the pixel-unit noise
    level of step t), normalized to mean 1 over the time-step range. γ = 0 is L_simple. Why:
    the x̂₀ PSNR gain over the noisy input at σ is exactly −10·log10 of the ε error there, so the
    sum of the gains over σ is maximized by weighting each σ by 1/e(σ); for small CIFAR-10
    denoisers e(σ) ∝ σ^−0.84 over σ ∈ [0.1, 1] (the issue-3 default: 8.2 → 16.6 dB), so
    γ ≈ 0.85 gives every σ the same say, where L_simple lets σ = 0.1 outweigh σ = 1 sevenfold.
  lr_schedule: "constant" (after warm-up) or "cosine" (decay to 0 at num_steps: a fixed budget
    ends on a small step size, which gains more than an EMA alone; resuming keeps the schedule,
    since it is a function of the step).
  vlb_weight: λ of improved DDPM's hybrid loss L_simple + λ·L_vlb (Nichol & Dhariwal; 0.001 in
    their recipe and ECLIPSE's): each sample adds λ·T·L_t (`vlb_terms`, in bits per dimension),
    which is improved-diffusion's RESCALED_MSE vb term (L_t·T/1000) at λ = 0.001. It trains the
    learned variance alone (the mean is held fixed in it) and needs a UNet with 2 × C output
    channels. 0 (the default): L_simple, the variance channels (if any) untrained.
  """
  unet: UNetConfig
  schedule: ScheduleConfig
  batch_size: int = 64
  learning_rate: float = 2e-4
  warmup_steps: int = 500
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  ema_decay: float = 0.999
  sigma_min: float = 0.05
  sigma_max: float = 1.0
  include_low_steps: bool = True
  min_timestep: int | None = None
  max_timestep: int | None = None
  random_flip: bool = True
  loss_weight_exponent: float = 0.0
  lr_schedule: str = "constant"
  vlb_weight: float = 0.0
  num_steps: int = 100_000
  steps_per_chunk: int = 50
  seed: int = 0

  def __post_init__(self):
    if self.lr_schedule not in ("constant", "cosine"):
      raise ValueError(f"DenoiserTrainConfig.lr_schedule: expected 'constant' or 'cosine', "
                       f"got {self.lr_schedule!r}")
    if not self.vlb_weight >= 0:
      raise ValueError(f"DenoiserTrainConfig.vlb_weight: expected >= 0, got {self.vlb_weight}")
    if self.vlb_weight and self.unet.out_channels != 2 * self.unet.eps_channels:
      raise ValueError(f"DenoiserTrainConfig.vlb_weight: the hybrid loss trains a learned "
                       f"variance, which needs a UNet with {2 * self.unet.eps_channels} output "
                       f"channels (ε and v); this one has {self.unet.out_channels}")
    if not self.loss_weight_exponent >= 0:
      raise ValueError(f"DenoiserTrainConfig.loss_weight_exponent: expected >= 0, got "
                       f"{self.loss_weight_exponent}")

  def timestep_range(self) -> tuple[int, int]:
    hi = self.max_timestep
    if hi is None:
      hi = timestep_for_sigma(self.schedule, self.sigma_max)
    lo = self.min_timestep
    if lo is None:
      lo = 0 if self.include_low_steps else timestep_for_sigma(self.schedule, self.sigma_min)
    if not 0 <= lo <= hi < self.schedule.num_timesteps:
      raise ValueError(f"timestep range [{lo}, {hi}] is not inside [0, {self.schedule.num_timesteps})")
    return int(lo), int(hi)


@flax.struct.dataclass
class DenoiserTrainState:
  step: jax.Array
  params: dict[str, Any]
  ema_params: dict[str, Any]
  opt_state: Any
  key: jax.Array


def _optimizer(cfg: DenoiserTrainConfig):
  warmup = max(cfg.warmup_steps, 1)
  if cfg.lr_schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup,
                                            max(cfg.num_steps, warmup + 1))
  else:
    lr = optax.linear_schedule(0.0, cfg.learning_rate, warmup)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(lr, b1=0.9, b2=0.999, weight_decay=cfg.weight_decay))


def init_train_state(cfg: DenoiserTrainConfig, key: jax.Array | None = None
                     ) -> DenoiserTrainState:
  """A fresh training state: the UNet initialized from fold_in(key, 0), the per-step noise
  stream from fold_in(key, 1); `key` defaults to `jax.random.key(cfg.seed)`, the config's."""
  key = jax.random.key(cfg.seed) if key is None else as_key(key)
  den = create_denoiser(cfg.unet, cfg.schedule, jax.random.fold_in(key, 0))
  params = den.params
  return DenoiserTrainState(step=jnp.zeros((), jnp.int32), params=params,
                            ema_params=jax.tree.map(jnp.copy, params),
                            opt_state=_optimizer(cfg).init(params),
                            key=jax.random.key_data(jax.random.fold_in(key, 1)))


def loss_weights(cfg: DenoiserTrainConfig) -> np.ndarray:
  """Per-step loss weight σ_t^γ (mean 1 over the training range; 0 outside), float32 [T]."""
  sigma = sigmas(cfg.schedule)  # the pixel-unit σ whose t* is t
  lo, hi = cfg.timestep_range()
  w = np.zeros_like(sigma)
  w[lo:hi + 1] = sigma[lo:hi + 1] ** cfg.loss_weight_exponent
  w[lo:hi + 1] /= w[lo:hi + 1].mean()
  return w.astype(np.float32)


def _approx_standard_normal_cdf(x):
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
  """log P(x) per element for images x in [-1, 1] quantized to 256 levels (bins 2/255 wide,
  the edge bins open) under N(mean, exp(log_scale)²); improved-diffusion's (and Ho et al.'s)
  decoder, with their tanh approximation of the normal CDF."""
  centered = x - mean
  inv_std = jnp.exp(-log_scale)
  cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vlb_terms(schedule: ScheduleConfig, eps, v, x, x_t, t):
  """L_t of the variational bound per sample, in bits per dimension (improved-diffusion's
  `_vb_terms_bpd`): KL(q(x_{t-1} | x_t, x) ‖ p(x_{t-1} | x_t)) for t > 0, the decoder's −log
  likelihood of x for t = 0. p's mean comes from ε held fixed (stop-gradient: this term trains
  the variance only) and is not clipped; its log-variance is v's point in [log β̃_t, log β_t]
  ((v+1)/2 towards log β_t). eps, v, x, x_t float [B, H, W, C] (x in [-1, 1]), t int [B]."""
  # The reverse process's coefficients over every step (the same respaced posterior and
  # clipped log-variance), put back in time order: row t is step t.
  steps = np.arange(schedule.num_timesteps)[::-1]
  table = {k: column[::-1] for k, column in reverse_process_table(schedule, steps).items()
           if k in ("sqrt_abar", "sqrt_one_minus_abar", "coef_x0", "coef_xt", "log_var_small",
                    "log_var_large")}
  c = {k: jnp.asarray(val, jnp.float32)[t][:, None, None, None] for k, val in table.items()}
  eps = jax.lax.stop_gradient(eps)
  x0_pred = (x_t - c["sqrt_one_minus_abar"] * eps) / c["sqrt_abar"]
  model_mean = c["coef_x0"] * x0_pred + c["coef_xt"] * x_t
  true_mean = c["coef_x0"] * x + c["coef_xt"] * x_t
  frac = (v + 1.0) / 2.0
  model_log_var = frac * c["log_var_large"] + (1.0 - frac) * c["log_var_small"]
  true_log_var = c["log_var_small"]
  kl = 0.5 * (-1.0 + model_log_var - true_log_var + jnp.exp(true_log_var - model_log_var)
              + (true_mean - model_mean) ** 2 * jnp.exp(-model_log_var))
  nll = -discretized_gaussian_log_likelihood(x, model_mean, 0.5 * model_log_var)
  per_dim = jnp.where((t == 0)[:, None, None, None], nll, kl)
  return jnp.mean(per_dim, axis=(1, 2, 3)) / math.log(2.0)


def loss_fn(params, cfg: DenoiserTrainConfig, x, t, noise, dropout_key):
  """Weighted mean squared error of the ε prediction (+ λ·T·L_t with the hybrid loss); x in
  [-1, 1] [B, H, W, C], t int [B]."""
  abar = jnp.asarray(alphas_cumprod(cfg.schedule), jnp.float32)[t][:, None, None, None]
  x_t = jnp.sqrt(abar) * x + jnp.sqrt(1 - abar) * noise
  out = unet_apply(cfg.unet, params, x_t, t, dropout_key=dropout_key)
  eps = out[..., :cfg.unet.eps_channels]
  per_sample = jnp.mean((eps - noise) ** 2, axis=(1, 2, 3))
  if cfg.loss_weight_exponent:
    per_sample = per_sample * jnp.asarray(loss_weights(cfg))[t]
  if cfg.vlb_weight:  # static
    v = out[..., cfg.unet.eps_channels:]
    per_sample = per_sample + (cfg.vlb_weight * cfg.schedule.num_timesteps) * vlb_terms(
        cfg.schedule, eps, v, x, x_t, t)
  return jnp.mean(per_sample)


def train_step(state: DenoiserTrainState, images, cfg: DenoiserTrainConfig):
  """One optimizer step on a batch drawn from `images` (uint8 [N, H, W, C] on the device)."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
  k_idx, k_flip, k_t, k_noise, k_drop = jax.random.split(key, 5)
  idx = jax.random.randint(k_idx, (cfg.batch_size,), 0, images.shape[0])
  x = images[idx].astype(jnp.float32) / 127.5 - 1.0
  if cfg.random_flip:
    flip = jax.random.bernoulli(k_flip, 0.5, (cfg.batch_size, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1], x)
  lo, hi = cfg.timestep_range()
  t = jax.random.randint(k_t, (cfg.batch_size,), lo, hi + 1)
  noise = jax.random.normal(k_noise, x.shape, jnp.float32)
  drop = k_drop if cfg.unet.dropout > 0 else None
  loss, grads = jax.value_and_grad(loss_fn)(state.params, cfg, x, t, noise, drop)
  updates, opt_state = _optimizer(cfg).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  d = cfg.ema_decay
  ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state.ema_params, params)
  new = DenoiserTrainState(step=state.step + 1, params=params, ema_params=ema,
                           opt_state=opt_state, key=state.key)
  return new, loss


@functools.partial(jax.jit, static_argnames=("cfg", "num_steps"), donate_argnums=(0,))
def train_chunk(state: DenoiserTrainState, images, cfg: DenoiserTrainConfig, num_steps: int):
  """`num_steps` steps as one lax.scan; returns the new state and the per-step losses."""
  return jax.lax.scan(lambda s, _: train_step(s, images, cfg), state, None, length=num_steps)


_train_step_jit = jax.jit(train_step, static_argnames=("cfg",), donate_argnums=(0,))


def train_chunk_stepwise(state: DenoiserTrainState, images, cfg: DenoiserTrainConfig,
                         num_steps: int):
  """Like `train_chunk`, but one jitted call per step (the state never leaves the device).

  For XLA:CPU: there, convolutions inside the scan's while loop take a far slower path (measured
  on 2 cores: a 2-step scan took 226 s to compile and run against 55 s to compile and 2 s per
  step for the single-step program). The losses are only fetched once per chunk.
  """
  losses = []
  for _ in range(num_steps):
    state, loss = _train_step_jit(state, images, cfg=cfg)
    losses.append(loss)
  return state, jnp.stack(losses)


def chunk_function(use_scan: bool | None = None):
  """`train_chunk` (one scanned program) or `train_chunk_stepwise`; by default the scan
  everywhere but on a CPU, where convolutions inside its while loop take a far slower path."""
  if use_scan is None:
    use_scan = backend.resolve_loop("auto") == "scan"
  return train_chunk if use_scan else train_chunk_stepwise


# ----------------------------------------------------------------------------- driver


def _save_state(state: DenoiserTrainState, directory: Path) -> None:
  """Orbax checkpoint of the full train state, written to a temp dir and renamed."""
  import orbax.checkpoint as ocp

  def write(tmp: Path) -> None:
    ck = ocp.StandardCheckpointer()
    ck.save(tmp / "state", jax.device_get(state))
    ck.wait_until_finished()
    ck.close()

  atomic_write_dir(directory, write)


def _restore_state(directory: Path, template: DenoiserTrainState) -> DenoiserTrainState:
  import orbax.checkpoint as ocp
  ck = ocp.StandardCheckpointer()
  try:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
    return ck.restore(directory / "state", abstract)
  finally:
    ck.close()


def train_denoiser(cfg: DenoiserTrainConfig, images: np.ndarray, out_dir: str | os.PathLike, *,
                   max_minutes: float | None = None, checkpoint_minutes: float = 5.0,
                   use_scan: bool | None = None, log=print) -> Denoiser:
  """Trains (or resumes) a denoiser on uint8 images [N, H, W, C]; returns the EMA denoiser.

  Files in `out_dir`: `state/` (the resumable train state), `ema/` (the EMA denoiser, via
  `save_denoiser`), `log.jsonl` (step, loss, images/s). Stops after `cfg.num_steps` steps or
  `max_minutes` of wall-clock time, whichever comes first, and always checkpoints before
  returning. `use_scan` (default: not on a CPU) runs each chunk as one lax.scan program;
  otherwise as `train_chunk_stepwise`.
  """
  out = Path(out_dir).absolute()  # orbax wants absolute paths
  out.mkdir(parents=True, exist_ok=True)
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"images: expected uint8 [N, H, W, C], got {images.dtype} {images.shape}")
  state = init_train_state(cfg)
  if (out / "state").exists():
    state = _restore_state(out / "state", state)
    log(f"resumed from {out / 'state'} at step {int(state.step)}")
  data = jax.device_put(images)
  chunk_fn = chunk_function(use_scan)
  lo, hi = cfg.timestep_range()
  log(f"training t ∈ [{lo}, {hi}] of T={cfg.schedule.num_timesteps}, batch {cfg.batch_size}, "
      f"{count_params(state.params):,} params")
  start = time.time()
  last_ckpt = start
  first_step = int(state.step)
  losses: list[float] = []

  def checkpoint():
    _save_state(state, out / "state")
    den = Denoiser(params=state.ema_params, unet=cfg.unet, schedule=cfg.schedule,
                   timestep_range=(lo, hi))
    save_denoiser(den, out / "ema", extra={"train_steps": int(state.step),
                                           "ema_decay": cfg.ema_decay})

  while int(state.step) < cfg.num_steps:
    n = min(cfg.steps_per_chunk, cfg.num_steps - int(state.step))
    t0 = time.time()
    state, chunk_losses = chunk_fn(state, data, cfg, n)
    chunk_losses = np.asarray(chunk_losses)
    dt = time.time() - t0
    losses.extend(chunk_losses.tolist())
    step = int(state.step)
    elapsed = time.time() - start
    rate = (step - first_step) / max(elapsed, 1e-9)
    remaining = (cfg.num_steps - step) / max(rate, 1e-9)
    if max_minutes is not None:
      remaining = min(remaining, max_minutes * 60 - elapsed)
    record = {"step": step, "loss": float(chunk_losses.mean()), "sec_per_step": dt / n,
              "elapsed_s": round(elapsed, 1)}
    with open(out / "log.jsonl", "a") as f:
      f.write(json.dumps(record) + "\n")
    log(f"step {step}/{cfg.num_steps} loss {record['loss']:.4f} {dt / n:.3f} s/step "
        f"ETA {remaining / 60:.1f} min")
    if time.time() - last_ckpt > checkpoint_minutes * 60:
      checkpoint()
      last_ckpt = time.time()
    if max_minutes is not None and elapsed + dt > max_minutes * 60:
      log(f"stopping at the {max_minutes} min wall-clock cap")
      break
  checkpoint()
  return Denoiser(params=state.ema_params, unet=cfg.unet, schedule=cfg.schedule,
                  timestep_range=(lo, hi))
