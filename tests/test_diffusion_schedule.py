"""Noise schedules: ᾱ tables against diffusers' DDPMScheduler, and the σ -> t* rule."""

import math

import numpy as np
import pytest

from jaxpoison import diffusion as D


@pytest.fixture(scope="module")
def diffusers():
  # Only the tests against diffusers' tables need it (the convert extra); the rest always run.
  return pytest.importorskip("diffusers")


def test_linear_alphas_cumprod_match_diffusers(diffusers):
  ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                beta_schedule="linear").alphas_cumprod.numpy()
  ours = D.alphas_cumprod(D.linear_schedule())
  assert ours.shape == (1000,)
  np.testing.assert_allclose(ours, ref, rtol=2e-6)


def test_cosine_alphas_cumprod_match_diffusers_and_formula(diffusers):
  ref = diffusers.DDPMScheduler(num_train_timesteps=4000,
                                beta_schedule="squaredcos_cap_v2").alphas_cumprod.numpy()
  ours = D.alphas_cumprod(D.cosine_schedule())
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-9)
  # Before the β clip kicks in, ᾱ_t is f(t+1)/f(0) with f(t) = cos²((t/T + s)/(1 + s)·π/2).
  f = lambda t: math.cos((t / 4000 + 0.008) / 1.008 * math.pi / 2) ** 2
  for t in (0, 100, 2000):
    assert ours[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
  assert D.betas(D.cosine_schedule()).max() == pytest.approx(0.999)


@pytest.mark.parametrize("schedule", [D.linear_schedule(), D.cosine_schedule()])
def test_timestep_for_sigma_is_nearest_in_log_ratio(schedule):
  a = D.alphas_cumprod(schedule)
  log_ratio = np.log((1 - a) / a)
  for sigma in (0.03, 0.1, 0.25, 0.5, 1.0, 2.0):
    t = D.timestep_for_sigma(schedule, sigma)
    target = math.log((2 * sigma) ** 2)
    assert abs(log_ratio[t] - target) <= np.abs(log_ratio - target).min() + 1e-12
    assert log_ratio[max(t - 1, 0)] <= target + 1e-9 or t == 0
  # A σ that is exactly the level of a step maps to that step.
  s = D.sigmas(schedule)
  for t in (5, 57, 300):
    assert D.timestep_for_sigma(schedule, float(s[t])) == t
  assert D.timestep_for_sigma(schedule, float(s[0]) / 10) == 0


def test_timestep_for_sigma_linear_against_diffusers_table(diffusers):
  # t* from diffusers' own ᾱ table, by the documented rule (nearest in log ratio), next to
  # Carlini et al.'s rule (the first t with σ_t ≥ σ). The two differ by one step where the
  # nearest step lies below σ; either is sound since the noise added is exactly σ
  # (tests/test_diffusion_denoise.py), t* only picks which step's ε_θ sees the input.
  a = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                              beta_schedule="linear").alphas_cumprod.numpy().astype(np.float64)
  level = np.sqrt((1 - a) / a) / 2
  sigmas = (0.1, 0.25, 0.5, 1.0)
  nearest = [int(np.argmin(np.abs(np.log(level / s)))) for s in sigmas]
  carlini = [int(np.argmax(level >= s)) for s in sigmas]
  assert [D.timestep_for_sigma(D.linear_schedule(), s) for s in sigmas] == nearest
  assert nearest == [57, 144, 258, 396] and carlini == [58, 145, 259, 396]


@pytest.mark.parametrize("sigma", [0.0, -0.1, float("nan"), float("inf")])
def test_timestep_for_sigma_rejects_non_positive(sigma):
  with pytest.raises(ValueError, match="sigma"):
    D.timestep_for_sigma(D.linear_schedule(), sigma)


def test_timestep_for_sigma_rejects_beyond_last_step():
  short = D.linear_schedule(num_timesteps=50)
  last = float(D.sigmas(short)[-1])
  assert D.timestep_for_sigma(short, last) == 49
  with pytest.raises(ValueError, match="beyond the schedule's last step"):
    D.timestep_for_sigma(short, last * 1.01)


def test_schedule_config_validation_and_json():
  with pytest.raises(ValueError, match="kind"):
    D.ScheduleConfig(kind="quadratic")
  with pytest.raises(ValueError, match="beta_start"):
    D.linear_schedule(beta_start=0.1, beta_end=0.01)
  s = D.cosine_schedule()
  assert D.ScheduleConfig.from_dict(s.to_dict()) == s
  with pytest.raises(ValueError, match="unknown fields"):
    D.ScheduleConfig.from_dict({"kind": "linear", "bogus": 1})
