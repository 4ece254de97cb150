"""`gpu_check --aot h100`: every hot program compiled for a GPU on this host, and what it costs.

Each program is compiled deviceless (`jaxpoison.aot`) at its real size, with every "auto" choice
made for the target (bf16, cuDNN attention where its rules allow, the scanned loop), and
measured from XLA's compiled program: compile time, memory, flops, bytes moved, the kernel
census, and a roofline time (max of flops ÷ the spec's dense peak and bytes ÷ its bandwidth)
turned into images/s, s/model and models per GPU-hour. Nothing is autotuned (kernels a device
may choose differently; cuDNN workspaces missing from temp): the roofline is a bound no run
beats, not a prediction of the measured time.

Programs ("full"; `small=True` compiles toy sizes of the same programs, tests/test_aot.py):
1. denoise: single-step noise + denoise (35.7M google/ddpm-cifar10-32 UNet and the embedded
   default; f32/XLA, bf16/XLA, bf16/cuDNN attention; batch 500, 1000, 2048).
2. trainer: airbench94 at full width, batch 1024, on 50,000 images: the whole scanned program
   (memory, census) for M = 1, 4, 16, 64 models, sequential (a lax.map) and vmap; one step's
   program for the flops and bytes (XLA's cost analysis counts a loop body once).
3. chunk: the certification chunk at the planner's M (`certification.plan`, from the compiled
   chunk programs), whether it fits the H100's and the H200's memory, and the end-to-end
   roofline (denoising 50,000 images + training one model) for both denoisers.
4. eclipse: one reverse step of ECLIPSE's purification at the paper's UNet size (52.5M,
   learned variance), batch 500; ×100 steps per image.
5. brew: one Witches' Brew crafting step (ResNet-18 surrogate, 500 poisons, batch 512, the
   differentiable augmentation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import time

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpoison import aot, classifier, diffusion
from jaxpoison.attacks.configs import WitchesBrewConfig
from jaxpoison.benchmarks.gpu_check import eclipse_paper_size_unet
from jaxpoison.certification import plan

# The module, not the function the attacks package re-exports under the same name.
wb = importlib.import_module("jaxpoison.attacks.witches_brew")

NUM_TRAIN = 50_000
NUM_TEST = 500


@dataclasses.dataclass(frozen=True)
class AotSizes:
  denoisers: tuple  # ((name, UNetConfig), ...)
  denoise_modes: tuple  # ((compute dtype, attention), ...)
  denoise_batches: tuple
  trainer: classifier.TrainConfig
  trainer_models: tuple
  num_train: int
  num_test: int
  eclipse_unet: diffusion.UNetConfig
  eclipse_batch: int
  eclipse_t_star: int
  brew_trainer: classifier.TrainConfig
  brew_poisons: int
  brew_batch: int
  # The planner's largest M per device (None: the certification's caps). Toy programs fit any
  # M, and compiling the toy chunk at 128 models takes minutes on 2 cores.
  plan_cap: int | None = None

  @classmethod
  def full(cls) -> "AotSizes":
    return cls(
        denoisers=(("ddpm-cifar10 35.7M", diffusion.ddpm_cifar10_config()),
                   ("embedded default", diffusion.default_denoiser().unet)),
        denoise_modes=(("float32", "xla"), ("bfloat16", "xla"), ("bfloat16", "cudnn")),
        denoise_batches=(500, 1000, 2048),
        trainer=classifier.airbench94_config(), trainer_models=(1, 4, 16, 64),
        num_train=NUM_TRAIN, num_test=NUM_TEST, eclipse_unet=eclipse_paper_size_unet(),
        eclipse_batch=500, eclipse_t_star=100, brew_trainer=classifier.resnet18_config(),
        brew_poisons=500, brew_batch=512)

  @classmethod
  def small(cls) -> "AotSizes":
    unet = diffusion.UNetConfig(block_out_channels=(16, 32), layers_per_block=1,
                                attention_resolutions=(16,), norm_num_groups=4,
                                attention_head_dim=16)
    trainer = classifier.tiny_config(batch_size=32, epochs=1, whitening_images=64)
    return cls(
        denoisers=(("tiny", unet),), denoise_modes=(("bfloat16", "cudnn"),),
        denoise_batches=(16,), trainer=trainer, trainer_models=(2,), num_train=128,
        num_test=16,
        eclipse_unet=dataclasses.replace(unet, out_channels=6, attention_resolutions=(),
                                         mid_attention=False, scale_shift_norm=True),
        eclipse_batch=8, eclipse_t_star=4,
        brew_trainer=classifier.tiny_config(batch_size=32, epochs=1, whitening_images=64),
        brew_poisons=8, brew_batch=8, plan_cap=4)


def _gpu(config: classifier.TrainConfig, target) -> classifier.TrainConfig:
  """The trainer config with its "auto" choices made for the target (explicit, so that a
  program traced for the CPU before is never reused)."""
  return config.replace(loop=classifier.resolve_loop(config, target),
                        compute_dtype=classifier.resolve_compute_dtype(config, target).name)


def _per(value, count):
  return value / count if count else None


def denoise_programs(at: aot.AotTarget, sizes: AotSizes, log) -> list[dict]:
  rows = []
  key = at.abstract(jax.eval_shape(lambda: jax.random.key(0)))
  for name, unet in sizes.denoisers:
    den = at.abstract(jax.eval_shape(lambda u=unet: diffusion.create_denoiser(
        u, diffusion.linear_schedule(), jax.random.key(0))))
    params = sum(math.prod(a.shape) for a in jax.tree.leaves(den.params))
    for dtype, attention in sizes.denoise_modes:
      for batch in sizes.denoise_batches:
        images = at.abstract(jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.uint8))
        row = {"denoiser": name, "params": params, "dtype": dtype, "attention": attention,
               "batch": batch}
        try:
          program = at.compile(
              f"denoise {name} {dtype} {attention} {batch}",
              lambda d, x, k, _dt=dtype, _at=attention, _b=batch: diffusion.noise_and_denoise(
                  diffusion.cast_params(d, jnp.dtype(_dt)), x, 0.25, k, batch_size=_b,
                  compute_dtype=jnp.dtype(_dt), attention=_at, allow_untrained_sigma=True),
              den, images, key, compute_dtype=dtype)
        except (ValueError, NotImplementedError) as e:
          rows.append({**row, "skipped": f"{type(e).__name__}: {e}"[:200]})
          continue
        seconds = program.roofline["seconds"]
        rows.append({**row, **program.as_dict(), "bytes_per_image": program.bytes / batch,
                     "roofline_img_per_s": batch / seconds})
        log(f"denoise {name} {dtype}/{attention} batch {batch}: "
            f"{program.bytes / batch / 2**20:.1f} MiB/img, {batch / seconds:,.0f} img/s bound")
  return rows


def trainer_programs(at: aot.AotTarget, sizes: AotSizes, log) -> list[dict]:
  config = _gpu(sizes.trainer, at.target)
  n = sizes.num_train
  train_fn = classifier.make_train_fn(config)
  parts = classifier.make_train_parts(config)
  steps = classifier.total_steps(config, n)
  images = at.abstract(jax.ShapeDtypeStruct((n, *config.image_shape), jnp.uint8))
  labels = at.abstract(jax.ShapeDtypeStruct((n,), jnp.int32))
  rows, step_seconds = [], {}

  def model_keys(m):
    return at.abstract(jax.eval_shape(lambda: jax.random.split(jax.random.key(0), m)))

  for m in sorted({1, *sizes.trainer_models}):
    keys = model_keys(m)
    carry = at.abstract(jax.eval_shape(parts.start, keys, images, labels))
    step = at.compile(f"train step vmap M={m}", parts.body, carry,
                      at.abstract(jax.ShapeDtypeStruct((), jnp.int32)), keys, images, labels,
                      compute_dtype=config.compute_dtype, jit_kwargs={"donate_argnums": 0})
    step_seconds[m] = step.roofline["seconds"]
    rows.append({"program": "step", "concurrency": "vmap", "models": m, **step.as_dict(),
                 "bytes_per_model_step": step.bytes / m})
    log(f"train step M={m}: {step.bytes / m / 2**30:.2f} GiB per model-step")
  for m in sizes.trainer_models:
    keys = model_keys(m)
    for concurrency in ("sequential", "vmap"):
      if concurrency == "vmap":
        def whole(k, x, y):
          return train_fn(k, x, y).state
      else:
        def whole(k, x, y):
          return jax.lax.map(lambda key: train_fn(key[None], x, y).state, k)
      try:
        program = at.compile(f"train {concurrency} M={m}", whole, keys, images, labels,
                             compute_dtype=config.compute_dtype)
      except Exception as e:  # noqa: BLE001 (a program that does not compile is a result)
        rows.append({"program": "whole", "concurrency": concurrency, "models": m,
                     "error": f"{type(e).__name__}: {e}"[:300]})
        continue
      per_step = step_seconds[1] if concurrency == "sequential" else step_seconds[m] / m
      s_per_model = per_step * steps
      rows.append({"program": "whole", "concurrency": concurrency, "models": m, "steps": steps,
                   **program.as_dict(), "roofline_s_per_model": s_per_model,
                   "roofline_models_per_hour": 3600 / s_per_model,
                   "fits_80gib": program.memory["peak"] <= 80 * 2**30})
      log(f"train {concurrency} M={m}: peak {program.memory['peak'] / 2**30:.2f} GiB, "
          f"{s_per_model:.2f} s/model bound")
  return rows


def chunk_program(at: aot.AotTarget, sizes: AotSizes, denoise_rows, trainer_rows, log) -> dict:
  """The certification chunk at the planner's M (compiled chunk programs, within the
  allocator's pool) for each concurrency, whether it fits each shipped GPU, and the end-to-end
  roofline per model."""
  config = _gpu(sizes.trainer, at.target)
  name, unet = sizes.denoisers[0]
  den = jax.eval_shape(lambda: diffusion.create_denoiser(unet, diffusion.linear_schedule(),
                                                         jax.random.key(0)))
  pool = plan.allocator_bytes(at.target)
  out = {"denoiser": name, "allocator_gib": pool / 2**30,
         "budget_gib": plan.PLAN_FRACTION * pool / 2**30}
  for concurrency in ("sequential", "vmap"):
    cap = plan.MAX_VMAP_MODELS_PER_DEVICE if concurrency == "vmap" else \
        plan.MAX_MODELS_PER_DEVICE
    cap = min(cap, sizes.plan_cap or cap)
    with at.tracing():
      measure = plan.chunk_memory(at.mesh(), config, sizes.num_train, sizes.num_test,
                                  (32, 32, 3), denoiser=den,
                                  denoise_batch_size=min(1000, sizes.num_train),
                                  denoise_dtype="bfloat16", concurrency=concurrency,
                                  compiler_options=aot.COMPILER_OPTIONS)
      start = time.perf_counter()
      try:
        chosen = plan.plan_from_programs(measure, int(plan.PLAN_FRACTION * pool), cap)
      except Exception as e:  # noqa: BLE001 (one concurrency failing keeps the other's plan)
        out[concurrency] = {"error": f"{type(e).__name__}: {e}"[:300]}
        continue
      seconds = time.perf_counter() - start
      m = chosen["per_device"]
      programs = measure(m) if m else None
    row = {"models_per_step": m, "cap": cap, "plan_s": seconds,
           "measured_gib": {k: round(v / 2**30, 3) for k, v in chosen["measured"].items()},
           "per_model_gib": chosen["per_model"] / 2**30}
    if programs:
      row["peak_gib"] = programs["peak"] / 2**30
      for gpu in ("h100", "h200"):
        spec = aot.load_spec(gpu)
        usable = plan.PLAN_FRACTION * plan.DEFAULT_MEM_FRACTION * spec.memory_bytes
        row[f"fits_{gpu}"] = programs["peak"] <= usable
      row["train_census"] = aot.census(programs["programs"]["train"].as_text(),
                                       config.compute_dtype)
    out[concurrency] = row
    log(f"chunk {concurrency}: M = {m}, peak {row.get('peak_gib', 0):.1f} GiB")
  # End to end per model: one denoised copy of the training set + training one model.
  seq = [r for r in trainer_rows if r.get("program") == "whole"
         and r["concurrency"] == "sequential" and "roofline_s_per_model" in r]
  train_s = seq[0]["roofline_s_per_model"] if seq else None
  for denoiser, _ in sizes.denoisers:
    best = [r for r in denoise_rows if r["denoiser"] == denoiser and r["dtype"] == "bfloat16"
            and "roofline_img_per_s" in r]
    if best and train_s:
      img_per_s = max(r["roofline_img_per_s"] for r in best)
      out[f"roofline_models_per_hour, {denoiser}"] = 3600 / (sizes.num_train / img_per_s
                                                              + train_s)
  return out


def eclipse_program(at: aot.AotTarget, sizes: AotSizes, log,
                    dtypes=("float32", "bfloat16")) -> dict:
  """One reverse step of the purification (`diffusion.denoise_multistep`'s scanned loop: XLA's
  cost analysis counts its body, one UNet call, once)."""
  unet = sizes.eclipse_unet
  schedule = diffusion.cosine_schedule(4000)
  den = at.abstract(jax.eval_shape(lambda: diffusion.create_denoiser(unet, schedule,
                                                                     jax.random.key(0))))
  images = at.abstract(jax.ShapeDtypeStruct((sizes.eclipse_batch, 32, 32, 3), jnp.uint8))
  key = at.abstract(jax.eval_shape(lambda: jax.random.key(0)))
  from jaxpoison import eclipse
  rows = {}
  for dtype in dtypes:
    program = at.compile(f"eclipse {dtype}", lambda d, x, k, _dt=dtype: eclipse.purify(
        d, x, k, t_star=sizes.eclipse_t_star, batch_size=sizes.eclipse_batch, loop="scan",
        compute_dtype=jnp.dtype(_dt)), den, images, key, compute_dtype=dtype)
    per_image = program.roofline["seconds"] * sizes.eclipse_t_star / sizes.eclipse_batch
    rows[dtype] = {**program.as_dict(), "steps_per_image": sizes.eclipse_t_star,
                   "roofline_img_per_s": 1 / per_image}
    log(f"eclipse {dtype}: {1 / per_image:,.0f} img/s bound")
  return {"params": sum(math.prod(a.shape) for a in jax.tree.leaves(den.params)),
          "batch": sizes.eclipse_batch, **rows}


def brew_program(at: aot.AotTarget, sizes: AotSizes, log) -> dict:
  """One Witches' Brew step: the ensemble's matching loss and its input gradient, sign-Adam."""
  config = _gpu(sizes.brew_trainer, at.target)
  def build():
    model = classifier.create_model(config, jax.random.key(0),
                                    classifier.resolve_compute_dtype(config))
    graphdef, state = nnx.split(model)
    return classifier.TrainedModels(graphdef, jax.tree.map(lambda a: a[None], state), config)
  surrogate = jax.eval_shape(lambda: classifier.gradient_model(build()))
  brew = WitchesBrewConfig(poison_batch_size=sizes.brew_batch)
  bases = jax.ShapeDtypeStruct((sizes.brew_poisons, *config.image_shape), jnp.float32)
  grads = jax.eval_shape(lambda s: wb.target_gradients([s], jnp.zeros((1, *config.image_shape)),
                                                       jnp.zeros((1,), jnp.int32), 1), surrogate)
  state = jax.eval_shape(lambda b: wb.initial_state(jax.random.key(0), b, brew), bases)
  labels = jax.ShapeDtypeStruct((sizes.brew_poisons,), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  program = at.compile("brew step", lambda st, k, s, g, b, y: wb._one_step(
      st, k, [s], g, b, y, brew), at.abstract(state), at.abstract(key), at.abstract(surrogate),
      at.abstract(grads), at.abstract(bases), at.abstract(labels), compute_dtype="float32")
  log(f"brew step: {program.roofline['seconds'] * 1e3:.2f} ms bound")
  return {"poisons": sizes.brew_poisons, **program.as_dict(),
          "roofline_steps_per_s": 1 / program.roofline["seconds"]}


@contextlib.contextmanager
def _previous_formulations():
  """The programs as they were before issue 36's leaner formulations, for the before/after
  comparison in one run: linen's max-pool (select_and_scatter backward) in airbench94, and the
  UNet's two-pass GroupNorm variance on the accelerator too."""
  from flax import linen
  from jaxpoison import backend
  from jaxpoison.classifier import models
  saved = models.max_pool, backend.resolve_one_pass_statistics
  models.max_pool = lambda x, k: linen.max_pool(x, (k, k), (k, k))
  backend.resolve_one_pass_statistics = lambda target=None: False
  jax.clear_caches()  # Jitted helpers (the denoiser's) were traced with the current ones.
  try:
    yield
  finally:
    models.max_pool, backend.resolve_one_pass_statistics = saved
    jax.clear_caches()


