"""CPU quick start: a certificate for CIFAR-10 at σ = 0.25 in about 10 minutes on 2 CPU cores.

Run (from the repository root; with the CIFAR-10 JPEG copy, or without --data to download the
official archive once):

    python scripts/certify.py --config configs/certify_cpu_quick.py \
        --data ../shared/data/cifar10_jpeg.npz --out runs/certify_cpu_quick

Setting: 2,000 training images (a fixed random subset), 500 test points, the embedded default
denoiser, 32 small airbench94 models (widths 32/64/64, 4 epochs of batch 100, float32; the
first n0 = 2 only select the class), α = 0.001, one model per CPU core at a time.

What to expect, with the 24,000-step default denoiser (fresh-clone CI, 2026-12-02, 2 nearly
quiet cores): 9 min 24 s in all (17.7 s per model: 23% denoising; the issue-11 run took 8 min
43 s with the previous denoiser); per-model accuracy 37.2% on the clean test points,
smoothed accuracy (PREDICT) 28.2% (50.0% abstentions), majority vote 39.6%, certified accuracy
25.8 / 24.0 / 19.4 / 0% at radius 0 / 0.05 / 0.1 / 0.25 (no radius beyond
σ·Φ⁻¹(0.001^(1/30)) ≈ 0.205 is certifiable with 30 estimation models). The previous denoiser
(1,450 steps) gave 26.9% per model, 16.8% PREDICT and 16.0 / 14.8 / 12.6 / 0% (BENCHMARKS.md,
issue 11). The models are weak (2,000 images, a small denoiser whose smoothed training images
differ from the clean test images); the point is a complete certificate, end to end, in minutes.
"""

from jaxpoison.classifier import airbench94_config
from jaxpoison.pipeline import CertifyConfig


def get_config() -> CertifyConfig:
  trainer = airbench94_config(widths=(32, 64, 64), epochs=4, batch_size=100,
                              compute_dtype="float32", whitening_images=2000,
                              whiten_bias_epochs=1)
  return CertifyConfig(
      sigmas=(0.25,),
      num_models=32,
      n0=2,
      alpha=0.001,
      seed=0,
      data="official",
      denoiser="default",
      trainer=trainer,
      num_test=500,
      num_train=2000,
  )
