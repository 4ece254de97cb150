"""Tests of the run-folder layer (jaxpoison.runs) and of both harnesses' use of it."""

import json
import re

import numpy as np
import pytest

from jaxpoison import benchmarks, pipeline, runs


def test_claim_writes_then_resumes_then_refuses_naming_every_difference(tmp_path):
  out = tmp_path / "run"
  settings = {"seed": 0, "data": {"sha": "abc", "n": 10}, "sigmas": (0.1, 0.25)}
  folder = runs.claim(out, settings, what="a test folder")
  assert folder.path == out and json.loads((out / "settings.json").read_text()) == {
      "seed": 0, "data": {"sha": "abc", "n": 10}, "sigmas": [0.1, 0.25]}
  assert runs.claim(out, settings).settings == folder.settings  # A resume.
  before = (out / "settings.json").read_bytes()
  changed = {"seed": 1, "data": {"sha": "abd", "n": 10}, "sigmas": (0.1,), "extra": True}
  with pytest.raises(runs.RunMismatch) as error:
    runs.claim(out, changed)
  lines = str(error.value).splitlines()[1:]
  assert [line.strip() for line in lines] == [
      'data.sha: folder has "abc", this run has "abd"',
      "extra: folder has null, this run has true",
      "seed: folder has 0, this run has 1",
      "sigmas: folder has [0.1, 0.25], this run has [0.1]",
  ]
  assert (out / "settings.json").read_bytes() == before  # Nothing touched.


def test_settings_added_later_resume_folders_written_without_them(tmp_path):
  # A folder written before TrainConfig had norm / dp_clip_norm: a run giving the values that
  # reproduce the old training resumes it; another value is a difference.
  from jaxpoison import classifier
  config = runs.jsonable(classifier.tiny_config().to_json())
  old = {k: v for k, v in config.items() if k not in ("norm", "dp_clip_norm")}
  out = tmp_path / "run"
  runs.claim(out, {"victim": old, "seed": 0})
  runs.claim(out, {"victim": config, "seed": 0})
  with pytest.raises(runs.RunMismatch, match=r"victim\.norm: folder has null, this run has "
                                             r"\"group\""):
    runs.claim(out, {"victim": {**config, "norm": "group"}, "seed": 0})
  # Settings the folder has still compare as before.
  with pytest.raises(runs.RunMismatch, match="victim.lr"):
    runs.claim(out, {"victim": {**config, "lr": 0.5}, "seed": 0})


def test_claim_refuses_foreign_and_unreadable_folders(tmp_path):
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(runs.RunMismatch, match="not a test folder; refusing"):
    runs.claim(foreign, {"seed": 0}, what="a test folder")
  # A harness that writes reusable pieces first may accept it.
  runs.claim(foreign, {"seed": 0}, require_empty=False)
  (foreign / "settings.json").write_text("{half")
  with pytest.raises(runs.RunMismatch, match="unreadable"):
    runs.claim(foreign, {"seed": 0})


def test_mutable_settings_change_only_when_allowed_and_are_recorded(tmp_path):
  out = tmp_path / "run"
  runs.claim(out, {"seed": 0, "env": {"platform": "cpu"}}, mutable=("env",))
  moved = {"seed": 0, "env": {"platform": "gpu"}}
  with pytest.raises(runs.RunMismatch, match="--allow_it"):
    runs.claim(out, moved, mutable=("env",), allow_mutable_hint="Pass --allow_it.")
  folder = runs.claim(out, moved, mutable=("env",), allow_mutable_change=True)
  assert folder.settings == {"seed": 0, "env": {"platform": "gpu"},
                             "env_history": [{"platform": "cpu"}]}
  runs.claim(out, moved, mutable=("env",))  # The new environment is the one compared with.
  with pytest.raises(runs.RunMismatch, match="seed: folder has 0, this run has 1"):
    runs.claim(out, {**moved, "seed": 1}, mutable=("env",), allow_mutable_change=True)


def test_records_are_atomic_and_listing_sees_only_finished_units(tmp_path):
  folder = runs.claim(tmp_path / "run", {"seed": 0})
  folder.write_json("results/a/trial_000.json", {"ok": True})
  folder.write_npz("votes/models_000000-000003.npz", votes=np.zeros((4, 2)))
  # A write in flight (the temporary file of an atomic write) and other files are not units.
  (folder.path / "results" / "a" / ".trial_001.json.tmp").write_text("{")
  (folder.path / "results" / "a" / "trial_002.json.partial").write_text("{")
  units = folder.listing("results/a", r"trial_(\d{3})\.json")
  assert [m.group(1) for m in units] == ["000"]
  assert runs.list_units(tmp_path / "missing", r".*") == []
  assert benchmarks.finished_trials(folder.path, "a") == {0}
  assert pipeline.finished_models(folder.path / "votes").tolist() == [True] * 4


