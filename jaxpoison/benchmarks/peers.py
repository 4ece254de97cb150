"""Where the PyTorch references of the speed benchmarks run: on the device JAX uses, so that a
ratio compares one device with itself (a GPU JAX run against a CPU PyTorch run says nothing)."""

from __future__ import annotations

import jax


def torch_device(flag: str = "auto") -> tuple[str | None, str]:
  """(PyTorch device name or None, why none) for --torch_device `flag` (auto, cpu, cuda).

  auto follows JAX's backend: "cpu" on a CPU, "cuda" on a GPU when PyTorch sees CUDA, else
  None with the reason (the reference is skipped, its ratio not measured). Raises ValueError
  for "cuda" when PyTorch has no CUDA device.
  """
  import torch
  has_cuda = torch.cuda.is_available()
  if flag not in ("auto", "cpu", "cuda"):
    raise ValueError(f"--torch_device: expected auto, cpu or cuda, got {flag!r}")
  if flag == "cuda" and not has_cuda:
    raise ValueError(f"--torch_device cuda: PyTorch {torch.__version__} sees no CUDA device; "
                     "use --torch_device cpu or auto")
  if flag != "auto":
    return flag, ""
  backend = jax.default_backend()
  if backend == "cpu":
    return "cpu", ""
  on_gpu = backend in ("gpu", "cuda", "rocm")
  if on_gpu and has_cuda:
    return "cuda", ""
  lacks = "no CUDA device" if on_gpu else f"no {backend} device"
  return None, (f"JAX runs on {backend} and PyTorch {torch.__version__} has {lacks}, so the "
                "PyTorch reference is skipped; pass --torch_device cpu for a CPU reference")


def describe_torch_device(device: str, threads: int | None = None) -> str:
  """"cuda (<GPU name>)" or "cpu (<n> threads)" (PyTorch's own thread count by default)."""
  import torch
  if device == "cuda":
    return f"cuda ({torch.cuda.get_device_name()})"
  threads = torch.get_num_threads() if threads is None else threads
  return f"cpu ({threads} thread{'' if threads == 1 else 's'})"
