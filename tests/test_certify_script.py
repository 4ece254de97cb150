"""scripts/certify.py end to end on the CPU: tiny data, a tiny random denoiser, the tiny trainer.

Checks the outputs' structure, that radii agree with the stored counts, that a run killed with
SIGKILL and resumed gives the votes of an uninterrupted run bit for bit, that another config is
refused, that four (virtual) devices give the votes of one, and that two real processes
(jax.distributed on localhost) give them too, with process 0 the only writer, resuming after a
kill; and that bad multi-process launches end in one line with exit code 2.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats

from jaxpoison import diffusion, pipeline
from jaxpoison.data import CIFAR10_LABEL_NAMES

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "certify.py"
# α = 0.05: with 6 estimation models the best bound is 0.05^(1/6) ≈ 0.61 > 1/2, so points where
# all models agree are certified (at α = 0.001 every point would abstain and the radius checks
# below would compare zeros with zeros).
NUM_MODELS, N0, ALPHA = 8, 2, 0.05
TINY_UNET = diffusion.UNetConfig(block_out_channels=(8, 16), layers_per_block=1,
                                 attention_resolutions=(), norm_num_groups=4,
                                 mid_attention=False)


PALETTE = np.array([(0.85, 0.15, 0.15), (0.15, 0.85, 0.15), (0.15, 0.15, 0.85)])


def _class_coloured(rng, labels):
  # Three of the ten classes, each a flat colour under strong pixel noise: the tiny models
  # trained on the noisy copies then meet test images of similar statistics (on clean flat
  # images they collapse to one class) and agree on most points.
  images = PALETTE[labels][:, None, None, :] + rng.normal(0, 0.3, (len(labels), 32, 32, 3))
  return np.clip(np.round(images * 255), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("certify_inputs")
  rng = np.random.default_rng(0)
  y_train = np.arange(160) % 3
  y_test = np.arange(40) % 3
  np.savez(root / "data.npz", x_train=_class_coloured(rng, y_train), y_train=y_train,
           x_test=_class_coloured(rng, y_test), y_test=y_test,
           label_names=np.array(CIFAR10_LABEL_NAMES))
  denoiser = diffusion.create_denoiser(TINY_UNET,
                                       diffusion.linear_schedule(), jax.random.key(0))
  # Output layer zeroed (ε̂ ≡ 0): the "denoised" copies are the noisy images, which a tiny
  # model still separates by colour, so the models agree and points get certified. A random
  # ε̂ would scramble every copy and leave nothing to certify.
  params = dict(denoiser.params)
  for name in ("conv_out.kernel", "conv_out.bias"):
    params[name] = np.zeros_like(params[name])
  denoiser = diffusion.Denoiser(params=params, unet=TINY_UNET, schedule=denoiser.schedule)
  diffusion.save_denoiser(denoiser, root / "denoiser")
  # The tiny preset takes 2 steps per epoch on 160 images; models that learn need more steps.
  (root / "config.py").write_text(
      "from jaxpoison import classifier, pipeline\n\n\n"
      "def get_config():\n"
      "  return pipeline.CertifyConfig(\n"
      "      trainer=classifier.tiny_config(epochs=10, batch_size=32, lookahead=False,\n"
      "                                     whitening_images=160))\n")
  return root


def _command(inputs, out, *extra, sigmas=("0.25", "0.5"), num_models=NUM_MODELS):
  return [sys.executable, str(SCRIPT), "--config", str(inputs / "config.py"),
          "--data", str(inputs / "data.npz"), "--denoiser", str(inputs / "denoiser"),
          "--num_models", str(num_models), "--n0", str(N0), "--alpha", str(ALPHA),
          "--num_test", "30",
          "--sigma", *sigmas, "--out", str(out), "--no_progress", *extra]


def _env(devices=1):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  # (A caller's own XLA_FLAGS kept: the processes compile as the tests' own programs do.)
  env["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                      f"--xla_force_host_platform_device_count={devices}").strip()
  return env


def _run(command, devices=1, check=True):
  result = subprocess.run(command, env=_env(devices), capture_output=True, text=True,
                          timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
  return result


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory):
  out = tmp_path_factory.mktemp("certify") / "uninterrupted"
  result = _run(_command(inputs, out, "--models_per_step", "2"))
  return out, result


def _votes(out, sigma, num_models=NUM_MODELS):
  return pipeline.load_votes(Path(out) / f"sigma_{sigma}" / "votes", num_models, 30)


def test_outputs_structure_and_radii_agree_with_counts(uninterrupted):
  out, result = uninterrupted
  # One log line per chunk, with the models done so far, the rate and the ETA.
  assert "models 0-1 done" in result.stderr
  assert "2/8 models" in result.stderr and "8/8 models" in result.stderr
  assert "models/h; ETA" in result.stderr
  summary = json.loads((out / "summary.json").read_text())
  assert set(summary["sigmas"]) == {"0.25", "0.5"}
  assert summary["device"]["count"] == 1 and summary["version"]
  assert (out / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  for sigma in ("0.25", "0.5"):
    directory = out / f"sigma_{sigma}"
    s = json.loads((directory / "summary.json").read_text())
    assert s["num_models"] == NUM_MODELS and s["n0"] == N0 and s["num_test"] == 30
    assert set(s["certified_accuracy"]) == {"0", "0.05", "0.1", "0.25", "0.5", "1"}
    assert set(s["poisoning_radius"]) == {"1", "1%", "100%"}
    table = np.genfromtxt(directory / "certify.tsv", names=True, dtype=None, delimiter="\t")
    assert table.dtype.names == ("idx", "label", "predict", "radius", "correct")
    assert len(table) == 30
    counts = np.load(directory / "counts.npz")
    np.testing.assert_array_equal(counts["counts_select"].sum(1), N0)
    np.testing.assert_array_equal(counts["counts_estimate"].sum(1), NUM_MODELS - N0)
    np.testing.assert_array_equal(counts["test_indices"], table["idx"])
    votes = _votes(out, sigma)
    np.testing.assert_array_equal(
        counts["counts_estimate"], np.stack([(votes[N0:] == c).sum(0) for c in range(10)], 1))
    # The radius from the counts alone: σ Φ⁻¹ of the Clopper–Pearson bound on ĉA's count.
    c_a = counts["counts_select"].argmax(1)
    k = counts["counts_estimate"][np.arange(30), c_a]
    n = NUM_MODELS - N0
    p_a = stats.beta.ppf(ALPHA, k, n - k + 1)
    expected = np.where(p_a > 0.5, float(sigma) * stats.norm.ppf(np.clip(p_a, 1e-12, 1)), 0.0)
    np.testing.assert_allclose(table["radius"], expected, atol=6e-5)  # Table has 4 decimals.
    np.testing.assert_array_equal(table["predict"], np.where(p_a > 0.5, c_a, -1))
    np.testing.assert_array_equal(table["correct"], table["predict"] == table["label"])
    assert (table["radius"] > 0).any(), "nothing certified: the radius checks compare zeros"
    # PREDICT from the stored votes, with scipy's two-sided binomial test of the top two.
    smoothed = []
    for point in range(30):
      order = np.argsort(-np.bincount(votes[:, point], minlength=10), kind="stable")
      n_a, n_b = ((votes[:, point] == order[0]).sum(), (votes[:, point] == order[1]).sum())
      smoothed.append(order[0] if stats.binomtest(int(n_a), int(n_a + n_b)).pvalue <= ALPHA
                      else -1)
    assert s["smoothed_accuracy"] == pytest.approx(np.mean(np.array(smoothed) == table["label"]))
    assert s["certify_accuracy"] == pytest.approx(table["correct"].mean())


def test_killed_run_resumes_bit_identical(inputs, uninterrupted, tmp_path):
  out = tmp_path / "killed"
  process = subprocess.Popen(_command(inputs, out, "--models_per_step", "2", sigmas=("0.25",)),
                             env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  votes_dir = out / "sigma_0.25" / "votes"
  deadline = time.time() + 300
  while time.time() < deadline and not list(votes_dir.glob("models_*.npz")):
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (out / "summary.json").exists(), "the run finished before it could be killed"
  finished_before = pipeline.finished_models(votes_dir).sum()
  assert 0 < finished_before < NUM_MODELS
  result = _run(_command(inputs, out, "--models_per_step", "2", sigmas=("0.25",)))
  # The resumed run computes only the models not on disk.
  assert "models 0-1 done" not in result.stderr
  np.testing.assert_array_equal(_votes(out, "0.25"), _votes(uninterrupted[0], "0.25"))
  assert ((out / "sigma_0.25" / "certify.tsv").read_text()
          == (uninterrupted[0] / "sigma_0.25" / "certify.tsv").read_text())


def test_rerun_of_a_finished_run_changes_nothing(inputs, uninterrupted):
  out = uninterrupted[0]
  before = {p: p.stat().st_mtime_ns for p in out.rglob("models_*.npz")}
  result = _run(_command(inputs, out, "--models_per_step", "2"))
  assert "done in" not in result.stderr
  assert {p: p.stat().st_mtime_ns for p in out.rglob("models_*.npz")} == before


def test_other_config_is_refused_and_nothing_is_touched(inputs, uninterrupted):
  out = uninterrupted[0]
  before = (out / "settings.json").read_text()
  result = _run(_command(inputs, out, "--seed", "1"), check=False)
  assert result.returncode == 2
  assert "seed: folder has 0, this run has 1" in result.stderr
  assert (out / "settings.json").read_text() == before


def test_four_devices_give_the_votes_of_one(inputs, uninterrupted, tmp_path):
  # Eight models in one chunk over four devices: each device trains the same pair of models
  # as one chunk of the one-device run (two models per step), so the votes must be identical.
  four = tmp_path / "four"
  result = _run(_command(inputs, four, "--models_per_step", "8", sigmas=("0.25",)), devices=4)
  assert json.loads((four / "summary.json").read_text())["device"]["count"] == 4, result.stderr
  assert "models 0-7 done" in result.stderr
  np.testing.assert_array_equal(_votes(four, "0.25"), _votes(uninterrupted[0], "0.25"))


def test_noise_only_smoothing_runs_without_a_denoiser(inputs, uninterrupted, tmp_path):
  # --denoiser none: Weber et al.'s noise-only smoothing. Its training copies are the zero-ε
  # denoiser's outputs up to float rounding (tests/test_diffusion_denoise.py), so its models
  # behave like the uninterrupted run's: most points certified, and the same selected labels.
  out = tmp_path / "noise_only"
  command = _command(inputs, out, sigmas=("0.25",))
  command[command.index("--denoiser") + 1] = "none"
  _run(command)
  settings = json.loads((out / "settings.json").read_text())
  assert settings["denoiser"] == "none"
  summary = json.loads((out / "summary.json").read_text())["sigmas"]["0.25"]
  reference = json.loads((uninterrupted[0] / "summary.json").read_text())["sigmas"]["0.25"]
  assert summary["num_models"] == NUM_MODELS
  assert summary["certified_accuracy"]["0"] > 0.5 * reference["certified_accuracy"]["0"] > 0
  # The Figure 1 table and plot over both folders.
  table = _run([sys.executable, str(REPO / "scripts" / "certified_table.py"), "--runs",
                str(uninterrupted[0]), f"{out}=noise only", "--radii", "0,0.1",
                "--plot", str(tmp_path / "figure.png")]).stdout
  rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
  assert [row.split(" | ")[:3] for row in rows] == [
      ["| uninterrupted", "0.25", str(NUM_MODELS)], ["| uninterrupted", "0.5", str(NUM_MODELS)],
      ["| noise only", "0.25", str(NUM_MODELS)]]
  certified_at_0 = float(rows[2].split(" | ")[5].rstrip("%"))
  assert certified_at_0 == pytest.approx(100 * summary["certified_accuracy"]["0"], abs=0.06)
  assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_denoiser_downstream_pairs_the_same_noise_draws(inputs, tmp_path):
  # Two "denoisers" that see the same noise draws: the zero-ε one (its copies are the noisy
  # images) and noise only (the same images up to float rounding, tests/test_diffusion_
  # denoise.py): the paired difference must be about zero, and each folder is a resumable
  # certification run.
  command = [sys.executable, str(REPO / "scripts" / "denoiser_downstream.py"), "--denoisers",
             f"{inputs / 'denoiser'},none", "--config", str(inputs / "config.py"), "--data",
             str(inputs / "data.npz"), "--num_models", "4", "--out", str(tmp_path / "ds"),
             "--no_progress"]
  out = _run(command).stdout
  rows = [line for line in out.splitlines() if line.startswith("| ")][1:]  # after the header
  assert len(rows) == 2 and rows[0].endswith("— |") and rows[1].startswith("| none |")
  difference = float(rows[1].split(" | ")[2].split()[0])
  assert abs(difference) <= 10.0, out
  assert sorted(p.name for p in (tmp_path / "ds").iterdir())[1] == "1_none"


def _free_port(low=None, high=None):
  if low is None:
    with socket.socket() as sock:
      sock.bind(("127.0.0.1", 0))
      return sock.getsockname()[1]
  for port in np.random.default_rng().permutation(np.arange(low, high + 1)):
    with socket.socket() as sock:
      try:
        sock.bind(("127.0.0.1", int(port)))
        return int(port)
      except OSError:
        continue
  raise RuntimeError(f"no free port in [{low}, {high}]")


# JAX's Slurm detection puts the coordinator on the job's first node at port
# 61440 + SLURM_JOB_ID mod 4096.
SLURM_PORTS = (61440, 65535)


def _launch_two(inputs, outs, *extra, port, launchers, extra_1=()):
  """Both processes of a two-process run (one CPU device each). Each launched by "flags", by
  "env" (the README's plain-cluster variables) or by "slurm" (the variables srun sets, from
  which JAX finds the rest; port in SLURM_PORTS)."""
  processes = []
  for process_id, (out, launcher) in enumerate(zip(outs, launchers)):
    command = _command(inputs, out, *extra, *(extra_1 if process_id == 1 else ()),
                       sigmas=("0.25",))
    env = _env(devices=1)
    if launcher == "flags":
      command += ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
                  "--process_id", str(process_id)]
    elif launcher == "env":
      command.append("--distributed")
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(process_id))
    else:
      command.append("--distributed")
      env.update(SLURM_JOB_ID=str(port - SLURM_PORTS[0]), SLURM_STEP_NODELIST="localhost",
                 SLURM_NTASKS="2", SLURM_PROCID=str(process_id),
                 SLURM_LOCALID=str(process_id), SLURM_STEP_NUM_NODES="1")
    processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
  return processes


def test_two_processes_give_the_votes_of_one_and_resume_after_a_kill(inputs, uninterrupted,
                                                                        tmp_path):
  out = tmp_path / "two_processes"
  # Process 1 is given its own --out: it must neither read nor write one (process 0 tells it
  # which models are missing), so that folder must never appear.
  other_out = tmp_path / "process_1_out"
  # Two models per chunk (one per device), so that the kill comes between chunks.
  processes = _launch_two(inputs, (out, other_out), "--models_per_step", "2", port=_free_port(),
                          launchers=("flags", "flags"))
  votes_dir = out / "sigma_0.25" / "votes"
  deadline = time.time() + 300
  while (time.time() < deadline and not list(votes_dir.glob("models_*.npz"))
         and all(p.poll() is None for p in processes)):
    time.sleep(0.05)
  for process in reversed(processes):  # Process 1 dies mid-run; then its partner is stopped.
    process.send_signal(signal.SIGKILL)
  logs = [process.communicate() for process in processes]
  assert not (out / "summary.json").exists(), f"finished before the kill: {logs}"
  finished_before = pipeline.finished_models(votes_dir).sum()
  assert 0 < finished_before < NUM_MODELS, logs

  # Relaunched the two other documented ways at once: process 0 by the environment
  # variables, process 1 as srun starts it (Slurm's variables; JAX derives the coordinator);
  # the chunk size left to the planner, which looks at this process's own devices.
  processes = _launch_two(inputs, (out, other_out), port=_free_port(*SLURM_PORTS),
                          launchers=("env", "slurm"))
  logs = [process.communicate(timeout=600) for process in processes]
  assert [p.returncode for p in processes] == [0, 0], logs
  (stdout_0, stderr_0), (stdout_1, _) = logs
  assert "process 0 of 2: 1 local cpu device(s), 2 in all" in stdout_0
  assert "process 1 of 2: 1 local cpu device(s), 2 in all" in stdout_1
  assert "σ=0.25: smoothed accuracy" in stdout_0 and "σ=0.25" not in stdout_1
  assert "models 0-1 done" not in stderr_0  # Resumed: only the missing models computed.
  assert not other_out.exists()
  summary = json.loads((out / "summary.json").read_text())
  assert (summary["device"]["processes"], summary["device"]["count"]) == (2, 2)
  np.testing.assert_array_equal(_votes(out, "0.25"), _votes(uninterrupted[0], "0.25"))
  assert ((out / "sigma_0.25" / "certify.tsv").read_text()
          == (uninterrupted[0] / "sigma_0.25" / "certify.tsv").read_text())


def test_processes_with_other_settings_stop_with_one_line(inputs, tmp_path):
  # Process 1 certifies other test points than process 0: both stop before computing anything.
  processes = _launch_two(inputs, (tmp_path / "out", tmp_path / "out"), port=_free_port(),
                          launchers=("flags", "flags"), extra_1=("--num_test", "20"))
  logs = [process.communicate(timeout=300) for process in processes]
  assert [p.returncode for p in processes] == [2, 2], logs
  for _, stderr in logs:
    assert ("error: process(es) 1 have other run settings than process 0: every host needs the "
            "same data, denoiser, config and flags") in stderr, stderr
  assert not list((tmp_path / "out").rglob("models_*.npz"))


@pytest.mark.parametrize("flags, message", [
    (["--coordinator_address", "127.0.0.1:1234", "--num_processes", "2", "--process_id", "2"],
     "process id 2 with 2 processes: ids run from 0 to 1"),
    (["--coordinator_address", "localhost", "--num_processes", "2", "--process_id", "1"],
     "expected HOST:PORT"),
    (["--num_processes", "2", "--process_id", "1"],
     "no cluster (Slurm, Open MPI, Kubernetes, Cloud TPU) was detected to supply "
     "--coordinator_address (or JAX_COORDINATOR_ADDRESS)"),
    (["--coordinator_address", "127.0.0.1:{free}", "--num_processes", "2", "--process_id", "1",
      "--coordinator_timeout", "1"], "could not be reached within 1 s"),
    (["--coordinator_address", "127.0.0.1:{busy}", "--num_processes", "2", "--process_id", "0"],
     "is in use on this host"),
])
def test_bad_launches_end_in_one_line(flags, message, tmp_path):
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    ports = {"free": _free_port(), "busy": busy.getsockname()[1]}
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"),
               *[flag.format(**ports) for flag in flags]]
    started = time.time()
    result = _run(command, check=False)
  assert result.returncode == 2, result
  assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
  assert time.time() - started < 60
  assert not (tmp_path / "out").exists()
