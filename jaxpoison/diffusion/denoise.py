"""NoiseAndDenoise: Gaussian noise of level σ, then one DDPM reverse step (or several).

Carlini et al.'s denoised smoothing, as used by Hong, Carlini & Kurakin's certified defense:
images x scaled to [-1, 1], t* = `timestep_for_sigma(schedule, σ)`,
x_t* = √ᾱ·(x + 2σ·ε), x̂₀ = (x_t* − √(1-ᾱ)·ε_θ(x_t*, t*))/√ᾱ clipped to [-1, 1], back to [0, 1].

Exact noise: the noise added is N(0, σ²) in [0, 1] pixel units (2σ in [-1, 1] units) whatever
step t* the schedule offers, because the certificate's radius σ·Φ⁻¹(pA) is only sound for the
noise actually added. Writing x_t* = √ᾱ·x + √(1-ᾱ)·ε instead would add noise of the step's
level σ_t*, which for the nearest step lies below σ about half the time (0.63% less at σ = 0.1
with DDPM's linear schedule) and would overclaim every radius by as much. t* only decides which
step's ε_θ sees the input; its level σ_t* is within a few percent of σ.

Randomness: the noise of image i is drawn from `fold_in(key, i)` (i = its index in `images`),
so results do not depend on `batch_size`, and copies for several models use one key each.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_images, check_sigma
from jaxpoison import backend
from jaxpoison.backend import LOOPS  # noqa: F401  (re-exported)
from jaxpoison.keys import as_key
from jaxpoison.diffusion.model import Denoiser, cast_params, predict_eps, unet_apply
from jaxpoison.diffusion.schedule import alphas_cumprod, sigmas, timestep_for_sigma


def _validate_inputs(denoiser: Denoiser, images) -> None:
  if not isinstance(denoiser, Denoiser):
    raise TypeError(f"denoiser: expected a jaxpoison.diffusion.Denoiser, got {type(denoiser).__name__}")
  u = denoiser.unet
  check_images(images, image_shape=(u.sample_size, u.sample_size, u.in_channels))


def _validate(denoiser: Denoiser, images, sigma, allow_untrained_sigma: bool = False
              ) -> tuple[float, int]:
  _validate_inputs(denoiser, images)
  sigma = check_sigma(sigma)
  if allow_untrained_sigma:
    return sigma, timestep_for_sigma(denoiser.schedule, sigma)
  return sigma, check_trained_sigma(denoiser, sigma)


class UntrainedSigmaError(ValueError):
  """σ maps to a step outside the steps the denoiser was trained on."""


def check_trained_sigma(denoiser: Denoiser, sigma: float) -> int:
  """t* of σ, or a ValueError when t* lies outside the steps the denoiser was trained on.

  A denoiser trained on t ∈ [lo, hi] (the embedded default: [0, t(σ = 1)]) has never seen
  inputs of a higher step: its ε_θ there is whatever the network extrapolates, and models
  trained on its output are worse by an unknown amount. Callers that want it anyway pass
  allow_untrained_sigma=True.
  """
  t = timestep_for_sigma(denoiser.schedule, sigma)
  _check_trained_step(denoiser, t, f"sigma: σ = {sigma:g} maps to step t* = {t}")
  return t


def _check_trained_step(denoiser: Denoiser, t: int, what: str) -> None:
  lo, hi = denoiser.trained_timesteps
  if not lo <= t <= hi:
    levels = sigmas(denoiser.schedule)
    raise UntrainedSigmaError(
        f"{what}, outside the steps this denoiser was trained on, t ∈ [{lo}, {hi}] "
        f"(σ ∈ [{levels[lo]:.3g}, {levels[hi]:.3g}] in [0, 1] pixel units); use a denoiser "
        "trained there, or pass allow_untrained_sigma=True (scripts: --allow_untrained_sigma) "
        "to use it anyway")


def _to_unit(images):
  """uint8 or float [0, 1] -> float32 [-1, 1]."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images.astype(jnp.float32) * 2.0 - 1.0


ROUNDINGS = ("round", "floor")