def lean_comparison(at: aot.AotTarget, sizes: AotSizes, log) -> list[dict]:
  """Bytes and roofline of the hot programs before and after the leaner formulations, compiled
  in the same run (the trainer's step at M = 1 and 16, the bf16 denoise at batch 1000)."""
  rows = []
  config = _gpu(sizes.trainer, at.target)
  n = sizes.num_train
  images = at.abstract(jax.ShapeDtypeStruct((n, *config.image_shape), jnp.uint8))
  labels = at.abstract(jax.ShapeDtypeStruct((n,), jnp.int32))
  key = at.abstract(jax.eval_shape(lambda: jax.random.key(0)))
  batch = max(sizes.denoise_batches[len(sizes.denoise_batches) // 2], 1)
  for formulation in ("before", "after"):
    context = _previous_formulations() if formulation == "before" else contextlib.nullcontext()
    with context:
      parts = classifier.make_train_parts(config)
      for m in sorted({1, max(sizes.trainer_models[:3])}):
        keys = at.abstract(jax.eval_shape(lambda m=m: jax.random.split(jax.random.key(0), m)))
        carry = at.abstract(jax.eval_shape(parts.start, keys, images, labels))
        program = at.compile(f"train step M={m} {formulation}", parts.body, carry,
                             at.abstract(jax.ShapeDtypeStruct((), jnp.int32)), keys, images,
                             labels, compute_dtype=config.compute_dtype,
                             jit_kwargs={"donate_argnums": 0})
        rows.append({"program": f"airbench94 step, M={m}", "formulation": formulation,
                     "bytes_per_unit": program.bytes / m, "unit": "model-step",
                     "peak_gib": program.memory["peak"] / 2**30,
                     "roofline_s_per_unit": program.roofline["seconds"] / m,
                     "census": program.census})
      for name, unet in sizes.denoisers:
        den = at.abstract(jax.eval_shape(lambda u=unet: diffusion.create_denoiser(
            u, diffusion.linear_schedule(), jax.random.key(0))))
        for attention in ("cudnn", "xla"):
          x = at.abstract(jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.uint8))
          program = at.compile(
              f"denoise {name} {attention} {formulation}",
              lambda d, x, k, _at=attention: diffusion.noise_and_denoise(
                  diffusion.cast_params(d, jnp.bfloat16), x, 0.25, k, batch_size=batch,
                  compute_dtype=jnp.bfloat16, attention=_at, allow_untrained_sigma=True),
              den, x, key, compute_dtype="bfloat16")
          rows.append({"program": f"denoise {name}, bf16, {attention} attention, batch {batch}",
                       "formulation": formulation, "bytes_per_unit": program.bytes / batch,
                       "unit": "image", "peak_gib": program.memory["peak"] / 2**30,
                       "roofline_s_per_unit": program.roofline["seconds"] / batch,
                       "census": program.census})
    log(f"lean comparison: {formulation} done")
  steps = classifier.total_steps(config, n)
  for formulation in ("before", "after"):
    mine = [r for r in rows if r["formulation"] == formulation]
    train = [r for r in mine if r["program"] == "airbench94 step, M=1"][0]
    for name, _ in sizes.denoisers:
      image = min(r["roofline_s_per_unit"] for r in mine if r["program"].startswith(
          f"denoise {name},"))
      per_model = n * image + steps * train["roofline_s_per_unit"]
      rows.append({"program": f"end to end, {name} (one model: {n:,} images denoised + "
                              f"{steps} steps)", "formulation": formulation,
                   "unit": "model", "roofline_s_per_unit": per_model,
                   "models_per_hour": 3600 / per_model})
  after = {r["program"]: r for r in rows if r["formulation"] == "after"}
  for row in rows:
    if (row["formulation"] == "before" and row["program"] in after
        and "bytes_per_unit" in row):
      after[row["program"]]["bytes_change"] = (after[row["program"]]["bytes_per_unit"]
                                              / row["bytes_per_unit"] - 1)
  return rows


def run(target: str = "h100", *, small: bool = False, log=print) -> dict:
  """Compiles every program for `target` ("h100", "h200" or a spec file); the results dict."""
  at = aot.AotTarget(target)
  sizes = AotSizes.small() if small else AotSizes.full()
  results = {"date": time.strftime("%Y-%m-%d"), "target": at.spec.name,
             "device": at.spec.description, "small": small, "jax": jax.__version__,
             "spec": {"memory_gib": at.spec.memory_bytes / 2**30,
                      "bandwidth_tb_s": at.spec.bandwidth / 1e12,
                      "peak_tflops": {k: v / 1e12 for k, v in at.spec.peak_flops.items()},
                      "source": at.spec.source}}
  stages = [("denoise", lambda: denoise_programs(at, sizes, log)),
            ("trainer", lambda: trainer_programs(at, sizes, log)),
            ("chunk", lambda: chunk_program(at, sizes, results.get("denoise", []),
                                            results.get("trainer", []), log)),
            ("eclipse", lambda: eclipse_program(at, sizes, log)),
            ("brew", lambda: brew_program(at, sizes, log)),
            ("lean", lambda: lean_comparison(at, sizes, log))]
  for name, stage in stages:
    start = time.perf_counter()
    try:
      results[name] = stage()
    except aot.AotUnavailableError:
      raise
    except Exception as e:  # noqa: BLE001 (one failed program must not lose the others)
      results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    results.setdefault("stage_s", {})[name] = time.perf_counter() - start
    log(f"{name}: done in {time.perf_counter() - start:.1f} s")
  return results


def _f(v, digits=3):
  if v is None or v == "":
    return ""
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, float):
    return f"{v:,.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
  return str(v)


