"""The library's programs compiled for a GPU that is described, not present (deviceless AOT).

XLA's GPU compiler runs on a CPU-only host once jax's CUDA 12 plugin is installed (the `aot`
extra: `pip install -e ".[aot]"`). A `DeviceSpec` is XLA's target-config description of a GPU
(`assets/targets/*.txtpb`: "h100", "h200", or any spec file); `AotTarget` turns it into a
deviceless topology whose devices are sharding targets, and `AotTarget.compile` lowers a
function for them *with every "auto" choice made for that GPU* (`backend.targeting`: bf16,
cuDNN attention, the scanned loop) and compiles the real sm_90a executable. What comes back
(`Program`): XLA's memory analysis, flops (XLA's cost analysis of the unoptimized module,
backend-neutral), bytes moved (its cost analysis of the optimized module, plus the operands and
outputs of cuDNN/cuBLAS custom calls, which it counts as zero), a census of the optimized HLO
(cuDNN convolutions by kind, fused attention, GEMM backend, while loops, device↔host transfers,
transposes/copies, f32 convolutions and GEMMs) and a roofline time from the spec's peaks.

Limits (also in the report's notes): nothing is autotuned (cuDNN algorithm -1, no cuDNN
workspace in temp, Triton's default tiles), so temp is a lower bound and a device may pick other
kernels; XLA's cost analysis counts a while loop's body once (per-step figures come from a
program of one step); the memory analysis is one program's, not the CUDA context's or the
allocator's. `hlo_module_cost_analysis` and the executable's `hlo_modules()` are private jax
APIs, exercised by tests/test_aot.py at the pinned jax version.

The process must not have started a CUDA backend: this module sets `jax_platforms` to "cpu"
when jax has not started yet (or run with JAX_PLATFORMS=cpu). Without the plugin every entry
point fails with one line naming the extra.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from jaxpoison import backend

SPEC_DIR = Path(__file__).resolve().parent / "assets" / "targets"
SPECS = {"h100": "h100_sxm.txtpb", "h200": "h200_sxm.txtpb"}
INSTALL_HINT = 'pip install -e ".[aot]" (jax-cuda12-plugin, jax-cuda12-pjrt, nvidia-cudnn-cu12)'

# Options for every deviceless compile. CUB's radix sort (which XLA picks for large sorts: the
# trainer's per-epoch shuffles of M models × 50,000 images) sizes its scratch by asking a
# device, which a CPU host has not: XLA's own sort kernel instead. It runs once per model
# before the training loop, so no figure of the loop depends on it.
COMPILER_OPTIONS = {"xla_gpu_enable_cub_radix_sort": False}

# XLA's PrimitiveType numbers used as keys of the spec's matrix_unit_description.
_PRIMITIVE_TYPES = {"f16": 10, "f32": 11, "bf16": 16}


class AotUnavailableError(RuntimeError):
  """Deviceless compilation is not possible in this process (plugin missing, CUDA started)."""


# ---------------------------------------------------------------------------------------------
# Device descriptions.


def _field(text: str, name: str, cast=float):
  match = re.search(rf"^\s*{name}:\s*\"?([^\"\n]+)\"?\s*$", text, re.M)
  return cast(match.group(1)) if match else None


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  """A GPU as XLA's target config describes it, and the peaks its roofline uses.

  memory_bytes: device memory; bandwidth: HBM bytes/s; peak_flops: dense tensor-core flop/s
  per operand dtype ("bf16", "f16", "f32" = TF32, XLA's default precision for f32 convolutions
  and dots on Hopper), each 2 × clock × units × ops per clock × cores of the spec's matrix unit
  description (989 TFLOP/s bf16 for the H100 SXM, NVIDIA's published dense figure).
  """
  name: str
  description: str
  text: str
  memory_bytes: int
  bandwidth: float
  core_count: int
  compute_capability: tuple[int, int]
  peak_flops: dict
  source: str

  @classmethod
  def from_text(cls, text: str, name: str = "", source: str = "") -> "DeviceSpec":
    memory = _field(text, "device_memory_size", int)
    bandwidth = _field(text, "memory_bandwidth", float)
    cores = _field(text, "core_count", int)
    description = _field(text, "device_description_str", str) or _field(text, "name", str)
    if not (memory and bandwidth and cores and description):
      raise ValueError(f"target spec {source or name!r}: expected XLA's GPU target config "
                       "(gpu_device_info with device_memory_size, memory_bandwidth, core_count; "
                       "device_description_str)")
    major = re.search(r"cuda_compute_capability\s*\{\s*major:\s*(\d+)(?:\s*minor:\s*(\d+))?",
                      text)
    capability = (int(major.group(1)), int(major.group(2) or 0)) if major else (0, 0)
    units = re.search(r"matrix_unit_description\s*\{(.*?)\n  \}", text, re.S)
    peaks = {}
    for dtype, key in _PRIMITIVE_TYPES.items():
      rate = re.search(rf"key:\s*{key}\s*value\s*\{{\s*clock_rate_ghz:\s*([\d.]+)\s*"
                       rf"units_per_core:\s*(\d+)\s*ops_per_clock:\s*(\d+)",
                       units.group(1) if units else "")
      if rate:
        ghz, per_core, per_clock = float(rate[1]), int(rate[2]), int(rate[3])
        peaks[dtype] = 2 * ghz * 1e9 * per_core * per_clock * cores
    if "bf16" not in peaks:
      raise ValueError(f"target spec {source or name!r}: no bf16 rate in its "
                       "matrix_unit_description (the roofline's compute peak)")
    return cls(name or description, description, text, memory, bandwidth, cores, capability,
               peaks, source)

  @property
  def target(self) -> backend.Target:
    return backend.Target("gpu", self.description, self.compute_capability, self.memory_bytes)

  def peak(self, dtype: str) -> float:
    """Compute peak (flop/s) for programs computing in `dtype` ("bfloat16"/"float32"/...)."""
    short = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}.get(dtype, dtype)
    return self.peak_flops.get(short, self.peak_flops["bf16"])


def load_spec(name_or_path: str) -> DeviceSpec:
  """A shipped spec by name ("h100", "h200") or a target-config file (.txtpb)."""
  if name_or_path in SPECS:
    path = SPEC_DIR / SPECS[name_or_path]
    return DeviceSpec.from_text(path.read_text(), name_or_path, f"jaxpoison/assets/targets/"
                                f"{path.name}")
  path = Path(name_or_path)
  if not path.is_file():
    raise ValueError(f"target: expected one of {sorted(SPECS)} or an XLA GPU target-config "
                     f"file (.txtpb), got {name_or_path!r}")
  return DeviceSpec.from_text(path.read_text(), path.stem, str(path))


# ---------------------------------------------------------------------------------------------
# Topology and compilation.


def plugin_available() -> bool:
  """Whether jax's CUDA plugin (the `aot` extra) is installed."""
  import importlib.util
  try:
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  except ModuleNotFoundError:  # No jax_plugins namespace at all.
    return False


def _topology(spec: DeviceSpec, num_devices: int):
  if not plugin_available():
    raise AotUnavailableError(f"compiling for {spec.name} needs jax's CUDA plugin: "
                              f"{INSTALL_HINT}")
  from jax._src import xla_bridge
  from jax.experimental import topologies
  if not xla_bridge.backends_are_initialized() and not jax.config.jax_platforms:
    # The CUDA plugin's version check would otherwise fail on a host without a GPU, and the
    # plugin would not register its compiler.
    jax.config.update("jax_platforms", "cpu")
  try:
    return topologies.get_topology_desc(platform="cuda", target_config=spec.text,
                                        topology=f"1x1x{int(num_devices)}")
  except NotImplementedError as e:
    raise AotUnavailableError(
        "jax started before the CUDA plugin could register its compiler: run with "
        "JAX_PLATFORMS=cpu (or call jaxpoison.aot before anything touches a device)") from e


class AotTarget:
  """`num_devices` GPUs of one spec, as sharding targets for deviceless compilation."""

  def __init__(self, spec: DeviceSpec | str, num_devices: int = 1):
    self.spec = load_spec(spec) if isinstance(spec, str) else spec
    if int(num_devices) < 1:
      raise ValueError(f"num_devices: expected >= 1, got {num_devices}")
    self.devices = list(_topology(self.spec, int(num_devices)).devices)
    self.target = backend.Target.from_device(self.devices[0])
    # A topology's device reports no memory: the spec's.
    self.target = dataclasses.replace(self.target, memory_bytes=self.spec.memory_bytes)

  def mesh(self, axis: str = "models") -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.asarray(self.devices), (axis,))

  def sharding(self):
    return jax.sharding.SingleDeviceSharding(self.devices[0])

  def abstract(self, tree, sharding=None):
    """Arrays / shape structs of `tree` as ShapeDtypeStructs placed on this target."""
    sharding = sharding or self.sharding()

    def one(a):
      if isinstance(a, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
        return jax.ShapeDtypeStruct(np.shape(a), a.dtype,
                                    sharding=getattr(a, "sharding", None) if
                                    isinstance(a, jax.ShapeDtypeStruct) and
                                    a.sharding is not None else sharding)
      return a
    return jax.tree.map(one, tree)

  @contextlib.contextmanager
  def tracing(self):
    """Within the block, programs traced are traced for this target: every "auto" choice
    (`backend.targeting`) and jax's cuDNN attention rules see its GPU. jax's trace caches are
    cleared on entry and exit: a jitted helper traced before for this process's device, with
    the same shapes, would otherwise be reused with that device's choices (and the reverse)."""
    jax.clear_caches()
    try:
      with backend.targeting(self.target), _jax_sees_capability(self.spec.compute_capability):
        yield self
    finally:
      jax.clear_caches()

  def compile(self, name: str, fn: Callable, *args, compute_dtype: str = "bfloat16",
              jit_kwargs: dict | None = None, **static) -> "Program":
    """Traces `fn(*args, **static)` in a fresh jit with every "auto" choice made for this
    target, compiles it, and measures it (`Program`). `args` are abstract (or arrays)."""
    with self.tracing():
      jitted = jax.jit(lambda *a: fn(*a, **static), **(jit_kwargs or {}))
      start = time.perf_counter()
      lowered = jitted.lower(*args)
      lower_s = time.perf_counter() - start
      start = time.perf_counter()
      compiled = lowered.compile(compiler_options=COMPILER_OPTIONS)
      compile_s = time.perf_counter() - start
    return Program.measure(name, lowered, compiled, self.spec, compute_dtype,
                           lower_s=lower_s, compile_s=compile_s)


@contextlib.contextmanager
def _jax_sees_capability(capability: tuple[int, int]):
  """jax's cuDNN attention asks the default backend for the GPU's compute capability, and on a
  CPU host answers as for a pre-Hopper GPU (refusing head dim 256, which Hopper runs): while
  tracing for a target, it is told the target's."""
  from jax._src.cudnn import fused_attention_stablehlo as fused

  def parse(c):
    return tuple(int(x) for x in c.split("."))
  saved = fused.check_compute_capability, fused.is_cuda_compute_capability_equal
  fused.check_compute_capability = lambda c: tuple(capability) >= parse(c)
  fused.is_cuda_compute_capability_equal = lambda c: tuple(capability) == parse(c)
  try:
    yield
  finally:
    fused.check_compute_capability, fused.is_cuda_compute_capability_equal = saved


# ---------------------------------------------------------------------------------------------
# What a compiled program holds.


_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8,
                "u64": 8, "f64": 8, "c64": 8, "c128": 16, "token": 0}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(ROOT )?%([\w.\-]+) = ")


