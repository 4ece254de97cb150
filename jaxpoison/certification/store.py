"""The results folder of a certification run: its claimed settings, the votes of finished
chunks of models (one atomic file each), and what is still to compute."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import jax
import numpy as np

from jaxpoison import classifier, runs
from jaxpoison.data import Dataset
from jaxpoison.certification.config import CertifyConfig, NOISE_ONLY, resolve_denoise_dtype

log = logging.getLogger("jaxpoison.certification")

SETTINGS_FILE = "settings.json"
_CHUNK_RE = re.compile(r"models_(\d{6,})-(\d{6,})\.npz")


class ResultsMismatch(runs.RunMismatch):
  """The results folder was written by a run with different settings."""


# ---------------------------------------------------------------------------------------------
# Results folder: settings, chunk files.


def _hash_arrays(*arrays) -> str:
  return runs.fingerprint_arrays(arrays, length=16)


def pytree_fingerprint(tree) -> str:
  """A short hash of every leaf's dtype, shape and bytes (e.g. denoiser parameters)."""
  return runs.fingerprint_pytree(tree, length=16)


_config_dict = runs.config_json
_json_default_lenient = runs._json_default_lenient


# Version of what settings.json records and of how votes are computed; 2: exact noise of level σ
# (earlier runs added the nearest step's noise level).
SETTINGS_VERSION = 2


ENVIRONMENT = "environment"


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
      "trainer": _config_dict(train_config),
      "denoise_batch_size": int(config.denoise_batch_size),
      ENVIRONMENT: environment_settings(train_config, config.denoise_dtype, config.concurrency),
  }


# The trainer's settings are its whole config: fields it gained after folders were written are
# `TrainConfig.ADDED_FIELDS`, registered with the run-folder layer, which resumes a folder that
# lacks one. (Its earlier name; the certification's settings call `_config_dict`.)
_trainer_settings = _config_dict


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