def _from_unit(x, dtype, rounding: str = "round"):
  """float [-1, 1] -> `dtype` (uint8 rounded or floored, or float [0, 1])."""
  x01 = (jnp.clip(x, -1.0, 1.0) + 1.0) / 2.0
  if dtype == jnp.uint8:
    scaled = x01 * 255.0
    return (jnp.floor(scaled) if rounding == "floor" else jnp.round(scaled)).astype(jnp.uint8)
  return x01.astype(dtype)


def image_noise(key, indices, shape):
  """Standard normal noise [len(indices), *shape] for the images at `indices` (fold_in(key, i))."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32))(
      indices)


def _batched(fn, images, batch_size: int):
  """fn(batch [B, ...], indices [B]) -> [B, ...] applied with lax.map over padded batches."""
  n = images.shape[0]
  b = max(1, min(int(batch_size), n))
  num = -(-n // b)
  pad = num * b - n
  padded = jnp.concatenate([images, jnp.zeros((pad, *images.shape[1:]), images.dtype)]) if pad \
      else images
  idx = jnp.arange(num * b, dtype=jnp.int32)
  out = jax.lax.map(lambda a: fn(*a), (padded.reshape(num, b, *images.shape[1:]),
                                       idx.reshape(num, b)))
  return out.reshape(num * b, *out.shape[2:])[:n]


def _single_step(denoiser, images, key, t: int, sigma: float, batch_size: int, compute_dtype,
                 attention: str = "auto"):
  """`denoiser`'s params should already be in compute_dtype (`cast_params`): cast once, outside
  the loops over batches and models."""
  abar = float(alphas_cumprod(denoiser.schedule)[t])
  a, s = math.sqrt(abar), math.sqrt(1.0 - abar)
  scale = 2.0 * float(sigma)  # σ in [0, 1] pixel units is 2σ in [-1, 1] units.

  def one_batch(batch, indices):
    x = _to_unit(batch)
    x_t = a * (x + scale * image_noise(key, indices, x.shape[1:]))
    eps = predict_eps(denoiser, x_t, jnp.full((x.shape[0],), t, jnp.int32),
                      compute_dtype=compute_dtype, attention=attention)
    return _from_unit((x_t - s * eps) / a, images.dtype)

  return _batched(one_batch, images, batch_size)


@functools.partial(jax.jit, static_argnames=("t", "sigma", "batch_size", "compute_dtype",
                                             "attention"))
def _noise_and_denoise_jit(denoiser, images, key, t, sigma, batch_size, compute_dtype,
                           attention="auto"):
  return _single_step(cast_params(denoiser, compute_dtype), images, key, t, sigma, batch_size,
                      compute_dtype, attention)


def noise_and_denoise(denoiser: Denoiser, images, sigma: float, key, *, batch_size: int = 256,
                      compute_dtype=jnp.float32, allow_untrained_sigma: bool = False,
                      attention: str = "auto"):
  """Adds exactly N(0, σ²) noise (pixel units) and denoises with one DDPM step.

  images: uint8 [N, H, W, C] or float [N, H, W, C] in [0, 1]; returns the same shape and dtype
  (uint8 rounded). sigma: a Python float in (0, 4] (static; it picks t*). key: one
  jax.random.key; image i's noise comes from fold_in(key, i), so the output does not depend on
  `batch_size` (the number of images per UNet call, a static int). compute_dtype: float32 or
  bfloat16 for the UNet. Pure (same key, same output, bit for bit on CPU); jitted when called
  directly and traceable inside an outer jit. allow_untrained_sigma: accept a σ whose step t*
  lies outside the steps the denoiser was trained on (refused by default, see
  `check_trained_sigma`). attention: the UNet's attention kernel, "auto" (cuDNN's fused one on
  a GPU in bfloat16 where it applies, XLA's otherwise), "xla" or "cudnn".
  """
  sigma, t = _validate(denoiser, images, sigma, allow_untrained_sigma)
  if int(batch_size) < 1:
    raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
  return _noise_and_denoise_jit(denoiser, images, as_key(key), t, sigma, int(batch_size),
                                jnp.dtype(compute_dtype), attention)


@functools.partial(jax.jit, static_argnames=("sigma",))
def _add_noise_jit(images, key, sigma):
  x = _to_unit(images)
  noise = image_noise(key, jnp.arange(images.shape[0], dtype=jnp.int32), x.shape[1:])
  return _from_unit(x + 2.0 * sigma * noise, images.dtype)


def add_noise(images, sigma: float, key):
  """Gaussian noise of level σ on every image, without denoising ("noise only" smoothing).

  Weber et al.'s randomized smoothing of the training set (the paper's Fig. 1 right, the
  baseline that shows what denoising buys). Image i gets exactly the noise `noise_and_denoise`
  would add with the same key (fold_in(key, i)), so the two smoothings can be compared draw for
  draw. The result is clipped to [0, 1] and has the input's dtype (uint8 rounded): a function
  of the noisy images, which the certificate allows, like denoising.
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or not (images.dtype == jnp.uint8 or
                              jnp.issubdtype(images.dtype, jnp.floating)):
    raise ValueError(f"images: expected uint8 or float [N, H, W, C], got {images.dtype} "
                     f"{images.shape}")
  return _add_noise_jit(images, as_key(key), check_sigma(sigma))


