"""The GPU check: one run that measures what the fast path's open questions hinge on.

Stages, in the order they run (a deadline skips whatever no longer fits, and says so):

1. denoise: single-step denoising img/s of a random-init UNet (google/ddpm-cifar10-32's 35.7M
   layout; the dry run a tiny one) at several batch sizes, float32 and bfloat16, XLA's attention
   and cuDNN's fused kernel (bf16 only; where cuDNN's rules allow).
2. trainer: ms per step and seconds per model of the trainer (airbench94 at full width, batch
   1024) for `sequential` (a lax.map over models) against `vmap` at M = 1, 4, 16; the
   full-run time per model is extrapolated to airbench94's step count on 50,000 images.
3. planner: what `pipeline.choose_models_per_step` picks for each concurrency, with the
   denoising program's footprint.
4. accuracy: one full airbench94 run of 4 models on the training set, test accuracy with TTA
   (needs --data; target ≥ 90.8% on the JPEG-q75 copy, ≥ 93.9% on the original CIFAR-10).
5. certify: one end-to-end certification chunk (`pipeline.run_certification`): s/model and its
   split into denoising, training + prediction and host time.
6. peers: diffusers' UNet2DModel on the same GPU (bf16 eager and torch.compile) where PyTorch
   with CUDA and diffusers are importable; otherwise the reason it was skipped.
7. eclipse: ECLIPSE's purification (t* = 100 of the cosine T = 4000, learned variance: 100 UNet
   calls per image) at the paper's UNet size, images per second for the one-program loop
   (`scan`) and the host loop, float32 and bfloat16, beside the authors' PyTorch loop on the
   same GPU, weights, images and noise where PyTorch with CUDA is importable
   (`benchmarks.purification_speed`).
8. denoiser_training: ms per step of the embedded denoiser's training recipe (batch 64, the
   σ-weighted loss, AdamW, EMA; one scanned chunk) for the shipped UNet and the candidate at
   double width (configs/default_denoiser_wide.py), and the minutes their 24,000 steps take:
   what training the next default on this GPU costs (issue 13; 9–10 h on 2 CPU cores).

Every stage's figures go to one JSON-able dict; `markdown(results)` renders the block for
BENCHMARKS.md. `dry_run=True` runs every stage at toy sizes (a CPU test runs it).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison import classifier, diffusion, pipeline

# airbench94's steps on 50,000 images: ceil(9.9 × (50000 // 1024)).
AIRBENCH_FULL_STEPS = math.ceil(9.9 * (50_000 // 1024))


@dataclasses.dataclass(frozen=True)
class CheckSizes:
  """What each stage runs; `full()` on a GPU, `dry()` at toy sizes on a CPU."""
  unet: diffusion.UNetConfig
  denoise_batches: tuple[int, ...]
  denoise_repeats: int
  trainer: classifier.TrainConfig
  trainer_models: tuple[int, ...]
  trainer_steps: int
  accuracy_models: int
  accuracy_trainer: classifier.TrainConfig
  certify_trainer: classifier.TrainConfig
  certify_num_train: int
  certify_models: int
  peer_batch: int
  eclipse_unet: diffusion.UNetConfig
  eclipse_batch: int
  eclipse_t_star: int
  denoiser_unets: tuple[tuple[str, diffusion.UNetConfig], ...]
  denoiser_train_steps: int

  @classmethod
  def full(cls) -> "CheckSizes":
    trainer = classifier.airbench94_config()
    return cls(unet=diffusion.ddpm_cifar10_config(), denoise_batches=(500, 1000, 2048),
               denoise_repeats=3, trainer=trainer, trainer_models=(1, 4, 16), trainer_steps=10,
               accuracy_models=4, accuracy_trainer=trainer, certify_trainer=trainer,
               # Two chunks of 8 (the first compiles): about 2.5 min on an H100, within budget.
               certify_num_train=50_000, certify_models=8, peer_batch=1000,
               eclipse_unet=eclipse_paper_size_unet(), eclipse_batch=500, eclipse_t_star=100,
               denoiser_unets=default_denoiser_unets(), denoiser_train_steps=50)

  @classmethod
  def dry(cls) -> "CheckSizes":
    unet = diffusion.UNetConfig(block_out_channels=(8, 16), layers_per_block=1,
                                attention_resolutions=(16,), norm_num_groups=4)
    trainer = classifier.tiny_config(batch_size=32, epochs=1, whitening_images=64)
    # One size per stage: every code path runs, each compiled once (a CPU test runs this).
    return cls(unet=unet, denoise_batches=(8,), denoise_repeats=1, trainer=trainer,
               trainer_models=(2,), trainer_steps=2, accuracy_models=2,
               accuracy_trainer=classifier.tiny_config(batch_size=32, epochs=1,
                                                       whitening_images=64),
               certify_trainer=classifier.tiny_config(batch_size=32, epochs=1,
                                                      whitening_images=64),
               certify_num_train=128, certify_models=3, peer_batch=4,
               eclipse_unet=dataclasses.replace(unet, out_channels=6, attention_resolutions=(),
                                                mid_attention=False, scale_shift_norm=True),
               eclipse_batch=4, eclipse_t_star=5,
               denoiser_unets=(("tiny", unet),), denoiser_train_steps=2)


# configs/default_denoiser_wide.py's widths: the shipped UNet's first three levels doubled.
WIDE_DENOISER_CHANNELS = (32, 64, 128, 128)
# The embedded default's recipe (configs/default_denoiser.py).
DENOISER_TRAIN_BATCH = 64
DENOISER_TRAIN_STEPS = 24_000


def default_denoiser_unets() -> tuple[tuple[str, diffusion.UNetConfig], ...]:
  """The shipped default's UNet (as recorded with its weights) and the double-width candidate."""
  shipped = diffusion.default_denoiser().unet
  return (("shipped default", shipped),
          ("double width", dataclasses.replace(shipped,
                                               block_out_channels=WIDE_DENOISER_CHANNELS)))


