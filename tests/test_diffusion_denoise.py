"""noise_and_denoise and friends: purity, batch-size independence, many vs single, dtypes,
tracing inside an outer jit, no recompilation, errors, the multi-step process and PSNR."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxpoison import diffusion as D
from jaxpoison.diffusion import denoise as denoise_module

TINY = D.UNetConfig(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                    attention_resolutions=(4,), norm_num_groups=4)


@pytest.fixture(scope="module")
def den():
  return D.create_denoiser(TINY, D.linear_schedule(), jax.random.key(0))


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)


def test_pure_and_dtype_preserving(den, images):
  key = jax.random.key(3)
  a = D.noise_and_denoise(den, images, 0.25, key, batch_size=4)
  b = D.noise_and_denoise(den, images, 0.25, key, batch_size=4)
  assert a.dtype == jnp.uint8 and a.shape == images.shape
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, D.noise_and_denoise(den, images, 0.25, jax.random.key(4),
                                                   batch_size=4))
  x = images.astype(np.float32) / 255
  f = D.noise_and_denoise(den, x, 0.25, key, batch_size=4)
  assert f.dtype == jnp.float32 and f.shape == images.shape
  # The float output is the documented formula, recomputed here in float64 from the noise of
  # image i (fold_in(key, i)) and the network's ε̂ on the whole batch at once: x_t* =
  # √ᾱ·(x + 2σε), x̂₀ = (x_t* − √(1-ᾱ)·ε̂)/√ᾱ clipped, back to [0, 1]. 1e-5 as in
  # test_independent_of_batch_size: ε̂ of batches of 4 and of 7 differ by float32 rounding.
  _, sqrt_abar, sqrt_1m_abar, x_t, eps = _one_step_parts(den, x, 0.25, key)
  ref = (np.clip((x_t - sqrt_1m_abar * eps) / sqrt_abar, -1, 1) + 1) / 2
  np.testing.assert_allclose(np.asarray(f), ref, rtol=0, atol=1e-5)
  # uint8 output is the rounded float output.
  assert np.abs(np.asarray(f) * 255 - np.asarray(a, np.float32)).max() <= 0.5 + 1e-3


def test_independent_of_batch_size(den, images):
  key = jax.random.key(5)
  x = images.astype(np.float32) / 255
  outs = [np.asarray(D.noise_and_denoise(den, x, 0.5, key, batch_size=b)) for b in (2, 7, 100)]
  for o in outs[1:]:
    np.testing.assert_allclose(o, outs[0], atol=1e-5)
  # Image i's result depends on its own index only: a prefix gives the same images.
  np.testing.assert_allclose(np.asarray(D.noise_and_denoise(den, x[:3], 0.5, key)), outs[0][:3],
                             atol=1e-5)


def test_many_equals_separate_calls(den, images):
  keys = jax.random.split(jax.random.key(6), 3)
  many = D.noise_and_denoise_many(den, images, 0.25, keys, batch_size=4)
  assert many.shape == (3, *images.shape) and many.dtype == jnp.uint8
  for m in range(3):
    np.testing.assert_array_equal(many[m], D.noise_and_denoise(den, images, 0.25, keys[m],
                                                               batch_size=4))
  assert not np.array_equal(many[0], many[1])


def test_traceable_inside_outer_jit(den, images):
  outer = jax.jit(lambda d, x, k: D.noise_and_denoise(d, x, 0.25, k, batch_size=4))
  key = jax.random.key(7)
  np.testing.assert_array_equal(outer(den, images, key),
                                D.noise_and_denoise(den, images, 0.25, key, batch_size=4))


def test_no_retracing_for_new_data_or_keys(den, images, monkeypatch):
  # _noise_and_denoise_jit looks _single_step up when it traces, so a counting wrapper counts
  # traces (a cached executable runs without calling Python). A timestep_range no other test
  # uses is a fresh static (Denoiser's aux data), so the first call must trace here.
  traces = []
  single_step = denoise_module._single_step

  def counting(*args, **kwargs):
    traces.append(1)
    return single_step(*args, **kwargs)

  monkeypatch.setattr(denoise_module, "_single_step", counting)
  fresh = D.Denoiser(params=den.params, unet=den.unet, schedule=den.schedule,
                     timestep_range=(0, 997))
  D.noise_and_denoise(fresh, images, 0.25, jax.random.key(7), batch_size=4)
  assert len(traces) == 1
  # Other images and another key with the same statics and shapes: the trace is reused.
  D.noise_and_denoise(fresh, images[::-1].copy(), 0.25, jax.random.key(8), batch_size=4)
  assert len(traces) == 1


def test_bfloat16_compute_is_close(den, images):
  key = jax.random.key(9)
  x = images.astype(np.float32) / 255
  a = D.noise_and_denoise(den, x, 0.25, key)
  b = D.noise_and_denoise(den, x, 0.25, key, compute_dtype=jnp.bfloat16)
  assert b.dtype == jnp.float32
  delta = float(jnp.abs(a - b).mean())
  assert delta > 0  # bfloat16 really computed: float32 and bfloat16 never agree to the bit.
  # bfloat16 keeps 8 significant bits: each op rounds by up to 2^-8 relative. The UNet's
  # rounding adds up to a few times 2^-8·|ε̂| in ε̂ (measured here: 3.4×); 8× leaves room for
  # other accumulation orders. ε̂ enters the output (in [0, 1] units, half the [-1, 1] ones)
  # times √(1-ᾱ)/(2√ᾱ) ≈ σ, and clipping only shrinks differences. Measured: Δ ≈ 0.00097
  # against a bound of ≈ 0.0034; a UNet run in float16 or worse would exceed it.
  _, sqrt_abar, sqrt_1m_abar, _, eps = _one_step_parts(den, x, 0.25, key)
  bound = sqrt_1m_abar / (2 * sqrt_abar) * 8 * 2.0 ** -8 * np.abs(eps).mean()
  assert delta < bound, (delta, bound)


def _one_step_parts(den, x, sigma, key):
  """t*, √ᾱ, √(1-ᾱ), x_t* and the network's ε̂ for float images x in [0, 1], as float64 numpy,
  computed outside noise_and_denoise from its documented parts."""
  t = D.timestep_for_sigma(den.schedule, sigma)
  abar = float(D.alphas_cumprod(den.schedule)[t])
  a, s = math.sqrt(abar), math.sqrt(1 - abar)
  noise = np.asarray(D.image_noise(key, jnp.arange(x.shape[0]), x.shape[1:]), np.float64)
  x_t = a * ((2 * np.asarray(x, np.float64) - 1) + 2 * sigma * noise)
  eps = D.predict_eps(den, jnp.asarray(x_t, jnp.float32), jnp.full((x.shape[0],), t, jnp.int32))
  return t, a, s, x_t, np.asarray(eps, np.float64)


@pytest.mark.parametrize("sigma", [0.1, 0.25, 0.5, 1.0])
def test_bfloat16_psnr_within_a_tenth_of_a_db_on_real_images(sigma):
  # The embedded denoiser on 64 CIFAR-10 test images (the JPEG copy; tests/data): bf16's
  # 8-bit mantissa perturbs ε̂ by ~0.4% relative, far below the denoiser's own error (≥ 0.1
  # of ε's scale), so PSNR moves by hundredths of a dB; 0.1 dB is the issue's bound.
  from pathlib import Path
  data = np.load(Path(__file__).parent / "data" / "cifar10_test64.npz")
  den, x, key = D.default_denoiser(), data["x"], jax.random.key(3)
  f32 = np.asarray(D.psnr(D.noise_and_denoise(den, x, sigma, key), x))
  bf16 = np.asarray(D.psnr(D.noise_and_denoise(den, x, sigma, key, compute_dtype=jnp.bfloat16),
                           x))
  assert abs(bf16.mean() - f32.mean()) < 0.1, (bf16.mean(), f32.mean())


def test_true_noise_gives_back_the_clean_image(den, monkeypatch):
  # With ε̂ equal to the noise in the schedule's parameterization, ε = (x_t − √ᾱ·x)/√(1-ᾱ)
  # (x in [-1, 1]), the one-step formula must return x itself: this checks its coefficients
  # and signs, which ε̂ from a random network cannot.
  x = np.random.default_rng(2).uniform(0.2, 0.8, (5, 8, 8, 3)).astype(np.float32)
  sigma = 0.1  # |2σε| < 1 for |ε| < 5: x_t stays small, and x̂₀ = x lies far inside [-1, 1].
  t = D.timestep_for_sigma(den.schedule, sigma)
  abar = float(D.alphas_cumprod(den.schedule)[t])
  x_unit = jnp.asarray(2 * x - 1)

  def true_eps(denoiser, x_t, timesteps, compute_dtype=jnp.float32, attention="auto"):
    # One batch holds all images (batch_size >= 5), so x_t lines up with x_unit.
    return (x_t - math.sqrt(abar) * x_unit) / math.sqrt(1 - abar)

  monkeypatch.setattr(denoise_module, "predict_eps", true_eps)
  # A timestep_range no other test uses: a fresh static, so the jitted function traces anew
  # with the patched predict_eps, and the cache entry it leaves is never hit by other tests.
  fresh = D.Denoiser(params=den.params, unet=den.unet, schedule=den.schedule,
                     timestep_range=(0, 998))
  out = np.asarray(D.noise_and_denoise(fresh, x, sigma, jax.random.key(15)))
  # float32 rounding only: |x_t| < 2, so each of the ~8 ops rounds by at most 2^-24·2 ≈ 1.2e-7
  # (the 1/√(1-ᾱ) and √(1-ᾱ) factors cancel up to rounding), divided by √ᾱ ≈ 0.98 and halved
  # back to [0, 1]: under 1e-6. 2e-6 allows for it, while a wrong sign or coefficient is
  # off by the noise itself, σ·|ε| ≈ 0.1.
  np.testing.assert_allclose(out, x, rtol=0, atol=2e-6)


def test_errors(den, images):
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"\(8, 8, 3\)"):
    D.noise_and_denoise(den, np.zeros((2, 16, 16, 3), np.uint8), 0.25, key)
  with pytest.raises(ValueError, match="4-D"):
    D.noise_and_denoise(den, images[0], 0.25, key)
  with pytest.raises(TypeError, match="dtype"):
    D.noise_and_denoise(den, images.astype(np.int32), 0.25, key)
  for sigma in (0.0, -0.5, 255.0):
    with pytest.raises(ValueError, match="sigma"):
      D.noise_and_denoise(den, images, sigma, key)
  with pytest.raises(TypeError, match="key"):
    D.noise_and_denoise(den, images, 0.25, 123)
  with pytest.raises(ValueError, match="batch_size"):
    D.noise_and_denoise(den, images, 0.25, key, batch_size=0)


def test_multistep(den, images):
  key = jax.random.key(11)
  one = D.denoise_multistep(den, images, 0.25, key, num_steps=1, batch_size=4)
  np.testing.assert_array_equal(one, D.noise_and_denoise(den, images, 0.25, key, batch_size=4))
  a = D.denoise_multistep(den, images, 0.25, key, num_steps=4, batch_size=4)
  assert a.shape == images.shape and a.dtype == jnp.uint8
  np.testing.assert_array_equal(a, D.denoise_multistep(den, images, 0.25, key, num_steps=4,
                                                       batch_size=4))
  assert not np.array_equal(a, one)
  steps = D.multistep_timesteps(100, None)
  assert steps[0] == 100 and steps[-1] == 0 and len(steps) == 101
  steps = D.multistep_timesteps(100, 5)
  assert list(steps) == [100, 75, 50, 25, 0]
  with pytest.raises(ValueError, match="start_timestep"):
    D.denoise_multistep(den, images, None, key, start_timestep=5000)
  # σ and start_timestep say the same level or the call is refused; σ alone is needed otherwise.
  t_quarter = D.timestep_for_sigma(den.schedule, 0.25)
  np.testing.assert_array_equal(
      D.denoise_multistep(den, images, 0.25, key, num_steps=4, start_timestep=t_quarter,
                          batch_size=4),
      D.denoise_multistep(den, images, None, key, num_steps=4, start_timestep=t_quarter,
                          batch_size=4))
  with pytest.raises(ValueError, match="maps to step .* but start_timestep is"):
    D.denoise_multistep(den, images, 0.25, key, start_timestep=t_quarter + 7)
  with pytest.raises(ValueError, match="None only with start_timestep"):
    D.denoise_multistep(den, images, None, key, num_steps=4)


def test_psnr_against_numpy():
  rng = np.random.default_rng(1)
  a = rng.random((3, 4, 4, 3)).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
  ref = 10 * np.log10(1 / ((a - b) ** 2).mean(axis=(1, 2, 3)))
  np.testing.assert_allclose(D.psnr(a, b), ref, rtol=1e-5)
  u = (a * 255).round().astype(np.uint8)
  np.testing.assert_allclose(D.psnr(u, u.astype(np.float32) / 255), 120.0)


def _zero_eps(den):
  """The same network with its output layer zeroed: ε̂ ≡ 0, so x̂₀ = x_t*/√ᾱ exactly."""
  params = dict(den.params)
  for name in ("conv_out.kernel", "conv_out.bias"):
    params[name] = jnp.zeros_like(params[name])
  return D.Denoiser(params=params, unet=den.unet, schedule=den.schedule)


@pytest.mark.parametrize("sigma", [0.026, 0.053, 0.1, 0.25])
def test_added_noise_is_exactly_sigma(den, sigma):
  # With ε̂ ≡ 0 the output minus the (mid-grey) input is the added noise, clipped to [0, 1].
  # For σ = 0.026, 0.053 and 0.1 the nearest step of the linear schedule lies 3.1%, 0.8% and
  # 0.6% below σ, so noise of the step's own level would fail here.
  n = 5000 * 8 * 8 * 3
  images = np.full((5000, 8, 8, 3), 0.5, np.float32)
  out = np.asarray(D.noise_and_denoise(_zero_eps(den), images, sigma, jax.random.key(12),
                                       batch_size=1000), np.float64)
  noise = out - 0.5
  # Expected std of σZ censored at ±0.5 (the clip to [0, 1]); below σ = 0.1 the clip is 5σ or
  # more away and changes nothing at this precision.
  k = 0.5 / sigma
  inside = (2 * stats.norm.cdf(k) - 1) - 2 * k * stats.norm.pdf(k)
  expected_std = math.sqrt(sigma ** 2 * inside + 2 * 0.25 * stats.norm.sf(k))
  # The sample std's relative standard error is 1/√(2n) ≈ 0.072% for n ≈ 960,000 values
  # (i.i.d.: each image's noise is its own draw); 5 standard errors is 0.36%.
  assert abs(noise.std() / expected_std - 1) < 5 / math.sqrt(2 * n)
  assert abs(noise.mean()) < 5 * expected_std / math.sqrt(n)


def test_add_noise_is_the_denoisers_noisy_input(den, images):
  # add_noise is noise_and_denoise without the network: the same draw per image, so with
  # ε̂ ≡ 0 the two differ only by the float rounding of x_t/√ᾱ (at most one grey level, at
  # pixels that sit on a rounding boundary).
  key = jax.random.key(5)
  noisy = np.asarray(D.add_noise(images, 0.25, key))
  assert noisy.dtype == np.uint8 and noisy.shape == images.shape
  passed = np.asarray(D.noise_and_denoise(_zero_eps(den), images, 0.25, key))
  diff = np.abs(noisy.astype(int) - passed.astype(int))
  assert diff.max() <= 1 and (diff == 0).mean() > 0.99
  x = images.astype(np.float32) / 255
  expected = np.clip(x + 0.25 * np.asarray(D.image_noise(key, np.arange(len(x)), x.shape[1:])),
                     0, 1)
  np.testing.assert_allclose(np.asarray(D.add_noise(x, 0.25, key)), expected, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(D.add_noise(images, 0.25, key)), noisy)  # pure
  with pytest.raises(ValueError, match="sigma"):
    D.add_noise(images, -0.1, key)
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    D.add_noise(images[0], 0.25, key)


def test_untrained_sigma_refused_unless_allowed(den, images, tmp_path):
  key = jax.random.key(13)
  narrow = D.Denoiser(params=den.params, unet=den.unet, schedule=den.schedule,
                      timestep_range=(0, 100))
  assert narrow.trained_timesteps == (0, 100) and den.trained_timesteps == (0, 999)
  with pytest.raises(ValueError, match=r"t\* = 258.*\[0, 100\].*allow_untrained_sigma"):
    D.noise_and_denoise(narrow, images, 0.5, key)
  with pytest.raises(ValueError, match="allow_untrained_sigma"):
    D.noise_and_denoise_many(narrow, images, 0.5, jax.random.split(key, 2))
  with pytest.raises(ValueError, match="allow_untrained_sigma"):
    D.denoise_multistep(narrow, images, 0.5, key, num_steps=2)
  with pytest.raises(ValueError, match="start_timestep"):
    D.denoise_multistep(narrow, images, None, key, start_timestep=200)
  np.testing.assert_array_equal(
      D.noise_and_denoise(narrow, images, 0.5, key, allow_untrained_sigma=True),
      D.noise_and_denoise(den, images, 0.5, key))
  D.noise_and_denoise(narrow, images, 0.1, key)  # t* = 57: inside.
  # The range survives a save/load round trip; the embedded default records its own.
  D.save_denoiser(narrow, tmp_path / "narrow")
  assert D.load_denoiser(tmp_path / "narrow").trained_timesteps == (0, 100)
  default = D.default_denoiser()
  lo, hi = default.trained_timesteps
  assert lo == 0 and hi == D.timestep_for_sigma(default.schedule, 1.0)
  with pytest.raises(ValueError, match="outside the steps"):
    D.check_trained_sigma(default, 2.0)


def test_multistep_from_sigma_starts_with_exact_noise(den):
  # One step from σ is the single-step denoiser; from start_timestep the start noise is the
  # step's own level: with ε̂ ≡ 0 and a single step, the output is x + σ_t·ε.
  zero = _zero_eps(den)
  images = np.full((2000, 8, 8, 3), 0.5, np.float32)
  t = 57
  out = np.asarray(D.denoise_multistep(zero, images, None, jax.random.key(14), num_steps=1,
                                       start_timestep=t), np.float64) - 0.5
  level = float(D.sigmas(den.schedule)[t])
  assert abs(out.std() / level - 1) < 5 / math.sqrt(2 * out.size)


def test_multistep_matches_diffusers_ddpm_steps(den, monkeypatch):
  # The ancestral reverse process step by step against diffusers' DDPMScheduler.step (posterior
  # mean coefficients, the fixed-small variance, x̂₀ clipping), with the same ε̂ (a fixed
  # function of x_t standing in for the network) and the same per-step noise z_k.
  diffusers = pytest.importorskip("diffusers")
  torch = pytest.importorskip("torch")
  from diffusers.schedulers import scheduling_ddpm

  def fake_eps(denoiser, x, t, compute_dtype=jnp.float32):
    return 0.3 * jnp.tanh(3.0 * x)

  monkeypatch.setattr(denoise_module, "predict_eps", fake_eps)
  # A static seen by no other test: this trace (with the stand-in ε̂) is cached under it only.
  fresh = D.Denoiser(params=den.params, unet=den.unet, schedule=den.schedule,
                     timestep_range=(0, 995))
  key, t0, n = jax.random.key(21), 40, 3
  x01 = np.random.default_rng(2).uniform(0.1, 0.9, (n, 8, 8, 3)).astype(np.float32)
  ours = np.asarray(D.denoise_multistep(fresh, x01, None, key, start_timestep=t0,
                                        batch_size=n))

  abar = D.alphas_cumprod(den.schedule)
  indices = jnp.arange(n)
  eps0 = np.asarray(D.image_noise(key, indices, (8, 8, 3)), np.float64)
  x_t = np.sqrt(abar[t0]) * (x01 * 2.0 - 1.0) + np.sqrt(1 - abar[t0]) * eps0
  sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                  beta_schedule="linear")
  sample = torch.from_numpy(x_t.astype(np.float32))
  for k, t in enumerate(range(t0, -1, -1)):
    z = np.asarray(jax.vmap(lambda i: jax.random.normal(
        jax.random.fold_in(jax.random.fold_in(key, i), k + 1), (8, 8, 3), jnp.float32))(indices))
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor",
                        lambda *args, z=z, **kwargs: torch.from_numpy(z))
    model_output = torch.from_numpy(np.array(fake_eps(None, jnp.asarray(sample.numpy()), t)))
    sample = sched.step(model_output, t, sample).prev_sample
  reference = (np.clip(sample.numpy(), -1, 1) + 1) / 2
  # Both run in float32 (diffusers' coefficients from float32 ᾱ, ours from float64 ᾱ rounded
  # once): values of order 1, 41 steps of a few operations each at ~6e-8 relative rounding
  # reach ~1e-5 (1.5e-5 measured); 5e-5 allows for other summation orders. A wrong coefficient
  # moves the result by more than 1e-4 (e.g. √ᾱ_t for √ᾱ_{t-1} in the x̂₀ weight, or 1% more
  # variance).
  np.testing.assert_allclose(ours, reference, atol=5e-5)


# ----------------------------------------------------------------------------- learned variance


def _improved_diffusion_reference(schedule, steps):
  """improved-diffusion's respaced GaussianDiffusion (respace.space_timesteps keeping `steps`,
  gaussian_diffusion.py's posterior and clipped log-variance), in float64, in the reverse
  process's order (first row = the first step taken)."""
  abar_full = np.cumprod(1.0 - D.betas(schedule).astype(np.float64))
  kept = set(int(t) for t in steps)
  betas, last = [], 1.0
  for i, abar in enumerate(abar_full):
    if i in kept:
      betas.append(1.0 - abar / last)
      last = abar
  betas = np.array(betas)
  acp = np.cumprod(1.0 - betas)
  acp_prev = np.append(1.0, acp[:-1])
  posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
  return {k: v[::-1] for k, v in {
      "sqrt_abar": np.sqrt(acp),
      "coef_x0": betas * np.sqrt(acp_prev) / (1.0 - acp),
      "coef_xt": (1.0 - acp_prev) * np.sqrt(1.0 - betas) / (1.0 - acp),
      "log_var_small": np.log(np.append(posterior_variance[1], posterior_variance[1:])),
      "log_var_large": np.log(betas)}.items()}


