"""How many models a chunk holds: from the request, or from the device's memory."""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxpoison import backend, classifier, diffusion
from jaxpoison.certification.chunks import ChunkComputer

log = logging.getLogger("jaxpoison.certification")

# Models per device when no memory budget is known (a CPU). One: XLA:CPU runs the vmapped
# (grouped) convolutions of several models slower than the same models one after the other
# (BENCHMARKS.md, issue 5), so on a CPU concurrency comes only from several devices.
CPU_MODELS_PER_DEVICE = 1
# Upper bound per device when planning from memory: past this, throughput no longer grows.
MAX_MODELS_PER_DEVICE = 128
# vmap's bound: an H100 crashed (CUDA_ERROR_ILLEGAL_ADDRESS) at 64 vmapped airbench-shaped
# models in bf16 at batch 1024, and was slower per model than one at a time at 4 and 32.
MAX_VMAP_MODELS_PER_DEVICE = 32
# Of the memory XLA's allocator holds, what a plan may fill: the rest is for cuDNN's convolution
# workspaces (chosen by autotuning on the device, absent from a compiled program's temp) and
# fragmentation.
PLAN_FRACTION = 0.9
# jax's allocator preallocates this share of a GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION).
DEFAULT_MEM_FRACTION = 0.75


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


def allocator_bytes(target: backend.Target) -> int | None:
  """The bytes jax's allocator holds on `target`'s device: its reported limit on a live device
  (`Target.from_device`), else the device's memory × XLA_PYTHON_CLIENT_MEM_FRACTION (0.75 by
  default); None when unknown (a CPU)."""
  if target.memory_bytes is None or target.is_cpu:
    return None
  if target.device_kind and any(d.device_kind == target.device_kind for d in jax.local_devices()):
    return int(target.memory_bytes)  # A live device's bytes_limit is already the pool.
  fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", DEFAULT_MEM_FRACTION))
  return int(fraction * target.memory_bytes)


def _placed(tree, mesh, spec):
  sharding = NamedSharding(mesh, spec)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding),
                      tree)


def chunk_memory(mesh, train_config, num_train: int, num_test: int, image_shape, *,
                 denoiser=None, denoise_batch_size: int = 500, denoise_dtype: str = "float32",
                 concurrency: str = "sequential", sigma: float = 0.25,
                 compiler_options: dict | None = None) -> Callable[[int], dict]:
  """`bytes(m)`: per-device memory of one certification chunk of m models per device, from
  XLA's compiled programs (`ChunkComputer`'s denoising and training programs, lowered for
  `mesh`'s devices: live ones, or a deviceless topology's for AOT).

  Returns a dict: "denoise" and "train" (each program's arguments + outputs + temporaries −
  aliases), "resident" (the denoiser and training images, live while training runs), "peak"
  (the larger of denoising and training + resident), and "programs" (the compiled programs).
  The training config's "auto" choices must already be resolved for the mesh's devices (trace
  inside `backend.targeting` for a device that is not this process's; `compiler_options`:
  XLA's, e.g. `jaxpoison.aot.COMPILER_OPTIONS` for a deviceless compile).
  """
  computer = ChunkComputer(mesh=mesh, seed=0, sigma=sigma, denoiser=denoiser,
                           train_config=train_config, num_train=num_train,
                           denoise_batch_size=min(denoise_batch_size, num_train),
                           allow_untrained_sigma=True, denoise_dtype=denoise_dtype,
                           concurrency=concurrency)
  if computer.loop != "scan":
    raise ValueError("chunk_memory: plans the scanned training program (an accelerator's); "
                     f"the config resolves to the {computer.loop!r} loop here")
  devices = mesh.devices.size
  every, split = PartitionSpec(), PartitionSpec("models")
  x_train = jax.ShapeDtypeStruct((num_train, *image_shape), jnp.uint8)
  den = None if denoiser is None else _placed(jax.eval_shape(lambda: denoiser), mesh, every)
  resident = (int(np.prod(x_train.shape))
              + sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(den)))

  @functools.lru_cache(maxsize=None)  # The planner's choice is compiled once, then reused.
  def measure(per_device: int) -> dict:
    m = per_device * devices
    indices = _placed(jax.ShapeDtypeStruct((m,), jnp.int32), mesh, split)
    denoise = computer._denoise.lower(den, _placed(x_train, mesh, every), indices).compile(
        compiler_options=compiler_options)
    copies = _placed(jax.ShapeDtypeStruct((m, num_train, *image_shape), jnp.uint8), mesh,
                     split)
    train = computer._programs.train_vote.lower(
        _placed(jax.ShapeDtypeStruct((2,), jnp.uint32), mesh, every), copies,
        _placed(jax.ShapeDtypeStruct((num_train,), jnp.int32), mesh, every),
        _placed(jax.ShapeDtypeStruct((num_test, *image_shape), jnp.uint8), mesh, every),
        indices).compile(compiler_options=compiler_options)
    out = {"denoise": classifier.api.program_bytes(denoise) if denoiser is not None else 0,
           "train": classifier.api.program_bytes(train), "resident": resident,
           "programs": {"denoise": denoise, "train": train}}
    out["peak"] = max(out["denoise"], out["train"] + resident)
    return out
  return measure


