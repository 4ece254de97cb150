"""User errors in scripts/: one line on stderr, `error: ...`, exit code 2, no traceback.

Most checks run the scripts' main(argv) in-process through `cli.run` (what `python script.py`
runs); two run scripts/certify.py as a subprocess, for what only a real process shows.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxpoison import cli, data, pipeline, poison_benchmark
from test_data import _official_batches, _write_tar_gz

REPO = Path(__file__).resolve().parent.parent
CLOSED_PORT_URL = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # Local and closed: refused at once.


def _script(name):
  spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _user_error(capsys, main, argv) -> str:
  """Runs main(argv) as `python script.py` would; returns the one stderr line."""
  with pytest.raises(SystemExit) as info:
    cli.run(main, argv)
  err = capsys.readouterr().err
  assert info.value.code == 2, err
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


# --- the shared piece -------------------------------------------------------------------------

def test_argument_parser_error_is_one_line(capsys):
  parser = cli.ArgumentParser(prog="tool.py")
  parser.add_argument("--n", type=int)
  parser.add_argument("--xs", type=cli.comma_separated(float))
  with pytest.raises(SystemExit) as info:
    parser.parse_args(["--n", "abc"])
  assert info.value.code == 2
  assert capsys.readouterr().err == (
      "error: argument --n: invalid int value: 'abc' (see tool.py --help)\n")
  with pytest.raises(SystemExit):
    parser.parse_args(["--xs", "0.1,x"])
  assert "'x' in '0.1,x' is not float" in capsys.readouterr().err
  assert parser.parse_args(["--xs", "0.1, 2,"]).xs == (0.1, 2.0)


def test_parse_bool_reads_the_usual_spellings_and_names_a_bad_value():
  import argparse
  for text, value in (("true", True), ("False", False), ("1", True), ("0", False),
                      (" yes ", True), ("NO", False)):
    assert cli.parse_bool(text) is value
  with pytest.raises(argparse.ArgumentTypeError, match="'maybe' is not a boolean"):
    cli.parse_bool("maybe")


def test_one_line():
  assert cli.one_line("a\n\n  b\nc") == "a; b; c"
  assert cli.one_line("Differences:\n  seed: 0 vs 1\n  sigma: 1 vs 2") == \
      "Differences: seed: 0 vs 1; sigma: 1 vs 2"


@pytest.mark.parametrize("error", [
    data.DataError("bad data"), pipeline.ResultsMismatch("other run\n  seed: 0"),
    poison_benchmark.BenchmarkConfigError("other run"),
    FileNotFoundError(2, "No such file", "x.py"), cli.UsageError("bad call")])
def test_user_errors_become_one_line(capsys, error):
  def main(argv):
    raise error
  line = _user_error(capsys, main, [])
  assert "\n" not in line and line != "error: "


def test_other_errors_keep_their_traceback(capsys):
  def main(argv):
    raise ValueError("a bug")
  with pytest.raises(ValueError, match="a bug"):
    cli.run(main, [])
  # Only where the caller says so is a ValueError a user error.
  with pytest.raises(SystemExit):
    with cli.user_errors(ValueError):
      raise ValueError("sigma: expected > 0")
  assert capsys.readouterr().err == "error: sigma: expected > 0\n"


def test_traceback_env(monkeypatch):
  monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
  def main(argv):
    raise data.DataError("no data")
  with pytest.raises(data.DataError, match="no data"):
    cli.run(main, [])


def test_run_exits_with_mains_code():
  with pytest.raises(SystemExit) as info:
    cli.run(lambda argv: 3, [])
  assert info.value.code == 3


def test_load_config_file(tmp_path):
  with pytest.raises(cli.UsageError, match=r"--config .*missing\.py: no such file"):
    cli.load_config_file(tmp_path / "missing.py")
  (tmp_path / "empty.py").write_text("x = 1\n")
  with pytest.raises(cli.UsageError, match=r"empty\.py: defines no get_config\(\)"):
    cli.load_config_file(tmp_path / "empty.py")
  (tmp_path / "ok.py").write_text("def get_config():\n  return 7\n")
  assert cli.load_config_file(tmp_path / "ok.py") == 7


# --- every script, in-process -----------------------------------------------------------------

@pytest.mark.parametrize("name, argv, expected", [
    ("certify", ["--num_models", "abc"], "argument --num_models: invalid int value: 'abc'"),
    ("certify", ["--sigma", "-1"], "sigma: expected a noise level > 0"),
    ("certify", ["--n0", "0"], "n0: expected at least 1 selection model, got 0"),
    ("certify", ["--config", "nothere.py"], "--config nothere.py: no such file"),
    ("bench_attacks", ["--steps", "0"], "num_steps: expected a finite value > 0, got 0"),
    ("bench_poison_benchmark", ["--config", "nothere.py", "--out", "x"],
     "--config nothere.py: no such file"),
    ("benchmark_certify", ["--data", "x.npz", "--num_models", "1"], "num_models (1) must exceed"),
    ("benchmark_denoiser", ["--model", "big"], "argument --model: invalid choice: 'big'"),
    ("benchmark_trainer", ["--widths", "16,x"], "'x' in '16,x' is not int"),
    ("convert_checkpoint", ["{tmp}", "{tmp}/out"], "no config.json"),
    ("evaluate_denoiser", ["--sigmas", "0.1,-1"], "--sigmas: expected a noise level > 0"),
    ("poison_benchmark", ["--victim_model", "vgg"], "model: expected one of"),
    ("poison_benchmark", ["--sigmas", "0.1,y"], "'y' in '0.1,y' is not float"),
    ("train_classifier", ["--set", "epochs"], "--set 'epochs': expected FIELD=VALUE"),
    ("train_classifier", ["--set", "no_such_field=1"], "no_such_field"),
    ("train_classifier", ["--config", "airbench"], "--config airbench: no such file"),
    ("train_classifier", ["--data", "{tmp}/missing.npz"], "missing.npz: no such file"),
    ("train_denoiser", [], "the following arguments are required: --out"),
    ("evaluate_denoiser", ["--anchors", "median"], "--anchors: expected names from"),
    ("evaluate_denoiser", ["--denoisers", "default,none"], "'none' has no network to evaluate"),
    ("certified_table", ["--runs", "{tmp}"], "no finished σ"),
    ("denoiser_downstream", ["--denoisers", "default", "--num_models", "1"],
     "--num_models: expected at least 2, got 1"),
    ("gpu_check", ["--budget_minutes", "0"], "--budget_minutes: expected > 0"),
    ("benchmark_denoiser_training", ["--unet", '{"patch_size": 3}'], "patch_size"),
])
def test_script_user_errors(capsys, tmp_path, name, argv, expected):
  argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
  line = _user_error(capsys, _script(name).main, argv)
  assert expected in line


def test_certify_official_data_then_results_folder_of_another_run(capsys, tmp_path, monkeypatch):
  # The default data source, served from a local archive, through the script; then the folder
  # check, which comes after loading: a folder that is not a results folder is refused.
  _, _, members = _official_batches()
  archive, md5 = _write_tar_gz(tmp_path / "served.tar.gz", members)
  monkeypatch.setenv(data.URL_ENV, archive.as_uri())
  monkeypatch.setenv(data.MD5_ENV, md5)
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "cache"))
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("something else")
  with pytest.raises(SystemExit) as info:
    cli.run(_script("certify").main, ["--out", str(out), "--trainer", "tiny", "--num_models", "4",
                                      "--n0", "2", "--no_progress"])
  err = capsys.readouterr().err
  assert info.value.code == 2
  assert "downloading CIFAR-10" in err
  assert f"error: {out} is not empty and has no settings.json" in err
  assert (tmp_path / "cache" / data.CACHE_NAME).is_file()
  np.testing.assert_array_equal(np.load(tmp_path / "cache" / data.CACHE_NAME)["x_test"],
                                _official_batches()[0]["test_batch"])


# --- scripts/certify.py as a process ----------------------------------------------------------

def _run_certify(tmp_path, *argv):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXPOISON_CIFAR10_URL=CLOSED_PORT_URL,
             JAXPOISON_DATA_DIR=str(tmp_path / "cache"))
  env.pop(cli.TRACEBACK_ENV, None)
  return subprocess.run([sys.executable, str(REPO / "scripts" / "certify.py"), *argv,
                         "--out", str(tmp_path / "out"), "--no_progress"],
                        env=env, capture_output=True, text=True, timeout=300)


def test_certify_offline_says_how_to_pass_data(tmp_path):
  result = _run_certify(tmp_path)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(f"error: could not download CIFAR-10 from {CLOSED_PORT_URL} (")
  assert "--data /path/to/cifar10.npz" in lines[0] and "Traceback" not in result.stderr
  assert result.stdout == ""
  assert not (tmp_path / "out").exists()


def test_certify_bad_flag_process(tmp_path):
  result = _run_certify(tmp_path, "--num_models", "abc")
  assert result.returncode == 2
  assert result.stderr == ("error: argument --num_models: invalid int value: 'abc' "
                           "(see certify.py --help)\n")


def test_configure_xla_cpu_adds_ynn_only_where_known(monkeypatch):
  from importlib import metadata
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  monkeypatch.setattr(metadata, "version", lambda name: "0.10.2")
  assert cli.configure_xla_cpu()
  assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {cli.YNN_FLAG}=dot"
  assert not cli.configure_xla_cpu()  # already there: unchanged, not doubled
  assert os.environ["XLA_FLAGS"].count(cli.YNN_FLAG) == 1
  # A user's own value (an empty one switches YNNPACK off) is kept.
  monkeypatch.setenv("XLA_FLAGS", f"{cli.YNN_FLAG}=")
  assert not cli.configure_xla_cpu() and os.environ["XLA_FLAGS"] == f"{cli.YNN_FLAG}="
  # A jaxlib not known to accept the flag (XLA would abort on it) runs without it.
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setattr(metadata, "version", lambda name: "0.11.0")
  assert not cli.configure_xla_cpu() and "XLA_FLAGS" not in os.environ


def test_installed_jaxlib_accepts_the_ynn_flag():
  # The flag as configure_xla_cpu sets it, in a fresh process that compiles and runs a dot: a
  # jaxlib that did not know it would abort (this catches a jaxlib pin moved past the prefixes).
  from importlib import metadata
  if not metadata.version("jaxlib").startswith(cli.YNN_JAXLIB_PREFIXES):
    pytest.skip("this jaxlib runs without the flag")
  env = dict(os.environ, XLA_FLAGS=f"{cli.YNN_FLAG}=dot", JAX_PLATFORMS="cpu")
  code = "import jax.numpy as j; print(float((j.ones((8, 8)) @ j.ones((8, 8))).sum()))"
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.strip() == "512.0", result.stderr[-2000:]


@pytest.mark.parametrize("plugin,driver,preset,expected", [
    (True, False, None, "cpu"),      # the aot extra on a CPU-only machine: kept on the CPU
    (True, True, None, None),        # a GPU machine: jax decides
    (False, False, None, None),      # no plugin: nothing to keep off
    (True, False, "cuda", "cuda")])  # the user's choice stands
def test_cuda_plugin_is_kept_off_on_machines_without_a_gpu(monkeypatch, plugin, driver, preset,
                                                           expected):
  if preset is None:
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  else:
    monkeypatch.setenv("JAX_PLATFORMS", preset)
  monkeypatch.setattr(cli.os.path, "exists",
                      lambda p: driver if p == "/proc/driver/nvidia" else os.path.exists(p))
  monkeypatch.setattr(cli.importlib.util, "find_spec",
                      lambda name: object() if plugin else None)
  changed = cli.keep_cuda_plugin_off_without_a_gpu()
  assert os.environ.get("JAX_PLATFORMS") == expected
  assert changed == (expected == "cpu" and preset is None)
