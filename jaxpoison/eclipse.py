"""ECLIPSE (Wang et al., ESORICS'24; code CGCL-codes/ECLIPSE): sparse diffusion purification
against indiscriminate ("unlearnable") poisons, end to end and resumable.

1. A sparse clean set D_s of B images (2,000 = 4% of CIFAR-10), enlarged by replication
   (`enlarge`: D_A = D_s ∪ M copies, M = 4; no augmentation: ECLIPSE Fig. 3 shows it hurts).
2. An improved DDPM trained from scratch on D_A (`eclipse_ddpm_config`: cosine schedule with
   T = 4000, learned variance with the hybrid loss λ = 0.001, EMA 0.9999, 250K steps).
3. Purification of the whole poisoned training set (`purify`): forward noise to t* = 100 of
   4000 and the ancestral reverse process with the learned variance back to 0, stored as uint8
   by truncation (the authors' ToPILImage).
4. Victim training with the lightweight corruption compensation (`compensation_config`): random
   grayscale (p = 0.4) and Gaussian noise (σ = 0.05) after crop and flip, fresh every step.

`run_eclipse` runs them as stages in one folder, each resumable (the DDPM by its own
checkpoints, purification chunk by chunk, victims one record each), beside the baselines named
in `DEFENSES` on the same poisoned set and victim keys.

Where the sparse set comes from: the authors draw it from the CIFAR-10 *test* split (their README:
"randomly selected 2000 test CIFAR-10 images"), so their test accuracy is measured partly on
the DDPM's own training images. The default here holds B images out of the *training* split
instead (they are neither poisoned nor trained on); `sparse_source="test"` reproduces the
authors' choice and says that it leaks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison import attacks, classifier, diffusion, runs
from jaxpoison.attacks import self_ensemble, unlearnable
from jaxpoison.defenses import adversarial_config, iss_grayscale, iss_jpeg
from jaxpoison.classifier import TrainConfig
from jaxpoison.data import Dataset
from jaxpoison.diffusion.train import DenoiserTrainConfig
from jaxpoison.io import atomic_save_npz, atomic_write_json

log = logging.getLogger(__name__)

SPARSE_SOURCES = ("heldout", "test")
ENLARGE_MODES = ("union", "copies")
# Trained on: the poisoned set ("none"); its purified copy with the compensation ("eclipse", the
# method); each half alone (ECLIPSE's Table 4 ablation: A = purification, B + C = compensation);
# ISS's JPEG and grayscale, and adversarial training (Table 1 baselines).
DEFENSES = ("none", "eclipse", "purification_only", "compensation_only", "iss_jpeg",
            "iss_grayscale", "adversarial_training")
POISONS = ("none", *attacks.DATA_POISONS, *attacks.TRAINED_POISONS)
ECLIPSE_T_STAR = 100  # of T = 4000 (ECLIPSE §4.1; purification.py)

# Stream tags for fold_in: every random choice of a run derives from (seed, tag[, index]).
_SPARSE, _POISON, _PURIFY, _VICTIM = 1, 2, 3, 4


def eclipse_ddpm_config(unet: diffusion.UNetConfig | None = None, **changes
                        ) -> DenoiserTrainConfig:
  """The sparse DDPM's training as ECLIPSE runs it (configs/cifar10.yml, improved_diff_utils):
  improved-diffusion's CIFAR-10 UNet (128 channels, 3 blocks, attention at 16 and 8, learned
  variance) with dropout 0 (ECLIPSE's config leaves improved-diffusion's default; its own CIFAR
  recipe uses 0.3), cosine T = 4000, hybrid loss λ = 0.001, t uniform over every step, EMA
  0.9999, 250K steps; optimizer, rate and batch are improved-diffusion's defaults (AdamW lr 1e-4,
  no weight decay, batch 128, no warm-up, no gradient clipping, no flips)."""
  defaults = dict(
      unet=unet or diffusion.improved_diffusion_cifar10_config(learn_sigma=True, dropout=0.0),
      schedule=diffusion.cosine_schedule(4000), batch_size=128, learning_rate=1e-4,
      warmup_steps=0, weight_decay=0.0, grad_clip=float("inf"), ema_decay=0.9999,
      min_timestep=0, max_timestep=3999, random_flip=False, vlb_weight=0.001,
      num_steps=250_000)
  defaults.update(changes)
  return DenoiserTrainConfig(**defaults)


def eclipse_victim_config(model: str = "resnet18", **changes) -> TrainConfig:
  """ECLIPSE's victim training (train.py): SGD momentum 0.9, lr 0.1, batch 128, 80 epochs, no
  schedule and no weight decay (the code has neither; the paper is silent), random crop with
  4-pixel zero padding and flip, plain cross-entropy."""
  defaults = dict(epochs=80, batch_size=128, lr=0.1, momentum=0.9, nesterov=False,
                  weight_decay=0.0, schedule="constant", label_smoothing=0.0, flip="random",
                  translate=4, pad_mode="zeros")
  if model != "resnet18":
    defaults["model"] = model
    defaults["widths"] = classifier.airbench94_config().widths
  defaults.update(changes)
  return classifier.resnet18_config(**defaults)


def compensation_config(train_config: TrainConfig, *, grayscale_prob: float = 0.4,
                        noise_std: float = 0.05) -> TrainConfig:
  """`train_config` with ECLIPSE's lightweight corruption compensation (eq. 13; train.py's
  `--pure` transform): after crop and flip, grayscale with probability p, then N(0, σ²) on
  every pixel, clipped to [0, 1] and truncated to grey levels, fresh at every step."""
  return dataclasses.replace(train_config, grayscale_prob=float(grayscale_prob),
                             noise="gaussian" if noise_std else "none",
                             noise_scale=float(noise_std), noise_quantize=bool(noise_std))


def sparse_indices(num_images: int, size: int, key) -> np.ndarray:
  """`size` distinct indices below num_images, sorted, drawn from `key`."""
  if not 0 < size <= num_images:
    raise ValueError(f"sparse set size: expected 1..{num_images}, got {size}")
  return np.sort(np.asarray(jax.random.permutation(key, num_images))[:size])


def enlarge(images: np.ndarray, replication: int, mode: str = "union") -> np.ndarray:
  """D_A from D_s by replication (ECLIPSE eq. 3): "union" D_s plus `replication` copies
  ((M+1)·B images, Alg. 1 lines 1-4) or "copies" (M·B, the size the authors' checkpoint name
  `ps8000` suggests). Replication changes only the epoch boundaries of a shuffled loader."""
  if mode not in ENLARGE_MODES:
    raise ValueError(f"enlarge mode: expected one of {ENLARGE_MODES}, got {mode!r}")
  if replication < 0 or (mode == "copies" and replication < 1):
    raise ValueError(f"replication: expected >= {1 if mode == 'copies' else 0}, got "
                     f"{replication}")
  copies = replication + 1 if mode == "union" else replication
  return np.concatenate([images] * copies)


def purify(denoiser: diffusion.Denoiser, images, key, *, t_star: int = ECLIPSE_T_STAR,
           batch_size: int = 256, loop: str = "auto", compute_dtype=jnp.float32) -> jax.Array:
  """ECLIPSE's purification of uint8 images [N, H, W, C]: x_t = √ᾱ·x + √(1−ᾱ)·ε at the t*-th
  step (ᾱ[t* − 1], 0-based), then every reverse step down to 0 with the learned variance (when
  the UNet has it), x̂₀ clipped, stored by truncation to uint8. Image i's noise comes from
  fold_in(key, i). loop and compute_dtype: `diffusion.denoise_multistep`'s (the authors run
  float32)."""
  if not 1 <= int(t_star) <= denoiser.schedule.num_timesteps:
    raise ValueError(f"t_star: expected 1..{denoiser.schedule.num_timesteps}, got {t_star}")
  return diffusion.denoise_multistep(
      denoiser, images, None, key, start_timestep=int(t_star) - 1, num_steps=None,
      variance="auto", rounding="floor", batch_size=batch_size, loop=loop,
      compute_dtype=compute_dtype)


@dataclasses.dataclass(frozen=True)
class EclipseConfig:
  """One ECLIPSE run (`run_eclipse`).

  Attributes:
    poison: the indiscriminate poison applied to every training image: "none", the
      data-generated "urp", "lsp", "ar" (`jaxpoison.attacks.INDISCRIMINATE_POISONS`) or the
      trained "em", "tap", "rem", "efp" (`jaxpoison.attacks.unlearnable`) and "sep"
      (`jaxpoison.attacks.self_ensemble`), each with its reference's defaults (ℓ∞ 8/255; LSP
      and AR ℓ2 1.0).
    poison_settings: changes to the poison's config (e.g. {"max_rounds": 20} for EM).
    poison_surrogate: changes to the trained poisons' surrogate recipe (EM's and REM's own,
      TAP's clean "conservative" one, SEP's protecting network, EFP's adversarially trained
      reference: `efp_reference_config`, whose `epochs` also scales its milestones), e.g.
      smaller widths for a CPU run.
    defenses: which trainings to run on the poisoned set (`DEFENSES`).
    sparse_size: B; sparse_source: "heldout" (from the training split, removed from it) or
      "test" (the authors' choice; leaks into test accuracy).
    replication, enlarge_mode: D_A (`enlarge`).
    ddpm: the sparse DDPM's training (`eclipse_ddpm_config`).
    t_star: purification's start step (of the DDPM's T).
    victim: the victims' training (`eclipse_victim_config`).
    grayscale_prob, noise_std: the compensation.
    num_victims: victims per defense (keys shared across defenses: paired comparisons).
    num_train, num_test: fixed random subsets (None: all), for reduced runs.
    purify_chunk: images per stored purification chunk (the unit of resumption).
    purify_batch_size: images per reverse-process batch (memory only).
    seed: every random choice (sparse set, poison, purification noise, victims).
  """
  poison: str = "lsp"
  poison_settings: dict = dataclasses.field(default_factory=dict)
  poison_surrogate: dict = dataclasses.field(default_factory=dict)
  defenses: tuple[str, ...] = ("none", "eclipse")
  sparse_size: int = 2000
  sparse_source: str = "heldout"
  replication: int = 4
  enlarge_mode: str = "union"
  ddpm: DenoiserTrainConfig = dataclasses.field(default_factory=eclipse_ddpm_config)
  t_star: int = ECLIPSE_T_STAR
  victim: TrainConfig = dataclasses.field(default_factory=eclipse_victim_config)
  grayscale_prob: float = 0.4
  noise_std: float = 0.05
  num_victims: int = 1
  num_train: int | None = None
  num_test: int | None = None
  purify_chunk: int = 2048
  purify_batch_size: int = 256
  seed: int = 0

  def validate(self) -> "EclipseConfig":
    object.__setattr__(self, "defenses", tuple(self.defenses))
    checks = (
        (self.poison in POISONS, f"poison: expected one of {POISONS}, got {self.poison!r}"),
        (bool(self.defenses) and all(d in DEFENSES for d in self.defenses)
         and len(set(self.defenses)) == len(self.defenses),
         f"defenses: expected distinct names from {DEFENSES}, got {self.defenses}"),
        (self.sparse_source in SPARSE_SOURCES,
         f"sparse_source: expected one of {SPARSE_SOURCES}, got {self.sparse_source!r}"),
        (self.enlarge_mode in ENLARGE_MODES,
         f"enlarge_mode: expected one of {ENLARGE_MODES}, got {self.enlarge_mode!r}"),
        (self.sparse_size >= 1, f"sparse_size: expected >= 1, got {self.sparse_size}"),
        (1 <= self.t_star <= self.ddpm.schedule.num_timesteps,
         f"t_star: expected 1..{self.ddpm.schedule.num_timesteps}, got {self.t_star}"),
        (self.ddpm.timestep_range()[1] >= self.t_star - 1,
         f"t_star {self.t_star}: the DDPM trains steps up to {self.ddpm.timestep_range()[1]}, "
         f"purification needs up to {self.t_star - 1}"),
        (self.num_victims >= 1, f"num_victims: expected >= 1, got {self.num_victims}"),
        (self.purify_chunk >= 1 and self.purify_batch_size >= 1,
         "purify_chunk, purify_batch_size: expected >= 1"),
        (0 <= self.grayscale_prob <= 1 and 0 <= self.noise_std <= 1,
         f"grayscale_prob, noise_std: expected in [0, 1], got {self.grayscale_prob}, "
         f"{self.noise_std}"),
    )
    for ok, message in checks:
      if not ok:
        raise ValueError(f"EclipseConfig.{message}")
    return self


@dataclasses.dataclass(frozen=True)
class EclipseData:
  """The run's split: the sparse clean set, the training set to poison, the test set."""
  sparse: np.ndarray
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def split(dataset: Dataset, config: EclipseConfig) -> EclipseData:
  """Subsets (num_train/num_test) then the sparse set: held out of the training split, or drawn
  from the test split (which then keeps it: the authors' leak, warned about)."""
  key = jax.random.fold_in(jax.random.key(config.seed), _SPARSE)
  x_train, y_train = np.asarray(dataset.x_train), np.asarray(dataset.y_train)
  x_test, y_test = np.asarray(dataset.x_test), np.asarray(dataset.y_test)
  if config.num_train is not None and config.num_train < len(x_train):
    keep = sparse_indices(len(x_train), config.num_train, jax.random.fold_in(key, 0))
    x_train, y_train = x_train[keep], y_train[keep]
  if config.num_test is not None and config.num_test < len(x_test):
    keep = sparse_indices(len(x_test), config.num_test, jax.random.fold_in(key, 1))
    x_test, y_test = x_test[keep], y_test[keep]
  if config.sparse_source == "test":
    warnings.warn("ECLIPSE: the sparse clean set comes from the test split (the authors' "
                  "choice); test accuracy is then measured partly on the DDPM's training "
                  "images", stacklevel=2)
    chosen = sparse_indices(len(x_test), config.sparse_size, jax.random.fold_in(key, 2))
    return EclipseData(x_test[chosen], x_train, y_train, x_test, y_test)
  if config.sparse_size >= len(x_train):
    raise ValueError(f"sparse_size {config.sparse_size}: the training split has only "
                     f"{len(x_train)} images to hold it out of")
  chosen = sparse_indices(len(x_train), config.sparse_size, jax.random.fold_in(key, 2))
  rest = np.setdiff1d(np.arange(len(x_train)), chosen)
  return EclipseData(x_train[chosen], x_train[rest], y_train[rest], x_test, y_test)