def _shape_arrays(shape: str) -> list[tuple[str, int]]:
  out = []
  for dtype, dims in _ARRAY.findall(shape):
    if dtype in _DTYPE_BYTES:
      out.append((dtype, math.prod(int(d) for d in dims.split(",") if d) if dims else 1))
  return out


def _shape_bytes(shape: str) -> int:
  return int(sum(_DTYPE_BYTES[d] * n for d, n in _shape_arrays(shape)))


def _balanced(text: str, start: int) -> int:
  """Index just past the parenthesis that closes the one at `start`."""
  depth = 0
  for i in range(start, len(text)):
    if text[i] == "(":
      depth += 1
    elif text[i] == ")":
      depth -= 1
      if depth == 0:
        return i + 1
  return len(text)


@dataclasses.dataclass
class Instruction:
  computation: str
  name: str
  shape: str
  opcode: str
  operands: list
  attributes: str

  @property
  def bytes(self) -> int:
    return _shape_bytes(self.shape)

  @property
  def dtype(self) -> str:
    arrays = _shape_arrays(self.shape)
    return arrays[0][0] if arrays else ""

  @property
  def target(self) -> str:
    match = re.search(r'custom_call_target="([^"]+)"', self.attributes)
    return match.group(1) if match else ""


def parse_hlo(text: str) -> tuple[dict, dict]:
  """(instructions by name, computation name → "entry"/"loop"/"nested") of an HLO module's
  text. Executed computations ("entry", "loop": while bodies and conditions, branches, calls)
  run their instructions as kernels; "nested" ones are fused into their caller."""
  instructions, order, computation, entry = {}, [], None, None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(" "):
      computation = header.group(2)
      order.append(computation)
      if header.group(1):
        entry = computation
      continue
    match = _INSTRUCTION.match(line)
    if not match or computation is None:
      continue
    rest = line[match.end():]
    if rest.startswith("("):
      end = _balanced(rest, 0)
      shape, rest = rest[:end], rest[end:].lstrip()
    else:
      shape, _, rest = rest.partition(" ")
    opcode, paren, tail = rest.partition("(")
    end = _balanced("(" + tail, 0)
    operands = re.findall(r"%([\w.\-]+)", tail[:end - 1])
    instructions[match.group(2)] = Instruction(computation, match.group(2), shape,
                                               opcode.strip(), operands, tail[end - 1:])
  kinds = {name: "nested" for name in order}
  if entry:
    kinds[entry] = "entry"
  for inst in instructions.values():
    if inst.opcode in ("while", "conditional", "call", "async-start"):
      for ref in re.findall(r"(?:body|condition|to_apply|calls|branch_computations)="
                            r"\{?([^}]*?)\}?(?:,|$)", inst.attributes):
        for name in re.findall(r"%?([\w.\-]+)", ref):
          if name in kinds:
            kinds[name] = "loop"
  return instructions, kinds


_NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
                "conditional", "call", "after-all", "partition-id", "replica-id", "opt-barrier",
                "add-dependency", "iota"}
_TRANSFERS = {"send", "recv", "send-done", "recv-done", "infeed", "outfeed"}


def census(text: str, compute_dtype: str = "bfloat16") -> dict:
  """What an optimized GPU module runs, counted from its text (see the module docstring)."""
  instructions, kinds = parse_hlo(text)
  executed = [i for i in instructions.values() if kinds.get(i.computation) != "nested"]
  targets = Counter(i.target for i in executed if i.opcode == "custom-call")
  convs = {t: n for t, n in targets.items() if t.startswith("__cudnn$conv")}
  attention = {t: n for t, n in targets.items() if "fmha" in t or "fMHA" in t}
  cublas = sum(n for t, n in targets.items() if t.startswith("__cublas"))
  fusions = [i for i in executed if i.opcode == "fusion"]
  triton = sum(1 for i in fusions if "__triton" in i.attributes)
  transfers = [i for i in executed if i.opcode in _TRANSFERS or "callback" in i.target
               or "host" in i.target.lower()]
  layout = [i for i in executed if i.opcode in ("transpose", "copy", "copy-start")
            or (i.opcode == "fusion" and "transpose" in i.name)]

  def operand_dtype(inst):
    for name in inst.operands[:2]:
      if name in instructions and instructions[name].dtype:
        return instructions[name].dtype
    return inst.dtype

  wide = []
  if compute_dtype in ("bfloat16", "float16"):
    for inst in instructions.values():
      heavy = (inst.opcode in ("convolution", "dot")
               or (inst.opcode == "custom-call" and (inst.target.startswith("__cudnn$conv")
                                                     or inst.target.startswith("__cublas"))))
      if heavy and operand_dtype(inst) == "f32":
        wide.append(inst.name)
  custom_bytes = sum(inst.bytes + sum(instructions[o].bytes for o in inst.operands
                                      if o in instructions)
                     for inst in executed if inst.opcode == "custom-call")
  return {
      "cudnn_convolutions": dict(sorted(convs.items())),
      "cudnn_convolutions_total": sum(convs.values()),
      "fused_attention": sum(attention.values()),
      "gemms": {"cublas": cublas, "triton": triton},
      "fusions": len(fusions),
      "kernels": sum(1 for i in executed if i.opcode not in _NOT_KERNELS),
      "while_loops": sum(1 for i in executed if i.opcode == "while"),
      "host_transfers": len(transfers),
      "transposes_copies": len(layout),
      "transpose_copy_bytes": int(sum(i.bytes for i in layout)),
      "f32_convs_gemms": len(wide),
      # Scatters into a zeroed buffer (a max-pool's backward through linen: classifier.models).
      "select_and_scatter": sum(1 for i in instructions.values()
                                if i.opcode == "select-and-scatter"),
      "custom_call_bytes": int(custom_bytes),
      "other_custom_calls": {t: n for t, n in targets.items()
                             if t not in convs and t not in attention
                             and not t.startswith("__cublas")},
  }


