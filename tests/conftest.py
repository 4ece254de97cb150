import importlib.util
import os
from pathlib import Path
from unittest import mock

import pytest

# Tests run on the CPU; keep XLA from grabbing every core's worth of threads per process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Compiling is about two thirds of a CPU test run (tests/test_defenses_dp_sgd.py: 77 s cold, 26 s
# from a warm compilation cache). LLVM at -O1 instead of XLA's default -O3 cuts a tiny
# trainer's compile from 10.6 s to 6.3 s and leaves its run time as it was (1.33 s, 1.37 s);
# the programs' semantics do not depend on it, only which float roundings the kernels make
# (see test_classifier's BATCHED_VS_ALONE_RTOL). Appended, so a caller's own XLA_FLAGS stay,
# and a level the caller sets wins.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=1").strip()
# (--xla_cpu_use_fusion_emitters=false compiles a quarter faster in some files but the whole
# suite only 2% faster, 1,490 s → 1,456 s on 2026-12-07: not worth testing under other flags
# than users run.)

# No persistent XLA compilation cache (JAX_COMPILATION_CACHE_DIR) in the test session: writing
# an entry serializes the compiled executable, and jaxlib 0.10.2's XLA:CPU serializer crashed a
# pytest-xdist worker with a segmentation fault in CI (stop 32, in
# compilation_cache.put_executable_and_time). The shared cache had stopped paying for itself:
# the whole suite took 859 s without it on 2 quiet cores (2026-12-03), about what it took with it.


# A test that takes its pytest-xdist worker down with a native crash runs once more, on the
# replacement worker; a second crash fails it. XLA:CPU has crashed a worker twice in CI, each
# time at a different place in a test that passes when run again (stop 32:
# compilation_cache.put_executable_and_time; stop 33: test_defenses_dp_sgd's frozen-batch-norm
# test, which passed four runs of its file here). A wrong result is never rerun: only a dead
# worker is. The crash is still reported: its faulthandler dump stays in the log, the test
# shows as "R" and the summary counts it as "rerun".
# This is pytest-xdist's own hook for it (xdist.newhooks.pytest_handlecrashitem); the scheduler
# must be able to put a test back (mark_test_pending), which --dist loadfile's cannot (and after
# a crash it can wait forever for the replacement worker: pytest-xdist#784, #1313), hence
# worksteal in pyproject.toml.
_CRASHED: set[str] = set()


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's, absent under -p no:xdist
def pytest_handlecrashitem(crashitem, report, sched):
  if crashitem not in _CRASHED:
    _CRASHED.add(crashitem)
    sched.mark_test_pending(crashitem)
    report.outcome = "rerun"


def pytest_report_teststatus(report, config):
  if report.outcome == "rerun":
    return "rerun", "R", ("RERUN", {"yellow": True})
  return None


REPO = Path(__file__).resolve().parent.parent


def load_script(script: str):
  """scripts/X.py (a path from the repository root) as a module: its main(argv) then runs in
  this process, with the programs this process has compiled already."""
  spec = importlib.util.spec_from_file_location(f"script_{Path(script).stem}", REPO / script)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture
def run_script():
  """`run_script("scripts/x.py", argv)`: the script's exit code (None from main counts as 0)
  when run in this process as the command line runs it (`cli.run`: user errors exit 2 with one
  line). os.environ is restored afterwards: a script may set variables (scripts/eclipse.py adds
  XLA:CPU's YNN flag to XLA_FLAGS) that must not reach later tests' subprocesses."""
  from jaxpoison import cli

  def run(script: str, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exited, mock.patch.dict(os.environ):
      cli.run(load_script(script).main, argv)
    return exited.value.code or 0

  return run


class _Parsed(Exception):
  pass


@pytest.fixture
def assert_command_parses(monkeypatch):
  """`assert_command_parses("scripts/x.py", args)`: the script's parser accepts `args` (a flag
  it does not know exits with code 2 instead); nothing past the parsing runs."""
  from jaxpoison import cli

  def parse_and_stop(self, argv=None, namespace=None):
    raise _Parsed(super(cli.ArgumentParser, self).parse_args(argv, namespace))

  monkeypatch.setattr(cli.ArgumentParser, "parse_args", parse_and_stop)

  def check(script: str, args: list[str]) -> None:
    with pytest.raises(_Parsed):
      load_script(script).main(args)

  return check
