"""Algorithms 1 and 2 of the paper end to end: denoise, train, vote, certify, resumably.

For each noise level σ and each model index i (0 ≤ i < num_models):

1. `noise_key(seed, σ, i)` draws fresh Gaussian noise for the whole training set, which the
   one-step DDPM denoiser removes (`diffusion.noise_and_denoise`);
2. a classifier is trained on the denoised copy with `train_key(seed, σ, i)`;
3. it votes on every test point.

Models are computed in chunks of `models_per_step`, the chunk's models sharded over all devices
(a one-axis `jax.sharding.Mesh` named "models", spanning every host under `jax.distributed`).
Each finished chunk's votes are written atomically to `<out>/sigma_<σ>/votes/`, so a crash loses
at most the chunk in flight and a rerun computes only the missing model indices. Keys depend only
on (seed, σ, i), never on the chunk or the device count, so a resumed run reproduces the votes of
an uninterrupted one bit for bit on the same device and chunking.

The first n0 models are the selection models of Cohen et al.'s CERTIFY, the remaining
num_models − n0 the estimation models. σ and every radius are in [0, 1] pixel units.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from scipy import stats

from jaxpoison import certify as certify_lib
from jaxpoison import classifier, diffusion, multihost, runs
from jaxpoison._checks import check_alpha, check_sigma
from jaxpoison.data import DataError, Dataset, load_cifar10
from jaxpoison.io import (_json_default, atomic_save_npz, atomic_write_bytes, atomic_write_json,
                          atomic_write_text)

log = logging.getLogger("jaxpoison.certify")

DEFAULT_RADII = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
TRAINER_PRESETS = ("airbench94", "resnet18", "tiny", "tiny_resnet18")
SETTINGS_FILE = "settings.json"
_CHUNK_RE = re.compile(r"models_(\d{6,})-(\d{6,})\.npz")


class ResultsMismatch(runs.RunMismatch):
  """The results folder was written by a run with different settings."""


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
  key = jax.random.fold_in(sigma_key(seed, sigma), index)
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


# ---------------------------------------------------------------------------------------------
# Results folder: settings, chunk files.


def _hash_arrays(*arrays) -> str:
  return runs.fingerprint_arrays(arrays, length=16)


def pytree_fingerprint(tree) -> str:
  """A short hash of every leaf's dtype, shape and bytes (e.g. denoiser parameters)."""
  return _hash_arrays(*[np.asarray(leaf) for leaf in jax.tree.leaves(tree)])


def _config_dict(config) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(config), default=_json_default_lenient))


def _json_default_lenient(obj):
  try:
    return _json_default(obj)
  except TypeError:
    return str(obj)


# Version of what settings.json records and of how votes are computed; 2: exact noise of level σ
# (earlier runs added the nearest step's noise level).
SETTINGS_VERSION = 2
DENOISE_DTYPES = ("auto", "float32", "bfloat16")
CONCURRENCY = ("sequential", "vmap")
ENVIRONMENT = "environment"


def resolve_denoise_dtype(denoise_dtype: str = "auto") -> str:
  """"auto" -> "bfloat16" on an accelerator, "float32" on a CPU; other values unchanged."""
  if denoise_dtype == "auto":
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return denoise_dtype


def environment_settings(train_config, denoise_dtype: str = "auto",
                         concurrency: str = "sequential") -> dict:
  """How the votes are computed on this machine: resolving "auto" here, so that a run resumed
  on another backend (bf16 rather than f32 training, a scanned rather than a host loop) or under
  another JAX is noticed rather than silently mixed."""
  import jaxlib
  return {
      "platform": jax.default_backend(),
      "jax_version": jax.__version__,
      "jaxlib_version": jaxlib.__version__,
      "trainer_compute_dtype": classifier.resolve_compute_dtype(train_config).name,
      "trainer_loop": classifier.resolve_loop(train_config),
      "denoiser_compute_dtype": resolve_denoise_dtype(denoise_dtype),
      # Recorded only where it can matter (folders from before the choice existed resume).
      **({} if concurrency == "sequential" else {"concurrency": concurrency}),
  }


def run_settings(config: CertifyConfig, dataset: Dataset, test_indices: np.ndarray,
                 denoiser, train_config) -> dict:
  """What the votes depend on. num_models, n0, alpha and models_per_step are left out: more
  models extend a run, and n0/alpha only change the analysis of the same votes."""
  return {
      "settings_version": SETTINGS_VERSION,
      "seed": int(config.seed),
      "data": _hash_arrays(dataset.x_train, dataset.y_train, dataset.x_test[test_indices],
                           dataset.y_test[test_indices]),
      "num_train": int(len(dataset.x_train)),
      "test_indices": _hash_arrays(test_indices),
      "num_test": int(len(test_indices)),
      "denoiser": NOISE_ONLY if denoiser is None else {
          "config": _config_dict(denoiser.unet), "schedule": _config_dict(denoiser.schedule),
          "params": pytree_fingerprint(denoiser.params),
          "trained_timesteps": list(denoiser.trained_timesteps)},
      "trainer": _trainer_settings(train_config),
      "denoise_batch_size": int(config.denoise_batch_size),
      ENVIRONMENT: environment_settings(train_config, config.denoise_dtype, config.concurrency),
  }


