"""SEP crafting speed: the steps driven from Python (`loop="host"`, the CPU default) against the
whole search as one program (`loop="scan"`, the accelerator path), same checkpoints and images.

    PYTHONPATH=$PWD python scripts/bench_sep.py [--num_images 200] [--num_checkpoints 4] \
        [--steps 2] [--inner_steps 4] [--widths 16,32,64,128]

The checkpoints are a small ResNet-18 trained on random images, one epoch per checkpoint (speed does not depend
on the weights). Compilation is excluded (one untimed run of each first). Prints one JSON line:
gradient passes per image, each loop's seconds and image-gradients per second, the ratio
scan time / host time, and the share of poison values on which the two loops differ (a gradient
component within rounding of zero can take either sign in either loop).
"""

from __future__ import annotations

import json
import time

from jaxpoison import cli


def main(argv=None) -> None:
  p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--num_images", type=int, default=200)
  p.add_argument("--num_checkpoints", type=int, default=4)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--inner_steps", type=int, default=4)
  p.add_argument("--widths", type=cli.comma_separated(int), default=(16, 32, 64, 128),
                 help="the ResNet-18's four stage widths")
  args = p.parse_args(argv)
  for name in ("num_images", "num_checkpoints", "steps", "inner_steps"):
    if getattr(args, name) < 1:
      raise cli.UsageError(f"--{name}: expected a positive integer, got {getattr(args, name)}")
  if args.num_images < 10:
    raise cli.UsageError(f"--num_images: expected at least 10 (one per class: feature alignment "
                         f"needs every class's mean), got {args.num_images}")
  widths = tuple(args.widths)
  if len(widths) != 4 or min(widths) < 1:
    raise cli.UsageError(f"--widths: expected four positive stage widths, got {args.widths}")

  import jax
  import numpy as np

  from jaxpoison import classifier
  from jaxpoison.attacks import self_ensemble as sep
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.num_images, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(args.num_images) % 10
  train = classifier.resnet18_config(widths=widths, epochs=args.num_checkpoints,
                                     batch_size=min(50, args.num_images), compute_dtype="float32")
  checkpoints = sep.train_checkpoints(jax.random.key(0), images, labels, train,
                                      args.num_checkpoints)
  config = sep.SEPConfig(steps=args.steps, num_checkpoints=args.num_checkpoints,
                         inner_steps=args.inner_steps, batch_size=args.num_images)
  passes = args.steps * (args.num_checkpoints + args.inner_steps)
  result = {"device": jax.devices()[0].device_kind, "num_images": args.num_images,
            "gradient_passes_per_image": passes}
  poisons = {}
  for loop in ("host", "scan"):
    sep.sep_poison(jax.random.key(1), checkpoints, images, labels, config, loop=loop)
    started = time.perf_counter()
    poisons[loop] = sep.sep_poison(jax.random.key(1), checkpoints, images, labels, config,
                                   loop=loop).poisons
    seconds = time.perf_counter() - started
    result[f"{loop}_s"] = round(seconds, 4)
    result[f"{loop}_image_gradients_per_s"] = round(passes * args.num_images / seconds, 1)
  result["ratio_scan_over_host"] = round(result["scan_s"] / result["host_s"], 3)
  result["share_of_values_differing"] = float(np.mean(poisons["host"] != poisons["scan"]))
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)
