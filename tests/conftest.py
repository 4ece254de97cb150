import atexit
import os
import shutil
import tempfile

# Tests run on the CPU; keep XLA from grabbing every core's worth of threads per process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache per test session, shared by the pytest-xdist workers
# (they inherit this environment from the controlling process) and by the scripts the tests
# start as subprocesses: test_certify_script runs the same certify programs several times, and
# compiling is about half of each run on a CPU. A fresh directory keeps sessions independent.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="jaxpoison-test-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