@functools.partial(jax.jit, static_argnames=("t", "sigma", "batch_size", "compute_dtype",
                                             "attention"))
def _many_jit(denoiser, images, keys, t, sigma, batch_size, compute_dtype, attention="auto"):
  denoiser = cast_params(denoiser, compute_dtype)
  return jax.lax.map(
      lambda k: _single_step(denoiser, images, k, t, sigma, batch_size, compute_dtype,
                             attention), keys)


def noise_and_denoise_many(denoiser: Denoiser, images, sigma: float, keys, *,
                           batch_size: int = 256, compute_dtype=jnp.float32,
                           allow_untrained_sigma: bool = False, attention: str = "auto"):
  """M independent noisy-denoised copies of `images`, one per key: [M, N, H, W, C].

  keys: [M] jax.random keys (e.g. one per smoothed model, fold_in(run_key, model_index)). Copy m
  equals `noise_and_denoise(denoiser, images, sigma, keys[m])` (a lax.map over the keys runs the
  same computation).
  """
  sigma, t = _validate(denoiser, images, sigma, allow_untrained_sigma)
  keys = as_key(keys, name="keys", ndim=1)
  return _many_jit(denoiser, images, keys, t, sigma, int(batch_size), jnp.dtype(compute_dtype),
                   attention)


def multistep_timesteps(t_start: int, num_steps: int | None) -> np.ndarray:
  """The decreasing steps t_start = t_0 > ... > t_{K-1} = 0 a K-step reverse process visits.

  num_steps None: every step (K = t_start + 1, DDPM's ancestral sampler); otherwise K evenly
  spaced steps (rounded), at most t_start + 1; K = 1 is the single-step denoiser.
  """
  if num_steps is None:
    num_steps = t_start + 1
  num_steps = int(num_steps)
  if num_steps < 1:
    raise ValueError(f"num_steps: expected >= 1, got {num_steps}")
  num_steps = min(num_steps, t_start + 1)
  if num_steps == 1:
    return np.array([t_start])
  return np.unique(np.round(np.linspace(t_start, 0, num_steps)).astype(np.int64))[::-1].copy()


VARIANCES = ("fixed_small", "learned", "auto")


def reverse_process_table(schedule, steps) -> dict[str, np.ndarray]:
  """Per visited step k (t_k = steps[k], decreasing to 0) the coefficients of the reverse step
  t_k → t_{k+1} (t_K = "−1", ᾱ = 1), float64 numpy, each [K]:

  sqrt_abar, sqrt_one_minus_abar: for x̂₀ = (x_t − √(1−ᾱ)·ε)/√ᾱ;
  coef_x0, coef_xt: the posterior mean of q(x_s | x_t, x̂₀) (Ho et al. eq. 7 with β = 1 − ᾱ_t/ᾱ_s:
    improved-diffusion's respaced betas, so strided schedules stay exact);
  log_var_small: log β̃ = log of that posterior's variance, with the last step's 0 replaced by the
    step before's (improved-diffusion's `posterior_log_variance_clipped`);
  log_var_large: log β (the upper end of the learned range);
  has_noise: 0 at the last step (its sample is the mean), else 1.
  """
  abar = alphas_cumprod(schedule)[np.asarray(steps)].astype(np.float64)
  abar_next = np.concatenate([abar[1:], [1.0]])
  beta = 1.0 - abar / abar_next
  var = beta * (1.0 - abar_next) / (1.0 - abar)
  var_clipped = var.copy()
  if len(var) > 1:
    var_clipped[-1] = var[-2]
  else:  # A single step has no posterior variance to borrow; it adds no noise either.
    var_clipped[-1] = beta[-1]
  return {"timestep": np.asarray(steps, np.float64), "sqrt_abar": np.sqrt(abar),
          "sqrt_one_minus_abar": np.sqrt(1.0 - abar),
          "coef_x0": np.sqrt(abar_next) * beta / (1.0 - abar),
          "coef_xt": np.sqrt(abar / abar_next) * (1.0 - abar_next) / (1.0 - abar),
          "log_var_small": np.log(var_clipped), "log_var_large": np.log(beta),
          "has_noise": (np.arange(len(abar)) < len(abar) - 1).astype(np.float64)}


