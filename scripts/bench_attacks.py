"""Crafting speed of the transfer-learning attacks, against an eager PyTorch reference loop.

Crafts the poisons of one CIFAR-10 trial (25 bases, the benchmark's count) with each attack on
a small CNN feature extractor, and times the Bullseye Polytope loop of the benchmark
(Schwarzschild et al.'s `craft_poisons_bp.py`: Adam on the normalized poisons, ℓ∞ clipping
after every step) written in eager PyTorch on the same network with the same weights, as the
reference. Reports seconds per trial (compilation excluded, reported separately) and the ratio.

    PYTHONPATH=$PWD python scripts/bench_attacks.py --data /tmp/cifar10.npz --steps 200

The PyTorch loop is a benchmark reference only; it is also run for a few steps from the same
start to check that both implementations take the same steps.
"""

from __future__ import annotations

import time

import jax
import numpy as np

import jaxpoison as jp
from jaxpoison import attacks, cli
from jaxpoison.attacks import testing


def torch_bullseye(model_state, width, feature_dim, target, bases, *, steps, lr, epsilon, std):
  """The benchmark's Bullseye loop in eager PyTorch (CPU), on the TinyCNN's weights."""
  import torch
  from torch import nn

  class TorchTinyCNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, width, 3, padding=1)
      self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2)
      self.head = nn.Linear(2 * width, feature_dim)
      self.register_buffer("mean", torch.tensor((0.49, 0.48, 0.45)).view(1, 3, 1, 1))
      self.register_buffer("scale", torch.tensor((0.2, 0.2, 0.2)).view(1, 3, 1, 1))

    def forward(self, x01):
      x = (x01 - self.mean) / self.scale
      x = torch.relu(self.conv1(x))
      # Flax's SAME padding for a stride-2 3×3 convolution of an even size: 0 before, 1 after.
      x = torch.relu(self.conv2(nn.functional.pad(x, (0, 1, 0, 1))))
      return self.head(x.mean(dim=(2, 3)))

  net = TorchTinyCNN()
  with torch.no_grad():
    for name in ("conv1", "conv2"):
      layer = getattr(net, name)
      kernel = np.array(model_state[name]["kernel"][...])  # HWIO -> OIHW
      layer.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
      layer.bias.copy_(torch.from_numpy(np.array(model_state[name]["bias"][...])))
    net.head.weight.copy_(torch.from_numpy(np.array(model_state["head"]["kernel"][...]).T))
    net.head.bias.copy_(torch.from_numpy(np.array(model_state["head"]["bias"][...])))
  net.eval()
  for p in net.parameters():
    p.requires_grad_(False)
  std_t = torch.tensor(std).view(1, 3, 1, 1)
  base01 = torch.from_numpy(bases).permute(0, 3, 1, 2).float() / 255
  target01 = torch.from_numpy(target).permute(2, 0, 1)[None].float() / 255
  poison = nn.Parameter(base01 / std_t)  # Adam on the normalized image (the mean cancels).
  optimizer = torch.optim.Adam([poison], lr=lr, betas=(0.9, 0.999))
  target_features = net(target01).detach()
  for _ in range(steps):
    optimizer.zero_grad()
    features = net(poison * std_t)
    loss = torch.norm(features.mean(0) - target_features[0]) / torch.norm(target_features[0])
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      perturbation = torch.clamp(poison * std_t - base01, -epsilon, epsilon)
      poison.copy_(torch.clamp(base01 + perturbation, 0, 1) / std_t)
  return (poison * std_t).detach().permute(0, 2, 3, 1).numpy()


def once(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def timed(fn, repeats):
  """Seconds of the first call (with compilation) and the median of `repeats` more."""
  first = once(fn)
  return first, float(np.median([once(fn) for _ in range(repeats)]))


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="/tmp/cifar10.npz", help="CIFAR-10 source (see README)")
  parser.add_argument("--steps", type=int, default=200, help="crafting steps per attack")
  parser.add_argument("--num_poisons", type=int, default=attacks.BENCHMARK_NUM_POISONS)
  parser.add_argument("--width", type=int, default=32, help="TinyCNN width")
  parser.add_argument("--feature_dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
  args = parser.parse_args(argv)
  with cli.user_errors(ValueError, TypeError):  # Bad flag values, before any work.
    configs = {
        "poison_frogs": attacks.PoisonFrogsConfig(num_steps=args.steps),
        "convex_polytope": attacks.ConvexPolytopeConfig(num_steps=args.steps),
        "bullseye_polytope": attacks.BullseyePolytopeConfig(num_steps=args.steps),
    }

  import torch
  torch.set_num_threads(args.threads)
  dataset = jp.load_cifar10(args.data)
  key = jax.random.key(0)
  trial = jp.sample_trial(key, dataset, args.num_poisons)
  target = dataset.x_test[trial.target_index]
  bases = dataset.x_train[trial.base_indices]
  extractor = testing.tiny_cnn_extractor(0, width=args.width, feature_dim=args.feature_dim)
  print(f"device: {jax.devices()[0].device_kind}; {args.num_poisons} poisons; TinyCNN width "
        f"{args.width}, {args.feature_dim} features; {args.steps} steps")

  results = {}
  for name, config in configs.items():
    first, steady = timed(lambda: attacks.craft(name, key, [extractor], target, bases, config),
                          args.repeats)
    results[name] = steady
    print(f"jax {name:18s} {steady:8.3f} s/trial  ({1e3 * steady / args.steps:.2f} ms/step; "
          f"first call incl. compilation {first:.1f} s)")

  config = configs["bullseye_polytope"]
  reference = lambda steps: torch_bullseye(
      extractor.params, args.width, args.feature_dim, target, bases, steps=steps,
      lr=config.learning_rate, epsilon=config.epsilon, std=config.input_std)
  # Interleaved pairs, so that load from other processes hits both sides alike.
  reference(2)
  jax_times, torch_times = [], []
  for _ in range(args.repeats):
    jax_times.append(once(lambda: attacks.bullseye_polytope(key, [extractor], target, bases,
                                                            config)))
    torch_times.append(once(lambda: reference(args.steps)))
  ratios = np.array(torch_times) / np.array(jax_times)
  print(f"interleaved bullseye_polytope: jax {np.median(jax_times):.3f} s, torch "
        f"{np.median(torch_times):.3f} s per trial (medians of {args.repeats}; eager PyTorch, "
        f"{args.threads} threads)")
  print(f"ratio torch / jax (bullseye_polytope): median {np.median(ratios):.2f} "
        f"(range {ratios.min():.2f}-{ratios.max():.2f})")

  parity_steps = 5
  jax_poisons = attacks.bullseye_polytope(
      key, [extractor], target, bases,
      attacks.BullseyePolytopeConfig(num_steps=parity_steps)).poisons_float
  difference = np.abs(np.asarray(jax_poisons) - reference(parity_steps)).max()
  print(f"parity after {parity_steps} steps: max |jax − torch| = {difference:.2e} (pixel units)")


if __name__ == "__main__":
  cli.run(main)
