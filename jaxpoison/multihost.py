"""One certification over several processes: the launch of `jax.distributed`, and the few
steps at which the processes must agree.

Launch. `jax.distributed.initialize()` alone reads only the coordinator address from the
environment (JAX 0.10); the number of processes and this process's id it takes from a cluster it
detects (Slurm, Open MPI, Kubernetes, Cloud TPU) or from its arguments. `resolve_launch` takes
each of the three from a flag, else from the environment variable the README names
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), else leaves it to JAX's cluster
detection; `initialize` checks the combination first, because JAX ends the process with an
abort (no Python exception, no exit code a launcher understands) when the coordinator cannot be
reached in time.

Agreement. Only process 0 reads and writes the results folder. What the others need from it
(which models are still missing, whether the folder was accepted) process 0 broadcasts, so
every process runs the same chunks in the same order even when the folder is not shared or a
shared file system shows it late; and the run settings (data, denoiser, trainer) are compared
across processes before anything is computed, since hosts with different data would otherwise
vote on different problems without an error.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import jax
import numpy as np

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
DEFAULT_TIMEOUT_S = 300  # JAX's own initialization_timeout.

T = TypeVar("T")


class LaunchError(ValueError):
  """A multi-process launch that cannot work: a bad combination of settings, an unreachable
  coordinator, processes that disagree on what they compute."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """Where the coordinator is and who this process is; None: left to JAX's cluster detection."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  timeout_s: float = DEFAULT_TIMEOUT_S


def _from_env(value, name: str, environ: Mapping[str, str], kind):
  if value is not None:
    return value
  text = environ.get(name, "").strip()
  if not text:
    return None
  try:
    return kind(text)
  except ValueError:
    raise LaunchError(f"{name}={text!r}: expected {kind.__name__ if kind is int else 'a value'}"
                      ) from None


