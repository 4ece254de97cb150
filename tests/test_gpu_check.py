"""scripts/gpu_check.py --dry_run: every stage runs at toy sizes on the CPU, so the script
cannot rot before a GPU is lent; its JSON and Markdown hold every stage."""

import json

import numpy as np
import pytest

from jaxpoison.data import CIFAR10_LABEL_NAMES


def test_dry_run_runs_every_stage(tmp_path, capsys, run_script):
  rng = np.random.default_rng(0)
  data = tmp_path / "data.npz"
  np.savez(data, x_train=rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8),
           y_train=np.arange(256) % 10, x_test=rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8),
           y_test=np.arange(50) % 10, label_names=np.array(CIFAR10_LABEL_NAMES))
  out = tmp_path / "out"
  # In this process, as `python scripts/gpu_check.py --dry_run ...` runs it (a subprocess would
  # only add its start-up and compile the same programs).
  code = run_script("scripts/gpu_check.py", ["--dry_run", "--data", str(data), "--out", str(out)])
  printed = capsys.readouterr()
  assert code == 0, printed.err[-3000:]
  results = json.loads((out / "gpu_check.json").read_text())
  assert results["dry_run"] and results["environment"]["backend"] == "cpu"
  for stage in ("denoise", "trainer", "planner", "accuracy", "certify", "peers", "eclipse",
                "denoiser_training"):
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
  # ECLIPSE purification: both loops and dtypes timed beside the PyTorch loop (here on the CPU);
  # in float32 both compute the same steps on the same noise: one grey level apart at most.
  eclipse = {(r["loop"], r["dtype"]): r for r in results["eclipse"]}
  assert set(eclipse) == {("scan", "float32"), ("host", "float32"), ("scan", "bfloat16")}
  assert all(r["img_per_s"] > 0 and r["ratio_torch_over_jax"] > 0 for r in eclipse.values())
  assert eclipse[("scan", "float32")]["max_grey_level_diff"] <= 1.0
  assert eclipse[("host", "float32")]["max_grey_level_diff"] <= 1.0
  # Denoiser training: the stepwise chunk (on the CPU) trained and was timed.
  (training,) = results["denoiser_training"]
  assert training["finite_loss"] and training["ms_per_step"] > 0 and training["batch"] == 64
  assert training["minutes_for_24000_steps"] == pytest.approx(
      training["ms_per_step"] * 24_000 / 60_000)
  block = (out / "gpu_check.md").read_text()
  assert "**ECLIPSE purification" in block
  assert "DRY RUN" in block and "**Trainer**" in block and block in printed.out
  assert "**Denoiser training" in block
