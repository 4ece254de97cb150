"""How many models a chunk holds: from the request, or from the device's memory."""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison import classifier, diffusion

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