def poison_training_set(data: EclipseData, config: EclipseConfig, num_classes: int) -> np.ndarray:
  """Every training image poisoned by config.poison (its reference's defaults changed by
  config.poison_settings; trained poisons craft against surrogates trained here), uint8."""
  if config.poison == "none":
    return data.x_train
  key = jax.random.fold_in(jax.random.key(config.seed), _POISON)
  settings = dict(config.poison_settings, num_classes=num_classes)
  surrogate = dict(config.poison_surrogate, num_classes=num_classes,
                   image_shape=tuple(data.x_train.shape[1:]))
  if attacks.attack_kind(config.poison) == attacks.INDISCRIMINATE:
    poison_config = attacks.get_attack(config.poison).config_type(**settings)
    return attacks.run(config.poison, key, data.x_train, data.y_train, poison_config).poisons
  # The trained poisons: each crafts against its reference's surrogate, trained here.
  if config.poison == "em":
    return attacks.run("em", key, data.x_train, data.y_train, unlearnable.EMConfig(**settings),
                       train_config=unlearnable.em_surrogate_config(**surrogate)).poisons
  if config.poison == "rem":
    return attacks.run("rem", key, data.x_train, data.y_train, unlearnable.REMConfig(**settings),
                       train_config=unlearnable.rem_surrogate_config(**surrogate)).poisons
  if config.poison == "efp":
    # The adversarially trained reference model, then every image's feature pushed off its class.
    reference = classifier.train_models(
        jax.random.fold_in(key, 0)[None], data.x_train, data.y_train,
        unlearnable.efp_reference_config(**surrogate))
    return attacks.run("efp", jax.random.fold_in(key, 1), reference, data.x_train, data.y_train,
                       unlearnable.EFPConfig(**settings)).poisons
  if config.poison == "sep":
    sep_config = self_ensemble.SEPConfig(**settings)
    checkpoints = self_ensemble.train_checkpoints(
        jax.random.fold_in(key, 0), data.x_train, data.y_train,
        self_ensemble.sep_surrogate_config(**surrogate), sep_config.num_checkpoints)
    return attacks.run("sep", jax.random.fold_in(key, 1), checkpoints, data.x_train,
                       data.y_train, sep_config).poisons
  # TAP: a surrogate trained on the clean set with the gradient-matching "conservative" recipe
  # (the reference's default), then every image pushed towards the next class.
  models = classifier.train_models(jax.random.fold_in(key, 0)[None], data.x_train, data.y_train,
                                   classifier.conservative_config(**surrogate))
  return attacks.run("tap", jax.random.fold_in(key, 1), classifier.gradient_model(models, 0),
                     data.x_train, data.y_train, unlearnable.TAPConfig(**settings)).poisons