# TrainConfig fields added after SETTINGS_VERSION 2, left out of settings.json at their
# default so that folders written before they existed (which trained with that value) resume.
_TRAINER_FIELDS_SINCE_V2 = {"head_lr_scale": 1.0, "adversarial_epsilon": 0.0,
                            "adversarial_steps": 7, "adversarial_step_size": 2 / 255,
                            "adversarial_random_start": True}


def _trainer_settings(train_config) -> dict:
  settings = _config_dict(train_config)
  for name, default in _TRAINER_FIELDS_SINCE_V2.items():
    if settings.get(name) == default:
      settings.pop(name)
  return settings


def claim_results_dir(out: str | os.PathLike, settings: dict, *,
                      allow_environment_change: bool = False) -> Path:
  """Creates `out` for these settings, or checks that it was written with the same ones
  (`runs.claim`).

  Settings under "environment" (platform, JAX version, resolved dtypes and loop) may differ
  when `allow_environment_change` is set: the folder's settings.json then takes the new
  environment and keeps the old ones in "environment_history".

  Raises:
    ResultsMismatch: naming every differing setting; nothing in the folder is touched.
  """
  folder = runs.claim(
      out, settings, settings_file=SETTINGS_FILE,
      what="a results folder of scripts/certify.py", mutable=(ENVIRONMENT,),
      allow_mutable_change=allow_environment_change,
      allow_mutable_hint="Pass --allow_environment_change (CertifyConfig."
      "allow_environment_change) to resume on purpose; the change is recorded.",
      error=ResultsMismatch)
  return folder.path


def sigma_dir(out: Path, sigma: float) -> Path:
  return Path(out) / f"sigma_{sigma:g}"


def chunk_path(votes_dir: Path, start: int, stop: int) -> Path:
  return Path(votes_dir) / f"models_{start:06d}-{stop - 1:06d}.npz"


def finished_models(votes_dir: Path) -> np.ndarray:
  """Bool mask over model indices: True where a chunk file holds that model's votes."""
  ranges = [(int(m.group(1)), int(m.group(2)) + 1)
            for m in runs.list_units(votes_dir, _CHUNK_RE)]
  done = np.zeros(max([stop for _, stop in ranges], default=0), bool)
  for start, stop in ranges:
    done[start:stop] = True
  return done


def pending_chunks(votes_dir: Path | None, num_models: int, models_per_step: int, *,
                   done: np.ndarray | None = None) -> list[range]:
  """Contiguous runs of unfinished model indices below num_models, cut at models_per_step.

  `done` (bool, by model index) replaces reading `votes_dir` (on processes other than 0, which
  take it from process 0).
  """
  done = finished_models(votes_dir) if done is None else np.asarray(done, bool)
  done = np.concatenate([done, np.zeros(max(0, num_models - len(done)), bool)])[:num_models]
  chunks = []
  start = None
  for i in range(num_models + 1):
    missing = i < num_models and not done[i]
    if missing and start is None:
      start = i
    if start is not None and (not missing or i - start == models_per_step):
      chunks.append(range(start, i))
      start = i if missing else None
  return chunks


def load_votes(votes_dir: Path, num_models: int, num_points: int) -> np.ndarray:
  """Votes int [num_models, num_points] of models 0..num_models-1 from the chunk files."""
  votes = np.full((num_models, num_points), -1, np.int64)
  for match in runs.list_units(votes_dir, _CHUNK_RE):
    path = Path(votes_dir) / match.string
    with np.load(path) as chunk:
      indices, chunk_votes = chunk["model_indices"], chunk["votes"]
    if chunk_votes.shape[1] != num_points:
      raise ResultsMismatch(f"{path}: votes for {chunk_votes.shape[1]} test points, expected "
                            f"{num_points}")
    keep = indices < num_models
    votes[indices[keep]] = chunk_votes[keep]
  missing = np.flatnonzero(votes[:, 0] < 0) if num_points else np.array([], int)
  if missing.size:
    raise ValueError(f"{votes_dir}: no votes yet for {missing.size} of {num_models} models "
                     f"(first missing: {missing[:5].tolist()})")
  return votes


# ---------------------------------------------------------------------------------------------
# Analysis: from votes to the certificate and the summary.


