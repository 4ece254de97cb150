"""scripts/gpu_check.py --dry_run: every stage runs at toy sizes on the CPU, so the script
cannot rot before a GPU is lent; its JSON and Markdown hold every stage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxpoison.data import CIFAR10_LABEL_NAMES

REPO = Path(__file__).resolve().parent.parent


def test_dry_run_runs_every_stage(tmp_path):
  rng = np.random.default_rng(0)
  data = tmp_path / "data.npz"
  np.savez(data, x_train=rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8),
           y_train=np.arange(256) % 10, x_test=rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8),
           y_test=np.arange(50) % 10, label_names=np.array(CIFAR10_LABEL_NAMES))
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--dry_run",
                           "--data", str(data), "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((out / "gpu_check.json").read_text())
  assert results["dry_run"] and results["environment"]["backend"] == "cpu"
  for stage in ("denoise", "trainer", "planner", "accuracy", "certify", "peers"):
    assert stage in results and "error" not in results[stage], (stage, results[stage])
  # Denoising: f32 and bf16 measured with XLA's attention; cuDNN's refused on the CPU, saying why.
  measured = {(r["dtype"], r["attention"]) for r in results["denoise"] if "img_per_s" in r}
  assert measured == {("float32", "xla"), ("bfloat16", "xla")}
  assert all("not a CUDA GPU" in r["skipped"] for r in results["denoise"]
             if r["attention"] == "cudnn")
  assert {r["concurrency"] for r in results["trainer"] if r.get("ms_per_step", 0) > 0} == {
      "sequential", "vmap"}
  # No memory budget on a CPU: one model per device, whatever the concurrency.
  devices = results["environment"]["device_count"]
  assert results["planner"]["sequential"] == results["planner"]["vmap"] == devices
  assert 0 <= results["accuracy"]["accuracy_mean"] <= 1 and results["accuracy"]["models"] == 2
  assert results["certify"]["s_per_model"] > 0
  assert results["certify"]["models_per_step"] % devices == 0
  assert "skipped" in results["peers"]
  block = (out / "gpu_check.md").read_text()
  assert "DRY RUN" in block and "**Trainer**" in block and block in result.stdout
