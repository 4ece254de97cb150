"""Whether FrieNDs' friendly noise is friendly on a trained network, per step size.

  python scripts/friendly_noise_check.py --checkpoint runs/t45s/wb/pretrained/surrogate_0/models \
      --data /tmp/cifar10.npz [--lrs 100,10,1,0.1] [--num_images 1000] [--seed 1] [--key 3]

For each friendly-noise step size (`defenses.friends_config(lr=…)`, the reference's 100 first),
the noise of the checkpoint's first model on `num_images` random test images (drawn with
numpy's default_rng(seed); noise key jax.random.key(key)): its mean |δ| in grey levels, the
share of pixels at the ±16/255 bound, and the share of images whose prediction it leaves
unchanged (`defenses.friendliness`). Also the network's accuracy on those images clean and with
FrieNDs' Bernoulli ±8/255 training noise added: how far the training noise alone moves it.
A step size that overshoots leaves the noise at the bound and changes predictions; choose the
largest that keeps most of them (BENCHMARKS.md, issue 16: 10 for the reduced airbench victims).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxpoison import cli  # noqa: E402 (after the path set-up)


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="a save_models directory")
  parser.add_argument("--data", default="official")
  parser.add_argument("--lrs", type=cli.comma_separated(float), default="100,10,1,0.1")
  parser.add_argument("--num_images", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=1, help="the test images' numpy seed")
  parser.add_argument("--key", type=int, default=3, help="the noise's JAX key")
  parser.add_argument("--bernoulli", type=float, default=8.0,
                      help="the training noise's ± size in grey levels")
  args = parser.parse_args(argv)
  if args.num_images < 1 or not args.lrs or min(args.lrs) <= 0 or args.bernoulli < 0:
    raise cli.UsageError("--num_images, --lrs and --bernoulli: expected a positive count, "
                         "positive step sizes and a non-negative noise size")
  import jax
  import numpy as np

  import jaxpoison as jp
  from jaxpoison import classifier, defenses
  with cli.user_errors(FileNotFoundError, ValueError):
    models = classifier.select(classifier.load_models(args.checkpoint), 0)
    dataset = jp.load_cifar10(args.data)
  count = min(args.num_images, len(dataset.y_test))
  index = np.random.default_rng(args.seed).choice(len(dataset.y_test), count, replace=False)
  images, labels = np.asarray(dataset.x_test[index]), np.asarray(dataset.y_test[index])
  unit = images.astype(np.float32) / 255.0
  signs = np.random.default_rng(args.seed + 1).choice([-1.0, 1.0], size=unit.shape)
  noised = np.clip(unit + args.bernoulli / 255.0 * signs, 0.0, 1.0).astype(np.float32)
  accuracy = lambda x: float((np.asarray(classifier.predict(models, x))[0] == labels).mean())
  print(f"{count} test images: accuracy {100 * accuracy(images):.1f}% clean, "
        f"{100 * accuracy(noised):.1f}% with Bernoulli ±{args.bernoulli:g}/255 noise")
  print("\n| step size | mean |δ| (grey levels) | pixels at the bound | predictions kept |")
  print("|---:|---:|---:|---:|")
  for lr in args.lrs:
    report = defenses.friendliness(models, images, jax.random.key(args.key), lr=lr)
    print(f"| {lr:g} | {report.mean_abs[0]:.2f} | {100 * report.at_bound[0]:.1f}% | "
          f"{100 * report.kept[0]:.1f}% |", flush=True)
  return 0


if __name__ == "__main__":
  cli.run(main)