def test_progress_rate_counts_only_this_runs_units():
  now = [0.0]
  lines = []
  progress = runs.Progress(10, done=4, unit="trials", log=lines.append, clock=lambda: now[0])
  now[0] = 1800.0
  line = progress.update(2, "chunk done")
  # 2 trials in half an hour: 4 trials/h; 4 left: 1 h (the 4 found done do not count).
  assert line == "chunk done; 6/10 trials; 4.0 trials/h; ETA 1.00 h" and lines == [line]
  assert progress.update(4).endswith("ETA 0.00 h")


def test_progress_bar_counts_what_the_lines_count(capsys):
  now = [0.0]
  with runs.Progress(8, done=2, unit="models", clock=lambda: now[0], bar=True,
                     desc="σ=0.25", bar_unit="model") as progress:
    now[0] = 3600.0
    line = progress.update(3)
    bar = progress._bar
    assert (bar.n, bar.total) == (5, 8)
  assert line == "5/8 models; 3.0 models/h; ETA 1.00 h"
  drawn = capsys.readouterr().err
  assert "σ=0.25" in drawn and "5/8" in drawn and "3 models/h" in drawn
  assert re.search(r"(model/s|s/model)[\],]", drawn), drawn  # the bar's singular unit
  assert progress._bar is None  # closed on leaving the block


def test_fingerprints_depend_on_dtype_shape_and_bytes():
  a = np.arange(6, dtype=np.int32)
  assert runs.fingerprint_arrays([a]) == runs.fingerprint_arrays([a.copy()])
  assert runs.fingerprint_arrays([a]) != runs.fingerprint_arrays([a.astype(np.int64)])
  assert runs.fingerprint_arrays([a]) != runs.fingerprint_arrays([a.reshape(2, 3)])
  assert runs.fingerprint_arrays([a], length=16) == runs.fingerprint_arrays([a])[:16]
  assert runs.fingerprint_pytree({"w": a}) == runs.fingerprint_arrays([a])


def test_both_harnesses_refuse_through_the_same_layer(tmp_path):
  assert issubclass(pipeline.ResultsMismatch, runs.RunMismatch)
  assert issubclass(benchmarks.BenchmarkConfigError, runs.RunMismatch)
  pipeline.claim_results_dir(tmp_path / "certify", {"seed": 0})
  benchmarks.claim_run(tmp_path / "bench", {"seed": 0})
  messages = []
  for claim, error in ((pipeline.claim_results_dir, pipeline.ResultsMismatch),
                       (benchmarks.claim_run, benchmarks.BenchmarkConfigError)):
    name = "certify" if claim is pipeline.claim_results_dir else "bench"
    with pytest.raises(error) as caught:
      claim(tmp_path / name, {"seed": 1})
    messages.append(re.sub(r"^\S+ holds", "holds", str(caught.value)))
  assert messages[0] == messages[1] and "seed: folder has 0, this run has 1" in messages[0]


def test_benchmark_folders_of_an_older_format_are_refused_clearly(tmp_path):
  identity = {"format_version": benchmarks.FORMAT_VERSION, "settings": {"seed": 0}}
  benchmarks.claim_run(tmp_path, {**identity, "format_version": 2})
  with pytest.raises(benchmarks.BenchmarkConfigError,
                     match=f"format version 2 of the benchmark, this version writes "
                           f"{benchmarks.FORMAT_VERSION}"):
    benchmarks.claim_run(tmp_path, identity)


def test_the_fingerprint_family():
  import hashlib
  from types import SimpleNamespace

  from jaxpoison.attacks import poison_files
  from jaxpoison.benchmarks import common
  image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
  # A raw digest (what poison files record per image): the bytes alone, no dtype or shape.
  assert runs.digest_bytes(image) == hashlib.sha256(image.tobytes()).hexdigest()
  assert runs.digest_bytes(image[:, ::-1]) == hashlib.sha256(
      np.ascontiguousarray(image[:, ::-1]).tobytes()).hexdigest()
  data = SimpleNamespace(name="toy", x_train=np.stack([image] * 3), y_train=np.array([0, 1, 2]),
                         x_test=np.stack([image] * 2), y_test=np.array([1, 0]))
  fingerprint = runs.dataset_fingerprint(data)
  assert fingerprint == {"name": "toy", "train_shape": [3, 4, 4, 3], "test_shape": [2, 4, 4, 3],
                         "sha256": runs.fingerprint_arrays([data.x_train, data.y_train,
                                                            data.x_test, data.y_test])}
  relabelled = SimpleNamespace(**{**vars(data), "y_train": np.array([0, 1, 1])})
  assert runs.dataset_fingerprint(relabelled)["sha256"] != fingerprint["sha256"]
  assert common.dataset_fingerprint is runs.dataset_fingerprint
  trial = poison_files.trial_fingerprint(data, [0, 2], 1)
  assert trial["base_sha256"] == [runs.digest_bytes(image)] * 2
  assert poison_files.dataset_fingerprint is poison_files.trial_fingerprint