def plan_from_programs(chunk_bytes: Callable[[int], dict], budget: int, cap: int) -> dict:
  """The largest m per device (at most `cap`) whose compiled chunk fits `budget` bytes: the
  footprint at m = 1 and 2, extrapolated linearly, then compiled at the choice and stepped down
  until it fits. Returns {"per_device", "peak", "per_model", "base", "measured"}; per_device 0
  when not even one model fits."""
  one, two = chunk_bytes(1), chunk_bytes(2)
  per_model = max(two["peak"] - one["peak"], 1)
  base = one["peak"] - per_model
  measured = {1: one["peak"], 2: two["peak"]}
  m = int(max(0, min(cap, (budget - base) // per_model)))
  while m > 2:
    peak = measured[m] if m in measured else chunk_bytes(m)["peak"]
    measured[m] = peak
    if peak <= budget:
      break
    m = max(2, min(m - 1, int(m * budget / peak)))
  if m <= 2:
    m = 2 if measured[2] <= budget and cap >= 2 else 1 if measured[1] <= budget else 0
  return {"per_device": m, "peak": measured.get(m), "per_model": per_model, "base": base,
          "measured": dict(sorted(measured.items()))}


def choose_models_per_step(requested: int | None, train_config, num_train: int,
                           num_devices: int, *, concurrency: str = "sequential",
                           denoise_bytes: int = 0,
                           chunk_bytes: Callable[[int], dict] | None = None,
                           memory_bytes: int | None = None) -> int:
  """Rounds a requested chunk up to a multiple of the device count, or plans one from memory.

  With `chunk_bytes` (`chunk_memory`), the plan is `plan_from_programs`' on the compiled chunk
  within PLAN_FRACTION of `memory_bytes` (default: the device's limit). Without it (the
  trainer's own estimate, for the host loop), the plan fits 90% of the device's memory.
  "vmap": XLA's compiled footprint of training 1 and 2 models together, each on its own copy of the training set (the denoised copies, which the
  denoising program writes and the training program consumes in place), extrapolated, plus the
  denoising program (`denoise_bytes`); at most MAX_VMAP_MODELS_PER_DEVICE, also when requested.
  "sequential": one model's training program plus the denoising program, and a denoised copy
  (uint8 images) per model of the chunk.

  Raises:
    classifier.InsufficientMemoryError: not even one model per device fits.
  """
  cap = MAX_VMAP_MODELS_PER_DEVICE if concurrency == "vmap" else MAX_MODELS_PER_DEVICE
  if requested is None:
    limit = memory_bytes or classifier.device_memory_limit(train_config)
    if limit is None:
      per_device = CPU_MODELS_PER_DEVICE
    elif chunk_bytes is not None:
      plan = plan_from_programs(chunk_bytes, int(PLAN_FRACTION * limit), cap)
      per_device = plan["per_device"]
      if per_device < 1:
        raise classifier.InsufficientMemoryError(
            f"one model's chunk ({plan['measured'][1] / 2**30:.2f} GiB compiled) does not fit "
            f"{PLAN_FRACTION:.0%} of {limit / 2**30:.1f} GiB of device memory; use a smaller "
            "trainer or --num_train")
      log.info("models_per_step: %d per device (compiled chunk: %.2f GiB of %.1f GiB)",
               per_device, plan["peak"] / 2**30, limit / 2**30)
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
