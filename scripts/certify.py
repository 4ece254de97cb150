"""Certifies a smoothed CIFAR-10 classifier against clean-label poisoning (the paper's main job).

    python scripts/certify.py --num_models 10000
    python scripts/certify.py --sigma 0.1 0.25 --num_models 2000 --data cifar10.npz --out runs/c

Rerunning the same command resumes; a folder written with other settings is refused.

Several processes (hosts): start the same command in each with --distributed and, unless a
cluster (Slurm, Open MPI, Kubernetes, Cloud TPU) supplies them, --coordinator_address HOST:PORT
(process 0's host), --num_processes N and --process_id i, or the environment variables
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID. Every process needs the same data and
denoiser; process 0 alone reads and writes --out.
"""

import dataclasses
import logging
import sys
from pathlib import Path

from jaxpoison import cli

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "certify_cifar10.py"


def parse_args(argv):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="a config file (get_config)")
  parser.add_argument("--sigma", type=float, nargs="+", help="noise level(s) in [0, 1] pixels")
  parser.add_argument("--num_models", type=int, help="models per σ, n0 included")
  parser.add_argument("--n0", type=int, help="selection models")
  parser.add_argument("--alpha", type=float, help="failure probability")
  parser.add_argument("--seed", type=int)
  parser.add_argument("--data", help="'official' (download once), 'tfds' or a path to an .npz / "
                      "JPEG pack / image folder")
  parser.add_argument("--data_dir", help="cache of 'official' (default $JAXPOISON_DATA_DIR or "
                      "~/.cache/jaxpoison) or the tfds data directory")
  parser.add_argument("--denoiser", help="'default', a folder written by save_denoiser, or "
                      "'none' (noise only, no denoising)")
  parser.add_argument("--trainer", help="airbench94 | resnet18 | tiny | tiny_resnet18")
  parser.add_argument("--models_per_step", type=int, help="models per chunk (default: planned)")
  parser.add_argument("--num_test", type=int, help="certify a fixed random subset of test points")
  parser.add_argument("--num_train", type=int, help="train on a fixed random subset of N training images")
  parser.add_argument("--denoise_batch_size", type=int)
  parser.add_argument("--denoise_dtype", choices=("auto", "float32", "bfloat16"),
                      help="the denoiser's compute dtype (auto: bfloat16 on an accelerator, "
                      "float32 on a CPU)")
  parser.add_argument("--concurrency", choices=("sequential", "vmap"),
                      help="one model after another per device (default) or all vmapped")
  parser.add_argument("--allow_untrained_sigma", action="store_true", default=None,
                      help="denoise at a σ outside the steps the denoiser was trained on")
  parser.add_argument("--allow_environment_change", action="store_true", default=None,
                      help="resume a folder started on another platform, JAX version, "
                      "compute dtype or training loop (recorded in settings.json)")
  parser.add_argument("--cpu_devices", type=int,
                      help="XLA devices to split the host CPU into (default: one per core; "
                      "unless XLA_FLAGS sets it)")
  parser.add_argument("--out", default="runs/certify_cifar10", help="results folder")
  cli.add_distributed_flags(parser)
  parser.add_argument("--no_progress", action="store_true", help="no progress bar")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
  # Our per-chunk lines at INFO; orbax's and absl's chatter stays at WARNING.
  logging.getLogger("jaxpoison").setLevel(logging.INFO)
  from jaxpoison import pipeline
  with cli.user_errors(ValueError):
    pipeline.configure_cpu_devices(args.cpu_devices)
  launched = cli.initialize_distributed(args)

  config = cli.load_config_file(args.config)
  overrides = {name: getattr(args, name) for name in (
      "num_models", "n0", "alpha", "seed", "data", "data_dir", "denoiser", "trainer",
      "models_per_step", "num_test", "num_train", "denoise_batch_size", "denoise_dtype",
      "concurrency", "allow_untrained_sigma", "allow_environment_change")
      if getattr(args, name) is not None}
  if args.sigma is not None:
    overrides["sigmas"] = tuple(args.sigma)
  with cli.user_errors(ValueError, TypeError):  # Bad flag values, before any slow work.
    config = dataclasses.replace(config, **overrides).validate()
  summary = pipeline.run_certification(config, args.out, progress=not args.no_progress)
  if launched and not summary:
    print(f"{launched}: done; process 0 wrote the results")
  for sigma, result in summary.get("sigmas", {}).items():
    print(f"σ={sigma}: smoothed accuracy (PREDICT) {result['smoothed_accuracy']:.3f}, "
          f"majority vote {result['majority_vote_accuracy']:.3f}, CERTIFY abstention "
          f"{result['abstention_rate']:.3f}, certified accuracy "
          + ", ".join(f"{k}: {v:.3f}" for k, v in result["certified_accuracy"].items()))
  return 0


if __name__ == "__main__":
  cli.run(main)