@pytest.mark.parametrize("start, num_steps", [(99, None), (99, 7), (300, 25)])
def test_reverse_table_matches_improved_diffusion(start, num_steps):
  schedule = D.cosine_schedule(4000)
  steps = D.multistep_timesteps(start, num_steps)
  ours = D.reverse_process_table(schedule, steps)
  reference = _improved_diffusion_reference(schedule, steps)
  for name, values in reference.items():
    np.testing.assert_allclose(ours[name], values, rtol=1e-9, err_msg=name)


def _fake_model(x, t):
  # Stands in for the UNet: ε̂ and v depend on x (and v on t), so that every coefficient shows.
  return 0.3 * jnp.tanh(3.0 * x), jnp.sin(2.0 * x + 1e-3 * t[:, None, None, None])


def test_learned_variance_reverse_process_matches_a_numpy_loop():
  schedule = D.cosine_schedule(4000)
  steps = D.multistep_timesteps(99, 10)
  key, n = jax.random.key(5), 3
  x_t = np.random.default_rng(0).uniform(-0.8, 0.8, (n, 4, 4, 3)).astype(np.float32)
  ours = np.asarray(D.reverse_process(_fake_model, jnp.asarray(x_t), key, jnp.arange(n),
                                      D.reverse_process_table(schedule, steps),
                                      learned_variance=True))
  ref = _improved_diffusion_reference(schedule, steps)
  sample = x_t.astype(np.float64)
  for k, t in enumerate(steps):
    eps, v = (np.asarray(a, np.float64) for a in _fake_model(jnp.asarray(sample, jnp.float32),
                                                           jnp.full((n,), t)))
    x0 = np.clip((sample - np.sqrt(1 - ref["sqrt_abar"][k] ** 2) * eps) / ref["sqrt_abar"][k],
                 -1, 1)
    mean = ref["coef_x0"][k] * x0 + ref["coef_xt"][k] * sample
    frac = (v + 1) / 2
    log_var = frac * ref["log_var_large"][k] + (1 - frac) * ref["log_var_small"][k]
    z = np.asarray(jax.vmap(lambda i: jax.random.normal(
        jax.random.fold_in(jax.random.fold_in(key, i), k + 1), (4, 4, 3)))(jnp.arange(n)))
    sample = mean + (k < len(steps) - 1) * np.exp(0.5 * log_var) * z
  # float32 against float64 over 10 steps of values of order 1: ~1e-6; a wrong weight (v and
  # 1 − v swapped, as in ECLIPSE's eq. 10, or the unclipped last variance) moves it by > 1e-3.
  np.testing.assert_allclose(ours, sample, atol=2e-5)


