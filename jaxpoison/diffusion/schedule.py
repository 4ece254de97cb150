"""Noise schedules of discrete-time diffusion models, and the step that matches a noise level σ.

A schedule is a table ᾱ_t (`alphas_cumprod`), t = 0 .. T-1, in the convention of DDPM and
diffusers: the model's time step t turns a clean image x (scaled to [-1, 1]) into
x_t = √ᾱ_t·x + √(1-ᾱ_t)·ε.

Noise levels: σ is the standard deviation of Gaussian noise added to images in [0, 1] (pixel
units, as in Cohen et al. and Carlini et al.). In [-1, 1] units that noise has standard deviation
2σ, and x_t/√ᾱ_t = x + √((1-ᾱ_t)/ᾱ_t)·ε, so step t matches σ when (1-ᾱ_t)/ᾱ_t = (2σ)².
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SCHEDULE_KINDS = ("linear", "cosine")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """A discrete noise schedule.

  kind: "linear" (DDPM: β_t evenly spaced from beta_start to beta_end) or "cosine" (improved
  DDPM, Nichol & Dhariwal 2021: ᾱ(t) ∝ cos²((t/T + s)/(1 + s)·π/2), β clipped at `max_beta`).
  num_timesteps: T. beta_start/beta_end are used by "linear" only; cosine_s and max_beta by
  "cosine" only.
  """
  kind: str = "linear"
  num_timesteps: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02
  cosine_s: float = 0.008
  max_beta: float = 0.999

  def __post_init__(self):
    if self.kind not in SCHEDULE_KINDS:
      raise ValueError(f"ScheduleConfig.kind: expected one of {SCHEDULE_KINDS}, got {self.kind!r}")
    if int(self.num_timesteps) < 1:
      raise ValueError(f"ScheduleConfig.num_timesteps: expected >= 1, got {self.num_timesteps}")
    if self.kind == "linear" and not 0 < self.beta_start <= self.beta_end < 1:
      raise ValueError(
          "ScheduleConfig: expected 0 < beta_start <= beta_end < 1, got "
          f"{self.beta_start}, {self.beta_end}")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "ScheduleConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"ScheduleConfig: unknown fields {unknown}; expected a subset of {sorted(names)}")
    return cls(**d)


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> ScheduleConfig:
  """DDPM's linear schedule (Ho et al. 2020; google/ddpm-cifar10-32): β 1e-4 → 0.02, T = 1000."""
  return ScheduleConfig("linear", int(num_timesteps), float(beta_start), float(beta_end))


def cosine_schedule(num_timesteps: int = 4000, s: float = 0.008,
                    max_beta: float = 0.999) -> ScheduleConfig:
  """Improved DDPM's cosine schedule (T = 4000 as in improved-diffusion's CIFAR-10 models)."""
  return ScheduleConfig("cosine", int(num_timesteps), cosine_s=float(s), max_beta=float(max_beta))


def betas(schedule: ScheduleConfig) -> np.ndarray:
  """β_t, float64 [T]."""
  T = schedule.num_timesteps
  if schedule.kind == "linear":
    return np.linspace(schedule.beta_start, schedule.beta_end, T, dtype=np.float64)
  s = schedule.cosine_s
  f = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
  return np.minimum(1.0 - f[1:] / f[:-1], schedule.max_beta)


def alphas_cumprod(schedule: ScheduleConfig) -> np.ndarray:
  """ᾱ_t = Π_{s<=t} (1 - β_s), float64 [T], decreasing."""
  return np.cumprod(1.0 - betas(schedule))


def sigmas(schedule: ScheduleConfig) -> np.ndarray:
  """The noise level of every step in [0, 1] pixel units: σ_t = √((1-ᾱ_t)/ᾱ_t) / 2, float64 [T]."""
  a = alphas_cumprod(schedule)
  return np.sqrt((1.0 - a) / a) / 2.0


def timestep_for_sigma(schedule: ScheduleConfig, sigma: float) -> int:
  """The step t* whose noise level matches σ (pixel units): (1-ᾱ_t*)/ᾱ_t* ≈ (2σ)².

  The ratio (1-ᾱ_t)/ᾱ_t increases with t; t* is the step nearest to (2σ)² in *log* ratio
  (equivalently nearest in log σ_t), since the ratio grows geometrically along the schedule and
  a relative error in σ is what matters. Ties go to the smaller t. σ below the first step's
  level maps to t* = 0.

  Raises ValueError for σ <= 0 (or not finite) and for σ above the last step's level σ_{T-1}
  (≈ 78.7 for the linear DDPM schedule, so any useful σ fits the default schedules).
  """
  try:
    value = float(sigma)
  except (TypeError, ValueError):
    raise TypeError(f"sigma: expected a number, got {sigma!r}") from None
  if not math.isfinite(value) or value <= 0:
    raise ValueError(f"sigma: expected a noise level > 0 in [0, 1] pixel units, got {sigma}")
  level = sigmas(schedule)
  if value > level[-1]:
    raise ValueError(
        f"sigma: {value} is beyond the schedule's last step (t = {schedule.num_timesteps - 1}, "
        f"σ = {level[-1]:.4g} in [0, 1] pixel units) of {schedule}")
  return int(np.argmin(np.abs(np.log(level) - math.log(value))))