def _cost(module) -> dict:
  from jax._src import xla_bridge
  from jax._src.lib import _jax
  return dict(_jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module))


def top_kernels(text: str, count: int = 15) -> list[dict]:
  """The executed kernels moving the most bytes (operands + outputs, an upper bound: a fusion
  that slices an operand reads less of it), with the op that made them."""
  instructions, kinds = parse_hlo(text)
  rows = []
  for inst in instructions.values():
    if kinds.get(inst.computation) == "nested" or inst.opcode in _NOT_KERNELS:
      continue
    moved = inst.bytes + sum(instructions[o].bytes for o in inst.operands if o in instructions)
    op = re.search(r'op_name="([^"]+)"', inst.attributes)
    rows.append({"name": inst.name, "opcode": inst.opcode, "target": inst.target,
                 "shape": inst.shape[:80], "bytes": moved,
                 "op": (op.group(1).split("/")[-1] if op else "")})
  return sorted(rows, key=lambda r: -r["bytes"])[:count]


@dataclasses.dataclass
class Program:
  """One compiled program's figures (JSON-able through `as_dict`)."""
  name: str
  compile_s: float
  lower_s: float
  memory: dict
  flops: float
  bytes: float
  census: dict
  roofline: dict
  text: str = dataclasses.field(repr=False, default="")
  compiled: Any = dataclasses.field(repr=False, default=None)

  @classmethod
  def measure(cls, name, lowered, compiled, spec: DeviceSpec, compute_dtype: str, *,
              lower_s: float = 0.0, compile_s: float = 0.0) -> "Program":
    stats = compiled.memory_analysis()
    memory = {"arguments": int(stats.argument_size_in_bytes),
              "outputs": int(stats.output_size_in_bytes),
              "aliased": int(stats.alias_size_in_bytes),
              "temporaries": int(stats.temp_size_in_bytes)}
    memory["peak"] = (memory["arguments"] + memory["outputs"] + memory["temporaries"]
                      - memory["aliased"])
    text = compiled.as_text()
    counted = census(text, compute_dtype)
    flops = float(_cost(lowered.compiler_ir("hlo").as_hlo_module()).get("flops", 0.0))
    optimized = compiled._executable.xla_extension_executable().hlo_modules()[0]
    moved = float(_cost(optimized).get("bytes accessed", 0.0)) + counted["custom_call_bytes"]
    return cls(name, compile_s, lower_s, memory, flops, moved, counted,
               roofline(flops, moved, spec, compute_dtype), text, compiled)

  def as_dict(self) -> dict:
    return {"name": self.name, "compile_s": self.compile_s, "lower_s": self.lower_s,
            "memory": self.memory, "flops": self.flops, "bytes": self.bytes,
            "census": self.census, "roofline": self.roofline}


def roofline(flops: float, moved: float, spec: DeviceSpec, compute_dtype: str) -> dict:
  """max(flops ÷ compute peak, bytes ÷ bandwidth): the time no kernel schedule beats."""
  peak = spec.peak(compute_dtype)
  compute_s, memory_s = flops / peak, moved / spec.bandwidth
  return {"seconds": max(compute_s, memory_s), "compute_s": compute_s, "memory_s": memory_s,
          "bound": "memory" if memory_s >= compute_s else "compute",
          "peak_flops": peak, "bandwidth": spec.bandwidth}
