"""Certification of CIFAR-10 with 10,000 smoothed models at σ = 0.25 (the paper's Algorithm 1–2).

Run (GPU; `pip install -e ".[cuda]"` first):

    python scripts/certify.py --num_models 10000
    python scripts/certify.py --config configs/certify_cifar10.py --sigma 0.1 0.25 0.5 \
        --data /path/to/cifar10.npz --out runs/certify

Every flag of scripts/certify.py overrides the field of the same name here.

What to expect: each model is trained on a copy of the full training set denoised with the
embedded default denoiser (a small DDPM; the paper uses an off-the-shelf 35.7M-parameter one:
convert it with scripts/convert_checkpoint.py and pass --denoiser). Per-model clean accuracy
sits below the trainer's ~94% (denoised training data; more so with the small denoiser and
larger σ); the smoothed accuracy is close to the per-model accuracy, and certified accuracy falls
with the radius up to at most σ·Φ⁻¹(α^(1/9900)) ≈ 0.80 at σ = 0.25 (all models agreeing). The
first n0 = 100 models only select the class. Results (certify.tsv per σ, counts, summary.json,
certified_accuracy.png) go to --out (default runs/certify_cifar10). On a GPU the run takes hours;
on a CPU, days: try the small run in the README first.
"""

from jaxpoison.pipeline import CertifyConfig


def get_config() -> CertifyConfig:
  return CertifyConfig(
      sigmas=(0.25,),
      num_models=10_000,
      n0=100,
      alpha=0.001,
      seed=0,
      data="official",
      denoiser="default",
      trainer="airbench94",
      models_per_step=None,
      num_test=None,
      num_train=None,
  )