_TABLE_COLUMNS = ("timestep", "sqrt_abar", "sqrt_one_minus_abar", "coef_x0", "coef_xt",
                  "log_var_small", "log_var_large", "has_noise")


def reverse_process(model_fn, x_t, key, indices, table: dict, *, learned_variance: bool):
  """DDPM's ancestral reverse process from x_t (float32 [B, H, W, C] in [-1, 1] units) through
  the steps of `table` (`reverse_process_table`); returns the final sample, the last step's mean.

  model_fn(x, t [B] int32) -> (ε [B, H, W, C], v [B, H, W, C] or None): v in [-1, 1] picks the
  log-variance exp(½((v+1)/2·log β + (1 − (v+1)/2)·log β̃)) (improved-diffusion's learned range)
  when learned_variance, else the posterior's own β̃ ("fixed small"). x̂₀ is clipped to [-1, 1].
  The noise of image i at step k comes from fold_in(fold_in(key, i), k + 1), so results do not
  depend on the batching.
  """
  rows = _table_rows(table)
  return jax.lax.fori_loop(
      0, len(table["timestep"]),
      lambda k, x: _reverse_step(model_fn, x, key, indices, k, rows[k], learned_variance), x_t)


def _table_rows(table: dict) -> jax.Array:
  return jnp.asarray(np.stack([table[c] for c in _TABLE_COLUMNS], axis=1), jnp.float32)


def _reverse_step(model_fn, x_t, key, indices, k, row, learned_variance: bool):
  """One step of `reverse_process`: step k of the table, whose row is `row`."""
  t, a, s, c0, ct, log_small, log_large, has_noise = (row[j] for j in range(8))
  eps, v = model_fn(x_t, jnp.full((x_t.shape[0],), t.astype(jnp.int32)))
  x0 = jnp.clip((x_t - s * eps) / a, -1.0, 1.0)
  if learned_variance:
    frac = (v + 1.0) / 2.0
    std = jnp.exp(0.5 * (frac * log_large + (1.0 - frac) * log_small))
  else:
    std = jnp.exp(0.5 * log_small)
  z = jax.vmap(lambda i: jax.random.normal(
      jax.random.fold_in(jax.random.fold_in(key, i), k + 1), x_t.shape[1:], jnp.float32)
               )(indices)
  return c0 * x0 + ct * x_t + has_noise * std * z


def _model_fn(denoiser, compute_dtype, learned_variance: bool):
  channels = denoiser.unet.eps_channels

  def model_fn(x, t):
    if not learned_variance:
      return predict_eps(denoiser, x, t, compute_dtype=compute_dtype), None
    out = unet_apply(denoiser.unet, denoiser.params, x, t, compute_dtype=compute_dtype)
    return out[..., :channels], out[..., channels:]
  return model_fn


@functools.partial(jax.jit, static_argnames=("steps", "noise_scale", "batch_size",
                                             "compute_dtype", "learned_variance", "rounding"))
