"""The devices a certification run spreads its models over: CPU devices on one host, a
one-axis "models" mesh over every device of every process, and the transfers between them."""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


log = logging.getLogger("jaxpoison.certification")

# ---------------------------------------------------------------------------------------------
# Devices.


CPU_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def configure_cpu_devices(count: int | None = None) -> int | None:
  """Splits the host CPU into `count` XLA devices (default: one per core available to this
  process), unless XLA_FLAGS already sets that. Call before JAX first touches a device.

  XLA:CPU runs one model's small convolutions on about one core, so on a CPU concurrency comes
  from devices: the chunk's models are sharded over them (measured on 2 cores: 1.26× the
  models per hour of one device; BENCHMARKS.md, issue 11). Votes do not depend on the device
  count. Harmless on an accelerator, where the CPU devices go unused. Returns the count set, or
  None when XLA_FLAGS already had one.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if CPU_DEVICES_FLAG in flags:
    return None
  if count is None:
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  if int(count) < 1:
    raise ValueError(f"cpu_devices: expected at least 1, got {count}")
  os.environ["XLA_FLAGS"] = f"{flags} {CPU_DEVICES_FLAG}={int(count)}".strip()
  return int(count)


def models_mesh(devices=None) -> Mesh:
  """A one-axis mesh "models" over every device of every process."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("models",))


def replicate(tree, mesh: Mesh):
  """Puts host arrays on every device of the mesh (also across hosts)."""
  sharding = NamedSharding(mesh, PartitionSpec())

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def shard_models(indices: np.ndarray, mesh: Mesh) -> jax.Array:
  """Model indices int32 [M], split over the mesh's models axis."""
  indices = np.asarray(indices, np.int32)
  sharding = NamedSharding(mesh, PartitionSpec("models"))
  return jax.make_array_from_callback(indices.shape, sharding, lambda index: indices[index])


def gather_to_host(array) -> np.ndarray:
  if isinstance(array, np.ndarray) or array.is_fully_addressable:
    return np.asarray(array)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))
