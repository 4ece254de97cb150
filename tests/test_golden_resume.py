"""Every kind of results folder a user has still resumes (issue 35, "nothing a user has breaks").

tests/data/golden_runs/ holds one interrupted run of each kind, written by the code of an
earlier commit (README.md there names it; make_golden.py there wrote them): a certification,
both attack harnesses, an ECLIPSE run and a denoiser training. Each test copies one folder and
runs the same command again with today's code, as a user would after an upgrade, and checks
that

* the folder is not refused as "written with other settings": a setting renamed, re-encoded or
  added without `runs.added_settings` would strand every folder users have;
* what was finished is reused, not redone: its records and chunk files are unchanged byte for
  byte and the progress log names only the missing units;
* the run completes;

and, where cheap (the refusal comes before anything compiles), that a changed setting is still
refused. A failure here means a change breaks users' folders: keep the old format readable (or
record the new setting in `runs.added_settings` with the value that reproduces the old runs)
rather than rewriting the golden folders.
"""

import dataclasses
import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxpoison import diffusion, eclipse, pipeline, runs
from jaxpoison import benchmarks as pb
from jaxpoison.benchmarks import from_scratch as fs

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_runs"


def _load_generator():
  """make_golden.py: the settings each folder was written with (the test resumes with exactly
  those), and the dataset and denoiser it saw."""
  spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
  module = importlib.util.module_from_spec(spec)
  # No __pycache__ among the golden files.
  writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True
  try:
    spec.loader.exec_module(module)
  finally:
    sys.dont_write_bytecode = writes
  return module


golden = _load_generator()


def _copy(tmp_path: Path, kind: str) -> Path:
  """The golden folder `kind` and the inputs in a fresh root (a resume writes into them)."""
  root = tmp_path / "golden_runs"
  shutil.copytree(GOLDEN / "inputs", root / "inputs")
  shutil.copytree(GOLDEN / kind, root / kind)
  return root