def _multistep_jit(denoiser, images, key, steps, noise_scale, batch_size, compute_dtype,
                   learned_variance, rounding):
  denoiser = cast_params(denoiser, compute_dtype)
  table = reverse_process_table(denoiser.schedule, steps)
  sqrt_abar_start = float(table["sqrt_abar"][0])
  model_fn = _model_fn(denoiser, compute_dtype, learned_variance)

  def one_batch(batch, indices):
    x = _to_unit(batch)
    # noise_scale: 2σ when started from σ (exact noise, as in `noise_and_denoise`), else the
    # start step's own level √((1-ᾱ)/ᾱ).
    x_t = sqrt_abar_start * (x + noise_scale * image_noise(key, indices, x.shape[1:]))
    sample = reverse_process(model_fn, x_t, key, indices, table,
                             learned_variance=learned_variance)
    return _from_unit(sample, images.dtype, rounding=rounding)

  return _batched(one_batch, images, batch_size)


@functools.partial(jax.jit, static_argnames=("noise_scale", "sqrt_abar_start"))
def _start_jit(batch, key, indices, noise_scale, sqrt_abar_start):
  x = _to_unit(batch)
  return sqrt_abar_start * (x + noise_scale * image_noise(key, indices, x.shape[1:]))


@functools.partial(jax.jit, static_argnames=("compute_dtype", "learned_variance"),
                   donate_argnums=(1,))
def _step_jit(denoiser, x_t, key, indices, k, row, compute_dtype, learned_variance):
  return _reverse_step(_model_fn(denoiser, compute_dtype, learned_variance), x_t, key, indices,
                       k, row, learned_variance)


@functools.partial(jax.jit, static_argnames=("dtype", "rounding"))
def _finish_jit(x, dtype, rounding):
  return _from_unit(x, dtype, rounding=rounding)