def defense_training(defense: str, config: EclipseConfig
                     ) -> tuple[str, Callable[[np.ndarray], np.ndarray] | None, TrainConfig]:
  """(which images: "poisoned" or "purified"; a transform of them or None; the TrainConfig)."""
  compensated = compensation_config(config.victim, grayscale_prob=config.grayscale_prob,
                                    noise_std=config.noise_std)
  # AT as ECLIPSE's baseline (Tao et al. 2021; its settings unspecified there): PGD at the
  # poisons' own budget, 8/255, with Madry's CIFAR-10 steps (10 of 2/255).
  adversarial = adversarial_config(config.victim, epsilon=8 / 255, steps=10, step_size=2 / 255)
  return {
      "none": ("poisoned", None, config.victim),
      "eclipse": ("purified", None, compensated),
      "purification_only": ("purified", None, config.victim),
      "compensation_only": ("poisoned", None, compensated),
      "iss_jpeg": ("poisoned", iss_jpeg, config.victim),
      "iss_grayscale": ("poisoned", iss_grayscale, config.victim),
      "adversarial_training": ("poisoned", None, adversarial),
  }[defense]


def _settings(config: EclipseConfig, dataset: Dataset) -> dict:
  settings = runs.config_json(config)
  settings["data"] = runs.fingerprint_arrays([dataset.x_train, dataset.y_train, dataset.x_test,
                                              dataset.y_test], length=16)
  # Defenses and victims extend a run; they do not change what is on disk.
  for key in ("defenses", "num_victims"):
    settings.pop(key)
  return settings


