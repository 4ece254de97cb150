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
import logging
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from jaxpoison._version import __version__
from jaxpoison import classifier, diffusion, multihost, runs
from jaxpoison.data import DataError
from jaxpoison.certification.chunks import ChunkComputer
from jaxpoison.certification.config import (CertifyConfig, load_data, resolve_denoise_dtype,
                                            resolve_denoiser, resolve_trainer, subset_indices,
                                            train_subset)
from jaxpoison.certification.devices import models_mesh, replicate
from jaxpoison.certification.plan import (choose_models_per_step, chunk_memory,
                                          denoise_program_bytes)
from jaxpoison.certification.report import (_timing_report, analyse_votes, certified_curve,
                                            plot_certified_accuracy, write_sigma_reports)
from jaxpoison.certification.store import (ResultsMismatch, _config_dict, chunk_path,
                                           claim_results_dir, finished_models, load_votes,
                                           pending_chunks, run_settings,
                                           sigma_dir)
from jaxpoison.io import atomic_save_npz, atomic_write_json

log = logging.getLogger("jaxpoison.certification")

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
  with runs.Progress(num_models, done=done, unit="models", log=lambda line: log.info("%s", line),
                     bar=progress, desc=f"σ={sigma:g}", bar_unit="model") as tracker:
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
      tracker.update(len(indices), f"σ={sigma:g} models {chunk.start}-{chunk.stop - 1} done "
                     f"in {elapsed:.1f} s (denoise {t_denoise:.1f} s, train+vote {t_train:.1f} s)")
  return timing


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
  denoise_bytes, chunk_bytes = 0, None
  if config.models_per_step is None and classifier.device_memory_limit(train_config):
    if classifier.resolve_loop(train_config) == "scan":  # Planned on the compiled chunk.
      chunk_bytes = chunk_memory(
          mesh, train_config, len(dataset.x_train), len(test_indices), dataset.image_shape,
          denoiser=denoiser, denoise_batch_size=denoise_batch_size, denoise_dtype=denoise_dtype,
          concurrency=config.concurrency, sigma=max(config.sigmas))
    else:
      denoise_bytes = denoise_program_bytes(
          denoiser, len(dataset.x_train), dataset.image_shape, sigma=max(config.sigmas),
          batch_size=denoise_batch_size, denoise_dtype=denoise_dtype)
  models_per_step = choose_models_per_step(
      config.models_per_step, train_config, len(dataset.x_train), num_devices,
      concurrency=config.concurrency, denoise_bytes=denoise_bytes, chunk_bytes=chunk_bytes)
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
      "version": __version__,
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
