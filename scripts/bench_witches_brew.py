"""Cost of one Witches' Brew step: jaxpoison's jitted sign-Adam step against the same step in
PyTorch (the reference's loop) on the same network, weights and poisons, on the same device.

    PYTHONPATH=$PWD python scripts/bench_witches_brew.py --num_poisons 64 --repeats 10

Prints one JSON line: seconds per step of each and the ratio PyTorch / jaxpoison (compilation
excluded: warm-up steps run first). The library is jaxpoison.benchmarks.matching_speed.
"""

from __future__ import annotations

import json

from jaxpoison import cli


def main(argv=None) -> None:
  p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--num_poisons", type=int, default=64, help="poisons crafted per step")
  p.add_argument("--width", type=int, default=16, help="channels of the network's first conv")
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--repeats", type=int, default=10, help="timed steps (the median is reported)")
  p.add_argument("--torch_device", default="auto",
                 help="auto (JAX's device), cpu, cuda, or none to skip the PyTorch reference")
  p.add_argument("--torch_threads", type=int, help="PyTorch's CPU threads (default: its own)")
  args = p.parse_args(argv)
  for name in ("num_poisons", "width", "image_size", "repeats"):
    if getattr(args, name) < 1:
      raise cli.UsageError(f"--{name}: expected a positive integer, got {getattr(args, name)}")
  from jaxpoison.benchmarks import matching_speed, peers
  device = None
  if args.torch_device != "none":
    with cli.user_errors(ValueError):
      device, why = peers.torch_device(args.torch_device)
    if device is None:
      print(why)
  result = matching_speed.measure(args.num_poisons, args.width, args.image_size,
                                  warmup=args.warmup, repeats=args.repeats, torch_device=device,
                                  threads=args.torch_threads)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)
