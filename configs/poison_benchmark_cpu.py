"""A reduced Table 1 run for a shared 2-core CPU (the BENCHMARKS.md figures).

Run:

    PYTHONPATH=$PWD python scripts/poison_benchmark.py --config configs/poison_benchmark_cpu.py \
        --data /tmp/cifar10.npz --out runs/table1_cpu --time_limit_s 1500

Reductions against configs/poison_benchmark.py (the paper's setting), all for time:
* extractor: the tiny airbench94 (widths 8/16/16) pretrained for half an epoch (batch 256) on
  the 25,000-image half, instead of a ResNet-18 trained to convergence;
* fine-tune set: the first 20 images per class of the other half (200) with 2 poisons (1%),
  instead of 250 per class (2,500) with 25;
* crafting: 30 steps for every attack instead of 120 (Poison Frogs) / 1200 (polytopes);
* fine-tuning: 5 epochs of batch 50 (20 steps) of the linear head instead of 40 epochs of 128;
* 3 trials per attack, σ ∈ {0, 0.1, 0.25}, clean accuracy on 500 test images.

What to expect: with so few crafting steps and a weak extractor, attack success without the
defense is far below the paper's 68.8–100% and the per-cell estimates (3 trials) are coarse
(each trial moves a cell by 33 points); the point of the run is the pipeline end to end and the
direction of the effect, success falling and clean accuracy nearly unchanged as σ grows.
"""

from jaxpoison.poison_benchmark import BenchmarkConfig, FineTuneConfig, model_config


def get_config() -> BenchmarkConfig:
  return BenchmarkConfig(
      attacks=("poison_frogs", "convex_polytope", "bullseye_polytope"),
      num_trials=3,
      seed=0,
      sigmas=(0.0, 0.1, 0.25),
      num_poisons=2,
      finetune_per_class=20,
      pretrain_seed=0,
      num_eval=500,
      victim=model_config("tiny_airbench94", epochs=0.5, batch_size=256),
      crafter=None,
      craft_steps=30,
      finetune=FineTuneConfig(epochs=5, batch_size=50, learning_rate=0.01, momentum=0.9,
                              weight_decay=2e-4),
      trials_per_step=3,
  )