def eclipse_paper_size_unet() -> diffusion.UNetConfig:
  """ECLIPSE's UNet (improved-diffusion's CIFAR-10 model: 128 channels, multipliers 1/2/2/2,
  3 blocks per level, attention at 16 and 8 with 4 heads, FiLM, learned variance) in the
  diffusers layout, which PyTorch's diffusers builds too: the same operations and size (the
  layouts differ in parameter naming and the attention's projection packing), so the two loops
  can be timed on the same weights."""
  return diffusion.UNetConfig(
      out_channels=6, block_out_channels=(128, 256, 256, 256), layers_per_block=3,
      attention_resolutions=(16, 8), norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True,
      freq_shift=0.0, attention_head_dim=64, mid_attention=True, scale_shift_norm=True,
      timestep_scale=1000.0 / 4000.0)


class Deadline:
  """Seconds left of the run's budget; stages skip what would start too late."""

  def __init__(self, seconds: float):
    self.end = time.perf_counter() + seconds

  def left(self) -> float:
    return self.end - time.perf_counter()

  def allows(self, needed: float) -> bool:
    return self.left() > needed


def timed(fn: Callable, *args, repeats: int = 3) -> tuple[float, float]:
  """(first call incl. compilation, best of `repeats` further calls), seconds, synchronized."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  best = math.inf
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return first, best


def environment() -> dict:
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  return {"jax": jax.__version__, "backend": jax.default_backend(),
          "device_kind": device.device_kind, "device_count": jax.device_count(),
          "memory_gib": round(stats.get("bytes_limit", 0) / 2**30, 1) or None,
          "host": platform.node()}


def _images(rng, n: int, shape=(32, 32, 3)) -> np.ndarray:
  return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def _head_dim(unet: diffusion.UNetConfig) -> int:
  """Head dim of the first attention layer (down blocks, else the middle block)."""
  levels = [i for i in range(len(unet.block_out_channels)) if unet.level_has_attention(i)]
  channels = unet.block_out_channels[levels[0] if levels else -1]
  return channels // unet.heads(channels)


def denoise_stage(sizes: CheckSizes, deadline: Deadline, rng) -> list[dict]:
  """img/s of noise_and_denoise per (dtype, attention, batch)."""
  den = diffusion.create_denoiser(sizes.unet, diffusion.linear_schedule(), jax.random.key(0))
  rows = []
  for dtype in ("float32", "bfloat16"):
    for attention in ("xla", "cudnn"):
      head_dim = _head_dim(sizes.unet)
      try:
        diffusion.attention_implementation(attention, head_dim, jnp.dtype(dtype))
      except ValueError as e:
        rows.append({"dtype": dtype, "attention": attention, "skipped": str(e)})
        continue
      for batch in sizes.denoise_batches:
        if not deadline.allows(30):
          rows.append({"dtype": dtype, "attention": attention, "batch": batch,
                       "skipped": "out of time"})
          continue
        images = jax.device_put(_images(rng, batch))
        fn = jax.jit(lambda d, x, k, _dt=dtype, _at=attention, _b=batch:
                     diffusion.noise_and_denoise(d, x, 0.25, k, batch_size=_b,
                                                 compute_dtype=jnp.dtype(_dt), attention=_at,
                                                 allow_untrained_sigma=True))
        first, best = timed(fn, den, images, jax.random.key(1), repeats=sizes.denoise_repeats)
        rows.append({"dtype": dtype, "attention": attention, "batch": batch,
                     "img_per_s": batch / best, "compile_s": first - best})
  return rows


def trainer_stage(sizes: CheckSizes, deadline: Deadline, rng) -> list[dict]:
  """ms per step and s per model, sequential against vmap, at each M."""
  config = dataclasses.replace(sizes.trainer, loop="scan")
  num_train = config.batch_size * sizes.trainer_steps
  config = dataclasses.replace(config, epochs=1.0)
  images = jax.device_put(_images(rng, num_train, config.image_shape))
  labels = jax.device_put(rng.integers(0, config.num_classes, num_train).astype(np.int32))
  train_fn = classifier.make_train_fn(config)
  steps = classifier.total_steps(config, num_train)

  def vmapped(keys, x, y):
    return train_fn(keys, x, y).state

  def sequential(keys, x, y):
    return jax.lax.map(lambda k: train_fn(k[None], x, y).state, keys)

  rows = []
  for m in sizes.trainer_models:
    for name, fn in (("sequential", sequential), ("vmap", vmapped)):
      if not deadline.allows(60):
        rows.append({"concurrency": name, "models": m, "skipped": "out of time"})
        continue
      keys = jax.random.split(jax.random.key(m), m)
      try:
        first, best = timed(jax.jit(fn), keys, images, labels, repeats=1)
      except Exception as e:  # noqa: BLE001 (a crash at some M is a result: the H100 at 64)
        rows.append({"concurrency": name, "models": m, "error": f"{type(e).__name__}: {e}"[:300]})
        continue
      per_model_step = best / (m * steps)
      rows.append({"concurrency": name, "models": m, "steps": steps,
                   "ms_per_step": 1e3 * best / steps,
                   "ms_per_model_step": 1e3 * per_model_step,
                   "s_per_model_full_run": per_model_step * AIRBENCH_FULL_STEPS,
                   "compile_s": first - best})
  return rows


def planner_stage(sizes: CheckSizes) -> dict:
  config = dataclasses.replace(sizes.certify_trainer, num_classes=10, image_shape=(32, 32, 3))
  den = diffusion.create_denoiser(sizes.unet, diffusion.linear_schedule(), jax.random.key(0))
  dtype = pipeline.resolve_denoise_dtype("auto")
  denoise_bytes = pipeline.denoise_program_bytes(den, sizes.certify_num_train, (32, 32, 3),
                                                 sigma=0.25, batch_size=500, denoise_dtype=dtype)
  out = {"denoiser_params": den.num_params, "denoise_program_gib": denoise_bytes / 2**30,
         "memory_limit_gib": None}
  limit = classifier.device_memory_limit(config)
  if limit:
    out["memory_limit_gib"] = limit / 2**30
  for concurrency in pipeline.CONCURRENCY:
    try:
      out[concurrency] = pipeline.choose_models_per_step(
          None, config, sizes.certify_num_train, jax.device_count(), concurrency=concurrency,
          denoise_bytes=denoise_bytes)
    except classifier.InsufficientMemoryError as e:
      out[concurrency] = f"does not fit: {e}"
  return out


def accuracy_stage(sizes: CheckSizes, data, deadline: Deadline) -> dict:
  if data is None:
    return {"skipped": "no --data: pass the CIFAR-10 copy to measure accuracy"}
  if not deadline.allows(120):
    return {"skipped": "out of time"}
  config = pipeline.resolve_trainer(sizes.accuracy_trainer, data)
  keys = jax.random.split(jax.random.key(0), sizes.accuracy_models)
  start = time.perf_counter()
  models = classifier.train_models(keys, data.x_train, data.y_train.astype(np.int32), config)
  jax.block_until_ready(models.state)
  seconds = time.perf_counter() - start
  acc = np.asarray(classifier.evaluate(models, data.x_test, data.y_test.astype(np.int32)))
  return {"models": len(acc), "accuracy_mean": float(acc.mean()),
          "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
          "num_train": int(len(data.x_train)), "seconds_incl_compile": seconds}


def certify_stage(sizes: CheckSizes, data, deadline: Deadline, rng, dry_run: bool = False) -> dict:
  """One chunk end to end (after a first, compiling chunk) with the embedded denoiser (the dry
  run: its toy UNet)."""
  if not deadline.allows(120):
    return {"skipped": "out of time"}
  from jaxpoison.data import Dataset
  if data is None:
    n = sizes.certify_num_train
    from jaxpoison.data import CIFAR10_LABEL_NAMES
    data = Dataset(x_train=_images(rng, n), y_train=rng.integers(0, 10, n).astype(np.int32),
                   x_test=_images(rng, 100), y_test=rng.integers(0, 10, 100).astype(np.int32),
                   label_names=CIFAR10_LABEL_NAMES)
  chunk = sizes.certify_models
  with tempfile.TemporaryDirectory() as out:
    denoiser = "default"
    if dry_run:  # The dry run's toy UNet, saved like a converted checkpoint.
      denoiser = str(Path(out) / "denoiser")
      diffusion.save_denoiser(diffusion.create_denoiser(
          sizes.unet, diffusion.linear_schedule(), jax.random.key(0)), denoiser)
    config = pipeline.CertifyConfig(
        sigmas=(0.25,), num_models=2 * chunk, n0=1, models_per_step=chunk,
        trainer=sizes.certify_trainer, num_train=sizes.certify_num_train, num_test=100,
        denoiser=denoiser)
    start = time.perf_counter()
    summary = pipeline.run_certification(config, Path(out) / "run", dataset=data,
                                         progress=False)
    total = time.perf_counter() - start
  timing = summary["timings"]["0.25"]
  models = max(timing.get("models", 0), 1)
  denoise = timing["denoise_s"] / models
  train = timing["train_vote_s"] / models
  # run_votes times the chunk from the host: what is neither program is host time (keys,
  # transfers, writing the votes).
  chunk = timing.get("chunk_s")
  host = max(chunk / models - denoise - train, 0.0) if chunk else None
  return {"models_per_step": summary["models_per_step"], "s_per_model": denoise + train,
          "models_per_hour": 3600 / max(denoise + train, 1e-9),
          "denoise_s_per_model": denoise, "train_predict_s_per_model": train,
          "host_s_per_model": host, "first_chunk_s": timing.get("first_chunk_s"),
          "total_s": total}


def peers_stage(sizes: CheckSizes, deadline: Deadline) -> dict:
  """diffusers' UNet2DModel on the same GPU, bf16 eager and torch.compile."""
  try:
    import torch
    import diffusers  # noqa: F401
  except ImportError as e:
    return {"skipped": f"PyTorch/diffusers not importable ({e.name})"}
  if jax.default_backend() != "gpu" or not torch.cuda.is_available():
    return {"skipped": "no CUDA device for PyTorch (or JAX is not on a GPU): no same-GPU ratio"}
  if not deadline.allows(120):
    return {"skipped": "out of time"}
  u = sizes.unet
  model = diffusers.UNet2DModel(
      sample_size=u.sample_size, block_out_channels=u.block_out_channels,
      layers_per_block=u.layers_per_block,
      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      attention_head_dim=None, downsample_padding=0, norm_eps=1e-6, flip_sin_to_cos=False,
      freq_shift=1).cuda().eval()
  x = torch.randn(sizes.peer_batch, 3, 32, 32, device="cuda")
  t = torch.full((sizes.peer_batch,), 144, device="cuda")
  out = {}
  for name, net in (("eager", model), ("compile", torch.compile(model))):
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
      start = time.perf_counter()
      net(x, t)
      torch.cuda.synchronize()
      first = time.perf_counter() - start
      best = math.inf
      for _ in range(3):
        start = time.perf_counter()
        net(x, t)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    out[name] = {"img_per_s": sizes.peer_batch / best, "first_call_s": first}
  return out


