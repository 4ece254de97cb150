"""The embedded default denoiser: a small CIFAR-10 DDPM trained on the CPU.

Run (from the repository root; ~55 min on 2 CPU cores):

  PYTHONPATH=$PWD python scripts/train_denoiser.py --data /tmp/cifar10.npz \
      --out runs/default_denoiser --max_minutes 55 --install

Architecture: diffusers-layout UNet, block_out_channels 16/32/64 (32, 16, 8 pixels), one ResNet
block per level, single-head attention at 8×8 and in the middle block, GroupNorm with 8 groups,
linear DDPM schedule (β 1e-4 → 0.02, T = 1000), time steps t ∈ [0, t(σ=1)] = [0, 396].
687,347 params (2.7 MB float32). Batch 32: one step takes ≈ 1.3 s on the 2 shared CPU cores
this was trained on, so a 55-minute budget buys only ≈ 2,500 steps. Expected single-step
PSNR on the CIFAR-10 test set (BENCHMARKS.md, "## Issue 3: denoiser"): well above the noisy
input at every σ; the shipped model (1,450 steps) gives 23.5 dB at σ = 0.25 against 12.0 dB for
the noisy image; a large DDPM (google/ddpm-cifar10-32) does better.
"""

from jaxpoison.diffusion.schedule import linear_schedule
from jaxpoison.diffusion.train import DenoiserTrainConfig
from jaxpoison.diffusion.unet import UNetConfig


def unet_config() -> UNetConfig:
  return UNetConfig(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32, 64),
                    layers_per_block=1, attention_resolutions=(8,), norm_num_groups=8,
                    norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1.0, dropout=0.0,
                    layout="diffusers", downsample_padding=1)


def get_config() -> DenoiserTrainConfig:
  return DenoiserTrainConfig(unet=unet_config(), schedule=linear_schedule(), batch_size=32,
                             learning_rate=1e-3, warmup_steps=200, grad_clip=1.0,
                             ema_decay=0.995, num_steps=1_000_000, steps_per_chunk=25, seed=0)