def analyse_votes(votes: np.ndarray, labels: np.ndarray, *, n0: int, sigma: float,
                  alpha: float, num_classes: int, num_train: int,
                  radii: Sequence[float] = DEFAULT_RADII) -> tuple[dict, dict]:
  """Cohen et al.'s CERTIFY on the votes; returns (per-point arrays, summary dict)."""
  votes = np.asarray(votes)
  labels = np.asarray(labels)
  counts_select = certify_lib.vote_counts(votes[:n0], num_classes)
  counts_estimate = certify_lib.vote_counts(votes[n0:], num_classes)
  c_a, p_a = certify_lib.top_class_lower_bound(counts_select, counts_estimate, alpha)
  cert = certify_lib.certify(counts_select, counts_estimate, sigma, alpha)
  correct = cert.labels == labels
  # PREDICT (Algorithm 2) on every model's vote: the smoothed classifier's prediction, wrong
  # with probability at most α; abstentions count as wrong.
  counts_all = counts_select + counts_estimate
  smoothed = certify_lib.predict(counts_all, alpha)
  majority = np.argmax(counts_all, axis=-1)
  model_acc = (votes == labels[None]).mean(axis=1)
  certified = cert.labels != certify_lib.ABSTAIN
  grid = np.asarray(radii, np.float64)
  cert_acc = certify_lib.certified_accuracy(cert.radii, correct, grid)
  n = votes.shape[0] - n0
  poison_r = {"1": 1, "1%": max(1, int(round(0.01 * num_train))), "100%": num_train}
  poisoning = {}
  for name, r in poison_r.items():
    per_point = np.where(certified & correct,
                         certify_lib.poisoning_radius(np.where(certified, p_a, 0.5),
                                                      sigma=sigma, r=r), 0.0)
    best = max(0.0, float(certify_lib.poisoning_radius(alpha ** (1.0 / n), sigma=sigma, r=r)))
    poisoning[name] = {
        "r": r,
        "median_certified_correct": float(np.median(per_point[certified & correct]))
        if (certified & correct).any() else 0.0,
        "mean_over_test_points": float(per_point.mean()) if len(per_point) else 0.0,
        "max_with_these_models": best,
    }
  summary = {
      "sigma": sigma,
      "num_models": int(votes.shape[0]),
      "n0": int(n0),
      "alpha": float(alpha),
      "num_test": int(len(labels)),
      "model_accuracy_mean": float(model_acc.mean()),
      "model_accuracy_sd": float(model_acc.std(ddof=1)) if len(model_acc) > 1 else 0.0,
      # PREDICT's accuracy: the smoothed classifier's clean accuracy (abstentions wrong).
      "smoothed_accuracy": float((smoothed == labels).mean()),
      "smoothed_abstention_rate": float((smoothed == certify_lib.ABSTAIN).mean()),
      # The plain majority vote of all models (ties to the lower class), no test.
      "majority_vote_accuracy": float((majority == labels).mean()),
      # CERTIFY's label accuracy: by construction the certified accuracy at radius 0.
      "certify_accuracy": float(correct.mean()),
      "abstention_rate": float((~certified).mean()),
      "certified_accuracy": {f"{r:g}": float(a) for r, a in zip(grid, cert_acc)},
      # When all n estimation models agree, pA = α^(1/n): no radius beyond this is certifiable.
      "max_certifiable_radius": max(0.0, float(sigma * stats.norm.ppf(alpha ** (1.0 / n)))),
      "poisoning_radius": poisoning,
  }
  per_point = {"label": labels, "predict": cert.labels, "radius": cert.radii,
               "smoothed_predict": smoothed,
               "correct": correct.astype(np.int64), "p_a": p_a, "c_a": c_a,
               "counts_select": counts_select, "counts_estimate": counts_estimate}
  return per_point, summary


def write_certify_table(path: Path, test_indices: np.ndarray, per_point: dict) -> Path:
  """Cohen et al.'s certify output: idx label predict radius correct (tab-separated)."""
  lines = ["idx\tlabel\tpredict\tradius\tcorrect"]
  for idx, label, pred, radius, correct in zip(test_indices, per_point["label"],
                                               per_point["predict"], per_point["radius"],
                                               per_point["correct"]):
    lines.append(f"{int(idx)}\t{int(label)}\t{int(pred)}\t{radius:.4f}\t{int(correct)}")
  return atomic_write_text(path, "\n".join(lines) + "\n")


def certified_curve(radius, correct, max_certifiable: float, *, at_least: float = 0.0,
                    points: int = 200) -> tuple[np.ndarray, np.ndarray]:
  """(radius grid, certified accuracy) for a plot: out to the largest radius certified, and at
  least to the largest certifiable with these many models (all agreeing) and to `at_least`, so
  an empty curve still shows the scale."""
  reach = max(float(np.max(radius, initial=0.0)), float(max_certifiable), float(at_least))
  grid = np.linspace(0.0, max(reach, 1e-3) * 1.05, points)
  return grid, certify_lib.certified_accuracy(radius, correct, grid)


