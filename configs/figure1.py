"""The paper's Figure 1 at full scale: 10,000 models, 2,500 per σ, on all of CIFAR-10 (a GPU job).

Run (GPU; `pip install -e ".[cuda]"` first; resumable):

    python scripts/certify.py --config configs/figure1.py --data /path/to/cifar10.npz \
        --out runs/figure1
    python scripts/certify.py --config configs/figure1.py --sigma 0.25 1.0 --denoiser none \
        --data /path/to/cifar10.npz --out runs/figure1_noise_only
    python scripts/certified_table.py --runs runs/figure1 \
        "runs/figure1_noise_only=noise only" --plot runs/figure1/figure1.png

Setting: σ ∈ {0.1, 0.25, 0.5, 1.0}, 2,500 models per σ (n0 = 100, α = 0.001), every model trained
with airbench94 (its full recipe, bfloat16 on the GPU) on its own noised-and-denoised copy of
all 50,000 training images; certified on all 10,000 test points. The second command is the
right panel's noise-only baseline (the paper shows σ = 0.25 and 1.0).

What to expect: the paper reports clean accuracy from 92% (σ = 0.1) down to 58% (σ = 1.0) with a
35.7M-parameter DDPM (convert google/ddpm-cifar10-32 or improved-diffusion's CIFAR-10 model
with scripts/convert_checkpoint.py and pass --denoiser for that comparison), and a budget of
1.7 GPU-days (15 s per model on an A100). With all 2,500 models agreeing the largest certifiable
radius is σ·Φ⁻¹(0.001^(1/2400)) ≈ 2.76σ. Expected time on one GPU (BENCHMARKS.md, "Issue 13",
"Figure 1 at full scale"; an estimate from measured arithmetic and airbench's published A100
times, no GPU having been lent): about 4–4.4 s per model on an A100, 11–12 A100-hours for the
first command and 5.3 more for the noise-only one; scripts/gpu_check.py measures s/model.
"""

from jaxpoison.pipeline import CertifyConfig


def get_config() -> CertifyConfig:
  return CertifyConfig(
      sigmas=(0.1, 0.25, 0.5, 1.0),
      num_models=2_500,
      n0=100,
      alpha=0.001,
      seed=0,
      data="official",
      denoiser="default",
      trainer="airbench94",
      num_test=None,
      num_train=None,
  )
