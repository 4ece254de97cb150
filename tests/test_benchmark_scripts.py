"""scripts/benchmark_denoiser.py and scripts/benchmark_trainer.py: the PyTorch reference runs on
the device JAX uses, the output names that device, and a device PyTorch lacks is a user error.

The CPU runs use the smallest settings (one small network, a batch of 2 or 2 training steps), as
subprocesses: the trainer's reference sets PyTorch's thread count, which would outlive the test
in-process. The skipped-reference checks run in-process with the device choice stubbed out, since
a JAX GPU cannot be faked on a CPU-only machine.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxpoison import cli

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("benchmark_denoiser", "benchmark_trainer")
DENOISER_ARGS = ["--model", "default", "--batch", "2", "--repeats", "1"]
TRAINER_ARGS = ["--num_train", "64", "--widths", "4,8,8", "--batch_size", "32", "--epochs", "1",
                "--models", "1", "--repeats", "1", "--torch_threads", "1"]


def _script(name):
  spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(name, *argv):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop(cli.TRACEBACK_ENV, None)
  result = subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *argv],
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


def _tiny_cifar(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "cifar.npz"
  np.savez(path, x_train=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
           y_train=rng.integers(0, 10, 64), x_test=rng.integers(0, 256, (32, 32, 32, 3),
                                                                 dtype=np.uint8),
           y_test=rng.integers(0, 10, 32))
  return path


def _main_output(capsys, name, argv, monkeypatch=None):
  """Runs the script's main(argv) in-process as `python script.py` would; its stdout."""
  module = _script(name)
  if monkeypatch is not None:
    # What auto answers when JAX runs on a GPU and PyTorch has no CUDA (see the unit test below).
    monkeypatch.setattr(module, "torch_device", lambda flag: (None, "stubbed: no CUDA"))
  with pytest.raises(SystemExit) as info:
    cli.run(module.main, argv)
  out, err = capsys.readouterr()
  assert info.value.code in (None, 0), err  # main returns None: sys.exit(None), success.
  return out


def test_benchmark_denoiser_cpu_reference_names_device_and_ratio():
  out = _run("benchmark_denoiser", *DENOISER_ARGS)
  assert "PyTorch" in out and "on cpu (" in out
  assert re.search(r"diffusers eager on cpu: [\d.]+ img/s \(warm-up [\d.]+ s\); "
                   r"ratio JAX/PyTorch \d+\.\d\d", out), out
  assert "| torch device |" in out
  assert re.search(r"^\| default denoiser architecture \| [\d,]+ \| [\d.]+ \| [\d.]+ \| "
                   r"\d+\.\d\d \| [\d.]+ \| float32 \| cpu \(\d+ threads?\) \|$", out, re.M), out


def test_benchmark_trainer_cpu_reference_names_device_and_ratio(tmp_path):
  out = _run("benchmark_trainer", "--data", str(_tiny_cifar(tmp_path)), *TRAINER_ARGS)
  assert "PyTorch reference: cpu (1 thread)" in out
  assert re.search(r"PyTorch eager reference on cpu \(1 thread\), one model at a time: "
                   r"[\d.]+ s per model \(warm-up [\d.]+ s\); PyTorch / jaxpoison \(M=1\): "
                   r"\d+\.\d\d", out), out
  assert re.search(r"^\| cpu \(1 thread\) \| [\d.]+ \| [\d.]+ \| \d+\.\d\d \| \d+\.\d\d \|$",
                   out, re.M), out
  assert re.search(r"^\| 1 \| [\d.]+ \| ", out, re.M), out  # The vmapped table is still there.


@pytest.mark.parametrize("name", SCRIPTS)
def test_torch_device_cuda_without_cuda_is_user_error(capsys, name):
  import torch
  if torch.cuda.is_available():
    pytest.skip("this PyTorch has CUDA: --torch_device cuda is valid here")
  with pytest.raises(SystemExit) as info:
    cli.run(_script(name).main, ["--torch_device", "cuda", *(
        DENOISER_ARGS if name == "benchmark_denoiser" else TRAINER_ARGS)])
  out, err = capsys.readouterr()
  assert info.value.code == cli.EXIT_USER_ERROR, err
  lines = [line for line in err.splitlines() if line.strip()]
  assert lines == [f"error: --torch_device cuda: PyTorch {torch.__version__} sees no CUDA device;"
                   " use --torch_device cpu or auto"], err
  assert out == ""  # Refused before any benchmark ran.


