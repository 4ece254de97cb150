"""A reduced Table 1 run that fits ~25 minutes on a 2-core CPU (the BENCHMARKS.md figures).

Run:

    PYTHONPATH=$PWD python scripts/poison_benchmark.py --config configs/poison_benchmark_cpu.py \
        --data /tmp/cifar10.npz --out runs/table1_cpu --time_limit_s 1500

Reductions against configs/poison_benchmark.py (the paper's setting), all for time:
* extractor: a narrow airbench94 (widths 16/32/32) pretrained for 2 epochs on the
  25,000-image half, instead of a ResNet-18;
* fine-tune set: the first 50 images per class of the other half (500) with 5 poisons (1%),
  instead of 250 per class (2,500) with 25;
* crafting: 60 steps for every attack instead of 120 (Poison Frogs) / 1200 (polytopes);
* fine-tuning: 8 epochs of batch 50 (80 steps) of the linear head instead of 40 epochs of 128;
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
      num_poisons=5,
      finetune_per_class=50,
      pretrain_seed=0,
      num_eval=500,
      victim=model_config("airbench94", widths=(16, 32, 32), epochs=2, compute_dtype="float32"),
      crafter=None,
      craft_steps=60,
      finetune=FineTuneConfig(epochs=8, batch_size=50, learning_rate=0.01, momentum=0.9,
                              weight_decay=2e-4),
      trials_per_step=3,
  )