def eclipse_stage(sizes: CheckSizes, deadline: Deadline) -> list[dict]:
  """Purification img/s per (loop, dtype), with the PyTorch loop on the same device."""
  from jaxpoison.benchmarks import purification_speed
  try:
    import torch
    import diffusers  # noqa: F401
  except ImportError as e:
    return [{"skipped": f"PyTorch/diffusers not importable ({e.name}): no reference loop"}]
  on_gpu = jax.default_backend() == "gpu"
  if on_gpu and not torch.cuda.is_available():
    return [{"skipped": "JAX is on a GPU but PyTorch has no CUDA: no same-GPU ratio"}]
  rows = []
  # (Not host + bfloat16: what the host loop costs shows in float32.)
  for loop, dtype in (("scan", "float32"), ("host", "float32"), ("scan", "bfloat16")):
    if not deadline.allows(90):
      rows.append({"loop": loop, "dtype": dtype, "skipped": "out of time"})
      continue
    r = purification_speed.measure(
        sizes.eclipse_unet, num_images=sizes.eclipse_batch, t_star=sizes.eclipse_t_star,
        torch_device="cuda" if on_gpu else "cpu", loop=loop, compute_dtype=dtype)
    rows.append({"loop": loop, "dtype": dtype, "batch": r["num_images"],
                 "params": r["params"], "img_per_s": r["jax_images_per_s"],
                 "torch_f32_img_per_s": r["torch_images_per_s"],
                 "ratio_torch_over_jax": r["ratio_torch_over_jax"],
                 "compile_s": r["jax_compile_s"],
                 "max_grey_level_diff": r["max_grey_level_difference"]})
  return rows