def plot_certified_accuracy(path: Path, curves: dict[float, tuple[np.ndarray, np.ndarray]],
                            title: str = "") -> Path:
  """Certified accuracy versus ℓ2 radius, one line per σ, saved atomically as a PNG."""
  lines = {f"σ = {sigma:g}": curve for sigma, curve in sorted(curves.items())}
  return plot_certified_panels(path, [(title, lines)])


def plot_certified_panels(path: Path, panels, suptitle: str = "") -> Path:
  """Side-by-side panels of certified accuracy versus ℓ2 radius, saved atomically as a PNG.

  panels: a sequence of (title, {line label: (radius grid, certified accuracy)}).
  """
  import io as _io

  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
  for ax, (title, lines) in zip(axes[0], panels):
    for label, (grid, acc) in lines.items():
      ax.plot(grid, acc, label=label)
    ax.set_xlabel("ℓ2 radius ([0, 1] pixel units)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
      ax.set_title(title)
  if suptitle:
    fig.suptitle(suptitle)
  buffer = _io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
  plt.close(fig)
  return atomic_write_bytes(path, buffer.getvalue())


def read_certified(out: str | os.PathLike) -> dict[float, dict]:
  """A finished results folder's certificates: {σ: {"radius", "correct", "label", "summary"}}.

  radius: float [num_test] (0 where CERTIFY abstained); correct: bool [num_test], the certified
  label is the true one; label: the test points' true labels; summary: that σ's summary.json.
  """
  out = Path(out)
  found = {}
  for directory in sorted(out.glob("sigma_*")):
    if not (directory / "counts.npz").exists() or not (directory / "summary.json").exists():
      continue
    summary = json.loads((directory / "summary.json").read_text())
    with np.load(directory / "counts.npz") as counts:
      found[float(summary["sigma"])] = {
          "radius": counts["radius"], "correct": counts["predict"] == counts["label"],
          "label": counts["label"], "summary": summary}
  if not found:
    raise FileNotFoundError(f"{out}: no finished σ (sigma_*/counts.npz and summary.json); "
                            "run scripts/certify.py to the end first")
  return found


# ---------------------------------------------------------------------------------------------
# Devices.


CPU_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def configure_cpu_devices(count: int | None = None) -> int | None:
  """Splits the host CPU into `count` XLA devices (default: one per core available to this
  process), unless XLA_FLAGS already sets that. Call before JAX first touches a device.

  XLA:CPU runs one model's small convolutions on about one core, so on a CPU concurrency comes
  from devices: the chunk's models are sharded over them (measured on 2 cores: 1.26× the
  models per hour of one device; BENCHMARKS.md, issue 11). Votes do not depend on the device
  count. Harmless on an accelerator, where the CPU devices go unused. Returns the count set, or
  None when XLA_FLAGS already had one.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if CPU_DEVICES_FLAG in flags:
    return None
  if count is None:
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  if int(count) < 1:
    raise ValueError(f"cpu_devices: expected at least 1, got {count}")
  os.environ["XLA_FLAGS"] = f"{flags} {CPU_DEVICES_FLAG}={int(count)}".strip()
  return int(count)


def models_mesh(devices=None) -> Mesh:
  """A one-axis mesh "models" over every device of every process."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("models",))


def replicate(tree, mesh: Mesh):
  """Puts host arrays on every device of the mesh (also across hosts)."""
  sharding = NamedSharding(mesh, PartitionSpec())

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def shard_models(indices: np.ndarray, mesh: Mesh) -> jax.Array:
  """Model indices int32 [M], split over the mesh's models axis."""
  indices = np.asarray(indices, np.int32)
  sharding = NamedSharding(mesh, PartitionSpec("models"))
  return jax.make_array_from_callback(indices.shape, sharding, lambda index: indices[index])


def gather_to_host(array) -> np.ndarray:
  if isinstance(array, np.ndarray) or array.is_fully_addressable:
    return np.asarray(array)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


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


NOISE_ONLY = "none"


def resolve_denoiser(denoiser) -> "diffusion.Denoiser | None":
  """The denoiser a config names; None for NOISE_ONLY (noise without denoising)."""
  if isinstance(denoiser, diffusion.Denoiser):
    return denoiser
  if denoiser == NOISE_ONLY:
    return None
  if denoiser in (None, "default"):
    return diffusion.default_denoiser()
  return diffusion.load_denoiser(denoiser)


def subset_indices(num_total: int, num: int | None) -> np.ndarray:
  """A fixed (seed 0) random subset of indices, sorted; all indices when num is None."""
  if num is None or num >= num_total:
    return np.arange(num_total)
  return np.sort(np.random.default_rng(0).choice(num_total, size=num, replace=False))


# Models per device when no memory budget is known (a CPU). One: XLA:CPU runs the vmapped
# (grouped) convolutions of several models slower than the same models one after the other
# (BENCHMARKS.md, issue 5), so on a CPU concurrency comes only from several devices.
CPU_MODELS_PER_DEVICE = 1
# Upper bound per device when planning from memory: past this, throughput no longer grows.
MAX_MODELS_PER_DEVICE = 128
# vmap's bound: an H100 crashed (CUDA_ERROR_ILLEGAL_ADDRESS) at 64 vmapped airbench-shaped
# models in bf16 at batch 1024, and was slower per model than one at a time at 4 and 32.
MAX_VMAP_MODELS_PER_DEVICE = 32


def denoise_program_bytes(denoiser, num_train: int, image_shape, *, sigma: float,
                          batch_size: int, denoise_dtype: str = "float32") -> int:
  """Device bytes of denoising one copy of the training set (XLA's compiled footprint); 0 for
  noise only (no network)."""
  if denoiser is None:
    return 0
  images = jax.ShapeDtypeStruct((num_train, *image_shape), jnp.uint8)
  fn = jax.jit(lambda d, x, k: diffusion.noise_and_denoise(
      d, x, sigma, k, batch_size=batch_size, compute_dtype=jnp.dtype(denoise_dtype),
      allow_untrained_sigma=True))
  compiled = fn.lower(denoiser, images, jax.random.key(0)).compile()
  return classifier.api.program_bytes(compiled)


def choose_models_per_step(requested: int | None, train_config, num_train: int,
                           num_devices: int, *, concurrency: str = "sequential",
                           denoise_bytes: int = 0) -> int:
  """Rounds a requested chunk up to a multiple of the device count, or plans one from memory.

  The plan fits 90% of the device's memory. "vmap": XLA's compiled footprint of training 1 and
  2 models together, each on its own copy of the training set (the denoised copies, which the
  denoising program writes and the training program consumes in place), extrapolated, plus the
  denoising program (`denoise_bytes`); at most MAX_VMAP_MODELS_PER_DEVICE, also when requested.
  "sequential": one model's training program plus the denoising program, and a denoised copy
  (uint8 images) per model of the chunk.

  Raises:
    classifier.InsufficientMemoryError: not even one model per device fits.
  """
  cap = MAX_VMAP_MODELS_PER_DEVICE if concurrency == "vmap" else MAX_MODELS_PER_DEVICE
  if requested is None:
    limit = classifier.device_memory_limit(train_config)
    if limit is None:
      per_device = CPU_MODELS_PER_DEVICE
    else:
      budget = int(0.9 * limit) - int(denoise_bytes)
      if concurrency == "vmap":
        per_device = classifier.plan_models_per_step(train_config, num_train,
                                                     memory_bytes=budget)
      else:
        one = classifier.estimate_bytes(train_config, 1, num_train)
        copy = num_train * int(np.prod(train_config.image_shape))
        per_device = max(0, (budget - one) // copy + 1) if budget >= one else 0
      if per_device < 1:
        raise classifier.InsufficientMemoryError(
            f"one model on {num_train} training images does not fit in "
            f"{limit / 2**30:.1f} GiB of device memory; use a smaller trainer or --num_train")
      per_device = min(per_device, cap)
    requested = per_device * num_devices
  per_device = int(math.ceil(int(requested) / num_devices))
  if per_device > cap:
    log.warning("models_per_step: %d models per device with concurrency %r exceeds %d; using %d "
                "(an H100 crashed at 64 vmapped models)", per_device, concurrency, cap, cap)
    per_device = cap
  return per_device * num_devices


# ---------------------------------------------------------------------------------------------
# One chunk of models: denoise, train, vote.


class ChunkComputer:
  """Jitted, sharded programs for one σ: compiled once, called once per chunk.

  Denoising and training are separate programs so the log can say where the time goes (the
  paper: denoising is about half the cost). The denoised copies stay on device between them.
  The denoiser's params are cast to `denoise_dtype` once per chunk, outside the loop over models.

  Training runs as the trainer's resolved loop says (`classifier.resolve_loop`): "scan", one
  program with a `lax.scan` over the SGD steps (accelerators), or "host", a jitted, sharded step
  called from Python with the carry donated (the CPU, where XLA runs convolutions inside a
  while loop about 13× slower than the same step on its own). Both give the same models up to
  float rounding; which one ran is recorded in the run's settings. `concurrency` says how each
  device trains its models of the chunk: "sequential" (a `lax.map` over them in the scanned
  program; one slot after another for the host loop) or "vmap" (all at once).
  """

  def __init__(self, *, mesh: Mesh, seed: int, sigma: float, denoiser, train_config,
               num_train: int, denoise_batch_size: int, allow_untrained_sigma: bool = False,
               denoise_dtype: str = "float32", concurrency: str = "sequential"):
    self.mesh = mesh
    self.concurrency = concurrency
    spec_models = PartitionSpec("models")
    spec_all = PartitionSpec()
    self.loop = classifier.resolve_loop(train_config)
    compute_dtype = jnp.dtype(resolve_denoise_dtype(denoise_dtype))

    def denoise_local(denoiser, x_train, indices):
      if denoiser is not None:
        denoiser = diffusion.cast_params(denoiser, compute_dtype)

      def one(index):
        noise, _ = model_keys(seed, sigma, index)
        if denoiser is None:  # Noise only: the same draws, no denoising.
          return diffusion.add_noise(x_train, sigma, noise)
        return diffusion.noise_and_denoise(denoiser, x_train, sigma, noise,
                                           batch_size=denoise_batch_size,
                                           compute_dtype=compute_dtype,
                                           allow_untrained_sigma=allow_untrained_sigma)
      # lax.map, not vmap: each copy is computed exactly as a lone call would compute it.
      return jax.lax.map(one, indices)

    def train_keys(indices):
      return jax.vmap(lambda i: model_keys(seed, sigma, i)[1])(indices)

    def shard(fn, in_specs, donate=()):
      return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=spec_models,
                                   check_vma=False), donate_argnums=donate)

    self._denoise = shard(denoise_local, (spec_all, spec_all, spec_models))
    if self.loop == "scan":
      train_fn = classifier.make_train_fn(train_config)

      # The labels [N] are every model's: the denoised copies keep them.
      def train_vote_local(denoised, y_train, x_test, indices):
        keys = train_keys(indices)
        if concurrency == "vmap":
          models = train_fn(keys, denoised, y_train)
          return classifier.predict(models, x_test).astype(jnp.int32)

        def one(args):
          key, copy = args
          models = train_fn(key[None], copy[None], y_train)
          return classifier.predict(models, x_test)[0].astype(jnp.int32)
        return jax.lax.map(one, (keys, denoised))

      self._train_vote = shard(train_vote_local, (spec_models, spec_all, spec_all, spec_models))
    else:
      parts = classifier.make_train_parts(train_config)
      if parts.switch is not None:
        raise ValueError("train config: friendly noise (friendly_epoch >= 0) changes the "
                         "training images mid-run, which the certification pipeline's step "
                         "loop does not do; use friendly_epoch=-1")
      self.num_steps = classifier.total_steps(train_config, num_train)

      def select(denoised, indices, slot):
        # Sequential: the slot-th model of every device's share.
        if concurrency == "vmap":
          return denoised, indices
        return (jax.lax.dynamic_slice_in_dim(denoised, slot, 1),
                jax.lax.dynamic_slice_in_dim(indices, slot, 1))

      def start_local(denoised, y_train, indices, slot):
        denoised, indices = select(denoised, indices, slot)
        # Fresh buffers: nothing of the inputs may be aliased into the donated carry.
        return jax.tree.map(jnp.copy, parts.start(train_keys(indices), denoised, y_train))

      def step_local(carry, step, denoised, y_train, indices, slot):
        denoised, indices = select(denoised, indices, slot)
        return parts.body(carry, step, train_keys(indices), denoised, y_train)

      def vote_local(carry, x_test):
        models = parts.finish(carry, self.num_steps)
        return classifier.predict(models, x_test).astype(jnp.int32)

      self._start = shard(start_local, (spec_models, spec_all, spec_models, spec_all))
      self._step = shard(step_local, (spec_models, spec_all, spec_models, spec_all, spec_models,
                                      spec_all), donate=(0,))
      self._vote = shard(vote_local, (spec_models, spec_all))

  def _train_vote_host(self, denoised, y_train, x_test, sharded):
    def run(slot):
      slot = np.int32(slot)
      carry = self._start(denoised, y_train, sharded, slot)
      for step in range(self.num_steps):
        carry = self._step(carry, np.int32(step), denoised, y_train, sharded, slot)
      return self._vote(carry, x_test)

    if self.concurrency == "vmap":
      return run(0)
    # Slot j's votes hold model d·per_device + j of device d in row d: interleave them back.
    devices = self.mesh.devices.size
    per_device = sharded.shape[0] // devices
    slots = [gather_to_host(run(j)) for j in range(per_device)]
    return np.stack(slots, axis=1).reshape(devices * per_device, -1)

  def __call__(self, denoiser, x_train, y_train, x_test, indices: np.ndarray):
    """Votes int32 [len(indices), num_test] on the host, and (denoise s, train+vote s)."""
    sharded = shard_models(indices, self.mesh)
    start = time.perf_counter()
    denoised = self._denoise(denoiser, x_train, sharded)
    denoised.block_until_ready()
    middle = time.perf_counter()
    if self.loop == "scan":
      votes = self._train_vote(denoised, y_train, x_test, sharded)
    else:
      votes = self._train_vote_host(denoised, y_train, x_test, sharded)
    votes = gather_to_host(votes)
    end = time.perf_counter()
    return votes, (middle - start, end - middle)


