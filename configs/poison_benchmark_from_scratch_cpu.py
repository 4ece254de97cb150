"""A reduced Table 2 / Table 3 for a 2-core CPU: Witches' Brew (white-box) against small
airbench94 victims on 5,000 CIFAR-10 images, with and without the denoising defense.

Run (resumable: rerun the same command to resume, or with a larger --num_trials to extend):

    python scripts/poison_benchmark.py --config configs/poison_benchmark_from_scratch_cpu.py \
        --data cifar10.npz --out runs/table2_cpu

The other rows of the BENCHMARKS.md table change one thing each on the command line (copy
runs/table2_cpu/pretrained into the new folder first, so the surrogate and the clean start are
not trained again; copy poisons/ too where only the victims change):
`--norm l2 --epsilon 3.48 --attacks witches_brew` (the ℓ2 column), `--warm_start_epochs 1`
(Table 3's in-domain warm start: the first of the two epochs on the tampered set),
`--attacks sleeper_agent --retrain_every 0` (Sleeper Agent), `--clean_start_from own` (victims
from a clean network the attacker has not seen), `--clean_start_epochs 0 --clean_start_from own`
(victims from scratch, the paper's setting).

Setting and reductions against configs/poison_benchmark_from_scratch.py (the paper's):
* data: 5,000 training images (500 per class, `training_subset` seed 0) instead of 50,000;
  100 poisons (2%) instead of 1%;
* networks: airbench94 at widths 16/32/64 with its own recipe (16 epochs, batch 100, no label
  smoothing, no test-time augmentation; 77% test accuracy) for the surrogate and the victims,
  instead of ResNet-18 with the 40-epoch conservative recipe;
* crafting: one surrogate and one restart of 250 sign-Adam steps (the paper: 8 restarts, most
  likely an ensemble of four), ℓ∞ 16/255 (ℓ2 3.48 on the command line);
* targets and poison class: a random test image the clean surrogate classifies correctly, and
  the surrogate's most probable wrong class for it (`correct_targets`, `runner_up`) instead of
  any test image and a random class: a random class is out of reach of these victims (they
  give it 0–6%), and a random target is often already misclassified as its runner-up class;
* victims (`clean_start_epochs` 2, `clean_start_from` "surrogate"): every victim starts from
  the surrogate (the attacker's network, trained on the clean set; the transfer-learning threat
  model of Table 1, here with the whole network training) and trains 2 epochs on its tampered,
  denoised set, instead of training from scratch: from scratch, the seed-to-seed scatter of
  these small networks on one target is as large as anything the poisons do, and from a clean
  network the attacker has not seen the effect was within the control's (BENCHMARKS.md,
  issue 15);
* 10 trials, σ ∈ {0, 0.1, 0.25} with the embedded denoiser, clean accuracy on 1,000 random test
  images; the no-poison control on the same trials (bases unchanged).

What to expect (measured, BENCHMARKS.md "Issue 15"; 2 cores): surrogate training ~100 s (71%
test accuracy), then ~90 s per Witches' Brew trial (crafting ~40 s) and ~60 s per control
trial. Success over 10 trials at σ = 0 / 0.1 / 0.25 (clean accuracy 69 / 67 / 61%): Witches'
Brew ℓ∞ 20% / 0% / 0%, ℓ2 20% / 20% / 10%, with the warm start 20% / 10% / 0%; Sleeper Agent
ℓ∞ 80% / 20% / 10% (76% / 22% / 11% of all patched source-class test images); the control
0% / 0% / 0%. The poisons raise the target's poison-class probability by +0.19 on average at
σ = 0 (every trial), +0.09 at σ = 0.1 and +0.03 at σ = 0.25 (ℓ∞).
"""

from jaxpoison.benchmarks.from_scratch import FromScratchConfig
from jaxpoison.classifier import airbench94_config


def get_config() -> FromScratchConfig:
  return FromScratchConfig(
      attacks=("witches_brew", "no_poison"),
      num_trials=10,
      seed=0,
      sigmas=(0.0, 0.1, 0.25),
      num_poisons=100,
      train_per_class=500,
      num_eval=1000,
      victim=airbench94_config(widths=(16, 32, 64), epochs=16, batch_size=100,
                               whitening_images=5000, label_smoothing=0.0, tta_level=0,
                               models_per_step=1),
      surrogate=None,  # white-box
      num_surrogates=1,
      poison_class="runner_up",
      norm="linf",
      epsilon=16 / 255,
      craft_steps=None,  # 250
      restarts=1,
      clean_start_epochs=2,
      clean_start_from="surrogate",
      correct_targets=True,
      warm_start_epochs=0,
      trials_per_step=1,  # one victim at a time is the faster on a CPU
      denoise_batch_size=250,
  )
