"""One chunk of models at one σ: denoise, train, vote, as jitted, sharded programs."""

from __future__ import annotations

import functools
import logging
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxpoison import classifier, diffusion
from jaxpoison.certification.config import (keys_under, model_keys, resolve_denoise_dtype,
                                            sigma_key)
from jaxpoison.certification.devices import gather_to_host, shard_models

log = logging.getLogger("jaxpoison.certification")

# ---------------------------------------------------------------------------------------------
# One chunk of models: denoise, train, vote.


_MODELS = PartitionSpec("models")
_ALL = PartitionSpec()


def _shard(fn, mesh: Mesh, in_specs, donate=()):
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=_MODELS,
                               check_vma=False), donate_argnums=donate)


class TrainingPrograms(NamedTuple):
  """The σ-independent programs of a chunk: σ's root key (raw key data, uint32) is their first
  data argument. "scan": `train_vote`; "host": `start`, `step` (carry donated), `vote`."""
  num_steps: int
  train_vote: Callable | None = None
  start: Callable | None = None
  step: Callable | None = None
  vote: Callable | None = None


@functools.lru_cache(maxsize=8)
def _training_programs(mesh: Mesh, train_config, concurrency: str,
                       num_train: int) -> TrainingPrograms:
  loop = classifier.resolve_loop(train_config)
  num_steps = classifier.total_steps(train_config, num_train)

  def train_keys(sigma_key_data, indices):
    root = jax.random.wrap_key_data(sigma_key_data)
    return jax.vmap(lambda i: keys_under(root, i)[1])(indices)

  if loop == "scan":
    train_fn = classifier.make_train_fn(train_config)

    # The labels [N] are every model's: the denoised copies keep them.
    def train_vote_local(sigma_key_data, denoised, y_train, x_test, indices):
      keys = train_keys(sigma_key_data, indices)
      if concurrency == "vmap":
        models = train_fn(keys, denoised, y_train)
        return classifier.predict(models, x_test).astype(jnp.int32)

      def one(args):
        key, copy = args
        models = train_fn(key[None], copy[None], y_train)
        return classifier.predict(models, x_test)[0].astype(jnp.int32)
      return jax.lax.map(one, (keys, denoised))

    return TrainingPrograms(num_steps, train_vote=_shard(
        train_vote_local, mesh, (_ALL, _MODELS, _ALL, _ALL, _MODELS)))

  parts = classifier.make_train_parts(train_config)
  if parts.switch is not None:
    raise ValueError("train config: friendly noise (friendly_epoch >= 0) changes the "
                     "training images mid-run, which the certification pipeline's step "
                     "loop does not do; use friendly_epoch=-1")

  def select(denoised, indices, slot):
    # Sequential: the slot-th model of every device's share.
    if concurrency == "vmap":
      return denoised, indices
    return (jax.lax.dynamic_slice_in_dim(denoised, slot, 1),
            jax.lax.dynamic_slice_in_dim(indices, slot, 1))

  def start_local(sigma_key_data, denoised, y_train, indices, slot):
    denoised, indices = select(denoised, indices, slot)
    # Fresh buffers: nothing of the inputs may be aliased into the donated carry.
    return jax.tree.map(jnp.copy, parts.start(train_keys(sigma_key_data, indices), denoised,
                                              y_train))

  def step_local(carry, step, sigma_key_data, denoised, y_train, indices, slot):
    denoised, indices = select(denoised, indices, slot)
    return parts.body(carry, step, train_keys(sigma_key_data, indices), denoised, y_train)

  def vote_local(carry, x_test):
    models = parts.finish(carry, num_steps)
    return classifier.predict(models, x_test).astype(jnp.int32)

  return TrainingPrograms(
      num_steps,
      start=_shard(start_local, mesh, (_ALL, _MODELS, _ALL, _MODELS, _ALL)),
      step=_shard(step_local, mesh, (_MODELS, _ALL, _ALL, _MODELS, _ALL, _MODELS, _ALL),
                  donate=(0,)),
      vote=_shard(vote_local, mesh, (_MODELS, _ALL)))


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
    self.loop = classifier.resolve_loop(train_config)
    compute_dtype = jnp.dtype(resolve_denoise_dtype(denoise_dtype))
    # σ reaches the training programs only through its root key, passed as data: every σ of a
    # run (and every computer with the same settings) calls the same compiled programs.
    self._sigma_key = np.asarray(jax.random.key_data(sigma_key(seed, sigma)))

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

    self._denoise = _shard(denoise_local, mesh, (_ALL, _ALL, _MODELS))
    self._programs = _training_programs(mesh, train_config, concurrency, num_train)
    self.num_steps = self._programs.num_steps

  def _train_vote_host(self, denoised, y_train, x_test, sharded):
    def run(slot):
      slot = np.int32(slot)
      programs, key = self._programs, self._sigma_key
      carry = programs.start(key, denoised, y_train, sharded, slot)
      for step in range(self.num_steps):
        carry = programs.step(carry, np.int32(step), key, denoised, y_train, sharded, slot)
      return programs.vote(carry, x_test)

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
      votes = self._programs.train_vote(self._sigma_key, denoised, y_train, x_test, sharded)
    else:
      votes = self._train_vote_host(denoised, y_train, x_test, sharded)
    votes = gather_to_host(votes)
    end = time.perf_counter()
    return votes, (middle - start, end - middle)
