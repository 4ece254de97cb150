"""ECLIPSE at a scale 2 CPU cores run (a few hours): one poison, the defense against no defense.

Run (from the repository root; resumable):

    python scripts/eclipse.py --config configs/eclipse_cpu.py --data /tmp/cifar10.npz \
        --poison lsp --out runs/eclipse_cpu_lsp

Setting: 5,000 training images and 1,000 test images (fixed random subsets), a sparse set of 400
held-out images (8% of the subset; the paper's 4% of 50,000 is 2,000) replicated ×4, a small
UNet with learned variance (widths 32/64/64, one block per level, no attention) trained with
the hybrid loss on t < 100 only (the steps purification visits) for 3,000 steps, purification
from t* = 100 of the cosine T = 4000 schedule, small ResNet-18 victims (widths 16/32/64/128) for
30 epochs at lr 0.1 without schedule, compensation p = 0.4, σ = 0.05.

What to expect (measured 2026-12-02, BENCHMARKS "Issue 17"): the DDPM trains at 0.77-0.87 s
per step on 2 quiet cores with the script's YNNPACK setting; its loss falls from 1.39 (step 50)
to 0.46 (step 2,200) and stays within 0.44-0.46 (the constant learning rate's floor), so the run
stops at 3,000 steps (about 45 minutes). Purifying the 5,000 images takes about 25 minutes (3.4
images per second, 100 reverse steps); a victim about 7 minutes. Test accuracy with one victim:
clean 65.3%; LSP undefended 35.0%, with ECLIPSE 64.9%; AR undefended 16.5%, with ECLIPSE 60.7%.
Later poisons reuse the DDPM: --ddpm runs/eclipse_cpu_lsp/ddpm/ema.
"""

import dataclasses

from jaxpoison import diffusion
from jaxpoison.eclipse import EclipseConfig, eclipse_ddpm_config, eclipse_victim_config


def get_config() -> EclipseConfig:
  unet = diffusion.UNetConfig(out_channels=6, block_out_channels=(32, 64, 64),
                              layers_per_block=1, attention_resolutions=(), mid_attention=False,
                              norm_num_groups=16, scale_shift_norm=True,
                              timestep_scale=1000.0 / 4000.0)
  ddpm = eclipse_ddpm_config(unet, batch_size=64, learning_rate=2e-4, warmup_steps=200,
                             grad_clip=1.0, ema_decay=0.999, max_timestep=99,
                             num_steps=3000, steps_per_chunk=50)
  victim = eclipse_victim_config(widths=(16, 32, 64, 128), epochs=30, compute_dtype="float32")
  return dataclasses.replace(
      EclipseConfig(), ddpm=ddpm, victim=victim, sparse_size=400, num_train=5400,
      num_test=1000, defenses=("none", "eclipse", "purification_only", "compensation_only",
                               "iss_jpeg", "iss_grayscale", "adversarial_training"))
