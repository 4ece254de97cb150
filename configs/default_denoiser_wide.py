"""The candidate next embedded denoiser: configs/default_denoiser.py at double width.

Run (from the repository root; resumable: stop it and run the same command again as often as
needed; on 2 CPU cores about 9–10 h, i.e. several sessions, at 1.1–1.4 s per step; on a GPU,
after `pip install -e ".[cuda]"`, the same command):

  PYTHONPATH=$PWD python scripts/train_denoiser.py --data /tmp/cifar10.npz \
      --config configs/default_denoiser_wide.py --out runs/default_denoiser_wide

then compare it with the shipped default on the issue's 1,000 images before installing it
(`--install` on the training command copies the EMA model into jaxpoison/assets):

  PYTHONPATH=$PWD python scripts/evaluate_denoiser.py --data /tmp/cifar10.npz \
      --num_images 1000 --denoisers default,runs/default_denoiser_wide/ema --anchors ""

Why: the shipped 16/32/64/128 UNet misses issue 13's PSNR targets by 0.1–1.1 dB and gained only
≈0.1 dB in the second half of its run (at capacity). Its first three levels doubled
(32/64/128/128, FiLM, attention 4×4; 4,498,307 params, 17.2 MiB in float32, within the issue's
20 MB) reached a 15% lower training loss at equal steps in the pilot (configs/denoiser_pilot.py
against configs/denoiser_pilot_wide.py, BENCHMARKS.md "Issue 13"). Every other setting is the
shipped run's (batch 64, AdamW 2e-3 with cosine decay over 24,000 steps, EMA 0.9995, σ_t^0.4).

What to expect: unmeasured beyond the pilot's 400 steps. If the pilot's loss ratio held to the
end, single-step PSNR would rise by about 10·log10(1/0.85) ≈ 0.7 dB at each σ, from the shipped
29.1 / 24.4 / 21.2 / 18.4 dB (64 test images) towards the targets 30.0 / 25.5 / 22.0 / 18.5 dB;
an early-training gap need not be a capacity gap, so the run's own evaluation decides.
"""

import dataclasses
from pathlib import Path

from jaxpoison.cli import load_config_file


def get_config():
  config = load_config_file(Path(__file__).with_name("default_denoiser.py"))
  return dataclasses.replace(
      config, unet=dataclasses.replace(config.unet, block_out_channels=(32, 64, 128, 128)))