def _multistep_host(denoiser, images, key, steps, noise_scale, batch_size, compute_dtype,
                    learned_variance, rounding):
  """`_multistep_jit` with the loops over batches and steps in Python, one jitted step per
  call: XLA:CPU runs convolutions inside a while loop far slower than the same step on its own
  (the trainer's "host" loop, for the same reason)."""
  denoiser = jax.jit(cast_params, static_argnums=1)(denoiser, compute_dtype)
  table = reverse_process_table(denoiser.schedule, steps)
  rows = _table_rows(table)
  n = images.shape[0]
  b = max(1, min(int(batch_size), n))
  padded = -(-n // b) * b
  images = jnp.asarray(images)
  if padded > n:  # Every batch one shape: one compilation.
    images = jnp.concatenate([images, jnp.zeros((padded - n, *images.shape[1:]), images.dtype)])
  out = []
  for start in range(0, padded, b):
    indices = jnp.arange(start, start + b, dtype=jnp.int32)
    x_t = _start_jit(images[start:start + b], key, indices, noise_scale,
                     float(table["sqrt_abar"][0]))
    for k in range(len(steps)):
      x_t = _step_jit(denoiser, x_t, key, indices, jnp.int32(k), rows[k], compute_dtype,
                      learned_variance)
    out.append(_finish_jit(x_t, images.dtype, rounding))
  return jnp.concatenate(out)[:n]


def denoise_multistep(denoiser: Denoiser, images, sigma: float | None, key, *,
                      num_steps: int | None = None, start_timestep: int | None = None,
                      variance: str = "auto", rounding: str = "round",
                      batch_size: int = 256, compute_dtype=jnp.float32,
                      allow_untrained_sigma: bool = False, loop: str = "auto"):
  """Noise to level σ, then DDPM's ancestral reverse process from t* down to 0.

  Starts like `noise_and_denoise` (same noise for the same key), then walks the steps of
  `multistep_timesteps(t*, num_steps)` (`reverse_process`): at each step t, x̂₀ from ε_θ, clipped
  to [-1, 1], and x_s drawn from N(posterior mean of q(x_s | x_t, x̂₀), Σ) (fresh noise from
  fold_in(fold_in(key, i), k+1) at the k-th step); the last step returns its mean, x̂₀.
  num_steps=1 is exactly `noise_and_denoise`.

  start_timestep overrides t* (ECLIPSE starts at its t* = 100 of 4000, i.e. the step with
  ᾱ = ᾱ[99] in 0-based indexing: start_timestep=99); the start noise is then the step's own,
  x_t = √ᾱ·x + √(1-ᾱ)·ε, and sigma is None (a σ given as well is refused unless it maps to
  that step, so that a call cannot say one noise level and run another).

  variance: "fixed_small" (Σ = β̃, the posterior's), "learned" (improved-diffusion's learned
  range between β̃ and β, from the UNet's second half of output channels; needs
  out_channels = 2 × in_channels), "auto" (learned when the UNet has those channels).
  rounding: how float outputs become uint8 for uint8 inputs: "round", or "floor" (what
  torchvision's ToPILImage does, x·255 truncated; ECLIPSE stores its purified images so).
  loop: "scan" (one program: batches and steps on the device), "host" (one jitted step per
  call: on XLA:CPU about 6% faster for ECLIPSE's CPU UNet, BENCHMARKS.md issue 17) or "auto"
  (host on the CPU, scan elsewhere). Both compute the same steps with the same noise.
  """
  loop = backend.resolve_loop(loop)
  if variance not in VARIANCES:
    raise ValueError(f"variance: expected one of {VARIANCES}, got {variance!r}")
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding: expected one of {ROUNDINGS}, got {rounding!r}")
  learns = denoiser.unet.out_channels == 2 * denoiser.unet.eps_channels
  if variance == "learned" and not learns:
    raise ValueError(f"variance='learned': the UNet outputs {denoiser.unet.out_channels} "
                     f"channels, expected {2 * denoiser.unet.eps_channels} (ε and v)")
  learned_variance = learns if variance == "auto" else variance == "learned"
  if start_timestep is not None:
    _validate_inputs(denoiser, images)
    t = int(start_timestep)
    if not 0 <= t < denoiser.schedule.num_timesteps:
      raise ValueError(f"start_timestep: expected in [0, {denoiser.schedule.num_timesteps}), got {t}")
    if sigma is not None:
      sigma_step = timestep_for_sigma(denoiser.schedule, check_sigma(sigma))
      if sigma_step != t:
        raise ValueError(f"sigma: σ = {sigma:g} maps to step {sigma_step}, but start_timestep "
                         f"is {t}; pass sigma=None with start_timestep")
    if not allow_untrained_sigma:
      _check_trained_step(denoiser, t, f"start_timestep: step {t}")
    abar = float(alphas_cumprod(denoiser.schedule)[t])
    noise_scale = math.sqrt((1.0 - abar) / abar)
  else:
    if sigma is None:
      raise ValueError("sigma: expected a noise level, got None (None only with start_timestep)")
    sigma, t = _validate(denoiser, images, sigma, allow_untrained_sigma)
    noise_scale = 2.0 * sigma
  steps = tuple(int(s) for s in multistep_timesteps(t, num_steps))
  run = _multistep_host if loop == "host" else _multistep_jit
  return run(denoiser, images, as_key(key), steps, float(noise_scale), int(batch_size),
             jnp.dtype(compute_dtype), learned_variance, rounding)


def psnr(a, b, *, axis=(-3, -2, -1)):
  """Peak signal-to-noise ratio in dB, per image: 10·log10(1/MSE), images in [0, 1] or uint8.

  uint8 inputs are scaled to [0, 1] first. Returns float32 [N] for [N, H, W, C] inputs.
  """
  def unit(x):
    x = jnp.asarray(x)
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  mse = jnp.mean((unit(a) - unit(b)) ** 2, axis=axis)
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-12))


def denoising_psnr(denoiser: Denoiser, images, sigma: float, key, *, batch_size: int = 256,
                   compute_dtype=jnp.float32,
                   allow_untrained_sigma: bool = False) -> dict[str, float]:
  """Mean PSNR (dB) against the clean images of the noisy input x + σε (unclipped, the exact
  noise the denoiser sees) and of the single-step denoised output."""
  images = jnp.asarray(images)
  den = noise_and_denoise(denoiser, images, sigma, key, batch_size=batch_size,
                          compute_dtype=compute_dtype,
                          allow_untrained_sigma=allow_untrained_sigma)
  x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images
  noise = image_noise(as_key(key), jnp.arange(images.shape[0]), images.shape[1:])
  noisy = x + sigma * noise
  return {"sigma": float(sigma), "timestep": timestep_for_sigma(denoiser.schedule, sigma),
          "psnr_noisy": float(jnp.mean(psnr(noisy, x))),
          "psnr_denoised": float(jnp.mean(psnr(den, images)))}
