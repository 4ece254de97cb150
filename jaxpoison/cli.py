"""What every script in scripts/ shares: a user error is one line on stderr and exit code 2.

A user error is something the person running the command can fix: a bad flag value, missing or
invalid data, a results folder of another run, an invalid config value, a missing file, a
checkpoint of another model, too little device memory. It prints `error: <message>` on one line
(newlines in the message become "; ") and exits with code 2, without a traceback. Any other
exception is a bug and keeps its traceback.

    from jaxpoison import cli

    def main(argv=None):
      args = cli.ArgumentParser(description=...).parse_args(argv)
      with cli.user_errors(ValueError, TypeError):  # Only where those mean a bad setting.
        config = make_config(args)
      ...

    if __name__ == "__main__":
      cli.run(main)

Each script's `main(argv=None)` takes its flags as a list, so tests run scripts in-process with
`cli.run(script.main, argv)`, exactly as the command line does.

Set JAXPOISON_TRACEBACK=1 to re-raise user errors with their traceback instead (for debugging).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_USER_ERROR = 2
TRACEBACK_ENV = "JAXPOISON_TRACEBACK"
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# jaxlib releases known to accept YNN_FLAG: XLA aborts the process on a flag it does not know,
# so other releases run without it.
YNN_JAXLIB_PREFIXES = ("0.10.",)


def configure_xla_cpu() -> bool:
  """Appends `--xla_cpu_experimental_ynn_fusion_type=dot` to XLA_FLAGS (XLA:CPU's YNNPACK
  kernels for dot operations) unless XLA_FLAGS already names that flag or the installed jaxlib
  is not one known to accept it. Returns whether it was added. Call before JAX first touches a
  device. scripts/eclipse.py does; the library never does on its own.

  On 2 CPU cores it makes ECLIPSE's purification 2.1× faster (16.3 s → 7.8 s for 32 images,
  100 steps; the authors' PyTorch loop: 7.4 s) and single-step denoising 1.45× faster; training
  (backward passes) gains under 10% (BENCHMARKS.md, issue 17). Each operation's result changes
  by float rounding only (a 512-term float32 dot: 7e-7 relative error against float64, 4e-7
  without), but the kernels differ between shapes, so a model trained alone and the same model
  trained vmapped beside others, which agree to 1e-3 without it, drift apart by ~2.5% of a
  variable over a short training run: why the certification scripts leave it off (their tests
  compare such programs). It only affects programs compiled for the CPU. To run without it, set
  the flag to an empty value: XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
  """
  from importlib import metadata
  flags = os.environ.get("XLA_FLAGS", "")
  if YNN_FLAG in flags:
    return False
  try:
    version = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return False
  if not version.startswith(YNN_JAXLIB_PREFIXES):
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=dot".strip()
  return True


class UsageError(Exception):
  """A mistake in how a script was called that the script found itself (not argparse)."""


def one_line(message: str) -> str:
  """`message` on one line: its non-empty lines joined by "; " (by a space after a colon, which
  introduces what follows)."""
  text = ""
  for line in str(message).splitlines():
    line = line.strip()
    if line:
      text += ("" if not text else " " if text.endswith(":") else "; ") + line
  return text


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` on one line to stderr and exits with code 2."""
  print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser whose errors are one line (argparse prints the usage too) and exit 2."""

  def error(self, message: str) -> NoReturn:
    fail(f"{message} (see {self.prog} --help)")


def comma_separated(kind: Callable[[str], Any]) -> Callable[[str], tuple]:
  """An argparse `type` for "a,b,c": a tuple of `kind` values, with a message naming the value
  that is not one (argparse would only name the function)."""
  def parse(text: str) -> tuple:
    values = []
    for item in (v.strip() for v in text.split(",")):
      if not item:
        continue
      try:
        values.append(kind(item))
      except ValueError:
        raise argparse.ArgumentTypeError(
            f"{item!r} in {text!r} is not {getattr(kind, '__name__', 'a valid value')}; expected "
            f"comma-separated {getattr(kind, '__name__', '')} values") from None
    return tuple(values)
  return parse


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_bool(text: str) -> bool:
  """An argparse `type` for a boolean flag's value: true/false, 1/0, yes/no."""
  value = _BOOLEANS.get(text.strip().lower())
  if value is None:
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; expected true or false")
  return value


def load_config_file(path: str | os.PathLike, *, flag: str = "--config") -> Any:
  """`get_config()` of the Python file `path` (e.g. one of configs/)."""
  path = Path(path)
  if not path.is_file():
    raise UsageError(f"{flag} {path}: no such file; expected a Python file with get_config()")
  spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  if spec is None or spec.loader is None:
    raise UsageError(f"{flag} {path}: not a Python file; expected a .py file with get_config()")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise UsageError(f"{flag} {path}: defines no get_config(); expected a function returning "
                     "the settings")
  return module.get_config()