def _purify_all(denoiser, images, config: EclipseConfig, directory: Path, say) -> np.ndarray:
  """Purifies `images` chunk by chunk into `directory` (one npz per chunk, resumable)."""
  directory.mkdir(parents=True, exist_ok=True)
  chunks = range(math.ceil(len(images) / config.purify_chunk))
  files = [directory / f"chunk_{c:05d}.npz" for c in chunks]
  todo = [c for c in chunks if not files[c].exists()]
  progress = runs.Progress(len(files), done=len(files) - len(todo), unit="chunks", log=say)
  key = jax.random.fold_in(jax.random.key(config.seed), _PURIFY)
  for c in todo:
    part = images[c * config.purify_chunk:(c + 1) * config.purify_chunk]
    started = time.perf_counter()
    out = purify(denoiser, part, jax.random.fold_in(key, c), t_star=config.t_star,
                 batch_size=config.purify_batch_size)
    atomic_save_npz(files[c], images=np.asarray(out))
    progress.update(1, f"purified chunk {c} ({len(part)} images, "
                    f"{time.perf_counter() - started:.1f} s)")
  return np.concatenate([np.load(f)["images"] for f in files])


def run_eclipse(config: EclipseConfig, dataset: Dataset, out: str | os.PathLike, *,
                denoiser: diffusion.Denoiser | None = None,
                ddpm_max_minutes: float | None = None, say: Callable[[str], None] = print
                ) -> dict:
  """Runs (or resumes) every stage; returns the summary (also in OUT/summary.json).

  Stages in `out`: settings.json (refuses another config), ddpm/ (`train_denoiser`'s
  resumable run; skipped when `denoiser` is given), poisoned.npz, purified/chunk_*.npz,
  victims/<defense>_<i>.json. With ddpm_max_minutes the DDPM trains at most that long per call;
  an unfinished DDPM ends the call (rerun to continue) with summary["stage"] = "ddpm".
  """
  config = config.validate()
  out = runs.claim(out, _settings(config, dataset), what="an ECLIPSE run folder").path
  data = split(dataset, config)
  say(f"ECLIPSE: poison {config.poison}; sparse set {len(data.sparse)} images "
      f"({config.sparse_source}), {len(data.x_train)} training, {len(data.x_test)} test")
  needs_purified = any(defense_training(d, config)[0] == "purified" for d in config.defenses)

  if needs_purified and denoiser is None:
    ddpm_dir = out / "ddpm"
    enlarged = enlarge(data.sparse, config.replication, config.enlarge_mode)
    denoiser = diffusion.train_denoiser(config.ddpm, enlarged, ddpm_dir,
                                        max_minutes=ddpm_max_minutes, log=say)
    steps = diffusion.read_denoiser_config(ddpm_dir / "ema")[2].get("train_steps", 0)
    if steps < config.ddpm.num_steps:
      say(f"DDPM at step {steps}/{config.ddpm.num_steps}; rerun to continue")
      return {"stage": "ddpm", "ddpm_steps": steps}

  poisoned_file = out / "poisoned.npz"
  if poisoned_file.exists():
    poisoned = np.load(poisoned_file)["images"]
  else:
    poisoned = poison_training_set(data, config, dataset.num_classes)
    atomic_save_npz(poisoned_file, images=poisoned)
  images = {"poisoned": poisoned}
  if needs_purified:
    images["purified"] = _purify_all(denoiser, poisoned, config, out / "purified", say)

  victims_dir = out / "victims"
  victims_dir.mkdir(exist_ok=True)
  total = len(config.defenses) * config.num_victims
  files = {(d, v): victims_dir / f"{d}_{v}.json" for d in config.defenses
           for v in range(config.num_victims)}
  progress = runs.Progress(total, done=sum(f.exists() for f in files.values()), unit="victims",
                           log=say)
  victim_key = jax.random.fold_in(jax.random.key(config.seed), _VICTIM)
  for (defense, v), file in files.items():
    if file.exists():
      continue
    which, transform, train_config = defense_training(defense, config)
    train_images = images[which] if transform is None else transform(images[which])
    started = time.perf_counter()
    models = classifier.train_models(jax.random.fold_in(victim_key, v)[None], train_images,
                                     data.y_train, train_config)
    accuracy = float(classifier.evaluate(models, data.x_test, data.y_test)[0])
    atomic_write_json(file, {"defense": defense, "victim": v, "test_accuracy": accuracy,
                             "train_seconds": time.perf_counter() - started})
    progress.update(1, f"{defense} victim {v}: test accuracy {accuracy:.4f}")

  table = {}
  for defense in config.defenses:
    accuracies = [json.loads(files[(defense, v)].read_text())["test_accuracy"]
                  for v in range(config.num_victims)]
    table[defense] = {"test_accuracy_mean": float(np.mean(accuracies)),
                      "test_accuracy": accuracies}
  summary = {"stage": "done", "poison": config.poison, "defenses": table,
             "num_train": len(data.x_train), "num_test": len(data.x_test),
             "sparse_size": len(data.sparse), "sparse_source": config.sparse_source}
  if "purified" in images:
    summary["purification"] = purification_residual(data.x_train, poisoned, images["purified"])
  atomic_write_json(out / "summary.json", summary)
  return summary


