"""Images per second of ECLIPSE's purification: jaxpoison's jitted program against the authors'
PyTorch reverse loop on the same UNet, weights, images and noise.

    PYTHONPATH=$PWD python scripts/bench_purification.py [--config configs/eclipse_cpu.py] \
        [--num_images 32] [--t_star 100] [--repeats 1]

The UNet is the config's DDPM (`EclipseConfig.ddpm.unet`, random weights: speed does not depend
on them). Prints one JSON line (the library is jaxpoison.benchmarks.purification_speed).
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxpoison import cli

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "eclipse_cpu.py"


def main(argv=None) -> None:
  p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default=str(DEFAULT_CONFIG), help="an ECLIPSE config file")
  p.add_argument("--num_images", type=int, default=32)
  p.add_argument("--t_star", type=int, default=100)
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--threads", type=int, help="PyTorch threads (default: its own choice)")
  args = p.parse_args(argv)
  for name in ("num_images", "t_star", "repeats"):
    if getattr(args, name) < 1:
      raise cli.UsageError(f"--{name}: expected a positive integer, got {getattr(args, name)}")
  from jaxpoison.benchmarks import purification_speed
  config = cli.load_config_file(args.config)
  with cli.user_errors(ValueError):
    result = purification_speed.measure(config.ddpm.unet, num_images=args.num_images,
                                        t_star=args.t_star, repeats=args.repeats,
                                        threads=args.threads)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)