@pytest.mark.parametrize("name", SCRIPTS)
def test_torch_device_follows_jax(monkeypatch, name):
  import jax
  import torch
  module = _script(name)
  monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert module.torch_device("auto") == ("cpu", "")
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  device, why = module.torch_device("auto")
  assert device is None and "JAX runs on gpu" in why and "no CUDA device" in why
  assert module.torch_device("cpu") == ("cpu", "")  # Asked for: a cross-device ratio.
  monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
  assert module.torch_device("auto") == ("cuda", "")
  assert module.torch_device("cuda") == ("cuda", "")


def test_benchmark_denoiser_skipped_reference_says_not_measured(capsys, monkeypatch):
  out = _main_output(capsys, "benchmark_denoiser", DENOISER_ARGS, monkeypatch)
  assert "diffusers eager: not measured (stubbed: no CUDA); ratio JAX/PyTorch not measured" in out
  assert re.search(r"^\| default denoiser architecture \| [\d,]+ \| [\d.]+ \| not measured \| "
                   r"not measured \| [\d.]+ \| float32 \| not run \|$", out, re.M), out


def test_benchmark_trainer_skipped_reference_says_not_measured(capsys, monkeypatch, tmp_path):
  out = _main_output(capsys, "benchmark_trainer",
                     ["--data", str(_tiny_cifar(tmp_path)), *TRAINER_ARGS], monkeypatch)
  assert "PyTorch reference: not run (stubbed: no CUDA)" in out
  assert "PyTorch eager reference: not measured (stubbed: no CUDA)" in out
  assert "| not run | not measured | not measured | not measured | not measured |" in out


def test_bench_witches_brew_times_both_and_reports_the_ratio(capsys):
  import json
  out = _run("bench_witches_brew", "--num_poisons", "4", "--width", "4", "--image_size", "8",
             "--warmup", "1", "--repeats", "1", "--torch_device", "cpu", "--torch_threads", "1")
  line = json.loads(out.strip().splitlines()[-1])
  assert line["torch_device"] == "cpu (1 thread)" and line["num_poisons"] == 4
  assert line["jax_seconds_per_step"] > 0 and line["torch_seconds_per_step"] > 0
  assert line["ratio_torch_over_jax"] == pytest.approx(
      line["torch_seconds_per_step"] / line["jax_seconds_per_step"])
  with pytest.raises(SystemExit) as info:
    cli.run(_script("bench_witches_brew").main, ["--num_poisons", "0"])
  assert info.value.code == 2 and "--num_poisons" in capsys.readouterr().err


def test_bench_dpa_times_both_ways_and_they_train_the_same_models(tmp_path, capsys):
  import json
  out = _main_output(capsys, "bench_dpa", [
      "--data", str(_tiny_cifar(tmp_path)), "--num_partitions", "2", "--num_models", "2",
      "--widths", "4,8,8", "--epochs", "1", "--batch_size", "8"])
  line = json.loads(out.strip().splitlines()[-1])
  assert line["num_models"] == 2 and line["together_s"] > 0 and line["one_at_a_time_s"] > 0
  # speedup is rounded to 2 decimals, the times to 4.
  assert line["speedup"] == pytest.approx(line["one_at_a_time_s"] / line["together_s"],
                                          abs=0.006)
  assert line["max_logit_difference"] < 1e-4
  with pytest.raises(SystemExit) as info:
    cli.run(_script("bench_dpa").main, ["--num_partitions", "2", "--num_models", "3"])
  assert info.value.code == 2 and "--num_models" in capsys.readouterr().err