def purification_residual(clean, poisoned, purified) -> dict:
  """What purification left of the poison, over uint8 images [N, H, W, C]:
  `poison_residual`, the mean over poisoned images of ⟨u − x, p − x⟩ / ‖p − x‖² (x clean, p
  poisoned, u purified: 1 keeps the perturbation whole along its direction, 0 removes it; images
  the poison left unchanged are skipped), and the PSNRs (dB, peak 255) of the poisoned and the
  purified images against the clean ones (purification also changes clean content)."""
  x, p, u = (np.asarray(a, np.float64).reshape(len(clean), -1) for a in (clean, poisoned, purified))
  delta = p - x
  energy = np.sum(delta * delta, axis=1)
  touched = energy > 0
  residual = (float(np.mean(np.sum((u - x) * delta, axis=1)[touched] / energy[touched]))
              if touched.any() else None)

  def psnr(a):
    mse = float(np.mean(np.square(a - x)))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))

  return {"poison_residual": residual, "psnr_poisoned_db": psnr(p), "psnr_purified_db": psnr(u)}


def render_summary(summary: dict) -> str:
  """The summary as a markdown table: defense, mean test accuracy, per victim."""
  lines = [f"| defense ({summary['poison']}) | test accuracy | victims |", "|---|---|---|"]
  for defense, row in summary["defenses"].items():
    lines.append(f"| {defense} | {100 * row['test_accuracy_mean']:.2f}% | "
                 + ", ".join(f"{100 * a:.2f}" for a in row["test_accuracy"]) + " |")
  return "\n".join(lines)


