"""Models per hour of DPA's base classifiers: the many-model trainer against one at a time.

    PYTHONPATH=$PWD python scripts/bench_dpa.py --data /tmp/cifar10.npz --num_partitions 250 \
        --num_models 16

Partitions the CIFAR-10 training set (or its first --num_train images) into --num_partitions
parts by hash, and trains the first --num_models base classifiers (airbench94 at --widths,
--epochs epochs of batch --batch_size) both ways in the same run. Prints one JSON line (the
library is jaxpoison.benchmarks.dpa_speed).
"""

from __future__ import annotations

import json

from jaxpoison import cli


def main(argv=None) -> None:
  p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default="official", help="CIFAR-10: an .npz, a folder, or official")
  p.add_argument("--num_train", type=int, help="use the first this many training images")
  p.add_argument("--num_partitions", type=int, default=250)
  p.add_argument("--num_models", type=int, default=16, help="base classifiers timed each way")
  p.add_argument("--models_per_step", type=int, help="models per program (default: all)")
  p.add_argument("--widths", type=cli.comma_separated(int), default=(16, 32, 64))
  p.add_argument("--epochs", type=float, default=20.0)
  p.add_argument("--batch_size", type=int, default=32)
  args = p.parse_args(argv)
  for name in ("num_partitions", "num_models", "batch_size"):
    if getattr(args, name) < 1:
      raise cli.UsageError(f"--{name}: expected a positive integer, got {getattr(args, name)}")
  if args.num_models > args.num_partitions:
    raise cli.UsageError(f"--num_models: at most the {args.num_partitions} partitions, got "
                         f"{args.num_models}")
  import jaxpoison as jp
  from jaxpoison import classifier
  from jaxpoison.benchmarks import dpa_speed
  with cli.user_errors(ValueError, OSError):
    data = jp.load_cifar10(args.data)
    if args.num_train is not None:
      data = data.subset(num_train=args.num_train)
    config = classifier.airbench94_config(
        widths=tuple(args.widths), epochs=args.epochs, batch_size=args.batch_size,
        whitening_images=64, tta_level=0, num_classes=data.num_classes)
    result = dpa_speed.measure(data.x_train, data.y_train, config,
                               num_partitions=args.num_partitions, num_models=args.num_models,
                               models_per_step=args.models_per_step)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)
