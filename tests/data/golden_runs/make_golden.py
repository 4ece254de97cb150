"""Writes the golden run folders that tests/test_golden_resume.py resumes (issue 35, "nothing a
user has breaks").

Each folder is what a user's interrupted run of that kind leaves on disk, written by the code of
the commit named in README.md, so that the test can prove that later code still resumes it:
accepts its settings file, reuses what is finished and completes the rest. The runs are tiny
(8×8 images, networks of a few thousand parameters, one or two steps per stage) so that the
test resumes all of them within seconds on a CPU.

    PYTHONPATH=<checkout> python tests/data/golden_runs/make_golden.py [--out DIR]

writes (next to this file by default; an existing OUT/<kind> is replaced, OUT/inputs is kept
when present, so remove it too to start afresh):

    inputs/data.npz          the tiny dataset every run uses (the folders fingerprint its arrays,
                             so it is checked in rather than regenerated)
    inputs/denoiser/         a random denoiser (`diffusion.save_denoiser`): certification's
                             --denoiser; the harnesses get it loaded (a path would be recorded
                             in their run.json, which a copied folder would then not match)
    certify/                 `pipeline.run_certification`: every chunk of votes, no reports
    transfer/                `benchmarks.run_benchmark`: trial 0 done, trial 1 crafted only
    from_scratch/            `benchmarks.from_scratch.run_benchmark`: both trials, no tables
    eclipse/                 `eclipse.run_eclipse`: every stage, no summary
    denoiser_training/       `diffusion.train_denoiser`: checkpointed at step 2 of 4

Two of them stop in the middle of their work (the resume computes a trial, two steps); the
other three stop after their last unit, before the reports: their resume then compiles nothing
(a unit that compiles a trainer costs about 10 s of CPU), yet it still proves that every
finished unit is recognized, since a unit not recognized would be recomputed.

The settings of each run are the functions below; the test imports this module for them, so
that it resumes every folder exactly as the command that wrote it would be run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from pathlib import Path

# As tests/conftest.py runs them: on the CPU (the certification folder records the platform).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402 (after the platform is set)

from jaxpoison import classifier, diffusion, eclipse, pipeline  # noqa: E402
from jaxpoison import benchmarks as pb  # noqa: E402
from jaxpoison.benchmarks import from_scratch as fs  # noqa: E402
from jaxpoison.data import DatasetSpec, make_dataset  # noqa: E402

HERE = Path(__file__).resolve().parent
SHAPE = (8, 8, 3)
SPEC = DatasetSpec("tiny8", SHAPE, 10)
KINDS = ("certify", "transfer", "from_scratch", "eclipse", "denoiser_training")


# --- inputs -------------------------------------------------------------------------------------

def make_data(seed: int = 0, per_class: int = 20, num_test: int = 40) -> dict[str, np.ndarray]:
  """Class-coloured noise (learnable, every class in both splits), uint8 8×8×3."""
  rng = np.random.default_rng(seed)
  colours = rng.uniform(40, 215, (10, 1, 1, 3))

  def split(n):
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = colours[labels] + rng.normal(0, 30, (n, *SHAPE))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int32)

  (x_train, y_train), (x_test, y_test) = split(10 * per_class), split(num_test)
  return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def load_dataset(root: Path = HERE):
  """The checked-in dataset, as every golden run saw it (`make_dataset`: int32 labels)."""
  with np.load(Path(root) / "inputs" / "data.npz") as data:
    return make_dataset(data["x_train"], data["y_train"], data["x_test"], data["y_test"],
                        spec=SPEC)


# The UNet of every denoiser here: one level of 4 channels on 2×2 patches (space-to-depth), no
# attention: 3,516 parameters in 64 arrays (the orbax checkpoints' size grows with both).
TINY_UNET = diffusion.UNetConfig(sample_size=8, block_out_channels=(4,), layers_per_block=1,
                                 attention_resolutions=(), mid_attention=False,
                                 norm_num_groups=4, patch_size=2)


def make_denoiser(seed: int = 7) -> diffusion.Denoiser:
  """Random weights from numpy (untrained: the folders record its fingerprint, which is all the
  resume checks; jax.random initialization would compile the PRNG for every shape)."""
  rng = np.random.default_rng(seed)
  params = {name: np.asarray(rng.normal(0.0, 0.05, s.shape), s.dtype)
            for name, s in diffusion.param_shapes(TINY_UNET).items()}
  return diffusion.Denoiser(params=params, unet=TINY_UNET, schedule=diffusion.linear_schedule())


def denoiser_path(root: Path = HERE) -> Path:
  return Path(root) / "inputs" / "denoiser"


def tiny_victim(**changes) -> classifier.TrainConfig:
  """The classifier of every run: tiny ResNet-18 (widths 4/8/8/8) on 8×8 images, one epoch."""
  return classifier.tiny_config("resnet18", **{"image_shape": SHAPE, "epochs": 1,
                                              "batch_size": 20, **changes})


# --- the runs' settings (the test imports these) ------------------------------------------------

# What run_certification writes after the votes (removed from the golden folder).
CERTIFY_REPORTS = ("summary.json", "certified_accuracy.png", "sigma_0.25/summary.json",
                   "sigma_0.25/certify.tsv", "sigma_0.25/counts.npz")


def certify_config(root: Path = HERE) -> pipeline.CertifyConfig:
  """As `scripts/certify.py --denoiser inputs/denoiser --sigma 0.25 --num_models 6 --n0 2
  --alpha 0.05 --num_test 20 --num_train 100 --models_per_step 2` runs a config file whose
  trainer is this TrainConfig (the data: `load_dataset`, 8×8 images, which only the library
  call accepts)."""
  return pipeline.CertifyConfig(
      sigmas=(0.25,), num_models=6, n0=2, alpha=0.05, seed=0, denoiser=str(denoiser_path(root)),
      trainer=tiny_victim(batch_size=50), models_per_step=2, num_test=20, num_train=100,
      denoise_batch_size=100)


def transfer_config() -> pb.BenchmarkConfig:
  return pb.BenchmarkConfig(
      attacks=("bullseye_polytope",), num_trials=2, sigmas=(0.0, 0.25), num_poisons=2,
      finetune_per_class=4, num_eval=20, victim=tiny_victim(), craft_steps=1,
      finetune=pb.FineTuneConfig(epochs=1, batch_size=20), trials_per_step=1,
      denoise_batch_size=40)


def from_scratch_config() -> fs.FromScratchConfig:
  return fs.FromScratchConfig(
      attacks=("witches_brew",), num_trials=2, sigmas=(0.0, 0.25), num_poisons=2,
      train_per_class=4, num_eval=20, victim=tiny_victim(), craft_steps=1, restarts=1,
      trials_per_step=1, denoise_batch_size=40)


def eclipse_config() -> eclipse.EclipseConfig:
  """configs/eclipse_cpu.py's shape (a learned-variance UNet, the hybrid loss) at toy size."""
  unet = dataclasses.replace(TINY_UNET, out_channels=6, timestep_scale=0.25)
  ddpm = eclipse.eclipse_ddpm_config(unet, batch_size=8, max_timestep=9, num_steps=2,
                                     steps_per_chunk=2, ema_decay=0.5)
  victim = eclipse.eclipse_victim_config(widths=(4, 8, 8, 8), epochs=1, batch_size=50,
                                         image_shape=SHAPE, compute_dtype="float32")
  return eclipse.EclipseConfig(poison="urp", ddpm=ddpm, victim=victim, sparse_size=8, t_star=10,
                               purify_chunk=64, purify_batch_size=64,
                               defenses=("none", "eclipse"))