def _gaussian_data_theory(schedule, steps, mu, var, mode):
  """Mean and variance of the reverse process's output for data N(mu, var) per pixel, started
  from the exact x_t marginal, with the exact ε̂ and Σ = β̃ ("small") or the exact reverse
  variance ("exact"): an affine Gaussian chain, propagated exactly."""
  abar = D.alphas_cumprod(schedule).astype(np.float64)
  table = D.reverse_process_table(schedule, steps)
  a0 = abar[steps[0]]
  m, v = math.sqrt(a0) * mu, a0 * var + 1 - a0
  for k, t in enumerate(steps):
    a = abar[t]
    gain = math.sqrt(1 - a) / (a * var + 1 - a)  # ε̂ = gain·(x − √ᾱ·μ)
    scale, shift = (1 - math.sqrt(1 - a) * gain) / math.sqrt(a), gain * math.sqrt(1 - a) * mu
    c0, ct = table["coef_x0"][k], table["coef_xt"][k]
    small = math.exp(table["log_var_small"][k])
    exact = small + c0 ** 2 * var * (1 - a) / (a * var + 1 - a)
    m = c0 * (scale * m + shift) + ct * m
    v = (c0 * scale + ct) ** 2 * v + table["has_noise"][k] * (small if mode == "small" else exact)
  return m, v