def user_error_types() -> tuple[type[BaseException], ...]:
  """The exception types that always mean a user error, wherever they are raised."""
  # Imported on use: this module itself depends on none of the heavy submodules.
  from jaxpoison import classifier, diffusion, multihost, runs
  from jaxpoison.attacks import PoisonFileError
  from jaxpoison.data import DataError
  # runs.RunMismatch: both harnesses' refusals (pipeline.ResultsMismatch,
  # benchmarks.BenchmarkConfigError) derive from it.
  return (UsageError, DataError, runs.RunMismatch,
          PoisonFileError, diffusion.CheckpointMismatchError, diffusion.UntrainedSigmaError,
          classifier.CheckpointMismatchError, classifier.InsufficientMemoryError,
          multihost.LaunchError, FileNotFoundError)


def _describe(error: BaseException) -> str:
  message = str(error)
  if isinstance(error, FileNotFoundError) and error.filename is not None:
    message = f"{error.filename}: {error.strerror or 'no such file or directory'}"
  return one_line(message) or type(error).__name__


@contextlib.contextmanager
def user_errors(*extra_types: type[BaseException]) -> Iterator[None]:
  """Turns user errors raised inside into `error: <message>` and exit code 2.

  Args:
    *extra_types: more exception types that mean a user error inside this block only, e.g.
      ValueError and TypeError around building a config from flags (elsewhere they may be bugs).
  """
  try:
    yield
  except Exception as error:
    if os.environ.get(TRACEBACK_ENV) == "1":
      raise
    if not isinstance(error, user_error_types() + extra_types):
      raise
    fail(_describe(error))


def keep_cuda_plugin_off_without_a_gpu() -> bool:
  """On a machine with jax's CUDA plugin (the `aot` extra) but no NVIDIA driver, sets
  JAX_PLATFORMS=cpu unless it is set: the plugin's CUDA check would otherwise fail at jax's
  first device use and log a traceback, then fall back to the CPU anyway (and deviceless AOT
  needs its compiler registered, which that failed check prevents). Call before jax is
  imported. Returns whether it set it."""
  if "JAX_PLATFORMS" in os.environ or os.path.exists("/proc/driver/nvidia"):
    return False
  try:
    plugin = importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  except ModuleNotFoundError:  # No jax_plugins namespace: no plugin.
    plugin = False
  if plugin:
    os.environ["JAX_PLATFORMS"] = "cpu"
  return plugin


def run(main: Callable[[Sequence[str] | None], int | None],
        argv: Sequence[str] | None = None) -> NoReturn:
  """Calls `main(argv)` (None: the command line) and exits with its return value (None: 0);
  user errors exit with code 2 and one line."""
  if "jax" not in sys.modules:
    keep_cuda_plugin_off_without_a_gpu()
  with user_errors():
    code = main(argv)
  sys.exit(code)


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
  """The flags of a multi-process launch (`initialize_distributed`)."""
  from jaxpoison import multihost
  group = parser.add_argument_group(
      "several processes (jax.distributed)",
      "each flag falls back to its environment variable, then to the cluster JAX detects")
  group.add_argument("--distributed", action="store_true",
                     help="run as one of several processes (implied by the flags below)")
  group.add_argument("--coordinator_address", metavar="HOST:PORT",
                     help=f"process 0's host and a free port (${multihost.COORDINATOR_ENV})")
  group.add_argument("--num_processes", type=int,
                     help=f"how many processes in all (${multihost.NUM_PROCESSES_ENV})")
  group.add_argument("--process_id", type=int,
                     help=f"this process, 0 to N-1; 0 writes the results "
                     f"(${multihost.PROCESS_ID_ENV})")
  group.add_argument("--coordinator_timeout", type=float, default=multihost.DEFAULT_TIMEOUT_S,
                     metavar="SECONDS", help="how long to wait for the coordinator and for "
                     "every process to join")


def initialize_distributed(args: argparse.Namespace) -> str | None:
  """Starts jax.distributed when the flags ask for it (user errors exit 2 with one line);
  prints and returns the line naming this process and its devices, or None for one process."""
  if not (args.distributed or args.coordinator_address is not None
          or args.num_processes is not None or args.process_id is not None):
    return None
  from jaxpoison import multihost
  with user_errors():
    launch = multihost.resolve_launch(args.coordinator_address, args.num_processes,
                                      args.process_id, timeout_s=args.coordinator_timeout)
    line = multihost.initialize(launch)
  print(line, flush=True)
  return line
