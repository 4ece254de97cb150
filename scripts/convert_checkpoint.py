"""Converts a PyTorch DDPM checkpoint to a jaxpoison denoiser directory.

  PYTHONPATH=$PWD python scripts/convert_checkpoint.py SRC OUT [--kind auto|diffusers|improved_diffusion]

SRC: a diffusers UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors/.bin, or
a pipeline folder with unet/ and scheduler/), a bare diffusers state dict (google/ddpm-cifar10-32
config assumed), or an improved-diffusion .pt state dict (CIFAR-10 config, cosine T = 4000).
OUT is written with save_denoiser (load it with jaxpoison.load_denoiser).
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
  parser.add_argument("src")
  parser.add_argument("out")
  parser.add_argument("--kind", default="auto", choices=("auto", "diffusers", "improved_diffusion"))
  args = parser.parse_args(argv)
  from jaxpoison.diffusion import save_denoiser
  from jaxpoison.diffusion.convert import convert_checkpoint
  # Conversion's ValueErrors describe a checkpoint it cannot read; FileExistsError an OUT that
  # would be overwritten.
  with cli.user_errors(ValueError, FileExistsError):
    den = convert_checkpoint(args.src, kind=args.kind)
    save_denoiser(den, args.out, extra={"converted_from": str(Path(args.src).absolute())})
  print(f"{args.src} -> {args.out}: {den.num_params:,} params, {den.unet.layout} layout, "
        f"{den.schedule.kind} schedule T={den.schedule.num_timesteps}")


if __name__ == "__main__":
  cli.run(main)