@pytest.mark.parametrize("mode", ["small", "exact"])
def test_purification_with_exact_predictions_returns_the_data_distribution(mode):
  # ECLIPSE's purification (cosine T = 4000, from step 99, every step) of Gaussian data whose ε̂
  # and reverse variance are known in closed form. With the exact reverse variance (given as the
  # learned v) every step is the true reverse kernel: the output is the data distribution up to
  # the last step returning its mean (variance 0.1% low); Σ = β̃ under-disperses by 0.8%.
  schedule, mu, var = D.cosine_schedule(4000), 0.2, 0.01
  steps = D.multistep_timesteps(99, None)
  table = D.reverse_process_table(schedule, steps)
  abar = jnp.asarray(D.alphas_cumprod(schedule), jnp.float32)
  small = jnp.asarray(np.exp(table["log_var_small"]), jnp.float32)
  large = jnp.asarray(np.exp(table["log_var_large"]), jnp.float32)
  c0s = jnp.asarray(table["coef_x0"], jnp.float32)
  step_of = {int(t): k for k, t in enumerate(steps)}
  order = jnp.asarray([step_of.get(t, 0) for t in range(100)])

  def model_fn(x, t):
    a = abar[t][:, None, None, None]
    eps = jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * var + 1 - a)
    k = order[t][:, None, None, None]
    exact = small[k] + c0s[k] ** 2 * var * (1 - a) / (a * var + 1 - a)
    frac = jnp.log(exact / small[k]) / jnp.log(large[k] / small[k])
    return eps, 2.0 * frac - 1.0

  n, shape = 2048, (8, 8, 3)
  rng = np.random.default_rng(1)
  x0 = rng.normal(mu, math.sqrt(var), (n, *shape))
  a0 = float(D.alphas_cumprod(schedule)[99])
  x_t = jnp.asarray(math.sqrt(a0) * x0 + math.sqrt(1 - a0) * rng.normal(size=x0.shape),
                    jnp.float32)
  out = np.asarray(D.reverse_process(model_fn, x_t, jax.random.key(2), jnp.arange(n), table,
                                     learned_variance=(mode == "exact")), np.float64)
  mean, variance = _gaussian_data_theory(schedule, steps, mu, var, mode)
  assert abs(variance / var - (0.9990 if mode == "exact" else 0.9916)) < 5e-4
  samples = out.size  # Pixels are independent: data, noise and model act per pixel.
  # Four standard errors: of the mean √(v/N), of the variance v·√(2/N) (0.9% here; without
  # the per-step noise the variance would be 20% low, with v and 1 − v swapped 10% high).
  assert abs(out.mean() - mean) < 4 * math.sqrt(variance / samples)
  assert abs(out.var() - variance) < 4 * variance * math.sqrt(2 / samples)


