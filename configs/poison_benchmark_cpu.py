"""A reduced Table 1 for a 2-core CPU: white-box ℓ2 Poison Frogs and Bullseye Polytope.

Run (resumable: rerun the same command to resume, or with a larger --num_trials to extend):

    python scripts/poison_benchmark.py --config configs/poison_benchmark_cpu.py \
        --data cifar10.npz --out runs/table1_cpu

The other rows of the BENCHMARKS.md table change one thing each on the command line (copy
runs/table1_cpu/pretrained into the new folder first, so the victim is not pretrained again):
`--norm linf --epsilon 0.06274509803921569` (16/255), `--craft_model airbench94 --craft_widths
32,64,64` (black-box), `--finetune_mode whole_network`, `--attacks no_poison` (the control);
the backdoors have their own config (configs/poison_benchmark_cpu_backdoors.py).

Setting and reductions against configs/poison_benchmark.py (the paper's):
* class-disjoint transfer: the extractor (airbench94 at widths 16/32/128, 3 epochs, batch 512)
  is pretrained on every training image of CIFAR-10 classes 0–4 (25,000); the victim is
  fine-tuned on classes 5–9 and targets and clean accuracy come from their test images. The
  paper pretrains a ResNet-18 on CIFAR-100 and fine-tunes on all of CIFAR-10; a pretraining set
  without the fine-tune classes is what makes a target reachable (an extractor pretrained on the
  same ten classes keeps every target deep in its class's cluster: 0% success in every cell,
  the previous version of this config);
* fine-tune set: the first 50 images per class of classes 5–9 (250) with 5 poisons (2%) instead
  of 2,500 with 25 (1%);
* fine-tuning: the linear probe, 40 epochs of batch 50 (200 steps), lr 0.01 and weight decay
  2e-4 in the head's own units, no augmentation (as the attacks' own evaluations);
* 20 trials per attack, σ ∈ {0, 0.1, 0.25}, the embedded denoiser, clean accuracy on 500
  random test images of classes 5–9 (a 5-way task: chance is 20%).
The attacks keep their published crafting steps (Poison Frogs 120, Bullseye 1,200) and the
paper's ℓ2 bound 6.43.

What to expect (measured, BENCHMARKS.md "Issue 12"; 2 contended cores): pretraining 281 s
(82.6% on its five classes), then about 30 s per Poison Frogs trial and 70 s per Bullseye trial.
Attack success without the defense 95% (Poison Frogs) and 100% (Bullseye) over 20 trials; with
it 15% / 40% at σ = 0.1 and 15% / 15% at σ = 0.25, against 15% / 10% / 15% for the no-poison
control (`--attacks no_poison`: the same trials, bases unchanged); clean 5-way accuracy 73% →
71% → 61%.
"""

from jaxpoison.attacks import L2_EPSILON_TRANSFER
from jaxpoison.benchmarks import TransferConfig, FineTuneConfig, model_config


def get_config() -> TransferConfig:
  return TransferConfig(
      attacks=("poison_frogs", "bullseye_polytope"),
      num_trials=20,
      seed=0,
      sigmas=(0.0, 0.1, 0.25),
      num_poisons=5,
      finetune_per_class=50,
      pretrain_seed=0,
      pretrain_classes=(0, 1, 2, 3, 4),
      num_eval=500,
      victim=model_config("airbench94", widths=(16, 32, 128), epochs=3, batch_size=512,
                          whitening_images=5000, tta_level=0),
      crafter=None,
      norm="l2",
      epsilon=L2_EPSILON_TRANSFER,  # the paper's bound for the transfer-learning attacks
      craft_steps=None,
      finetune=FineTuneConfig(epochs=40, batch_size=50, learning_rate=0.01, momentum=0.9,
                              weight_decay=2e-4, mode="linear_probe", augment="none"),
      trials_per_step=1,
  )
