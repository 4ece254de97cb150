"""Every "auto" choice, resolved in one place from the device a program is built for.

The library's programs choose how to run by the kind of device they target: how a long loop
runs (one scanned program, or a jitted step called from Python), the dtype of convolutions
and matmuls, the attention kernel, how many models train at once. Each rule lives here and is
a function of a `Target` (platform, device kind, compute capability, memory), not of
`jax.default_backend()`, so a program can be planned for a device other than the one this
process runs on: `Target.from_device(d)` takes any device, also one of a deviceless topology
(`jax.experimental.topologies`), e.g. an H100 described on a CPU host for AOT compilation.
Every resolver takes `target=None` to mean the target set by `targeting(...)` (the AOT
compiler, `jaxpoison.aot`, sets it while it traces a program), else the process's default device.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses

import jax
import jax.numpy as jnp

LOOPS = ("auto", "scan", "host")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class Target:
  """The device a program is built for.

  platform: "cpu", "gpu" or "tpu" (jax's platform names; "cuda"/"rocm" are read as "gpu").
  device_kind: e.g. "NVIDIA H100 80GB HBM3" ("" when unknown).
  compute_capability: (major, minor) of a CUDA GPU, None elsewhere.
  memory_bytes: the device's memory, None when unknown.
  """
  platform: str
  device_kind: str = ""
  compute_capability: tuple[int, int] | None = None
  memory_bytes: int | None = None

  def __post_init__(self):
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(self.platform, self.platform)
    if platform not in ("cpu", "gpu", "tpu"):
      raise ValueError(f"Target.platform: expected 'cpu', 'gpu' or 'tpu', got {self.platform!r}")
    object.__setattr__(self, "platform", platform)

  @property
  def is_cpu(self) -> bool:
    return self.platform == "cpu"

  @classmethod
  def from_device(cls, device) -> "Target":
    """The target of one jax device (a live one, or one of a deviceless topology)."""
    capability = getattr(device, "compute_capability", None)
    if capability is not None:
      capability = tuple(int(v) for v in str(capability).split(".")[:2])
    memory = None
    try:
      stats = device.memory_stats() or {}
      memory = stats.get("bytes_limit")
    except Exception:  # Not every backend (nor a topology's device) reports memory.
      pass
    return cls(device.platform, getattr(device, "device_kind", ""), capability, memory)


_TARGETED: contextvars.ContextVar[Target | None] = contextvars.ContextVar("target", default=None)


def default_target() -> Target:
  """The target set by `targeting(...)`, else that of the process's default device
  (`jax.devices()[0]`)."""
  targeted = _TARGETED.get()
  return targeted if targeted is not None else Target.from_device(jax.devices()[0])


@contextlib.contextmanager
def targeting(target: Target):
  """Within the block, every "auto" choice is made for `target` (also those made while a
  program is traced). jax caches a jitted function's trace by its arguments, not by this
  setting: to build one function for two targets, trace it in a fresh `jax.jit` (as
  `jaxpoison.aot` does) or pass the resolved choices explicitly."""
  if not isinstance(target, Target):
    raise TypeError(f"target: expected a jaxpoison.backend.Target, got {type(target).__name__}")
  token = _TARGETED.set(target)
  try:
    yield target
  finally:
    _TARGETED.reset(token)


def _target(target: Target | None) -> Target:
  if target is None:
    return default_target()
  if not isinstance(target, Target):
    raise TypeError(f"target: expected a jaxpoison.backend.Target, got {type(target).__name__}")
  return target


def resolve_loop(loop: str = "auto", target: Target | None = None) -> str:
  """"scan" (the whole loop as one program) or "host" (a jitted step called from Python).

  "auto": host on a CPU, where XLA:CPU runs convolutions inside a while loop on a far slower
  path (the trainer, the denoiser's training and the attacks' crafting all measured it), and
  scan on an accelerator, where it avoids a host round trip per step. Both give the same
  results.
  """
  if loop not in LOOPS:
    raise ValueError(f"loop: expected one of {LOOPS}, got {loop!r}")
  if loop != "auto":
    return loop
  return "host" if _target(target).is_cpu else "scan"


def resolve_compute_dtype(compute_dtype: str = "auto", target: Target | None = None) -> str:
  """The name of the dtype convolutions and matmuls run in: "auto" is bfloat16 on an
  accelerator (statistics and parameters stay float32) and float32 on a CPU, which has no fast
  bfloat16 convolutions."""
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute dtype: expected one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
  if compute_dtype != "auto":
    return compute_dtype
  return "float32" if _target(target).is_cpu else "bfloat16"


def resolve_attention(requested: str, head_dim: int, dtype,
                      target: Target | None = None) -> str:
  """The `jax.nn.dot_product_attention` implementation for one attention layer.

  "auto": cuDNN's fused kernel on a CUDA GPU where its rules allow (bfloat16/float16 inputs,
  head dim a multiple of 8 and at most 128, or 256 from compute capability 9.0), XLA's otherwise
  (on a CPU or TPU, for float32, for other head dims). jax's own default (None) is XLA everywhere,
  so the fused kernel must be asked for. "xla"/"cudnn" force one ("cudnn" refuses shapes it
  cannot run, naming the rule).
  """
  if requested not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention: expected one of {ATTENTION_IMPLEMENTATIONS}, got {requested!r}")
  if requested == "xla":
    return "xla"
  target = _target(target)
  problems = []
  if target.platform != "gpu":
    problems.append(f"the backend is {target.platform}, not a CUDA GPU")
  else:
    hopper = (target.compute_capability or (0, 0)) >= (9, 0)
    limit = 256 if hopper else 128
    if head_dim % 8 or head_dim > limit:
      problems.append(f"head dim {head_dim} is not a multiple of 8 at most {limit}")
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    problems.append(f"inputs are {jnp.dtype(dtype).name}, cuDNN's fused kernel takes bf16/f16")
  if not problems:
    return "cudnn"
  if requested == "cudnn":
    raise ValueError("attention='cudnn' cannot run here: " + "; ".join(problems))
  return "xla"


def resolve_models_at_once(models_per_step: int, target: Target | None = None) -> int:
  """How many independent models one device trains at once where the caller left it open (0).

  On a CPU, one: XLA:CPU runs vmapped models' convolutions as grouped convolutions, several
  times slower than one model's (scripts/bench_dpa.py: 8 base classifiers 3.6× slower together
  than one after another). Elsewhere 0 stays 0: the trainer plans as many as memory allows.
  """
  if models_per_step < 0:
    raise ValueError(f"models_per_step: expected >= 0 (0 = automatic), got {models_per_step}")
  if models_per_step == 0 and _target(target).is_cpu:
    return 1
  return models_per_step


def resolve_one_pass_statistics(target: Target | None = None) -> bool:
  """Whether a normalization takes its variance in one pass over the activations (E[x²] − μ²,
  float32) rather than two (E[(x − μ)²], PyTorch's, which the parity tests compare with).

  One pass on an accelerator, where the activations' second read is memory traffic the step is
  bound by (the 35.7M UNet's single-step denoise moves about 10% fewer bytes; gpu_check --aot);
  two on a CPU, whose results stay those of the parity tests. The float32 statistics of bf16
  activations lose nothing that matters at these magnitudes (means within a few standard
  deviations).
  """
  return not _target(target).is_cpu