def test_multistep_variance_and_rounding_options(images):
  learned = dataclasses.replace(TINY, out_channels=6)
  den6 = D.create_denoiser(learned, D.cosine_schedule(4000), jax.random.key(1))
  key = jax.random.key(3)
  auto = D.denoise_multistep(den6, images, None, key, start_timestep=20, num_steps=4,
                             batch_size=4)
  np.testing.assert_array_equal(auto, D.denoise_multistep(
      den6, images, None, key, start_timestep=20, num_steps=4, variance="learned",
      batch_size=4))
  small = D.denoise_multistep(den6, images, None, key, start_timestep=20, num_steps=4,
                              variance="fixed_small", batch_size=4)
  assert not np.array_equal(auto, small)
  floor = D.denoise_multistep(den6, images, None, key, start_timestep=20, num_steps=4,
                              rounding="floor", batch_size=4)
  difference = auto.astype(int) - floor.astype(int)
  assert set(np.unique(difference)) <= {0, 1} and difference.any()
  three = D.create_denoiser(TINY, D.cosine_schedule(4000), jax.random.key(1))
  with pytest.raises(ValueError, match="outputs 3 channels, expected 6"):
    D.denoise_multistep(three, images, None, key, start_timestep=20, variance="learned")
  with pytest.raises(ValueError, match="variance: expected one of"):
    D.denoise_multistep(three, images, None, key, start_timestep=20, variance="large")
  with pytest.raises(ValueError, match="rounding: expected one of"):
    D.denoise_multistep(three, images, None, key, start_timestep=20, rounding="trunc")


@pytest.mark.parametrize("variance", ["fixed_small", "learned"])
def test_host_loop_equals_the_scanned_program(variance, images):
  # The CPU's default (one jitted step per call) against the one-program loop: the same steps
  # and noise, padded batches included (7 images in batches of 4).
  den6 = D.create_denoiser(dataclasses.replace(TINY, out_channels=6), D.cosine_schedule(4000),
                           jax.random.key(1))
  x = images.astype(np.float32) / 255
  kwargs = dict(start_timestep=20, num_steps=5, variance=variance, batch_size=4)
  scan = np.asarray(D.denoise_multistep(den6, x, None, jax.random.key(3), loop="scan", **kwargs))
  host = np.asarray(D.denoise_multistep(den6, x, None, jax.random.key(3), loop="host", **kwargs))
  # Separately compiled: XLA may fuse differently, a few float32 roundings per step.
  np.testing.assert_allclose(host, scan, atol=1e-5)
  with pytest.raises(ValueError, match="loop: expected one of"):
    D.denoise_multistep(den6, x, None, jax.random.key(3), loop="python", **kwargs)