def _table(lines, title, columns, rows):
  lines += [f"**{title}**", "", "| " + " | ".join(c for c, _ in columns) + " |",
            "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(_f(get(row)) for _, get in columns) + " |")
  lines.append("")


def _convs(census: dict) -> str:
  kinds = {"__cudnn$convForward": "fwd", "__cudnn$convBiasActivationForward": "fwd+bias",
           "__cudnn$convBackwardInput": "bwd-in", "__cudnn$convBackwardFilter": "bwd-w"}
  return " ".join(f"{kinds.get(k, k)} {n}" for k, n in census.get("cudnn_convolutions",
                                                                     {}).items())


_GIB = 2 ** 30


def markdown(results: dict) -> str:
  """The BENCHMARKS.md block of an `--aot` run."""
  spec = results["spec"]
  peaks = ", ".join(f"{k} {v:,.0f}" for k, v in spec["peak_tflops"].items())
  lines = [f"Target: {results['device']} ({results['target']}; {spec['memory_gib']:.1f} GiB, "
           f"{spec['bandwidth_tb_s']:.2f} TB/s, dense TFLOP/s {peaks}; {spec['source']}), "
           f"compiled deviceless on the CPU with JAX {results['jax']}, {results['date']}"
           + (" — SMALL (toy sizes)" if results.get("small") else ""), "",
           "Roofline = max(flops ÷ peak, bytes ÷ bandwidth) of the un-autotuned program: a "
           "bound no run beats, not a prediction. Bytes: XLA's cost analysis of the optimized "
           "module + cuDNN/cuBLAS calls' operands and outputs.", ""]

  def census_columns():
    return [("convs (cuDNN)", lambda r: _convs(r.get("census", {}))),
            ("fMHA", lambda r: r.get("census", {}).get("fused_attention")),
            ("GEMMs cuBLAS/Triton", lambda r: "/".join(str(v) for v in r.get(
                "census", {}).get("gemms", {}).values())),
            ("loops", lambda r: r.get("census", {}).get("while_loops")),
            ("host xfers", lambda r: r.get("census", {}).get("host_transfers")),
            ("transp./copies", lambda r: r.get("census", {}).get("transposes_copies")),
            ("f32 conv/GEMM", lambda r: r.get("census", {}).get("f32_convs_gemms"))]

  def rows(stage):
    value = results.get(stage)
    return value if isinstance(value, list) else [value or {}]

  def mem(key):
    return lambda r: r["memory"][key] / _GIB if "memory" in r else None

  _table(lines, "Single-step denoising (noise + one UNet call + x̂₀)", [
      ("denoiser", lambda r: r.get("denoiser")), ("dtype", lambda r: r.get("dtype")),
      ("attention", lambda r: r.get("attention")), ("batch", lambda r: r.get("batch")),
      ("compile s", lambda r: r.get("compile_s")), ("peak GiB", mem("peak")),
      ("TFLOP", lambda r: r["flops"] / 1e12 if "flops" in r else None),
      ("MiB/img", lambda r: r["bytes_per_image"] / 2**20 if "bytes_per_image" in r else None),
      *census_columns(),
      ("bound", lambda r: r.get("roofline", {}).get("bound")),
      ("img/s bound", lambda r: r.get("roofline_img_per_s")),
      ("skipped/error", lambda r: r.get("skipped") or r.get("error"))], rows("denoise"))
  _table(lines, "Trainer (airbench94 full width, batch 1024, 50,000 images; step: one SGD step "
         "of M vmapped models; whole: the scanned program)", [
      ("program", lambda r: r.get("program")), ("concurrency", lambda r: r.get("concurrency")),
      ("M", lambda r: r.get("models")), ("compile s", lambda r: r.get("compile_s")),
      ("peak GiB", mem("peak")), ("temp GiB", mem("temporaries")),
      ("GFLOP", lambda r: r["flops"] / 1e9 if "flops" in r else None),
      ("GiB/model-step", lambda r: r["bytes_per_model_step"] / _GIB
       if "bytes_per_model_step" in r else None),
      *census_columns(),
      ("s/model bound", lambda r: r.get("roofline_s_per_model")),
      ("models/h bound", lambda r: r.get("roofline_models_per_hour")),
      ("fits 80 GiB", lambda r: r.get("fits_80gib")),
      ("error", lambda r: r.get("error"))], rows("trainer"))
  chunk = results.get("chunk") or {}
  _table(lines, f"Certification chunk at the planner's M (compiled chunk programs; "
         f"{chunk.get('denoiser')} denoiser; plan within {_f(chunk.get('budget_gib'))} GiB = "
         f"90% of the allocator's {_f(chunk.get('allocator_gib'))} GiB)", [
      ("concurrency", lambda r: r.get("concurrency")), ("M", lambda r: r.get("models_per_step")),
      ("cap", lambda r: r.get("cap")), ("plan s", lambda r: r.get("plan_s")),
      ("GiB at M=1, 2, chosen", lambda r: r.get("measured_gib")),
      ("GiB per model", lambda r: r.get("per_model_gib")),
      ("peak GiB", lambda r: r.get("peak_gib")), ("fits H100", lambda r: r.get("fits_h100")),
      ("fits H200", lambda r: r.get("fits_h200")),
      ("train census", lambda r: (_convs(r.get("train_census", {})) + f"; loops "
                                  f"{r.get('train_census', {}).get('while_loops')}, host xfers "
                                  f"{r.get('train_census', {}).get('host_transfers')}")
       if r.get("train_census") else ""),
      ("error", lambda r: r.get("error"))],
      [{"concurrency": c, **chunk[c]} for c in ("sequential", "vmap")
       if isinstance(chunk.get(c), dict)] or [chunk])
  for key, value in chunk.items():
    if key.startswith("roofline_models_per_hour"):
      lines.append(f"End to end (roofline, one denoised copy of the training set + one model's "
                   f"sequential training): {key.split(', ', 1)[1]}: {_f(value)} models per "
                   f"{results['device']}-hour")
  lines.append("")
  eclipse = results.get("eclipse") or {}
  _table(lines, "ECLIPSE purification (one reverse step per loop body; × t* steps per image)", [
      ("dtype", lambda r: r.get("dtype")), ("params", lambda r: eclipse.get("params")),
      ("batch", lambda r: eclipse.get("batch")), ("compile s", lambda r: r.get("compile_s")),
      ("peak GiB", mem("peak")), *census_columns(),
      ("img/s bound", lambda r: r.get("roofline_img_per_s")),
      ("error", lambda r: r.get("error") or eclipse.get("error"))],
      [{"dtype": k, **v} for k, v in eclipse.items() if isinstance(v, dict)] or [eclipse])
  brew = results.get("brew") or {}
  _table(lines, "Witches' Brew crafting step (ResNet-18 surrogate)", [
      ("poisons", lambda r: r.get("poisons")), ("compile s", lambda r: r.get("compile_s")),
      ("peak GiB", mem("peak")), ("GFLOP", lambda r: r["flops"] / 1e9 if "flops" in r else None),
      *census_columns(), ("steps/s bound", lambda r: r.get("roofline_steps_per_s")),
      ("error", lambda r: r.get("error") or r.get("skipped"))], [brew])
  _table(lines, "Leaner programs: before (linen max-pool; two-pass GroupNorm variance) and after, "
         "same run", [
      ("program", lambda r: r.get("program")), ("formulation", lambda r: r.get("formulation")),
      ("MiB per unit", lambda r: r["bytes_per_unit"] / 2**20 if "bytes_per_unit" in r else None),
      ("unit", lambda r: r.get("unit")), ("peak GiB", lambda r: r.get("peak_gib")),
      ("roofline µs per unit", lambda r: 1e6 * r["roofline_s_per_unit"]
       if "roofline_s_per_unit" in r else None),
      ("models/h bound", lambda r: r.get("models_per_hour")),
      ("bytes change", lambda r: f"{100 * r['bytes_change']:+.1f}%" if "bytes_change" in r
       else ""),
      ("error", lambda r: r.get("error"))], rows("lean"))
  return "\n".join(lines)


def compile_small(target: str = "h100") -> dict:
  """Small versions of the hot programs compiled for `target`, each program's figures (the CI
  test's: a program that stops compiling for the GPU fails on the CPU). A tiny UNet with
  attention (cuDNN's fused kernel), the tiny trainer's whole scanned program (2 models,
  vmap), a two-model certification chunk, and ECLIPSE's purification (4 steps)."""
  at = aot.AotTarget(target)
  sizes = AotSizes.small()
  out = {"denoise": denoise_programs(at, sizes, lambda _: None)[0]}
  config = _gpu(sizes.trainer, at.target)
  images = at.abstract(jax.ShapeDtypeStruct((sizes.num_train, *config.image_shape), jnp.uint8))
  labels = at.abstract(jax.ShapeDtypeStruct((sizes.num_train,), jnp.int32))
  keys = at.abstract(jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 2)))
  train_fn = classifier.make_train_fn(config)
  out["trainer"] = at.compile("train vmap M=2", lambda k, x, y: train_fn(k, x, y).state, keys,
                              images, labels, compute_dtype=config.compute_dtype).as_dict()
  name, unet = sizes.denoisers[0]
  den = jax.eval_shape(lambda: diffusion.create_denoiser(unet, diffusion.linear_schedule(),
                                                         jax.random.key(0)))
  with at.tracing():
    chunk = plan.chunk_memory(at.mesh(), config, sizes.num_train, sizes.num_test, (32, 32, 3),
                              denoiser=den, denoise_batch_size=sizes.num_train,
                              denoise_dtype="bfloat16", compiler_options=aot.COMPILER_OPTIONS)(2)
  out["chunk"] = {"peak": chunk["peak"], "denoise": chunk["denoise"], "train": chunk["train"],
                  "resident": chunk["resident"],
                  "train_census": aot.census(chunk["programs"]["train"].as_text()),
                  "denoise_census": aot.census(chunk["programs"]["denoise"].as_text())}
  eclipse = eclipse_program(at, sizes, lambda _: None, dtypes=("bfloat16",))
  out["eclipse"] = eclipse["bfloat16"]
  return out