# ---------------------------------------------------------------------------------------------
# The run.


def _device_description() -> dict:
  devices = jax.devices()
  return {"platform": devices[0].platform, "kind": devices[0].device_kind,
          "count": len(devices), "processes": jax.process_count(),
          "host": platform.node()}


def run_votes(computer: ChunkComputer, arrays, votes_dir: Path, *, num_models: int,
              models_per_step: int, sigma: float, progress: bool = True,
              is_writer: bool = True) -> dict:
  """Computes and stores the votes of every model index below num_models not yet on disk."""
  from tqdm.auto import tqdm

  # Process 0's view of the folder on every process: all must run the same chunks.
  done = np.zeros(num_models, np.uint8)
  if is_writer:
    finished = finished_models(votes_dir)[:num_models]
    done[:len(finished)] = finished
  done = multihost.broadcast_from_writer(done).astype(bool)
  chunks = pending_chunks(None, num_models, models_per_step, done=done)
  done = num_models - sum(len(c) for c in chunks)
  timing = {"chunks": 0, "models": 0, "denoise_s": 0.0, "train_vote_s": 0.0, "chunk_s": 0.0,
            "first_chunk_s": None}
  bar = tqdm(total=num_models, initial=done, unit="model", disable=not progress,
             desc=f"σ={sigma:g}", dynamic_ncols=True)
  # Counted here, not by the bar: a disabled bar (--no_progress, other hosts) counts nothing.
  tracker = runs.Progress(num_models, done=done, unit="models")
  try:
    for chunk in chunks:
      indices = np.asarray(chunk, np.int32)
      # Every chunk padded to the same size: one compilation; padded models are discarded.
      padded = np.concatenate([indices, np.full(models_per_step - len(indices), indices[-1],
                                                np.int32)])
      chunk_start = time.perf_counter()
      votes, (t_denoise, t_train) = computer(*arrays, padded)
      elapsed = time.perf_counter() - chunk_start
      if is_writer:
        atomic_save_npz(chunk_path(votes_dir, chunk.start, chunk.stop),
                        model_indices=indices, votes=votes[:len(indices)].astype(np.int16))
      if timing["first_chunk_s"] is None:
        timing["first_chunk_s"] = elapsed
      else:
        timing["denoise_s"] += t_denoise
        timing["train_vote_s"] += t_train
        timing["chunk_s"] += elapsed
        timing["chunks"] += 1
        timing["models"] += len(indices)
      line = tracker.update(len(indices), f"σ={sigma:g} models {chunk.start}-{chunk.stop - 1} "
                            f"done in {elapsed:.1f} s (denoise {t_denoise:.1f} s, train+vote "
                            f"{t_train:.1f} s)")
      bar.update(len(indices))
      bar.set_postfix_str(f"{tracker.rate_per_hour:,.0f} models/h")
      log.info("%s", line)
  finally:
    bar.close()
  return timing


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