def test_bench_purification_agrees_with_the_pytorch_loop(tmp_path, capsys):
  import json
  pytest.importorskip("diffusers")
  (tmp_path / "config.py").write_text(
      "import dataclasses\n"
      "from jaxpoison import diffusion\n"
      "from jaxpoison.eclipse import EclipseConfig, eclipse_ddpm_config\n\n"
      "def get_config():\n"
      "  unet = diffusion.UNetConfig(out_channels=6, block_out_channels=(8, 16),\n"
      "                              layers_per_block=1, attention_resolutions=(16,),\n"
      "                              norm_num_groups=4, scale_shift_norm=True,\n"
      "                              timestep_scale=0.25)\n"
      "  return EclipseConfig(ddpm=eclipse_ddpm_config(unet))\n")
  out = _main_output(capsys, "bench_purification", [
      "--config", str(tmp_path / "config.py"), "--num_images", "3", "--t_star", "6"])
  line = json.loads(out.strip().splitlines()[-1])
  assert line["reverse_steps"] == 6 and line["jax_s"] > 0 and line["torch_s"] > 0
  assert line["ratio_torch_over_jax"] == pytest.approx(line["torch_s"] / line["jax_s"])
  # The same network, noise and steps: the float outputs agree to rounding, so the stored grey
  # levels (truncated) differ by at most one where a value sits at a level's edge.
  assert line["max_grey_level_difference"] <= 1.0


def test_bench_sep_times_both_loops_and_they_agree(capsys):
  import json
  out = _main_output(capsys, "bench_sep", ["--num_images", "10", "--num_checkpoints", "2",
                                           "--steps", "1", "--inner_steps", "2",
                                           "--widths", "4,4,8,8"])
  line = json.loads(out.strip().splitlines()[-1])
  assert line["gradient_passes_per_image"] == 4 and line["host_s"] > 0 and line["scan_s"] > 0
  assert line["ratio_scan_over_host"] == pytest.approx(line["scan_s"] / line["host_s"],
                                                       abs=0.002)
  # The same computation; only signs of gradient components within rounding of zero may differ.
  assert line["share_of_values_differing"] < 0.01
  with pytest.raises(SystemExit) as info:
    cli.run(_script("bench_sep").main, ["--widths", "4,8"])
  assert info.value.code == 2 and "--widths" in capsys.readouterr().err


def test_friendly_noise_check_reports_each_step_size(tmp_path, capsys):
  import jax
  from jaxpoison import classifier, defenses
  data = _tiny_cifar(tmp_path)
  arrays = np.load(data)
  config = classifier.tiny_config(epochs=1, batch_size=32, whitening_images=64)
  models = classifier.train_models(jax.random.split(jax.random.key(0), 1), arrays["x_train"],
                                   arrays["y_train"], config)
  classifier.save_models(tmp_path / "models", models)
  out = _main_output(capsys, "friendly_noise_check",
                     ["--checkpoint", str(tmp_path / "models"), "--data", str(data),
                      "--lrs", "100,1", "--num_images", "8"])
  rows = [line for line in out.splitlines() if re.match(r"\| [\d.]+ \|", line)]
  assert [row.split(" | ")[0] for row in rows] == ["| 100", "| 1"]
  index = np.random.default_rng(1).choice(32, 8, replace=False)
  report = defenses.friendliness(models, arrays["x_test"][index], jax.random.key(3), lr=1.0)
  assert rows[1] == (f"| 1 | {report.mean_abs[0]:.2f} | {100 * report.at_bound[0]:.1f}% | "
                     f"{100 * report.kept[0]:.1f}% |")
  clean = (np.asarray(classifier.predict(models, arrays["x_test"][index]))[0]
           == arrays["y_test"][index]).mean()
  assert out.startswith(f"8 test images: accuracy {100 * clean:.1f}% clean, ")
  for argv, match in ((["--lrs", "0"], "positive step sizes"),
                      (["--checkpoint", str(tmp_path / "none")], "none")):
    with pytest.raises(SystemExit) as info:
      cli.run(_script("friendly_noise_check").main,
              ["--checkpoint", str(tmp_path / "models"), "--data", str(data), *argv])
    assert info.value.code == 2 and match in capsys.readouterr().err