def _contents(folder: Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


def _resume(kind: str, run, *args, **kwargs):
  """`run(*args, **kwargs)`, failing with the refusal's message (which names every differing
  setting) when the folder is refused."""
  __tracebackhide__ = True
  try:
    return run(*args, **kwargs)
  except runs.RunMismatch as refused:
    pytest.fail(f"the golden {kind} folder written by an earlier commit is refused:\n{refused}")


def _assert_kept(before: dict[str, bytes], after: dict[str, bytes], names) -> None:
  for name in names:
    assert name in before, f"{name}: not in the golden folder (make_golden.py changed?)"
    assert after.get(name) == before[name], f"{name}: finished work was rewritten"


def test_certification_resumes_and_reuses_every_chunk(tmp_path, caplog):
  root = _copy(tmp_path, "certify")
  out = root / "certify"
  config, dataset = golden.certify_config(root), golden.load_dataset(root)
  before = _contents(out)
  chunks = [n for n in before if n.startswith("sigma_0.25/votes/")]
  assert len(chunks) == 3  # models 0-1, 2-3 and 4-5 of 6; no reports yet

  # Another seed is refused before anything is computed, and nothing is touched.
  with pytest.raises(pipeline.ResultsMismatch, match="seed: folder has 0, this run has 1"):
    pipeline.run_certification(dataclasses.replace(config, seed=1), out, dataset=dataset,
                               progress=False)
  assert _contents(out) == before

  # The environment (JAX version, platform) may have moved since the folder was written; a
  # user then resumes on purpose with allow_environment_change, which covers nothing else.
  trainer = pipeline.resolve_trainer(config.trainer, dataset)
  recorded = json.loads(before["settings.json"])[pipeline.ENVIRONMENT]
  moved = recorded != pipeline.environment_settings(trainer, config.denoise_dtype,
                                                    config.concurrency)
  # The package's logger, which scripts/certify.py turns on: the module loggers' names are no
  # part of the folder format (jaxpoison.certify before issue 35's refactor).
  with caplog.at_level(logging.INFO, logger="jaxpoison"):
    summary = _resume("certification", pipeline.run_certification,
                      dataclasses.replace(config, allow_environment_change=moved), out,
                      dataset=dataset, progress=False)
  after = _contents(out)
  _assert_kept(before, after, chunks + ([] if moved else ["settings.json"]))
  assert "certifying σ=0.25 with 6 models" in caplog.text
  assert " done in " not in caplog.text  # No chunk recomputed.
  votes_dir = out / "sigma_0.25" / "votes"
  assert pipeline.finished_models(votes_dir).tolist() == [True] * 6
  # Extending the run to 8 models would compute only the new ones.
  assert pipeline.pending_chunks(votes_dir, 8, config.models_per_step) == [range(6, 8)]
  report = summary["sigmas"]["0.25"]
  assert (report["num_models"], report["n0"], report["num_test"]) == (6, 2, 20)
  assert set(golden.CERTIFY_REPORTS) <= set(after)
  assert json.loads(after["sigma_0.25/summary.json"]) == report
  votes = pipeline.load_votes(votes_dir, 6, 20)
  with np.load(out / "sigma_0.25" / "counts.npz") as counts:
    np.testing.assert_array_equal(counts["counts_select"].sum(1), 2)
    np.testing.assert_array_equal(
        counts["counts_estimate"], np.stack([(votes[2:] == c).sum(0) for c in range(10)], 1))


def test_transfer_benchmark_resumes_with_the_crafted_poisons(tmp_path):
  attack = "bullseye_polytope"
  root = _copy(tmp_path, "transfer")
  out = root / "transfer"
  config, dataset = golden.transfer_config(), golden.load_dataset(root)
  denoiser = diffusion.load_denoiser(golden.denoiser_path(root))
  before = _contents(out)
  with pytest.raises(pb.BenchmarkConfigError, match=r"settings\.seed: folder has 0, this run "
                                                    r"has 1"):
    pb.run_benchmark(dataclasses.replace(config, seed=1), dataset, out, denoiser=denoiser,
                     log=lambda line: None)
  assert _contents(out) == before
  logs = []
  records = _resume("transfer", pb.run_benchmark, config, dataset, out, denoiser=denoiser,
                    log=logs.append)
  after = _contents(out)
  _assert_kept(before, after, [
      pb.RUN_FILE, f"results/{attack}/trial_000.json", f"poisons/{attack}/trial_000.npz",
      f"poisons/{attack}/trial_001.npz", "pretrained/victim/pretrained.json",
      "pretrained/victim/models/config.json", "pretrained/victim/models/params.npz"])
  # Only trial 1 ran, on the poisons crafted before the interruption; nothing was pretrained.
  assert not any(line.startswith("pretraining") for line in logs), logs
  assert any(line.startswith(f"{attack}: trial 1 done") for line in logs), logs
  assert not any("trial 0 done" in line for line in logs), logs
  assert [r["trial"] for r in records] == [0, 1]
  assert json.loads(after[f"results/{attack}/trial_000.json"]) == records[0]
  assert json.loads(after[f"results/{attack}/trial_001.json"]) == records[1]
  record = records[1]
  assert record["sigmas"] == [0.0, 0.25] and record["poison_file"] == (
      f"poisons/{attack}/trial_001.npz")
  assert record["success"] == [p == record["base_class"] for p in record["target_prediction"]]
  # The table holds the old record and the new one.
  assert "| Bullseye Polytope | white-box | ℓ∞ 16/255 | 2 |" in (out / "table.md").read_text()


def test_from_scratch_benchmark_reuses_its_trials_and_poisons(tmp_path):
  attack = "witches_brew"
  root = _copy(tmp_path, "from_scratch")
  out = root / "from_scratch"
  config, dataset = golden.from_scratch_config(), golden.load_dataset(root)
  denoiser = diffusion.load_denoiser(golden.denoiser_path(root))
  before = _contents(out)
  with pytest.raises(pb.BenchmarkConfigError, match=r"settings\.seed: folder has 0, this run "
                                                    r"has 1"):
    fs.run_benchmark(dataclasses.replace(config, seed=1), dataset, out, denoiser=denoiser,
                     log=lambda line: None)
  assert _contents(out) == before
  logs = []
  records = _resume("from_scratch", fs.run_benchmark, config, dataset, out, denoiser=denoiser,
                    log=logs.append)
  after = _contents(out)
  trials = [f"results/{attack}/trial_00{i}.json" for i in (0, 1)]
  _assert_kept(before, after, [pb.RUN_FILE, *trials, f"poisons/{attack}/trial_000.npz",
                               f"poisons/{attack}/trial_001.npz",
                               "pretrained/surrogate_0/pretrained.json",
                               "pretrained/surrogate_0/models/config.json",
                               "pretrained/surrogate_0/models/params.npz"])
  assert [json.loads(after[name]) for name in trials] == records
  assert not any(" done in " in line or line.startswith("pretraining") for line in logs), logs
  assert "| Witches' Brew | white-box | ℓ∞ 16/255 | 2 |" in (out / "table.md").read_text()
  # The poison files still belong to their trials (a harness that resumes an interrupted trial
  # reloads them; a stale file would be refused).
  subset = fs.training_subset(dataset.y_train, config.train_per_class, config.subset_seed)
  surrogates = fs.load_or_train_surrogates(out, config, dataset, subset, log=lambda line: None)
  for record in records:
    poisons = fs.load_or_craft(out, config, attack, dataset, subset, record["trial"], surrogates)
    assert (poisons.target_index, poisons.base_class) == (record["target_index"],
                                                          record["base_class"])
  assert _contents(out) == after


def test_eclipse_resumes_after_its_last_victim(tmp_path):
  root = _copy(tmp_path, "eclipse")
  out = root / "eclipse"
  config, dataset = golden.eclipse_config(), golden.load_dataset(root)
  before = _contents(out)
  with pytest.raises(runs.RunMismatch, match="seed: folder has 0, this run has 1"):
    eclipse.run_eclipse(dataclasses.replace(config, seed=1), dataset, out, say=lambda line: None)
  assert _contents(out) == before
  ddpm = pipeline.pytree_fingerprint(diffusion.load_denoiser(out / "ddpm" / "ema").params)
  said = []
  summary = _resume("ECLIPSE", eclipse.run_eclipse, config, dataset, out, say=said.append)
  after = _contents(out)
  chunks = [n for n in before if n.startswith("purified/")]
  victims = ["victims/none_0.json", "victims/eclipse_0.json"]
  assert len(chunks) == 3
  _assert_kept(before, after, ["settings.json", "poisoned.npz", *victims, *chunks])
  # The DDPM was finished: restored, not trained further (its checkpoint is rewritten).
  assert pipeline.pytree_fingerprint(diffusion.load_denoiser(out / "ddpm" / "ema").params) == ddpm
  assert diffusion.read_denoiser_config(out / "ddpm" / "ema")[2]["train_steps"] == 2
  assert not any("victim 0" in line or "purified chunk" in line for line in said), said
  assert summary["stage"] == "done" and list(summary["defenses"]) == ["none", "eclipse"]
  for name in victims:
    record = json.loads(before[name])
    assert summary["defenses"][record["defense"]]["test_accuracy"] == [record["test_accuracy"]]
  assert json.loads((out / "summary.json").read_text()) == summary


def test_denoiser_training_resumes_from_its_checkpoint(tmp_path):
  # The folder has no settings file (train_denoiser restores its state/ and trains on):
  # nothing refuses another config, so the check is that the checkpoint still restores.
  root = _copy(tmp_path, "denoiser_training")
  out = root / "denoiser_training"
  dataset = golden.load_dataset(root)
  before = _contents(out)
  messages = []
  denoiser = diffusion.train_denoiser(golden.denoiser_train_config(),
                                      golden.denoiser_train_images(dataset), out,
                                      log=messages.append)
  assert any("resumed" in m and "at step 2" in m for m in messages), messages
  lines = (out / "log.jsonl").read_text().splitlines()
  assert before["log.jsonl"].decode().splitlines() == lines[:1]
  assert [json.loads(line)["step"] for line in lines] == [2, 4]
  unet, _, extra = diffusion.read_denoiser_config(out / "ema")
  assert extra["train_steps"] == 4 and unet == golden.TINY_UNET
  saved = diffusion.load_denoiser(out / "ema")
  assert saved.trained_timesteps == denoiser.trained_timesteps
  for name, value in denoiser.params.items():
    np.testing.assert_array_equal(np.asarray(saved.params[name]), np.asarray(value),
                                  err_msg=name)
