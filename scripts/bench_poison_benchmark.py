"""Fine-tuning speed of the benchmark harness: M trials at once against one at a time.

Takes a run directory of scripts/poison_benchmark.py (its pretrained victim and poison files),
and times `evaluate_trials` at σ = 0 (no denoiser: the fine-tuning and scoring alone) for the
first M trials of one attack fine-tuned together (one program over the classifier's model
axis) and, as the reference, the same M trials one at a time (M calls of the M = 1 program).
Compilation is excluded (each program runs once before timing) and reported separately; both
give the same records.

    PYTHONPATH=$PWD python scripts/bench_poison_benchmark.py \
        --config configs/poison_benchmark_cpu.py --data /tmp/cifar10.npz \
        --out runs/table1_cpu --num_trials 4
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

import jaxpoison as jp
from jaxpoison import classifier, cli
from jaxpoison import benchmarks as pb


def main(argv=None) -> None:
  p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--data", default="/tmp/cifar10.npz")
  p.add_argument("--out", required=True, help="a run directory with pretrained/ and poisons/")
  p.add_argument("--attack", default="bullseye_polytope")
  p.add_argument("--num_trials", type=int, default=4)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)

  with cli.user_errors(ValueError, TypeError):  # An invalid config file.
    config = dataclasses.replace(cli.load_config_file(args.config), sigmas=(0.0,))
  dataset = jp.load_cifar10(args.data)
  split = pb.split_training_set(dataset.y_train, key=jax.random.key(config.pretrain_seed),
                                finetune_per_class=config.finetune_per_class,
                                pretrain_classes=config.pretrain_classes)
  out = Path(args.out)
  victim = classifier.select(classifier.load_models(out / "pretrained" / "victim" / "models"), 0)
  poison_sets = [jp.load_poisons(pb.poison_path(out, args.attack, i), dataset)
                 for i in range(args.num_trials)]
  keys = [pb.trial_key(config.seed, i) for i in range(args.num_trials)]
  common = dict(finetune_images=dataset.x_train[split.finetune],
                finetune_labels=dataset.y_train[split.finetune],
                finetune_indices=split.finetune, dataset=dataset, victim=victim, denoiser=None,
                eval_pool=None if split.classes is None else split.test_pool(dataset.y_test))

  def together():
    return pb.evaluate_trials(config, poison_sets, keys, **common)

  def one_at_a_time():
    return [pb.evaluate_trials(config, [ps], [k], **common)[0]
            for ps, k in zip(poison_sets, keys)]

  timings = {}
  for name, fn in (("together", together), ("one at a time", one_at_a_time)):
    start = time.perf_counter()
    first = fn()
    compile_and_run = time.perf_counter() - start
    runs = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      result = fn()
      runs.append(time.perf_counter() - start)
    assert result == first
    timings[name] = (float(np.median(runs)), compile_and_run, result)
    print(f"{name}: median {timings[name][0]:.2f} s for {args.num_trials} trials "
          f"(first call with compilation {compile_and_run:.1f} s)")
  same = [r["target_prediction"] for r in timings["together"][2]] == \
      [r["target_prediction"] for r in timings["one at a time"][2]]
  print(f"same predictions: {same}")
  print(f"ratio one-at-a-time / together: "
        f"{timings['one at a time'][0] / timings['together'][0]:.2f}")


if __name__ == "__main__":
  cli.run(main)