def denoiser_train_config() -> diffusion.DenoiserTrainConfig:
  """As a config file for `scripts/train_denoiser.py` would give it (tests/test_diffusion_train's
  recipe); 4 steps in chunks of 2."""
  return diffusion.DenoiserTrainConfig(
      unet=TINY_UNET, schedule=diffusion.linear_schedule(), batch_size=4, learning_rate=1e-3,
      warmup_steps=2, ema_decay=0.9, loss_weight_exponent=0.4, lr_schedule="cosine",
      num_steps=4, steps_per_chunk=2, seed=0)


def denoiser_train_images(dataset) -> np.ndarray:
  return np.asarray(dataset.x_train[:16])


# --- writing the folders ------------------------------------------------------------------------

def _quiet(_line: str) -> None:
  pass


def make_certify(root: Path) -> None:
  """Every chunk of votes (models 0-1, 2-3, 4-5) and no reports: what killing the run after its
  last chunk, before the analysis, leaves."""
  out = root / "certify"
  pipeline.run_certification(certify_config(root), out, dataset=load_dataset(root),
                             progress=False)
  for report in CERTIFY_REPORTS:
    (out / report).unlink()


def make_transfer(root: Path) -> None:
  """Trial 0 finished (`stop_after=1`), trial 1's poisons crafted (`craft_all`) but not
  evaluated: what a crash while trial 1's victims fine-tune leaves."""
  config, out = transfer_config(), root / "transfer"
  dataset, denoiser = load_dataset(root), diffusion.load_denoiser(denoiser_path(root))
  pb.run_benchmark(config, dataset, out, denoiser=denoiser, stop_after=1, log=_quiet)
  assert pb.craft_all(config, dataset, out, log=_quiet) == 1


