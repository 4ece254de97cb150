"""The paper's Figure 1 (left) at a scale 2 CPU cores run in about an hour per σ.

Run (from the repository root; resumable, each σ's votes are kept model by model):

    python scripts/certify.py --config configs/figure1_cpu.py --data /tmp/cifar10.npz \
        --out runs/figure1_cpu
    python scripts/certify.py --config configs/figure1_cpu_noise_only.py \
        --data /tmp/cifar10.npz --out runs/figure1_cpu_noise_only
    python scripts/certified_table.py --runs runs/figure1_cpu \
        "runs/figure1_cpu_noise_only=noise only" --plot runs/figure1_cpu/figure1.png

Setting: σ ∈ {0.1, 0.25, 0.5, 1.0} (the paper's four), 96 models per σ (n0 = 8 select the
class, 88 estimate pA; α = 0.001), each trained on its own noised-and-denoised copy of a fixed
random 5,000-image subset of the training set with the embedded default denoiser; the CPU
quick-start trainer at 2.5× its data (airbench94 layout, widths 32/64/64, 4 epochs of batch
100, float32); 500 fixed random test points. The second command is the right panel's baseline:
the same models and noise draws at σ = 0.25 without denoising (Weber et al.'s noise-only
smoothing); the third writes the table of BENCHMARKS.md and figure1.png.

What to expect: 55–60 s per model on 2 quiet cores (2026-12-03; an earlier machine of the same
kind: 41 s), so 1.5 h per σ and about 7 h for all five runs; the run's own log gives the rate.
The table in BENCHMARKS.md ("Issue 13", "Figure 1, reduced") is this config's first 24 models per
σ (`--num_models 24 --n0 4` on the first two commands; 22 min per σ), what one 3-hour session
fits: per-model clean accuracy 51.6% / 44.8% / 34.2% / 29.9% at σ = 0.1 / 0.25 / 0.5 / 1.0,
falling with σ as in the paper (92% → 58% there, with 50,000 images, a 35.7M-parameter DDPM
and 2,500 models per σ); 88 estimation models cap the certifiable radius at
σ·Φ⁻¹(0.001^(1/88)) ≈ 1.44σ (the paper's 2,500 models: 2.76σ). The paper's curves exist only as
a figure (no numbers in its text).
"""

from jaxpoison.classifier import airbench94_config
from jaxpoison.pipeline import CertifyConfig


def get_config() -> CertifyConfig:
  trainer = airbench94_config(widths=(32, 64, 64), epochs=4, batch_size=100,
                              compute_dtype="float32", whitening_images=5000,
                              whiten_bias_epochs=1)
  return CertifyConfig(
      sigmas=(0.1, 0.25, 0.5, 1.0),
      num_models=96,
      n0=8,
      alpha=0.001,
      seed=0,
      data="official",
      denoiser="default",
      trainer=trainer,
      num_test=500,
      num_train=5000,
  )