def denoiser_training_stage(sizes: CheckSizes, deadline: Deadline, rng) -> list[dict]:
  """ms per training step of each UNet in `sizes.denoiser_unets` at the default's recipe."""
  images = jax.device_put(_images(rng, 512))
  chunk = diffusion.train.chunk_function()  # as train_denoiser runs a chunk on this backend
  rows = []
  for name, unet in sizes.denoiser_unets:
    if not deadline.allows(60):
      rows.append({"unet": name, "skipped": "out of time"})
      continue
    cfg = diffusion.DenoiserTrainConfig(
        unet=unet, schedule=diffusion.linear_schedule(), batch_size=DENOISER_TRAIN_BATCH,
        loss_weight_exponent=0.4, num_steps=DENOISER_TRAIN_STEPS,
        steps_per_chunk=sizes.denoiser_train_steps)
    state = diffusion.init_train_state(cfg)
    params = diffusion.count_params(state.params)
    n = sizes.denoiser_train_steps
    start = time.perf_counter()
    state, losses = chunk(state, images, cfg, n)  # compiles; the state is donated
    jax.block_until_ready(losses)
    first = time.perf_counter() - start
    start = time.perf_counter()
    state, losses = chunk(state, images, cfg, n)
    jax.block_until_ready(losses)
    per_step = (time.perf_counter() - start) / n
    rows.append({"unet": name, "channels": "/".join(map(str, unet.block_out_channels)),
                 "params": params, "batch": DENOISER_TRAIN_BATCH, "ms_per_step": 1e3 * per_step,
                 "minutes_for_24000_steps": per_step * DENOISER_TRAIN_STEPS / 60,
                 "compile_s": first - n * per_step,
                 "finite_loss": bool(np.isfinite(np.asarray(losses)).all())})
  return rows


