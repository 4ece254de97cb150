"""A certification run's settings (`CertifyConfig`), its keys, and the data and pieces it
names: functions of the config only."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import numpy as np

from jaxpoison import backend, classifier, diffusion
from jaxpoison._checks import check_alpha, check_sigma
from jaxpoison.data import Dataset, load_cifar10

log = logging.getLogger("jaxpoison.certification")

DEFAULT_RADII = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
TRAINER_PRESETS = ("airbench94", "resnet18", "tiny", "tiny_resnet18")


DENOISE_DTYPES = ("auto", "float32", "bfloat16")
CONCURRENCY = ("sequential", "vmap")


@dataclasses.dataclass(frozen=True)
class CertifyConfig:
  """Everything that defines a certification run.

  Attributes:
    sigmas: noise levels σ in (0, 1] pixel units; each gets its own models and results.
    num_models: models per σ in all, the n0 selection models included.
    n0: selection models (CERTIFY's first sample); the rest estimate pA.
    alpha: failure probability of the certificate.
    seed: root of every key (noise, training).
    data: "official" (the official archive, downloaded once and cached in data_dir), "tfds" or
      a path to a CIFAR-10 `.npz` / JPEG pack / image folder.
    data_dir: where "official" caches the archive (None: $JAXPOISON_DATA_DIR or
      ~/.cache/jaxpoison), or the tfds data directory for "tfds" (None: tfds' default).
    denoiser: "default" (the embedded denoiser), a path written by `diffusion.save_denoiser`
      (e.g. by scripts/convert_checkpoint.py), or "none": Gaussian noise only, no denoising
      (Weber et al.'s smoothing of the training set, the baseline of the paper's Fig. 1 right;
      the certificate is the same, the models see noisy images).
    trainer: a preset name (see TRAINER_PRESETS) or a `classifier.TrainConfig`.
    models_per_step: models computed concurrently per chunk (None: planned from device memory);
      rounded up to a multiple of the device count.
    num_test: certify this many test points (a fixed random subset; None: all).
    num_train: train on a fixed random subset of num_train training images (None: all).
    radii: radii at which the summary reports certified accuracy.
    denoise_batch_size: images per denoiser call.
    allow_untrained_sigma: accept a σ whose denoising step lies outside the steps the denoiser
      was trained on (refused by default: see `diffusion.check_trained_sigma`).
    allow_environment_change: resume a results folder although the platform, the JAX version
      or a resolved compute dtype or training loop differs from the run that started it
      (refused by default: the votes would mix models computed differently). The change is
      recorded in settings.json under "environment_history".
    denoise_dtype: the denoiser's compute dtype, "auto" (bfloat16 on an accelerator, float32 on
      a CPU, where XLA has no fast bf16 convolutions), "float32" or "bfloat16". bf16 changes
      PSNR by under 0.1 dB (tests/test_diffusion_denoise.py) and halves the memory traffic.
    concurrency: how one device trains its share of a chunk: "sequential" (one model after
      another inside one program, `lax.map`; the default everywhere until a GPU measurement
      shows better) or "vmap" (all at once, which XLA lowers to grouped convolutions: slower
      per model on XLA:CPU, and measured on an H100 at 6.2–6.8 ms per model-step against 4.0
      for one model, crashing at 64 models; capped at MAX_VMAP_MODELS_PER_DEVICE). The same
      votes up to float rounding.
  """
  sigmas: tuple[float, ...] = (0.25,)
  num_models: int = 10_000
  n0: int = 100
  alpha: float = 0.001
  seed: int = 0
  data: str = "official"
  data_dir: str | None = None
  denoiser: str = "default"
  trainer: Any = "airbench94"
  models_per_step: int | None = None
  num_test: int | None = None
  num_train: int | None = None
  radii: tuple[float, ...] = DEFAULT_RADII
  denoise_batch_size: int = 500
  allow_untrained_sigma: bool = False
  allow_environment_change: bool = False
  denoise_dtype: str = "auto"
  concurrency: str = "sequential"

  def validate(self) -> "CertifyConfig":
    sigmas = tuple(float(s) for s in np.atleast_1d(self.sigmas))
    if not sigmas:
      raise ValueError("sigmas: expected at least one noise level")
    for s in sigmas:
      check_sigma(s, name="sigma")
    if len(set(sigmas)) != len(sigmas):
      raise ValueError(f"sigmas: each noise level once, got {sigmas}")
    if int(self.n0) < 1:
      raise ValueError(f"n0: expected at least 1 selection model, got {self.n0}")
    if int(self.num_models) <= int(self.n0):
      raise ValueError(
          f"num_models ({self.num_models}) must exceed n0 ({self.n0}): the first n0 models "
          "select the class, the remaining num_models - n0 estimate its probability")
    check_alpha(self.alpha)
    if self.models_per_step is not None and int(self.models_per_step) < 1:
      raise ValueError(f"models_per_step: expected a positive count, got {self.models_per_step}")
    for name in ("num_test", "num_train"):
      value = getattr(self, name)
      if value is not None and int(value) < 1:
        raise ValueError(f"{name}: expected a positive count or None, got {value}")
    if isinstance(self.trainer, str) and self.trainer not in TRAINER_PRESETS:
      raise ValueError(f"trainer: expected one of {TRAINER_PRESETS} or a TrainConfig, "
                       f"got {self.trainer!r}")
    if int(self.denoise_batch_size) < 1:
      raise ValueError(f"denoise_batch_size: expected >= 1, got {self.denoise_batch_size}")
    if self.denoise_dtype not in DENOISE_DTYPES:
      raise ValueError(f"denoise_dtype: expected one of {DENOISE_DTYPES}, got "
                       f"{self.denoise_dtype!r}")
    if self.concurrency not in CONCURRENCY:
      raise ValueError(f"concurrency: expected one of {CONCURRENCY}, got {self.concurrency!r}")
    return dataclasses.replace(self, sigmas=sigmas, radii=tuple(float(r) for r in self.radii))


# ---------------------------------------------------------------------------------------------
# Keys: functions of (seed, σ, model index) only.


def sigma_key(seed: int, sigma: float) -> jax.Array:
  """The root key of one noise level; σ enters in micro-units so the σ list's order is moot."""
  return jax.random.fold_in(jax.random.key(seed), int(round(sigma * 1_000_000)))


def model_keys(seed: int, sigma: float, index) -> tuple[jax.Array, jax.Array]:
  """(noise key, training key) of model `index` at noise level σ."""
  return keys_under(sigma_key(seed, sigma), index)


def keys_under(root: jax.Array, index) -> tuple[jax.Array, jax.Array]:
  """(noise key, training key) of model `index` under σ's root key `sigma_key(seed, σ)`
  (traceable: the compiled programs take the root as data)."""
  key = jax.random.fold_in(root, index)
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


# ---------------------------------------------------------------------------------------------
# Resolving the pieces.


def resolve_trainer(trainer, dataset: Dataset):
  """A `classifier.TrainConfig` for this dataset from a preset name or a config (its
  compute_dtype "auto" picks bfloat16 on an accelerator, float32 on the CPU)."""
  if isinstance(trainer, str):
    presets = {
        "airbench94": classifier.airbench94_config,
        "resnet18": classifier.resnet18_config,
        "tiny": lambda: classifier.tiny_config("airbench94"),
        "tiny_resnet18": lambda: classifier.tiny_config("resnet18"),
    }
    trainer = presets[trainer]()
  return dataclasses.replace(trainer, num_classes=dataset.num_classes,
                             image_shape=tuple(dataset.image_shape))


NOISE_ONLY = diffusion.model.NOISE_ONLY
resolve_denoiser = diffusion.model.resolve_denoiser


def subset_indices(num_total: int, num: int | None) -> np.ndarray:
  """A fixed (seed 0) random subset of indices, sorted; all indices when num is None."""
  if num is None or num >= num_total:
    return np.arange(num_total)
  return np.sort(np.random.default_rng(0).choice(num_total, size=num, replace=False))


def load_data(config: CertifyConfig) -> tuple[Dataset, np.ndarray]:
  dataset = load_cifar10(config.data, data_dir=config.data_dir)
  return train_subset(dataset, config.num_train), subset_indices(len(dataset.x_test),
                                                                 config.num_test)


def train_subset(dataset: Dataset, num_train: int | None) -> Dataset:
  """A fixed random subset of the training set (some copies of CIFAR-10 are sorted by class,
  so the first N images would hold a few classes only)."""
  if num_train is None or num_train >= len(dataset.x_train):
    return dataset
  keep = subset_indices(len(dataset.x_train), num_train)
  return dataclasses.replace(dataset, x_train=dataset.x_train[keep],
                             y_train=dataset.y_train[keep])


def resolve_denoise_dtype(denoise_dtype: str = "auto") -> str:
  """"auto" -> "bfloat16" on an accelerator, "float32" on a CPU (`backend.resolve_compute_dtype`);
  other values unchanged."""
  return backend.resolve_compute_dtype(denoise_dtype)
