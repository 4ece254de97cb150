"""ECLIPSE's EFP row at the scale of `configs/eclipse_cpu.py` (2 CPU cores; several hours).

Run (from the repository root; resumable stage by stage, except the poison's crafting, which
runs whole; `--ddpm runs/eclipse_cpu_lsp/ddpm/ema` reuses a finished run's DDPM):

    python scripts/eclipse.py --config configs/eclipse_cpu_efp.py --data /tmp/cifar10.npz \
        --out runs/eclipse_cpu_efp

The setting is `configs/eclipse_cpu.py`'s (5,000 training images, 1,000 test images, 400 sparse
images, the small DDPM, ResNet-18 16/32/64/128 victims for 30 epochs), with EFP (Wen et al.
2023; `jaxpoison.attacks.efp_poison`) as the poison, reduced from the reference's command in
three named ways to fit the CPU:

* the reference model: the victims' widths (16/32/64/128, not 64/.../512), 15 epochs (not 100;
  the ×0.1 milestones scale with them, to 11 and 14) and 5 PGD steps of 2/255 per training step
  (not 10) at the reference's ε_adv = 4/255 (from a uniform start in the 4/255 ball, 5 steps of
  2/255 still reach any point of it);
* the crafting: 60 signed steps of 2/255 (τ = 0.25) instead of 300 of 0.4/255 (τ = 0.05): the
  same total travel, 120/255, per value;
* the comparison that matters for EFP is adversarial training (ECLIPSE's Table 1: ResNet-18 w/o
  86.64%, AT 71.46%, ECLIPSE 77.20%; EFP is built to survive AT, not to hurt standard training),
  so the victims are no defense, ECLIPSE and AT at 8/255 (10 steps of 2/255); the clean AT
  baseline comes from the no-poison run with the same defenses (`--poison none`).

What to expect: not measured yet (BENCHMARKS "Issue 37", item 7, says when it is).
"""

import dataclasses
from pathlib import Path

from jaxpoison import cli
from jaxpoison.eclipse import EclipseConfig


def get_config() -> EclipseConfig:
  return dataclasses.replace(
      cli.load_config_file(Path(__file__).with_name("eclipse_cpu.py")), poison="efp",
      poison_settings={"steps": 60, "tau": 0.25, "batch_size": 500},
      poison_surrogate={"widths": (16, 32, 64, 128), "compute_dtype": "float32", "epochs": 15,
                        "adversarial_steps": 5},
      defenses=("none", "eclipse", "adversarial_training"))