def run(*, dry_run: bool = False, data=None, budget_s: float = 480.0, log=print) -> dict:
  """Every stage in order within `budget_s` seconds; returns the results dict."""
  sizes = CheckSizes.dry() if dry_run else CheckSizes.full()
  deadline = Deadline(budget_s)
  rng = np.random.default_rng(0)
  results = {"date": time.strftime("%Y-%m-%d"), "dry_run": dry_run, "environment": environment()}
  stages = [("denoise", lambda: denoise_stage(sizes, deadline, rng)),
            ("trainer", lambda: trainer_stage(sizes, deadline, rng)),
            ("planner", lambda: planner_stage(sizes)),
            ("accuracy", lambda: accuracy_stage(sizes, data, deadline)),
            ("certify", lambda: certify_stage(sizes, data, deadline, rng, dry_run)),
            ("peers", lambda: peers_stage(sizes, deadline)),
            ("eclipse", lambda: eclipse_stage(sizes, deadline)),
            ("denoiser_training", lambda: denoiser_training_stage(sizes, deadline, rng))]
  for name, stage in stages:
    start = time.perf_counter()
    try:
      results[name] = stage()
    except Exception as e:  # noqa: BLE001 (one failed stage must not lose the others' figures)
      results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    log(f"{name}: done in {time.perf_counter() - start:.1f} s")
  return results