def make_from_scratch(root: Path) -> None:
  """Both trials recorded, no tables: what a kill after the last record leaves (the whole run,
  then table.md and table.csv removed)."""
  config, out = from_scratch_config(), root / "from_scratch"
  dataset, denoiser = load_dataset(root), diffusion.load_denoiser(denoiser_path(root))
  fs.run_benchmark(config, dataset, out, denoiser=denoiser, log=_quiet)
  for table in ("table.md", "table.csv"):
    (out / table).unlink()


def make_eclipse(root: Path) -> None:
  """Every stage done (DDPM, poisoned set, purified chunks, both victims), no summary: what a
  kill after the last victim record leaves (the whole run, then summary.json removed)."""
  out = root / "eclipse"
  eclipse.run_eclipse(eclipse_config(), load_dataset(root), out, say=_quiet)
  (out / "summary.json").unlink()


def make_denoiser_training(root: Path) -> None:
  """Stopped and checkpointed after its first chunk of 2 steps (`max_minutes=0`, as
  `scripts/train_denoiser.py --max_minutes 0` stops)."""
  diffusion.train_denoiser(denoiser_train_config(), denoiser_train_images(load_dataset(root)),
                           root / "denoiser_training", max_minutes=0, log=_quiet)


def make_inputs(root: Path) -> None:
  (root / "inputs").mkdir(parents=True, exist_ok=True)
  np.savez(root / "inputs" / "data.npz", **make_data())
  diffusion.save_denoiser(make_denoiser(), denoiser_path(root))


MAKERS = {"certify": make_certify, "transfer": make_transfer, "from_scratch": make_from_scratch,
          "eclipse": make_eclipse, "denoiser_training": make_denoiser_training}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default=str(HERE), help="where to write the folders")
  parser.add_argument("--only", nargs="*", choices=KINDS, default=KINDS,
                      help="write only these kinds (the inputs are kept when present)")
  args = parser.parse_args(argv)
  root = Path(args.out).absolute()
  if not (root / "inputs" / "data.npz").is_file():
    make_inputs(root)
  for kind in args.only:
    shutil.rmtree(root / kind, ignore_errors=True)
    MAKERS[kind](root)
    print(f"wrote {root / kind}")


if __name__ == "__main__":
  main()
