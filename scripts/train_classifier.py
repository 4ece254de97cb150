"""Trains M classifiers at once on CIFAR-10 and saves them.

    PYTHONPATH=$PWD python scripts/train_classifier.py --config configs/train_airbench94.py \
        --data /tmp/cifar10.npz --num_models 4 --out runs/airbench94

`--config` is a Python file with `get_config() -> TrainConfig` (or the name airbench94,
resnet18, tiny); `--set field=value` overrides fields (e.g. --set epochs=2). Prints each
model's test accuracy and the seconds per model.
"""

from __future__ import annotations

import ast
import time

import jax
import numpy as np

import jaxpoison as jp
from jaxpoison import classifier, cli


def load_config(spec: str, overrides: list[str]) -> classifier.TrainConfig:
  named = {"airbench94": classifier.airbench94_config, "resnet18": classifier.resnet18_config,
           "tiny": classifier.tiny_config}
  if spec in named:
    config = named[spec]()
  else:
    config = cli.load_config_file(spec)
  changes = {}
  for item in overrides:
    name, equals, value = item.partition("=")
    if not equals or not name:
      raise cli.UsageError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set epochs=2")
    try:
      changes[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      changes[name] = value
  return config.replace(**changes)


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="airbench94",
                      help="airbench94, resnet18, tiny or a Python file with get_config()")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
  parser.add_argument("--data", default="official")
  parser.add_argument("--num_models", type=int, default=4)
  parser.add_argument("--num_train", type=int, default=0,
                      help="a random subset of N training images (0: all)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  with cli.user_errors(ValueError, TypeError):  # TrainConfig rejects a bad --set value.
    config = load_config(args.config, args.set)
  data = jp.load_cifar10(args.data)
  x, y = data.x_train, data.y_train
  if args.num_train:
    # A random subset: some copies of CIFAR-10 store the images sorted by class.
    subset = np.random.default_rng(args.seed).permutation(len(x))[:args.num_train]
    x, y = x[subset], y[subset]
  keys = jax.random.split(jax.random.key(args.seed), args.num_models)
  start = time.perf_counter()
  models = jax.block_until_ready(classifier.train_models(keys, x, y, config))
  seconds = time.perf_counter() - start
  accuracy = np.asarray(classifier.evaluate(models, data.x_test, data.y_test))
  print(f"config: {config}")
  print(f"trained {args.num_models} models on {len(x)} images in {seconds:.1f} s "
        f"(with compilation): {seconds / args.num_models:.2f} s per model")
  print(f"test accuracy: mean {accuracy.mean():.4f} ± {accuracy.std():.4f} (per model: "
        f"{np.round(accuracy, 4).tolist()})")
  if args.out:
    classifier.save_models(args.out, models)
    print(f"saved to {args.out}")


if __name__ == "__main__":
  cli.run(main)
