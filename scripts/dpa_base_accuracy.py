"""DPA's base classifiers' clean accuracy with the DPA reference's recipe and the victim's.

    python scripts/dpa_base_accuracy.py --data /tmp/cifar10.npz --num_partitions 250 \
        --num_models 25

Partitions the CIFAR-10 training set (or a seeded --train_per_class subset) into
--num_partitions parts by hash and trains the base classifiers of the first --num_models parts
(airbench94 at --widths) with each recipe: "reference" (`defenses.dpa_base_config`: the DPA
reference's 200 epochs, batch 128 with the last partial batch, lr 0.1 ×0.2 after epochs
60/120/160, per-part normalization) and "victim" (`classifier.conservative_config`: 40 epochs,
the last partial batch dropped, the earlier base recipe). Prints one JSON line (the library is
jaxpoison.benchmarks.dpa_bases).
"""

from __future__ import annotations

import json

from jaxpoison import cli

RECIPES = ("reference", "victim")


def main(argv=None) -> None:
  p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default="official", help="CIFAR-10: an .npz, a folder, or official")
  p.add_argument("--train_per_class", type=int,
                 help="a seeded subset of this many training images per class")
  p.add_argument("--num_partitions", type=int, default=250)
  p.add_argument("--num_models", type=int, help="train the first this many parts (default all)")
  p.add_argument("--num_eval", type=int, default=1000, help="test images scored")
  p.add_argument("--widths", type=cli.comma_separated(int), default=(16, 32, 64))
  p.add_argument("--epochs", type=int, default=200, help="the reference recipe's epochs")
  p.add_argument("--recipes", type=cli.comma_separated(str), default=RECIPES,
                 help="comma-separated, of: reference, victim")
  args = p.parse_args(argv)
  for name in ("num_partitions", "num_eval", "epochs"):
    if getattr(args, name) < 1:
      raise cli.UsageError(f"--{name}: expected a positive integer, got {getattr(args, name)}")
  unknown = sorted(set(args.recipes) - set(RECIPES))
  if unknown:
    raise cli.UsageError(f"--recipes: expected names in {RECIPES}, got {unknown}")
  import jax
  import numpy as np
  import jaxpoison as jp
  from jaxpoison import classifier, defenses
  from jaxpoison.benchmarks import dpa_bases, from_scratch
  with cli.user_errors(ValueError, OSError):
    data = jp.load_cifar10(args.data)
  subset = from_scratch.training_subset(data.y_train, args.train_per_class,
                                        key=jax.random.key(0))
  victim = classifier.conservative_config("airbench94", widths=tuple(args.widths))
  recipes = {"reference": defenses.dpa_base_config(victim, args.epochs), "victim": victim}
  with cli.user_errors(ValueError):
    result = dpa_bases.measure(
        np.asarray(data.x_train)[subset], np.asarray(data.y_train)[subset],
        np.asarray(data.x_test)[:args.num_eval], np.asarray(data.y_test)[:args.num_eval],
        {name: recipes[name] for name in args.recipes},
        num_partitions=args.num_partitions, num_models=args.num_models)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)
