"""Images purified per second: ECLIPSE's purification as jaxpoison runs it (one jitted program,
`eclipse.purify`) against the authors' way (a PyTorch loop of one UNet call per reverse step,
improved-diffusion's `p_sample_loop` with the learned variance), on the same UNet with the same
weights and images, in the same run on the same device.

The PyTorch UNet is diffusers' `UNet2DModel` built from the jaxpoison config (the diffusers
layout; improved-diffusion's own UNet has the same operations) and converted to jaxpoison's
parameters, so both compute the same network. Both loops also draw the same noise (the
PyTorch loop is fed jaxpoison's per-image, per-step draws), so their outputs must agree up to
float rounding: the largest difference is reported beside the speeds.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison import diffusion, eclipse

__all__ = ["measure"]


def measure(unet: diffusion.UNetConfig, *, num_images: int = 32, t_star: int = 100,
            repeats: int = 1, threads: int | None = None, torch_device: str = "cpu",
            loop: str = "auto", compute_dtype: str = "float32") -> dict:
  """Purifies `num_images` random images from step t* both ways; returns seconds, images per
  second each way, their ratio (PyTorch time / jaxpoison time) and the largest output
  difference in grey levels (before rounding).

  torch_device: where the PyTorch loop runs ("cuda" beside JAX on a GPU); loop and
  compute_dtype: jaxpoison's (`eclipse.purify`); the PyTorch loop is always float32, as the
  authors run it (a bfloat16 jaxpoison run then differs by more than rounding)."""
  import torch
  from diffusers import UNet2DModel
  from jaxpoison.diffusion import convert

  kwargs = convert.diffusers_config_from_unet(unet)  # (refuses other layouts)
  if threads:
    torch.set_num_threads(int(threads))
  torch.manual_seed(0)
  model = UNet2DModel(**kwargs).eval().to(torch_device)
  schedule = diffusion.cosine_schedule(4000)
  denoiser = convert.convert_diffusers_state_dict(model.state_dict(), unet, schedule)
  images = np.random.default_rng(0).integers(0, 256, (num_images, unet.sample_size,
                                                      unet.sample_size, unet.in_channels),
                                             dtype=np.uint8)
  key = jax.random.key(0)

  def ours():
    return np.asarray(eclipse.purify(denoiser, images, key, t_star=t_star,
                                     batch_size=num_images, loop=loop,
                                     compute_dtype=jnp.dtype(compute_dtype)))

  started = time.perf_counter()
  ours()
  compile_s = time.perf_counter() - started
  jax_times = []
  for _ in range(repeats):
    started = time.perf_counter()
    purified = ours()
    jax_times.append(time.perf_counter() - started)

  # The same noise as jaxpoison's: the start noise of image i from fold_in(key, i), the k-th
  # step's from fold_in(fold_in(key, i), k + 1).
  steps = diffusion.multistep_timesteps(t_star - 1, None)
  table = diffusion.reverse_process_table(schedule, steps)
  indices = jnp.arange(num_images)
  shape = images.shape[1:]
  start_noise = np.asarray(diffusion.image_noise(key, indices, shape))
  step_noise = np.stack([np.asarray(jax.vmap(lambda i, k=k: jax.random.normal(
      jax.random.fold_in(jax.random.fold_in(key, i), k + 1), shape, jnp.float32))(indices))
                         for k in range(len(steps))])
  to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1))).to(
      torch_device)
  step_noise = [to_torch(z) for z in step_noise]  # (on the device before the clock starts)
  start_noise = to_torch(start_noise)

  def synchronize():
    if torch_device.startswith("cuda"):
      torch.cuda.synchronize()

  def theirs():
    with torch.inference_mode():
      x = to_torch(images.astype(np.float32) / 127.5 - 1.0)
      x = table["sqrt_abar"][0] * x + table["sqrt_one_minus_abar"][0] * start_noise
      for k, t in enumerate(steps):
        out = model(x, torch.full((num_images,), float(t) * unet.timestep_scale,
                                  device=torch_device)).sample
        eps, v = out[:, :unet.in_channels], out[:, unet.in_channels:]
        x0 = ((x - table["sqrt_one_minus_abar"][k] * eps) / table["sqrt_abar"][k]).clamp(-1, 1)
        mean = table["coef_x0"][k] * x0 + table["coef_xt"][k] * x
        frac = (v + 1) / 2
        log_var = frac * table["log_var_large"][k] + (1 - frac) * table["log_var_small"][k]
        x = mean + table["has_noise"][k] * torch.exp(0.5 * log_var) * step_noise[k]
      synchronize()
      return np.moveaxis(((x + 1) * 127.5).cpu().numpy(), 1, -1)

  started = time.perf_counter()
  reference = theirs()
  torch_warmup_s = time.perf_counter() - started
  torch_times = []
  for _ in range(repeats):
    started = time.perf_counter()
    reference = theirs()
    torch_times.append(time.perf_counter() - started)
  jax_s, torch_s = min(jax_times), min(torch_times)
  return {"device": jax.devices()[0].device_kind, "torch_device": torch_device,
          "torch_threads": torch.get_num_threads(), "loop": loop, "compute_dtype": compute_dtype,
          "params": denoiser.num_params, "num_images": num_images, "reverse_steps": len(steps),
          "jax_compile_s": compile_s, "jax_s": jax_s, "torch_warmup_s": torch_warmup_s,
          "torch_s": torch_s, "jax_images_per_s": num_images / jax_s,
          "torch_images_per_s": num_images / torch_s, "ratio_torch_over_jax": torch_s / jax_s,
          "max_grey_level_difference": float(np.abs(
              np.floor(np.clip(reference, 0, 255)) - purified).max())}