def _split_address(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise LaunchError(f"coordinator address {address!r}: expected HOST:PORT, e.g. "
                      "10.0.0.1:12345")
  return host.strip("[]"), int(port)


def resolve_launch(coordinator_address: str | None = None, num_processes: int | None = None,
                   process_id: int | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                   environ: Mapping[str, str] | None = None) -> Launch:
  """Each setting from its argument, else its environment variable, else None (JAX's cluster
  detection); checks what is known of the combination.

  Raises:
    LaunchError: an unparsable variable, a malformed address, fewer than one process, a
      process id outside [0, num_processes), a timeout that is not positive.
  """
  environ = os.environ if environ is None else environ
  launch = Launch(_from_env(coordinator_address, COORDINATOR_ENV, environ, str),
                  _from_env(num_processes, NUM_PROCESSES_ENV, environ, int),
                  _from_env(process_id, PROCESS_ID_ENV, environ, int), float(timeout_s))
  if launch.coordinator_address is not None:
    _split_address(launch.coordinator_address)
  if launch.num_processes is not None and launch.num_processes < 1:
    raise LaunchError(f"number of processes: expected at least 1, got {launch.num_processes}")
  if launch.process_id is not None and launch.process_id < 0:
    raise LaunchError(f"process id: expected 0 or more, got {launch.process_id}")
  if (launch.process_id is not None and launch.num_processes is not None
      and launch.process_id >= launch.num_processes):
    raise LaunchError(f"process id {launch.process_id} with {launch.num_processes} processes: "
                      f"ids run from 0 to {launch.num_processes - 1}")
  if not launch.timeout_s > 0:
    raise LaunchError(f"timeout: expected a positive number of seconds, got {timeout_s}")
  return launch


def _check_port_free(port: int) -> None:
  # Process 0 hosts the coordination service on [::]:PORT; a port already taken would make JAX
  # abort later with a bare DEADLINE_EXCEEDED.
  for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
      return
    except OSError as error:
      if error.errno == errno.EADDRINUSE:
        raise LaunchError(f"coordinator port {port} is in use on this host (another run's "
                          "coordinator?); choose a free port for every process") from None
      if family == socket.AF_INET:
        raise LaunchError(f"cannot host the coordinator on port {port}: {error}") from None


def _wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
        return
    except OSError as error:
      last = error
    if time.monotonic() >= deadline:
      raise LaunchError(f"the coordinator {host}:{port} could not be reached within "
                        f"{timeout_s:g} s ({last.strerror or last}); start process 0 there, "
                        "or check the address and that the port is open")
    time.sleep(0.2)


def initialize(launch: Launch) -> str:
  """Starts `jax.distributed` for `launch`; returns one line naming this process and the
  devices it sees. Call before JAX touches a device.

  On the CPU, cross-process collectives use gloo (set explicitly: the CPU client needs an
  implementation to run a computation over several processes at all; accelerators use their own
  and ignore this setting).

  Raises:
    LaunchError: the settings are incomplete with no cluster to supply the rest, or the
      coordinator cannot be reached (process ≥ 1) or hosted (process 0) within the timeout.
  """
  if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if launch.coordinator_address is not None and launch.process_id is not None:
    host, port = _split_address(launch.coordinator_address)
    if launch.process_id == 0:
      _check_port_free(port)
    else:
      _wait_for_coordinator(host, port, launch.timeout_s)
  try:
    jax.distributed.initialize(coordinator_address=launch.coordinator_address,
                               num_processes=launch.num_processes,
                               process_id=launch.process_id,
                               initialization_timeout=max(1, int(round(launch.timeout_s))))
  except ValueError as error:  # What JAX's cluster detection could not supply.
    missing = [f"{flag} (or {env})" for value, flag, env in (
        (launch.coordinator_address, "--coordinator_address", COORDINATOR_ENV),
        (launch.num_processes, "--num_processes", NUM_PROCESSES_ENV),
        (launch.process_id, "--process_id", PROCESS_ID_ENV)) if value is None]
    raise LaunchError(f"multi-process launch incomplete ({error}): no cluster (Slurm, Open MPI, "
                      f"Kubernetes, Cloud TPU) was detected to supply {', '.join(missing)}; "
                      "set them") from None
  return describe()


def describe() -> str:
  devices = jax.local_devices()
  return (f"process {jax.process_index()} of {jax.process_count()}: {len(devices)} local "
          f"{devices[0].platform} device(s), {jax.device_count()} in all")


def is_writer() -> bool:
  """Process 0 reads and writes results; the others compute only."""
  return jax.process_index() == 0


def broadcast_from_writer(value) -> np.ndarray:
  """Process 0's `value` on every process (every process passes an array of the same shape and
  dtype; the others' contents are ignored)."""
  value = np.asarray(value)
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.broadcast_one_to_all(value))


def run_on_writer(fn: Callable[[], T], *, stopped: Callable[[str], Exception] = LaunchError
                  ) -> T | None:
  """`fn()` on process 0 only (None elsewhere). If it raises, process 0 re-raises it and every
  other process raises `stopped(...)`, instead of waiting forever at the next collective."""
  if jax.process_count() == 1:
    return fn()
  result, error = None, None
  if is_writer():
    try:
      result = fn()
    except Exception as e:  # Re-raised below, once the others know.
      error = e
  failed = int(broadcast_from_writer(np.int32(error is not None)))
  if error is not None:
    raise error
  if failed:
    raise stopped("process 0 stopped (its output says why)")
  return result


def check_same_everywhere(what: str, settings) -> None:
  """Raises LaunchError on every process unless all processes pass equal JSON-able `settings`
  (e.g. the run settings, which fingerprint the data and the denoiser)."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).digest()
  digests = np.asarray(multihost_utils.process_allgather(np.frombuffer(digest, np.uint8)))
  differing = [p for p in range(len(digests)) if not np.array_equal(digests[p], digests[0])]
  if differing:
    raise LaunchError(f"process(es) {', '.join(map(str, differing))} have other {what} than "
                      "process 0: every host needs the same data, denoiser, config and flags")
