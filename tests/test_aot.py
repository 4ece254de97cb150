"""jaxpoison.aot: device descriptions, the HLO census, the roofline, compiling for a target,
and (where the `aot` extra is installed) the hot programs compiled for an H100 on this CPU.

CI installs the extra and sets JAXPOISON_REQUIRE_AOT=1, so that a program that no longer
compiles for the GPU fails there rather than being skipped.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import pytest

from jaxpoison import aot, backend
from jaxpoison.certification import plan

REPO = Path(__file__).resolve().parent.parent


def test_shipped_specs_give_the_published_peaks():
  h100, h200 = aot.load_spec("h100"), aot.load_spec("h200")
  assert h100.description == "NVIDIA H100 80GB HBM3" and h100.compute_capability == (9, 0)
  assert h100.memory_bytes == 84_942_979_072 and h100.bandwidth == 3.35232e12
  # NVIDIA's dense bf16 figure for the H100 SXM is 989 TFLOP/s; TF32 half of it.
  assert h100.peak("bfloat16") == pytest.approx(989.4e12, rel=1e-3)
  assert h100.peak("float32") == pytest.approx(h100.peak("bfloat16") / 2)
  assert h200.memory_bytes == 143_771 * 2**20 and h200.bandwidth == 4.8e12
  assert h200.peak_flops == h100.peak_flops
  assert h100.target == backend.Target("gpu", "NVIDIA H100 80GB HBM3", (9, 0), h100.memory_bytes)


def test_spec_errors_are_one_line(tmp_path):
  with pytest.raises(ValueError, match="expected one of"):
    aot.load_spec("h300")
  bad = tmp_path / "x.txtpb"
  bad.write_text("gpu_device_info { core_count: 4 }\n")
  with pytest.raises(ValueError, match="device_memory_size"):
    aot.load_spec(str(bad))


HLO = textwrap.dedent("""\
    HloModule jit_f, entry_computation_layout={()->f32[]}

    %fused_add (p0: bf16[8,4], p1: bf16[8,4]) -> bf16[8,4] {
      %p0 = bf16[8,4]{1,0} parameter(0)
      %p1 = bf16[8,4]{1,0} parameter(1)
      ROOT %add.1 = bf16[8,4]{1,0} add(%p0, %p1)
    }

    %body (carry: (s32[], bf16[8,4])) -> (s32[], bf16[8,4]) {
      %carry = (s32[], bf16[8,4]{1,0}) parameter(0)
      %i = s32[] get-tuple-element(%carry), index=0
      %x = bf16[8,4]{1,0} get-tuple-element(%carry), index=1
      %w = f32[3,3,4,4]{3,2,1,0} constant({...})
      %xf = f32[8,4]{1,0} convert(%x)
      %conv = (bf16[8,4]{1,0}, u8[0]{0}) custom-call(%x, %x), custom_call_target="__cudnn$convForward"
      %wide = (f32[8,4]{1,0}, u8[0]{0}) custom-call(%xf, %w), custom_call_target="__cudnn$convBackwardFilter"
      %y = bf16[8,4]{1,0} get-tuple-element(%conv), index=0
      %f = bf16[8,4]{1,0} fusion(%x, %y), kind=kLoop, calls=%fused_add
      %t = bf16[4,8]{1,0} transpose(%f), dimensions={1,0}
      ROOT %out = (s32[], bf16[8,4]{1,0}) tuple(%i, %f)
    }

    %cond (carry.1: (s32[], bf16[8,4])) -> pred[] {
      %carry.1 = (s32[], bf16[8,4]{1,0}) parameter(0)
      ROOT %lt = pred[] constant(true)
    }

    ENTRY %main (a: bf16[8,4]) -> (s32[], bf16[8,4]) {
      %a = bf16[8,4]{1,0} parameter(0)
      %zero = s32[] constant(0)
      %init = (s32[], bf16[8,4]{1,0}) tuple(%zero, %a)
      %attn = (bf16[8,4]{1,0}, u8[0]{0}) custom-call(%a, %a, %a), custom_call_target="__cudnn$fmhaSoftmax"
      %gemm = (bf16[8,4]{1,0}, s8[16]{0}) custom-call(%a, %a), custom_call_target="__cublas$lt$matmul"
      %snd = (bf16[8,4]{1,0}, u32[], token[]) send(%a, %tok), channel_id=1
      ROOT %loop = (s32[], bf16[8,4]{1,0}) while(%init), condition=%cond, body=%body
    }
    """)


def test_census_counts_kernels_of_executed_computations():
  counted = aot.census(HLO, "bfloat16")
  assert counted["cudnn_convolutions"] == {"__cudnn$convBackwardFilter": 1,
                                           "__cudnn$convForward": 1}
  assert counted["fused_attention"] == 1 and counted["gemms"] == {"cublas": 1, "triton": 0}
  assert counted["while_loops"] == 1 and counted["host_transfers"] == 1
  assert counted["fusions"] == 1 and counted["transposes_copies"] == 1
  assert counted["transpose_copy_bytes"] == 8 * 4 * 2
  assert counted["f32_convs_gemms"] == 1  # the backward-filter convolution on f32 operands
  # Custom calls: outputs (incl. workspaces) + operands, in bytes.
  bf = 8 * 4 * 2
  conv, wide = 2 * bf + bf, (8 * 4 * 4 + 0) + (8 * 4 * 4 + 3 * 3 * 4 * 4 * 4)
  attn, gemm = bf + 3 * bf, (bf + 16) + 2 * bf
  assert counted["custom_call_bytes"] == conv + wide + attn + gemm
  # Not counted in a float32 program: f32 operands are its own dtype.
  assert aot.census(HLO, "float32")["f32_convs_gemms"] == 0
  instructions, kinds = aot.parse_hlo(HLO)
  assert kinds == {"fused_add": "nested", "body": "loop", "cond": "loop", "main": "entry"}
  assert instructions["conv"].operands == ["x", "x"] and instructions["conv"].bytes == bf


def test_roofline_is_the_slower_of_compute_and_memory():
  spec = aot.load_spec("h100")
  compute = aot.roofline(spec.peak("bfloat16"), 1.0, spec, "bfloat16")
  assert compute["bound"] == "compute" and compute["seconds"] == pytest.approx(1.0)
  memory = aot.roofline(1.0, 2 * spec.bandwidth, spec, "bfloat16")
  assert memory["bound"] == "memory" and memory["seconds"] == pytest.approx(2.0)


def test_targeting_makes_every_auto_choice_for_the_target_and_restores():
  h100 = aot.load_spec("h100").target
  before = backend.default_target()
  with backend.targeting(h100):
    assert backend.default_target() == h100
    assert backend.resolve_compute_dtype("auto") == "bfloat16"
    assert backend.resolve_loop("auto") == "scan"
    assert backend.resolve_attention("auto", 64, jnp.bfloat16) == "cudnn"
    assert backend.resolve_attention("auto", 256, jnp.bfloat16) == "cudnn"  # Hopper
    assert backend.resolve_models_at_once(0) == 0
  assert backend.default_target() == before and backend.resolve_loop("auto") == "host"
  with pytest.raises(TypeError, match="Target"):
    with backend.targeting("h100"):
      pass


def _linear_chunk(base, per_model, extra=lambda m: 0):
  calls = []

  def chunk_bytes(m):
    calls.append(m)
    return {"peak": base + per_model * m + extra(m)}
  return chunk_bytes, calls


def test_plan_from_programs_takes_the_largest_fitting_chunk():
  chunk_bytes, calls = _linear_chunk(10, 5)
  chosen = plan.plan_from_programs(chunk_bytes, budget=62, cap=128)
  assert chosen["per_device"] == 10 and chosen["peak"] == 60 and calls == [1, 2, 10]
  # Extrapolation overshoots (the footprint grows faster than linearly): stepped down until
  # the compiled chunk fits.
  chunk_bytes, calls = _linear_chunk(10, 5, extra=lambda m: 0 if m <= 2 else 3 * m)
  chosen = plan.plan_from_programs(chunk_bytes, budget=62, cap=128)
  assert chosen["peak"] <= 62 and chosen["per_device"] == 6
  assert all(chunk_bytes(m)["peak"] > 62 for m in range(chosen["per_device"] + 1, 11))
  chunk_bytes, _ = _linear_chunk(10, 5)
  assert plan.plan_from_programs(chunk_bytes, budget=62, cap=4)["per_device"] == 4
  assert plan.plan_from_programs(chunk_bytes, budget=16, cap=4)["per_device"] == 1
  assert plan.plan_from_programs(chunk_bytes, budget=14, cap=4)["per_device"] == 0


def test_choose_models_per_step_from_compiled_chunks_refuses_what_does_not_fit():
  from jaxpoison import classifier
  config = classifier.tiny_config()
  chunk_bytes, _ = _linear_chunk(2**30, 2**30)
  limit = 80 * 2**30
  # 90% of 80 GiB = 72 GiB: 71 models of 1 GiB on 1 GiB of base, at most 32 vmapped.
  assert plan.choose_models_per_step(None, config, 1000, 1, chunk_bytes=chunk_bytes,
                                     memory_bytes=limit) == 71
  assert plan.choose_models_per_step(None, config, 1000, 1, concurrency="vmap",
                                     chunk_bytes=chunk_bytes, memory_bytes=limit) == 32
  with pytest.raises(classifier.InsufficientMemoryError, match="does not fit"):
    plan.choose_models_per_step(None, config, 1000, 1, chunk_bytes=chunk_bytes,
                                memory_bytes=2**30)


def test_allocator_bytes_uses_jax_preallocation_for_a_described_gpu(monkeypatch):
  h100 = aot.load_spec("h100").target
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  assert plan.allocator_bytes(h100) == int(0.75 * h100.memory_bytes)
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
  assert plan.allocator_bytes(h100) == int(0.9 * h100.memory_bytes)
  assert plan.allocator_bytes(backend.default_target()) is None  # this CPU


@pytest.mark.skipif(aot.plugin_available(), reason="the aot extra is installed here")
def test_without_the_plugin_compiling_fails_with_one_line_naming_the_extra():
  with pytest.raises(aot.AotUnavailableError, match=r'pip install -e "\.\[aot\]"'):
    aot.AotTarget("h100")
  result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--aot", "h100", "--small",
                           "--out", "/nonexistent/never"], cwd=REPO, capture_output=True,
                          text=True)
  assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
  assert "[aot]" in result.stderr


def test_gpu_check_aot_flags_are_checked_before_anything_runs():
  for args, message in ((["--aot", "h300"], "expected one of"),
                        (["--small"], "only with --aot")):
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", *args], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


needs_plugin = pytest.mark.skipif(
    not aot.plugin_available() and os.environ.get("JAXPOISON_REQUIRE_AOT") != "1",
    reason='the aot extra is not installed (pip install -e ".[aot]")')


@pytest.fixture(scope="module")
def small_programs(tmp_path_factory):
  """compile_small("h100") in a fresh process: the CUDA plugin registers its compiler only
  when jax starts with JAX_PLATFORMS=cpu."""
  out = tmp_path_factory.mktemp("aot") / "small.json"
  code = ("import json, sys; from jaxpoison.benchmarks import aot_check; "
          "json.dump(aot_check.compile_small('h100'), open(sys.argv[1], 'w'), default=str)")
  result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(out.read_text())


@needs_plugin
def test_h100_denoiser_uses_cudnn_convolutions_and_fused_attention(small_programs):
  census = small_programs["denoise"]["census"]
  assert census["cudnn_convolutions_total"] >= 10 and census["fused_attention"] >= 1
  assert census["f32_convs_gemms"] == 0 and census["host_transfers"] == 0
  assert small_programs["denoise"]["roofline"]["seconds"] > 0


@needs_plugin
def test_h100_trainer_is_one_loop_of_cudnn_convolutions_without_host_transfers(small_programs):
  census = small_programs["trainer"]["census"]
  # Forward and backward convolutions (two vmapped models: the weight gradients are grouped
  # forward convolutions) all on cuDNN, inside the scanned loop.
  assert census["cudnn_convolutions_total"] >= 12 and census["while_loops"] >= 1
  assert census["host_transfers"] == 0 and census["f32_convs_gemms"] == 0
  # The max-pool's backward is elementwise, not a select_and_scatter: see models.max_pool.
  assert census["select_and_scatter"] == 0


@needs_plugin
def test_h100_two_model_chunk_fits_its_plan(small_programs):
  chunk = small_programs["chunk"]
  assert chunk["train_census"]["host_transfers"] == 0
  assert chunk["train_census"]["while_loops"] >= 1
  assert chunk["peak"] == max(chunk["denoise"], chunk["train"] + chunk["resident"])
  # Two models on 128 images of a tiny network: well under a GiB.
  assert 0 < chunk["peak"] < 2**30


@needs_plugin
def test_h100_purification_step_compiles_in_bf16(small_programs):
  census = small_programs["eclipse"]["census"]
  assert census["cudnn_convolutions_total"] >= 10 and census["while_loops"] >= 1
  assert census["f32_convs_gemms"] == 0
