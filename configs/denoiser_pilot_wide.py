"""Issue 13's wide pilot: configs/denoiser_pilot.py with the UNet's first three levels doubled.

Run (from the repository root; configs/denoiser_pilot.py has the reference run beside it):

  PYTHONPATH=$PWD python scripts/train_denoiser.py --data /tmp/cifar10.npz \
      --config configs/denoiser_pilot_wide.py --out runs/i13/pilot_wide_run --num_steps 400

UNet 32/64/128/128 (FiLM, attention 4×4; 4,498,307 params, 17.2 MiB in float32), every other
setting and the data order as in the reference pilot. What to expect (2 CPU cores,
BENCHMARKS.md "Issue 13"): training loss 0.0515 / 0.0496 at steps 350 / 400 (the reference
0.0605 / 0.0581) at 1.1–1.4 s per step (about 2.3× the reference's).
"""

import dataclasses
from pathlib import Path

from jaxpoison.cli import load_config_file


def get_config():
  config = load_config_file(Path(__file__).with_name("denoiser_pilot.py"))
  return dataclasses.replace(
      config, unet=dataclasses.replace(config.unet, block_out_channels=(32, 64, 128, 128)))