# The paper's CIFAR-10 cells (ECLIPSE, ESORICS'24; ../shared/specs/round2.md §6.10): test
# accuracy (%) of ResNet-18 victims. Table 1: defense × poison; Table 4: the ablation (A =
# purification, B = grayscale, C = noise); Table 3: clean training data.
PAPER_POISON_COLUMNS = ("em", "tap", "rem", "sep", "efp", "urp", "lsp", "ar")
PAPER_TABLE1_RESNET18 = {
    "none": (17.58, 26.16, 27.34, 9.01, 86.64, 16.80, 24.48, 10.59),
    "iss_grayscale": (88.42, 21.88, 65.29, 7.57, 86.54, 60.64, 65.89, 38.64),
    "adversarial_training": (68.31, 82.46, 60.80, 63.23, 71.46, 85.63, 81.94, 84.04),
    "iss_jpeg": (78.35, 80.77, 81.54, 80.93, 70.54, 81.27, 79.55, 81.39),
    "eclipse": (82.80, 86.13, 82.72, 82.85, 77.20, 86.98, 84.58, 87.32),
    # Table 4's rows for the ablation defenses (A and B+C).
    "purification_only": (27.45, 86.63, 35.74, 44.97, 75.90, 86.86, 39.93, 83.98),
    "compensation_only": (78.82, 83.32, 75.51, 14.66, 81.62, 88.87, 80.08, 60.96),
}
PAPER_TABLE3_RESNET18_CLEAN = {"none": 94.95, "adversarial_training": 89.57, "iss_jpeg": 85.23,
                               "eclipse": 90.43}