def markdown(results: dict) -> str:
  """The BENCHMARKS.md block: environment, then a table per stage."""
  env = results["environment"]
  lines = [f"Device: {env['device_kind']} ×{env['device_count']} ({env['backend']}, "
           f"{env['memory_gib']} GiB), JAX {env['jax']}, {results['date']}"
           + (" — DRY RUN (toy sizes)" if results.get("dry_run") else ""), ""]

  def table(title, rows, columns):
    lines.extend([f"**{title}**", "", "| " + " | ".join(columns) + " |",
                  "|" + "---|" * len(columns)])
    for row in rows:
      cells = []
      for c in columns:
        v = row.get(c, "")
        cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

  def rows_of(stage):
    value = results.get(stage)
    if isinstance(value, dict) and ("error" in value or "skipped" in value):
      return [value]
    return value if isinstance(value, list) else [value]

  table("Single-step denoising", rows_of("denoise"),
        ["dtype", "attention", "batch", "img_per_s", "compile_s", "skipped", "error"])
  table("Trainer", rows_of("trainer"),
        ["concurrency", "models", "ms_per_step", "ms_per_model_step", "s_per_model_full_run",
         "compile_s", "skipped", "error"])
  for stage in ("planner", "accuracy", "certify"):
    value = results.get(stage) or {}
    table(stage.capitalize(), [value], sorted(value))
  table("ECLIPSE purification (t* = 100 of 4000; PyTorch: the authors' loop, float32)",
        rows_of("eclipse"), ["loop", "dtype", "batch", "params", "img_per_s",
                             "torch_f32_img_per_s", "ratio_torch_over_jax", "compile_s",
                             "max_grey_level_diff", "skipped", "error"])
  table(f"Denoiser training (the embedded default's recipe: batch {DENOISER_TRAIN_BATCH}, "
        f"{DENOISER_TRAIN_STEPS:,} steps)", rows_of("denoiser_training"),
        ["unet", "channels", "params", "ms_per_step", "minutes_for_24000_steps", "compile_s",
         "finite_loss", "skipped", "error"])
  peers = results.get("peers") or {}
  if "skipped" in peers or "error" in peers:
    table("Peers (diffusers)", [peers], sorted(peers))
  else:
    table("Peers (diffusers, bf16)", [{"mode": k, **v} for k, v in peers.items()],
          ["mode", "img_per_s", "first_call_s"])
  return "\n".join(lines)


def measured_vs_predicted(results: dict, predicted: dict) -> str:
  """Measured figures beside an `--aot` run's roofline bounds for the same programs."""
  lines = [f"**Measured here vs predicted by `--aot {predicted.get('target')}` "
           f"({predicted.get('date')}; the prediction is a bound, measured/bound = efficiency)**",
           "", "| program | measured | bound | measured / bound |", "|---|---|---|---|"]
  bounds = {(r.get("dtype"), r.get("attention"), r.get("batch")): r.get("roofline_img_per_s")
            for r in predicted.get("denoise", []) if str(r.get("denoiser", "")).startswith("ddpm")}
  for row in results.get("denoise") or []:
    bound = bounds.get((row.get("dtype"), row.get("attention"), row.get("batch")))
    if bound and row.get("img_per_s"):
      lines.append(f"| denoise {row['dtype']}/{row['attention']} batch {row['batch']} (img/s) | "
                   f"{row['img_per_s']:,.0f} | {bound:,.0f} | {row['img_per_s'] / bound:.2f} |")
  steps = {r["models"]: r["roofline"]["seconds"] for r in predicted.get("trainer", [])
           if r.get("program") == "step" and "roofline" in r}
  for row in results.get("trainer") or []:
    m = row.get("models")
    if row.get("concurrency") == "vmap" and m in steps and row.get("ms_per_step"):
      lines.append(f"| train vmap M={m} (ms/step) | {row['ms_per_step']:.2f} | "
                   f"{1e3 * steps[m]:.2f} | {row['ms_per_step'] / (1e3 * steps[m]):.2f} |")
  return "\n".join(lines)
