"""The test session's crash handling (tests/conftest.py with pyproject.toml's pytest options):
a test that kills its pytest-xdist worker runs once more on a replacement worker, a second crash
fails it, an ordinary failure is never rerun, and the rest of the suite still runs. Checked on a
toy suite in a subprocess, with the project's own addopts and conftest, on one worker at a time:
with two, pytest-xdist 3.8 itself can end such a toy run in an INTERNALERROR (BrokenPipeError
from worksteal's check_schedule sending "steal" to the worker that has just died, before the
controller has seen it die): 2 of 32 two-worker runs here failed, the one captured this way.
The toy's tests take microseconds, so the window is hit often; the suite's take seconds."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TOY_SUITE = {
    # A native crash, once per mark file or every time.
    "crashing.py": """
import os, pathlib, signal
def crash(once_mark=None):
  if once_mark is not None:
    mark = pathlib.Path(__file__).with_name(once_mark)
    if mark.exists():
      return
    mark.write_text("")
  os.kill(os.getpid(), signal.SIGSEGV)
""",
    "test_a.py": """
def test_one(): pass
def test_two(): pass
def test_wrong_result(): assert 1 == 2
""",
    "test_b.py": """
from crashing import crash
def test_crashes_once(): crash(once_mark="crashed_once")
def test_crashes_always(): crash()
def test_after_the_crashes(): pass
""",
    # The last test: put back on the queue when nothing else is left there.
    "test_c.py": """
from crashing import crash
def test_last_crashes_once(): crash(once_mark="last_crashed_once")
""",
}


def test_a_crashed_worker_reruns_its_test_once_and_the_run_goes_on(tmp_path):
  options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
  (tmp_path / "pytest.ini").write_text(f"[pytest]\naddopts = {options['addopts']}\n")
  shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
  for name, text in TOY_SUITE.items():
    (tmp_path / name).write_text(text)
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
  run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
                        "-n", "1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  out = run.stdout
  assert run.returncode == 1, out + run.stderr
  assert re.search(r"2 failed, 5 passed, 3 rerun", out), out
  assert "PASSED test_b.py::test_crashes_once" in out
  assert re.search(r"FAILED test_b.py::test_crashes_always - worker 'gw\d+' crashed", out), out
  assert "FAILED test_a.py::test_wrong_result" in out
  assert "PASSED test_b.py::test_after_the_crashes" in out
  assert "PASSED test_c.py::test_last_crashes_once" in out
  assert out.count("replacing crashed worker") == 4, out
