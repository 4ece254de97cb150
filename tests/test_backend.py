"""The "auto" rules, resolved from a target rather than from the process's own backend."""

import jax
import jax.numpy as jnp
import pytest

from jaxpoison import backend
from jaxpoison.classifier import airbench94_config, resolve_compute_dtype, resolve_loop

CPU = backend.Target("cpu")
H100 = backend.Target("gpu", "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30)
A100 = backend.Target("cuda", "NVIDIA A100-SXM4-40GB", (8, 0))
TPU = backend.Target("tpu", "TPU v4")


def test_default_target_is_this_process_device():
  target = backend.default_target()
  assert target == backend.Target.from_device(jax.devices()[0])
  assert target.platform == jax.default_backend() == "cpu"


def test_platform_names_normalize_and_unknown_ones_are_refused():
  assert A100.platform == "gpu"
  with pytest.raises(ValueError,
                     match="Target.platform: expected 'cpu', 'gpu' or 'tpu', got 'metal'"):
    backend.Target("metal")
  with pytest.raises(TypeError, match="target: expected a jaxpoison.backend.Target"):
    backend.resolve_loop("auto", "gpu")


@pytest.mark.parametrize("target, loop, dtype", [
    (CPU, "host", "float32"), (H100, "scan", "bfloat16"), (A100, "scan", "bfloat16"),
    (TPU, "scan", "bfloat16")])
def test_auto_loop_and_dtype_follow_the_target(target, loop, dtype):
  assert backend.resolve_loop("auto", target) == loop
  assert backend.resolve_compute_dtype("auto", target) == dtype
  # Explicit choices are kept on every target.
  assert backend.resolve_loop("scan", target) == "scan"
  assert backend.resolve_loop("host", target) == "host"
  assert backend.resolve_compute_dtype("float32", target) == "float32"
  # The classifier's config-level resolvers apply the same rules.
  config = airbench94_config()
  assert resolve_loop(config, target) == loop
  assert resolve_compute_dtype(config, target) == jnp.dtype(dtype)


def test_unknown_choices_are_refused_naming_the_options():
  with pytest.raises(ValueError,
                     match=r"loop: expected one of \('auto', 'scan', 'host'\), got 'fast'"):
    backend.resolve_loop("fast", CPU)
  with pytest.raises(ValueError, match="compute dtype: expected one of"):
    backend.resolve_compute_dtype("float16", CPU)
  with pytest.raises(ValueError, match="attention: expected one of"):
    backend.resolve_attention("flash", 64, jnp.bfloat16, H100)
  with pytest.raises(ValueError, match="models_per_step: expected >= 0"):
    backend.resolve_models_at_once(-1, CPU)


def test_attention_takes_cudnn_only_where_its_rules_allow():
  assert backend.resolve_attention("auto", 64, jnp.bfloat16, H100) == "cudnn"
  assert backend.resolve_attention("auto", 64, jnp.float16, A100) == "cudnn"
  assert backend.resolve_attention("auto", 64, jnp.float32, H100) == "xla"
  assert backend.resolve_attention("auto", 64, jnp.bfloat16, CPU) == "xla"
  assert backend.resolve_attention("auto", 64, jnp.bfloat16, TPU) == "xla"
  # Head dims above 128 only from compute capability 9.0; multiples of 8 only.
  assert backend.resolve_attention("auto", 256, jnp.bfloat16, H100) == "cudnn"
  assert backend.resolve_attention("auto", 256, jnp.bfloat16, A100) == "xla"
  assert backend.resolve_attention("auto", 60, jnp.bfloat16, H100) == "xla"
  assert backend.resolve_attention("xla", 64, jnp.bfloat16, H100) == "xla"
  with pytest.raises(ValueError, match="attention='cudnn' cannot run here: the backend is cpu"):
    backend.resolve_attention("cudnn", 64, jnp.bfloat16, CPU)
  with pytest.raises(ValueError, match="head dim 256 is not a multiple of 8 at most 128"):
    backend.resolve_attention("cudnn", 256, jnp.bfloat16, A100)


def test_models_at_once_is_one_on_a_cpu_and_left_to_the_planner_elsewhere():
  assert backend.resolve_models_at_once(0, CPU) == 1
  assert backend.resolve_models_at_once(0, H100) == 0
  assert backend.resolve_models_at_once(4, CPU) == 4


def test_one_pass_statistics_on_accelerators_only():
  assert backend.resolve_one_pass_statistics(backend.Target("cpu")) is False
  assert backend.resolve_one_pass_statistics(backend.Target("gpu", "H100", (9, 0))) is True
  assert backend.resolve_one_pass_statistics(backend.Target("tpu")) is True