def run_certification(config: CertifyConfig, out: str | os.PathLike, *, dataset=None,
                      progress: bool = True) -> dict:
  """Runs (or resumes) certification and writes every report; returns the top summary.

  Args:
    config: the run's settings.
    out: results folder (created; refused if written by other settings).
    dataset: a `Dataset` to use instead of loading `config.data` (tests, notebooks).
    progress: show a progress bar.
  """
  config = config.validate()
  if dataset is None:
    dataset, test_indices = load_data(config)
  else:
    dataset = train_subset(dataset, config.num_train)
    test_indices = subset_indices(len(dataset.x_test), config.num_test)
  denoiser = resolve_denoiser(config.denoiser)
  if denoiser is not None and tuple(dataset.image_shape) != (
      denoiser.unet.sample_size, denoiser.unet.sample_size, denoiser.unet.in_channels):
    raise DataError(f"the denoiser works on {denoiser.unet.sample_size}×"
                     f"{denoiser.unet.sample_size}×{denoiser.unet.in_channels} images, the "
                     f"data has {dataset.image_shape}")
  if denoiser is not None and not config.allow_untrained_sigma:
    for sigma in config.sigmas:  # Before any folder is written or any program compiled.
      diffusion.check_trained_sigma(denoiser, sigma)
  train_config = resolve_trainer(config.trainer, dataset)
  settings = run_settings(config, dataset, test_indices, denoiser, train_config)
  multihost.check_same_everywhere("run settings", settings)
  # Only process 0 touches the folder; a refusal there stops every process.
  out = multihost.run_on_writer(
      lambda: claim_results_dir(out, settings,
                                allow_environment_change=config.allow_environment_change),
      stopped=ResultsMismatch) or Path(out)

  mesh = models_mesh()
  num_devices = mesh.devices.size
  denoise_dtype = resolve_denoise_dtype(config.denoise_dtype)
  denoise_batch_size = min(config.denoise_batch_size, len(dataset.x_train))
  denoise_bytes = 0
  if config.models_per_step is None and classifier.device_memory_limit(train_config):
    denoise_bytes = denoise_program_bytes(
        denoiser, len(dataset.x_train), dataset.image_shape, sigma=max(config.sigmas),
        batch_size=denoise_batch_size, denoise_dtype=denoise_dtype)
  models_per_step = choose_models_per_step(
      config.models_per_step, train_config, len(dataset.x_train), num_devices,
      concurrency=config.concurrency, denoise_bytes=denoise_bytes)
  log.info("certifying σ=%s with %d models (n0=%d) on %d %s device(s), %d models per step "
           "(%s), denoising in %s; results in %s", ",".join(f"{s:g}" for s in config.sigmas),
           config.num_models, config.n0, num_devices, jax.devices()[0].device_kind,
           models_per_step, config.concurrency, denoise_dtype, out)
  x_test = dataset.x_test[test_indices]
  y_test = dataset.y_test[test_indices]
  arrays = replicate((denoiser, dataset.x_train, dataset.y_train.astype(np.int32), x_test), mesh)
  is_writer = multihost.is_writer()

  summaries, curves, timings = {}, {}, {}
  for sigma in config.sigmas:
    votes_dir = sigma_dir(out, sigma) / "votes"
    computer = ChunkComputer(mesh=mesh, seed=config.seed, sigma=sigma, denoiser=denoiser,
                             train_config=train_config, num_train=len(dataset.x_train),
                             denoise_batch_size=denoise_batch_size,
                             allow_untrained_sigma=config.allow_untrained_sigma,
                             denoise_dtype=denoise_dtype, concurrency=config.concurrency)
    timings[f"{sigma:g}"] = run_votes(
        computer, arrays, votes_dir, num_models=config.num_models,
        models_per_step=models_per_step, sigma=sigma, progress=progress and is_writer,
        is_writer=is_writer)
    votes = load_votes(votes_dir, config.num_models, len(test_indices)) if is_writer else None
    if is_writer:
      per_point, summary = analyse_votes(
          votes, y_test, n0=config.n0, sigma=sigma, alpha=config.alpha,
          num_classes=dataset.num_classes, num_train=len(dataset.x_train), radii=config.radii)
      write_sigma_reports(sigma_dir(out, sigma), test_indices, per_point, summary)
      summaries[f"{sigma:g}"] = summary
      curves[sigma] = certified_curve(per_point["radius"], per_point["correct"] > 0,
                                      summary["max_certifiable_radius"])
  if not is_writer:
    return {}
  top = {
      "config": _config_dict(dataclasses.replace(config, trainer=str(config.trainer)
                                                 if isinstance(config.trainer, str)
                                                 else "custom")),
      "trainer": _config_dict(train_config),
      "settings": settings,
      "version": _version(),
      "jax_version": jax.__version__,
      "device": _device_description(),
      "models_per_step": models_per_step,
      "timings": {s: _timing_report(t) for s, t in timings.items()},
      "sigmas": summaries,
  }
  atomic_write_json(out / "summary.json", top)
  plot_certified_accuracy(out / "certified_accuracy.png", curves,
                          title=f"{config.num_models} models, α = {config.alpha:g}")
  return top


def write_sigma_reports(directory: Path, test_indices, per_point: dict, summary: dict) -> None:
  write_certify_table(directory / "certify.tsv", test_indices, per_point)
  atomic_save_npz(directory / "counts.npz", test_indices=test_indices,
                  counts_select=per_point["counts_select"],
                  counts_estimate=per_point["counts_estimate"], label=per_point["label"],
                  predict=per_point["predict"], radius=per_point["radius"], p_a=per_point["p_a"],
                  smoothed_predict=per_point["smoothed_predict"])
  atomic_write_json(directory / "summary.json", summary)


def _timing_report(timing: dict) -> dict:
  report = dict(timing)
  total = timing["denoise_s"] + timing["train_vote_s"]
  if timing["models"] and total > 0:
    report["seconds_per_model"] = total / timing["models"]
    report["models_per_hour"] = 3600 * timing["models"] / total
    report["denoise_fraction"] = timing["denoise_s"] / total
  return report


def _version() -> str:
  import jaxpoison
  return jaxpoison.__version__
