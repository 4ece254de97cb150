"""Images/s of single-step denoising: jaxpoison (JAX jit) against diffusers' UNet2DModel (PyTorch).

  PYTHONPATH=$PWD python scripts/benchmark_denoiser.py [--model ddpm|default|both] \
      [--batch 16] [--repeats 3] [--compute_dtype float32|bfloat16] [--torch_compile]

Both sides run the same network with the same random weights (a diffusers model converted with
jaxpoison.diffusion.convert) on the same batch: noise, one UNet pass at t*(σ = 0.25), x̂₀, clip.
PyTorch runs eagerly under torch.inference_mode (and under torch.compile with --torch_compile).
Prints images/s of each and the ratio JAX / PyTorch.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxpoison import cli  # noqa: E402 (after the path set-up)


def diffusers_kwargs(unet):
  n = len(unet.block_out_channels)
  attn = [unet.level_has_attention(i) for i in range(n)]
  return dict(sample_size=unet.sample_size, in_channels=unet.in_channels,
              out_channels=unet.out_channels, block_out_channels=unet.block_out_channels,
              layers_per_block=unet.layers_per_block,
              down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
              up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
              downsample_padding=unet.downsample_padding, flip_sin_to_cos=unet.flip_sin_to_cos,
              freq_shift=unet.freq_shift, norm_eps=unet.norm_eps,
              norm_num_groups=unet.norm_num_groups, attention_head_dim=unet.attention_head_dim,
              add_attention=unet.mid_attention)


def bench(fn, repeats):
  fn()  # warm-up / compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def run(name, unet, args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from diffusers import UNet2DModel
  from jaxpoison import diffusion as D
  from jaxpoison.diffusion import convert

  torch.manual_seed(0)
  model = UNet2DModel(**diffusers_kwargs(unet)).eval()
  den = convert.convert_diffusers_state_dict(model.state_dict(), unet, D.linear_schedule())
  sigma = 0.25
  t = D.timestep_for_sigma(den.schedule, sigma)
  abar = float(D.alphas_cumprod(den.schedule)[t])
  images = np.random.default_rng(0).integers(0, 256, (args.batch, unet.sample_size,
                                                      unet.sample_size, 3), dtype=np.uint8)
  dtype = jnp.bfloat16 if args.compute_dtype == "bfloat16" else jnp.float32
  key = jax.random.key(0)
  t0 = time.perf_counter()
  D.noise_and_denoise(den, images, sigma, key, batch_size=args.batch,
                      compute_dtype=dtype).block_until_ready()
  compile_s = time.perf_counter() - t0
  jax_s = bench(lambda: D.noise_and_denoise(den, images, sigma, key, batch_size=args.batch,
                                            compute_dtype=dtype).block_until_ready(),
                args.repeats)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
  tt = torch.full((args.batch,), t)

  def torch_step(m):
    with torch.inference_mode():
      x_t = math.sqrt(abar) * x + math.sqrt(1 - abar) * torch.randn_like(x)
      eps = m(x_t, tt).sample
      x0 = ((x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)).clamp(-1, 1)
      return ((x0 + 1) * 127.5).round().to(torch.uint8)

  torch_s = bench(lambda: torch_step(model), args.repeats)
  print(f"{name}: {den.num_params:,} params, batch {args.batch}, {args.compute_dtype}; "
        f"torch threads {torch.get_num_threads()}")
  print(f"  jaxpoison jit: {args.batch / jax_s:.1f} img/s (compile {compile_s:.1f} s)")
  print(f"  diffusers eager: {args.batch / torch_s:.1f} img/s; ratio JAX/PyTorch "
        f"{torch_s / jax_s:.2f}")
  if args.torch_compile:
    try:
      compiled = torch.compile(model)
      t0 = time.perf_counter()
      torch_step(compiled)
      print(f"  torch.compile took {time.perf_counter() - t0:.1f} s")
      tc = bench(lambda: torch_step(compiled), args.repeats)
      print(f"  diffusers torch.compile: {args.batch / tc:.1f} img/s; ratio JAX/compiled "
            f"{tc / jax_s:.2f}")
    except Exception as e:  # noqa: BLE001 - report and go on: compile support varies.
      print(f"  torch.compile failed: {type(e).__name__}: {e}")


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="both", choices=("ddpm", "default", "both"))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--torch_compile", action="store_true")
  args = parser.parse_args(argv)
  import jax
  from jaxpoison import diffusion as D
  print(f"JAX {jax.__version__} on {jax.devices()[0].platform}")
  if args.model in ("ddpm", "both"):
    run("google/ddpm-cifar10-32 architecture", D.ddpm_cifar10_config(), args)
  if args.model in ("default", "both"):
    run("default denoiser architecture", D.read_denoiser_config(
        D.model.DEFAULT_DENOISER_PATH)[0], args)


if __name__ == "__main__":
  cli.run(main)
