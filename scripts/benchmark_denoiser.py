"""Images/s of single-step denoising: jaxpoison (JAX jit) against diffusers' UNet2DModel (PyTorch).

  PYTHONPATH=$PWD python scripts/benchmark_denoiser.py [--model ddpm|default|both] \
      [--batch 16] [--repeats 3] [--compute_dtype float32|bfloat16] [--torch_compile] \
      [--torch_device auto|cpu|cuda]

Both sides run the same network with the same random weights (a diffusers model converted with
jaxpoison.diffusion.convert) on the same batch: noise, one UNet pass at t*(σ = 0.25), x̂₀, clip.
PyTorch runs eagerly under torch.inference_mode (and under torch.compile with --torch_compile),
on the device JAX uses (--torch_device auto: CUDA when JAX runs on a GPU, else the CPU), with
bfloat16 autocast around the UNet when --compute_dtype is bfloat16. When JAX runs on a GPU and
PyTorch has no CUDA, the PyTorch side is skipped and the ratio is reported as not measured.
Warm-up (JAX: compilation) is timed apart from the best of --repeats timed calls. Prints
images/s of each and the ratio JAX / PyTorch, then one Markdown table of all networks.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxpoison import cli  # noqa: E402 (after the path set-up)
from jaxpoison.benchmarks.peers import describe_torch_device, torch_device  # noqa: E402


def bench(fn, repeats, sync=lambda: None):
  """(seconds of the first call, best seconds of `repeats` more calls); sync() waits for work
  fn() queued on the device, which CUDA runs after fn() has returned."""
  sync()
  t0 = time.perf_counter()
  fn()
  sync()
  warmup = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    sync()
    times.append(time.perf_counter() - t0)
  return warmup, min(times)


def run(name, unet, args, device, why):
  """Benchmarks one network; returns its row of the summary table."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from diffusers import UNet2DModel
  from jaxpoison import diffusion as D
  from jaxpoison.diffusion import convert

  torch.manual_seed(0)
  model = UNet2DModel(**convert.diffusers_config_from_unet(unet)).eval()
  den = convert.convert_diffusers_state_dict(model.state_dict(), unet, D.linear_schedule())
  sigma = 0.25
  t = D.timestep_for_sigma(den.schedule, sigma)
  abar = float(D.alphas_cumprod(den.schedule)[t])
  images = np.random.default_rng(0).integers(0, 256, (args.batch, unet.sample_size,
                                                      unet.sample_size, 3), dtype=np.uint8)
  bf16 = args.compute_dtype == "bfloat16"
  dtype = jnp.bfloat16 if bf16 else jnp.float32
  key = jax.random.key(0)
  compile_s, jax_s = bench(lambda: D.noise_and_denoise(
      den, images, sigma, key, batch_size=args.batch, compute_dtype=dtype).block_until_ready(),
                           args.repeats)
  row = dict(name=name, params=den.num_params, jax=args.batch / jax_s, compile=compile_s,
             device=describe_torch_device(device) if device else "not run")
  print(f"{name}: {den.num_params:,} params, batch {args.batch}, {args.compute_dtype}; "
        f"torch device {row['device']}{', bfloat16 autocast' if bf16 else ''}")
  print(f"  jaxpoison jit: {args.batch / jax_s:.1f} img/s (compile {compile_s:.1f} s)")
  if device is None:
    print(f"  diffusers eager: not measured ({why}); ratio JAX/PyTorch not measured")
    return row
  model.to(device)
  x = (torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1)
  tt = torch.full((args.batch,), t, device=device)
  sync = torch.cuda.synchronize if device == "cuda" else lambda: None

  def torch_step(m):
    with torch.inference_mode():
      x_t = math.sqrt(abar) * x + math.sqrt(1 - abar) * torch.randn_like(x)
      # Only the UNet in bfloat16, as D.noise_and_denoise's compute_dtype does.
      with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        eps = m(x_t, tt).sample
      x0 = ((x_t - math.sqrt(1 - abar) * eps.float()) / math.sqrt(abar)).clamp(-1, 1)
      return ((x0 + 1) * 127.5).round().to(torch.uint8)

  warmup, torch_s = bench(lambda: torch_step(model), args.repeats, sync)
  row.update(eager=args.batch / torch_s, ratio=torch_s / jax_s)
  print(f"  diffusers eager on {device}: {args.batch / torch_s:.1f} img/s (warm-up "
        f"{warmup:.1f} s); ratio JAX/PyTorch {torch_s / jax_s:.2f}")
  if args.torch_compile:
    try:
      # The model is already on `device`, so the compiled graph runs there too.
      compiled = torch.compile(model)
      compile_torch, tc = bench(lambda: torch_step(compiled), args.repeats, sync)
      print(f"  torch.compile took {compile_torch:.1f} s")
      print(f"  diffusers torch.compile on {device}: {args.batch / tc:.1f} img/s; ratio "
            f"JAX/compiled {tc / jax_s:.2f}")
      row.update(compiled=args.batch / tc, compiled_ratio=tc / jax_s)
    except Exception as e:  # noqa: BLE001 - report and go on: compile support varies.
      print(f"  torch.compile failed: {type(e).__name__}: {e}")
  return row


def print_table(rows, args):
  def cell(row, key, fmt):
    return format(row[key], fmt) if key in row else "not measured"
  head = ["network", "params", "jaxpoison jit (img/s)", "diffusers eager (img/s)",
          "ratio JAX / PyTorch"]
  if args.torch_compile:
    head += ["diffusers torch.compile (img/s)", "JAX / compiled"]
  head += ["JAX compile (s)", "dtype", "torch device"]
  print("| " + " | ".join(head) + " |")
  print("|---|" + "---:|" * (len(head) - 3) + "---|---|")
  for row in rows:
    cells = [row["name"], f"{row['params']:,}", f"{row['jax']:.1f}", cell(row, "eager", ".1f"),
             cell(row, "ratio", ".2f")]
    if args.torch_compile:
      cells += [cell(row, "compiled", ".1f"), cell(row, "compiled_ratio", ".2f")]
    cells += [f"{row['compile']:.1f}", args.compute_dtype, row["device"]]
    print("| " + " | ".join(cells) + " |")


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="both", choices=("ddpm", "default", "both"))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--torch_compile", action="store_true")
  parser.add_argument("--torch_device", default="auto", choices=("auto", "cpu", "cuda"),
                      help="where PyTorch runs (auto: the device JAX uses)")
  args = parser.parse_args(argv)
  import jax
  import torch
  from jaxpoison import diffusion as D
  with cli.user_errors(ValueError):
    device, why = torch_device(args.torch_device)
  print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; PyTorch {torch.__version__} on "
        f"{describe_torch_device(device) if device else 'no device (reference skipped)'}")
  rows = []
  if args.model in ("ddpm", "both"):
    rows.append(run("google/ddpm-cifar10-32 architecture", D.ddpm_cifar10_config(), args,
                    device, why))
  if args.model in ("default", "both"):
    rows.append(run("default denoiser architecture", D.read_denoiser_config(
        D.model.DEFAULT_DENOISER_PATH)[0], args, device, why))
  print_table(rows, args)


if __name__ == "__main__":
  cli.run(main)