DEFENSE_LABELS = {"none": "w/o", "eclipse": "ECLIPSE (A+B+C)", "purification_only": "A",
                  "compensation_only": "B+C", "iss_jpeg": "ISS-J", "iss_grayscale": "ISS-G",
                  "adversarial_training": "AT"}


def render_table(summaries: list[dict]) -> str:
  """ECLIPSE's Table 1 (ResNet-18 columns, with Table 4's ablation rows and Table 3's clean
  column) from finished runs' summaries (`run_eclipse`, one per poison): a row per defense, a
  column per poison that was run, each cell "measured (paper)" in % — mean over victims — and
  "—" for what was not run. Poison "none" fills the clean column. A last row gives the share of
  each poison that purification left (`purification_residual`), where runs recorded it."""
  by_poison, residuals = {}, {}
  for summary in summaries:
    if summary.get("stage") != "done":
      raise ValueError(f"render_table: a run is unfinished (stage {summary.get('stage')!r})")
    if summary["poison"] in by_poison:
      raise ValueError(f"render_table: two runs of poison {summary['poison']!r}")
    by_poison[summary["poison"]] = summary["defenses"]
    if summary.get("purification", {}).get("poison_residual") is not None:
      residuals[summary["poison"]] = summary["purification"]["poison_residual"]
  poisons = [p for p in POISONS if p in by_poison and p != "none"]
  columns = poisons + (["none"] if "none" in by_poison else [])
  ran = [d for d in DEFENSES if any(d in by_poison[p] for p in columns)]

  def paper(defense, poison):
    if poison == "none":
      return PAPER_TABLE3_RESNET18_CLEAN.get(defense)
    row = PAPER_TABLE1_RESNET18.get(defense)
    return row[PAPER_POISON_COLUMNS.index(poison)] if row and poison in PAPER_POISON_COLUMNS else None

  header = ["defense"] + [p.upper() if p != "none" else "clean" for p in columns]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for defense in ran:
    cells = [DEFENSE_LABELS[defense]]
    for poison in columns:
      row = by_poison[poison].get(defense)
      reference = paper(defense, poison)
      measured = "—" if row is None else f"{100 * row['test_accuracy_mean']:.1f}"
      cells.append(measured + ("" if reference is None else f" ({reference:.2f})"))
    lines.append("| " + " | ".join(cells) + " |")
  if residuals:
    lines.append("| poison left by purification | " + " | ".join(
        f"{residuals[p]:.2f}" if p in residuals else "—" for p in columns) + " |")
  return "\n".join(lines)
