"""Issue 13's denoiser pilots: the shipped UNet with the pilots' short-run settings.

Run (from the repository root), then the wider network on the same batches, noise and steps:

  PYTHONPATH=$PWD python scripts/train_denoiser.py --data /tmp/cifar10.npz \
      --config configs/denoiser_pilot.py --out runs/i13/pilot_ref_run --num_steps 400
  PYTHONPATH=$PWD python scripts/train_denoiser.py --data /tmp/cifar10.npz \
      --config configs/denoiser_pilot_wide.py --out runs/i13/pilot_wide_run --num_steps 400

Settings: configs/default_denoiser.py's UNet, batch 64, lr 2e-3 constant after 100 warm-up
steps, EMA 0.99, loss weight σ_t^0.85, seed 0 (so every pilot sees the same batches).

What to expect (2 CPU cores, BENCHMARKS.md "Issue 13"): training loss 0.0605 / 0.0581 at steps
350 / 400 at 0.53–0.58 s per step; the wide pilot 0.0515 / 0.0496 at about 2.3× the time.
"""

import dataclasses
import importlib.util
from pathlib import Path


def _default_denoiser():
  spec = importlib.util.spec_from_file_location(
      "default_denoiser", Path(__file__).with_name("default_denoiser.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  return dataclasses.replace(_default_denoiser().get_config(), learning_rate=2e-3,
                             warmup_steps=100, lr_schedule="constant", ema_decay=0.99,
                             loss_weight_exponent=0.85, num_steps=800, steps_per_chunk=50,
                             seed=0)
