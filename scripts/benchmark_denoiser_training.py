"""Seconds per denoiser training step for several UNet shapes, against a reference in the same run.

  PYTHONPATH=$PWD python scripts/benchmark_denoiser_training.py \
      --unet '{"block_out_channels": [16, 32, 64], "attention_resolutions": [8]}' \
      --unet '{"block_out_channels": [16, 32, 64, 128], "attention_resolutions": [4], "scale_shift_norm": true}' \
      [--batch_size 64] [--steps 4]

Each --unet is a JSON object of UNetConfig fields over the embedded denoiser's base (32×32×3,
GroupNorm 8 groups, diffusers layout, symmetric downsampling padding); the first is the
reference every ratio is taken against. One jitted training step (`diffusion.train`'s, the
σ-weighted loss, AdamW, EMA) on random uint8 images; compile time is reported apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxpoison import cli  # noqa: E402 (after the path set-up)

BASE = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, norm_num_groups=8,
            norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1.0,
            layout="diffusers", downsample_padding=1)


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--unet", action="append", type=json.loads, required=True,
                      help="UNetConfig fields as JSON (repeat; the first is the reference)")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=4)
  args = parser.parse_args(argv)
  import jax
  import numpy as np
  from jaxpoison.diffusion import linear_schedule, UNetConfig
  from jaxpoison.diffusion import train as T

  with cli.user_errors(ValueError, TypeError):
    configs = [UNetConfig(**{**BASE, **fields}) for fields in args.unet]
  images = jax.device_put(np.random.default_rng(0).integers(0, 256, (512, 32, 32, 3),
                                                            dtype=np.uint8))
  print(f"device: {jax.devices()[0].device_kind}; batch {args.batch_size}, {args.steps} steps")
  print("| UNet | params | s / step | img / s | ratio to the first | compile (s) |")
  print("|---|---:|---:|---:|---:|---:|")
  reference = None
  for fields, unet in zip(args.unet, configs):
    cfg = T.DenoiserTrainConfig(unet=unet, schedule=linear_schedule(),
                                batch_size=args.batch_size, warmup_steps=10,
                                loss_weight_exponent=0.4)
    state = T.init_train_state(cfg)
    params = sum(int(v.size) for v in state.params.values())
    start = time.perf_counter()
    state, loss = T._train_step_jit(state, images, cfg=cfg)
    loss.block_until_ready()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
      state, loss = T._train_step_jit(state, images, cfg=cfg)
    loss.block_until_ready()
    per_step = (time.perf_counter() - start) / args.steps
    reference = reference or per_step
    print(f"| {json.dumps(fields)} | {params:,} | {per_step:.3f} | "
          f"{args.batch_size / per_step:.0f} | {per_step / reference:.2f} | {compile_s:.1f} |",
          flush=True)


if __name__ == "__main__":
  cli.run(main)
