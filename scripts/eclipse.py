"""ECLIPSE end to end (resumable): sparse DDPM, poison, purify, train victims, evaluate.

    python scripts/eclipse.py --config configs/eclipse_cpu.py --data /tmp/cifar10.npz \
        --poison lsp --out runs/eclipse_cpu_lsp [--defenses none,eclipse] [--num_victims 2]
        [--ddpm FOLDER] [--ddpm_max_minutes 60] [--sparse_source test]

Rerunning the same command continues where it stopped (the DDPM from its checkpoints,
purification chunk by chunk, victims one by one); a folder written with other settings is
refused. --ddpm uses a trained denoiser folder (`save_denoiser`) instead of training one.
"""

import dataclasses
import logging
import sys
from pathlib import Path

from jaxpoison import cli

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "eclipse_cifar10.py"


def parse_args(argv):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="a config file (get_config)")
  parser.add_argument("--data", default="official",
                      help="'official', 'tfds' or a CIFAR-10 .npz / JPEG pack")
  parser.add_argument("--data_dir")
  parser.add_argument("--out", required=True, help="run folder (resumed if it exists)")
  parser.add_argument("--poison", help="none | urp | lsp | ar | em | tap | rem | sep | efp")
  parser.add_argument("--defenses", type=cli.comma_separated(str),
                      help="comma-separated: none, eclipse, purification_only, "
                      "compensation_only, iss_jpeg, iss_grayscale, adversarial_training")
  parser.add_argument("--num_victims", type=int)
  parser.add_argument("--sparse_source", choices=("heldout", "test"))
  parser.add_argument("--seed", type=int)
  parser.add_argument("--ddpm", help="a trained denoiser folder to purify with")
  parser.add_argument("--ddpm_max_minutes", type=float,
                      help="train the DDPM at most this long per call")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  # Purification is 100 UNet calls per image: XLA:CPU's YNNPACK dots make it 2.1× faster on a
  # CPU (no effect elsewhere, nor once JAX has started, as in the tests).
  cli.configure_xla_cpu()
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
  from jaxpoison import diffusion, eclipse
  from jaxpoison.data import load_cifar10

  config = cli.load_config_file(args.config)
  overrides = {name: getattr(args, name) for name in (
      "poison", "defenses", "num_victims", "sparse_source", "seed")
      if getattr(args, name) is not None}
  with cli.user_errors(ValueError, TypeError):
    config = dataclasses.replace(config, **overrides).validate()
    denoiser = diffusion.load_denoiser(args.ddpm) if args.ddpm else None
  dataset = load_cifar10(args.data, data_dir=args.data_dir)
  summary = eclipse.run_eclipse(config, dataset, args.out, denoiser=denoiser,
                                ddpm_max_minutes=args.ddpm_max_minutes,
                                say=lambda line: print(line, flush=True))
  if summary["stage"] == "done":
    print(eclipse.render_summary(summary))
  return 0


if __name__ == "__main__":
  cli.run(main)
