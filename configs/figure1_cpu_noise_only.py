"""The paper's Figure 1 (right) baseline at CPU scale: noise only, no denoising, at σ = 0.25.

Run (from the repository root; after or beside configs/figure1_cpu.py, whose docstring has the
table command):

    python scripts/certify.py --config configs/figure1_cpu_noise_only.py \
        --data /tmp/cifar10.npz --out runs/figure1_cpu_noise_only

Everything as in configs/figure1_cpu.py (same seed, so model k gets the same noise draw as
model k of the denoised run at σ = 0.25), but the models train on the noisy copies themselves
(Weber et al.'s smoothing of the training set). What to expect: lower per-model and certified
accuracy than the denoised run at the same σ and cost (the paper: similar certified accuracy
only with about 20× more training); BENCHMARKS.md ("Issue 13") has the measured table.
"""

import dataclasses
import importlib.util
from pathlib import Path


def get_config():
  spec = importlib.util.spec_from_file_location(
      "figure1_cpu", Path(__file__).with_name("figure1_cpu.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return dataclasses.replace(module.get_config(), sigmas=(0.25,), denoiser="none")
