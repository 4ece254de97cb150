"""Tests of the attack benchmark harness (jaxpoison.poison_benchmark).

The pure parts (split, table, run file, poison reuse) on hand-made inputs; the harness end to
end on tiny models, a tiny dataset and a tiny random denoiser.
"""

import csv
import dataclasses
import io
import json

import jax
import numpy as np
import pytest

from jaxpoison import attacks as A
from jaxpoison import io as jp_io
from jaxpoison import poison_benchmark as pb
from jaxpoison.attacks import testing
from jaxpoison.data import DatasetSpec, make_dataset

SHAPE = (8, 8, 3)
SPEC = DatasetSpec("tiny", SHAPE, 10)


def _dataset(per_class=24, num_test=40, shape=SHAPE, spec=SPEC, seed=0):
  """Class-coloured noise: learnable, with every class in both splits."""
  rng = np.random.default_rng(seed)
  colours = rng.uniform(40, 215, (10, 1, 1, shape[-1]))

  def split(n):
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = colours[labels] + rng.normal(0, 30, (n, *shape))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int32)

  return make_dataset(*split(10 * per_class), *split(num_test), spec=spec)


def _record(attack, trial, sigmas, success, accuracy, scenario="white-box"):
  return {"attack": attack, "scenario": scenario, "trial": trial, "sigmas": sigmas,
          "success": success, "clean_accuracy": accuracy}


# --- the table ---------------------------------------------------------------------------------

HAND_MADE = [
    _record("bullseye_polytope", 0, [0.0, 0.1], [True, False], [0.90, 0.80]),
    _record("poison_frogs", 0, [0.0, 0.1], [True, False], [0.94, 0.93]),
    _record("poison_frogs", 1, [0.0, 0.1], [False, False], [0.92, 0.91]),
    _record("bullseye_polytope", 1, [0.0, 0.1], [True, True], [0.80, 0.70]),
    _record("convex_polytope", 0, [0.0], [True], [0.5], scenario="black-box (a → b)"),
    _record("poison_frogs", 2, [0.1], [True], [0.6], scenario="black-box (a → b)"),
]


def test_render_table_markdown_on_hand_made_results():
  table = pb.render_table(HAND_MADE)
  assert table.splitlines() == [
      "| attack | scenario | trials | σ = 0 (no defense) | σ = 0.1 |",
      "|---|---|---:|---:|---:|",
      "| Poison Frogs | white-box | 2 | 50.0% (93.0%) | 0.0% (92.0%) |",
      "| Poison Frogs | black-box (a → b) | 1 | — | 100.0% (60.0%) |",
      "| Convex Polytope | black-box (a → b) | 1 | 100.0% (50.0%) | — |",
      "| Bullseye Polytope | white-box | 2 | 100.0% (85.0%) | 50.0% (75.0%) |",
  ]
  # Pure: the same input gives the same table, and the input is not modified.
  before = json.dumps(HAND_MADE)
  assert pb.render_table(list(reversed(HAND_MADE))) == table
  assert json.dumps(HAND_MADE) == before


def test_render_table_csv_on_hand_made_results():
  rows = list(csv.reader(io.StringIO(pb.render_table(HAND_MADE, format="csv"))))
  assert rows[0] == ["attack", "scenario", "trials", "success % σ=0", "clean accuracy % σ=0",
                     "success % σ=0.1", "clean accuracy % σ=0.1"]
  assert rows[1] == ["poison_frogs", "white-box", "2", "50.0", "93.0", "0.0", "92.0"]
  assert rows[2] == ["poison_frogs", "black-box (a → b)", "1", "", "", "100.0", "60.0"]
  assert rows[3] == ["convex_polytope", "black-box (a → b)", "1", "100.0", "50.0", "", ""]
  assert rows[4] == ["bullseye_polytope", "white-box", "2", "100.0", "85.0", "50.0", "75.0"]
  assert len(rows) == 5


def test_render_table_errors():
  with pytest.raises(ValueError, match="format: expected 'markdown' or 'csv'"):
    pb.render_table(HAND_MADE, format="html")
  bad = _record("poison_frogs", 3, [0.0, 0.1], [True], [0.9, 0.9])
  with pytest.raises(ValueError, match="trial 3 of poison_frogs: sigmas, success and"):
    pb.render_table([bad])


# --- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, error, match", [
    (dict(attacks=("poison_frogs", "frogs")), ValueError, "unknown attack 'frogs'"),
    (dict(attacks=("poison_frogs", "poison_frogs")), ValueError, "names an attack twice"),
    (dict(sigmas=(0.0, 0.1, 0.1)), ValueError, "lists a noise level twice"),
    (dict(sigmas=(-0.1,)), ValueError, "sigmas: expected a noise level >= 0"),
    (dict(sigmas=(25.0,)), ValueError, "not \\[0, 255\\]"),
    (dict(budget=0.01), ValueError, "set exactly one"),
    (dict(num_poisons=None), ValueError, "set exactly one"),
    (dict(num_poisons=None, budget=1.5), ValueError, "budget: expected a fraction"),
    (dict(num_poisons=None, budget=0.0), ValueError, "budget: expected a finite value > 0"),
    (dict(num_poisons=None, budget="1%"), TypeError, "budget: expected a number"),
    (dict(num_trials=0), ValueError, "num_trials: expected an integer >= 1"),
    (dict(num_trials=2.0), TypeError, "num_trials: expected an integer"),
    (dict(epsilon=16), ValueError, "allows any image"),
    (dict(base_selection="closest"), ValueError, "base_selection: expected"),
    (dict(victim="resnet18"), TypeError, "victim: expected a jaxpoison.classifier.TrainConfig"),
    (dict(finetune=dict(epochs=1)), TypeError, "finetune: expected a FineTuneConfig"),
])
def test_config_errors(changes, error, match):
  with pytest.raises(error, match=match):
    pb.BenchmarkConfig(**changes)


def test_finetune_config_errors():
  with pytest.raises(ValueError, match="finetune.learning_rate: expected a finite value > 0"):
    pb.FineTuneConfig(learning_rate=0.0)
  with pytest.raises(ValueError, match="finetune.momentum: expected a value in"):
    pb.FineTuneConfig(momentum=1.0)
  with pytest.raises(ValueError, match="finetune.weight_decay: expected a value >= 0"):
    pb.FineTuneConfig(weight_decay=-1e-4)


def test_config_attack_config_and_budget():
  config = pb.BenchmarkConfig(num_poisons=None, budget=0.01, craft_steps=7, norm="l2",
                              epsilon=A.L2_EPSILON_TRANSFER)
  assert config.poisons_for(2500) == 25 and config.poisons_for(30) == 1
  cp = config.attack_config("convex_polytope")
  assert cp == A.ConvexPolytopeConfig(num_steps=7, norm="l2", epsilon=6.43)
  assert pb.BenchmarkConfig().attack_config("poison_frogs") == A.PoisonFrogsConfig()
  assert pb.BenchmarkConfig().poisons_for(10) == 25


# --- the split ---------------------------------------------------------------------------------

def test_split_is_disjoint_seeded_and_takes_the_first_per_class():
  labels = np.arange(400) % 10
  split = pb.split_training_set(labels, pretrain_seed=3, finetune_per_class=7)
  assert split.pretrain.size == 200 and split.pool.size == 200
  assert np.intersect1d(split.pretrain, split.pool).size == 0
  np.testing.assert_array_equal(np.union1d(split.pretrain, split.pool), np.arange(400))
  assert np.all(np.isin(split.finetune, split.pool)) and split.finetune.size == 70
  for c in range(10):
    members = split.pool[labels[split.pool] == c]
    np.testing.assert_array_equal(split.finetune[labels[split.finetune] == c], members[:7])
  again = pb.split_training_set(labels, pretrain_seed=3, finetune_per_class=7)
  np.testing.assert_array_equal(again.pretrain, split.pretrain)
  other = pb.split_training_set(labels, pretrain_seed=4, finetune_per_class=7)
  assert not np.array_equal(other.pretrain, split.pretrain)
  whole = pb.split_training_set(labels, pretrain_seed=3, finetune_per_class=None)
  np.testing.assert_array_equal(whole.finetune, split.pool)
  with pytest.raises(ValueError, match=r"finetune_per_class: class \d has"):
    pb.split_training_set(labels, finetune_per_class=21)


def test_eval_indices_cover_every_class_of_a_label_sorted_test_set():
  labels = np.repeat(np.arange(10), 100)  # sorted by label, like some CIFAR-10 copies
  subset = pb.eval_indices(labels.size, 50, seed=0)
  assert subset.size == 50 and np.unique(subset).size == 50 and np.all(np.diff(subset) > 0)
  assert np.unique(labels[subset]).size == 10  # a prefix would be class 0 only
  np.testing.assert_array_equal(subset, pb.eval_indices(labels.size, 50, seed=0))
  assert not np.array_equal(subset, pb.eval_indices(labels.size, 50, seed=1))
  np.testing.assert_array_equal(pb.eval_indices(labels.size, labels.size), np.arange(1000))
  for bad in (0, 1001):
    with pytest.raises(ValueError, match="num_eval: expected 1 to 1000"):
      pb.eval_indices(labels.size, bad)


# --- the run file -------------------------------------------------------------------------------

def test_run_file_is_written_then_checked(tmp_path):
  dataset = _dataset()
  identity = pb.run_identity(pb.BenchmarkConfig(), dataset=dataset, victim={"source": "x"},
                             crafter=None, denoiser=None)
  pb.check_run_file(tmp_path, identity)
  assert json.loads((tmp_path / pb.RUN_FILE).read_text())["settings"]["seed"] == 0
  pb.check_run_file(tmp_path, identity)  # Same settings: accepted.
  # Execution-only settings may change between runs.
  execution = pb.BenchmarkConfig(num_trials=7, trials_per_step=3, attacks=("poison_frogs",))
  same = pb.run_identity(execution, dataset=dataset, victim={"source": "x"}, crafter=None,
                         denoiser=None)
  pb.check_run_file(tmp_path, same)
  other = pb.run_identity(pb.BenchmarkConfig(seed=1, sigmas=(0.0, 0.5)), dataset=dataset,
                          victim={"source": "x"}, crafter=None, denoiser=None)
  with pytest.raises(pb.BenchmarkConfigError) as error:
    pb.check_run_file(tmp_path, other)
  message = str(error.value)
  assert "settings.seed: folder has 0, given 1" in message
  assert "settings.sigmas" in message and "settings.num_poisons" not in message
  changed_data = pb.run_identity(pb.BenchmarkConfig(), dataset=_dataset(seed=1),
                                 victim={"source": "x"}, crafter=None, denoiser=None)
  with pytest.raises(pb.BenchmarkConfigError, match="dataset.sha256"):
    pb.check_run_file(tmp_path, changed_data)


# --- trials and poisons ------------------------------------------------------------------------

def test_poisons_are_crafted_once_and_reused(tmp_path):
  dataset = _dataset()
  split = pb.split_training_set(dataset.y_train, finetune_per_class=5)
  config = pb.BenchmarkConfig(num_poisons=3, craft_steps=4, seed=5)
  extractors = [testing.mlp_extractor(0, SHAPE)]
  first, crafted = pb.load_or_craft(tmp_path, config, "bullseye_polytope", dataset, split, 2,
                                    extractors)
  assert crafted and pb.poison_path(tmp_path, "bullseye_polytope", 2).is_file()
  trial = A.sample_trial(jax.random.fold_in(pb.trial_key(5, 2), pb.SAMPLE), dataset, 3,
                         train_indices=split.finetune)
  assert first.target_index == trial.target_index and first.base_class == trial.base_class
  np.testing.assert_array_equal(first.indices, trial.base_indices)
  assert np.all(np.isin(first.indices, split.finetune))
  again, crafted = pb.load_or_craft(tmp_path, config, "bullseye_polytope", dataset, split, 2,
                                    extractors)
  assert not crafted
  np.testing.assert_array_equal(again.images, first.images)
  # The same trial (target and bases) for every attack.
  frogs, _ = pb.load_or_craft(tmp_path, config, "poison_frogs", dataset, split, 2, extractors)
  np.testing.assert_array_equal(frogs.indices, first.indices)
  # A file from other settings is refused, not reused.
  with pytest.raises(A.PoisonFileError, match="attack config"):
    pb.load_or_craft(tmp_path, dataclasses.replace(config, craft_steps=5), "bullseye_polytope",
                     dataset, split, 2, extractors)
  with pytest.raises(A.PoisonFileError, match="target or base images differ"):
    pb.load_or_craft(tmp_path, dataclasses.replace(config, seed=6), "bullseye_polytope",
                     dataset, split, 2, extractors)


def test_poisoned_images_replace_exactly_the_bases():
  dataset = _dataset()
  split = pb.split_training_set(dataset.y_train, finetune_per_class=5)
  trial = A.sample_trial(jax.random.key(1), dataset, 3, train_indices=split.finetune)
  poisons = 255 - dataset.x_train[trial.base_indices]
  poison_set = A.PoisonSet("poison_frogs", {}, np.zeros(2, np.uint32), trial.target_index,
                           trial.target_class, trial.base_class, trial.base_indices, poisons, {})
  images = dataset.x_train[split.finetune]
  poisoned = pb.poisoned_images(images, split.finetune, poison_set)
  positions = np.searchsorted(split.finetune, trial.base_indices)
  np.testing.assert_array_equal(poisoned[positions], poisons)
  others = np.setdiff1d(np.arange(images.shape[0]), positions)
  np.testing.assert_array_equal(poisoned[others], images[others])
  outside = dataclasses.replace(poison_set, indices=split.pretrain[:3])
  with pytest.raises(A.PoisonFileError, match="not in the fine-tune set"):
    pb.poisoned_images(images, split.finetune, outside)


# --- end to end: tiny victim, tiny data, tiny random denoiser ----------------------------------

E2E_SHAPE = (32, 32, 3)
E2E_SPEC = DatasetSpec("tiny32", E2E_SHAPE, 10)


@pytest.fixture(scope="module")
def e2e():
  from jaxpoison import classifier, diffusion
  dataset = _dataset(per_class=30, num_test=60, shape=E2E_SHAPE, spec=E2E_SPEC, seed=3)
  victim = classifier.tiny_config("airbench94", image_shape=E2E_SHAPE, epochs=1, batch_size=50,
                                  whitening_images=100, tta_level=0)
  unet = diffusion.UNetConfig(sample_size=32, block_out_channels=(8, 8), layers_per_block=1,
                              attention_resolutions=(), norm_num_groups=4, mid_attention=False)
  # A random denoiser (untrained: the test checks the plumbing, not the defense), filled from
  # numpy like attacks.testing's extractors: initializing through jax.random compiles the
  # PRNG for every parameter shape, which costs tens of seconds on a CPU.
  rng = np.random.default_rng(7)
  params = {name: np.asarray(rng.normal(0.0, 0.05, s.shape), s.dtype)
            for name, s in diffusion.param_shapes(unet).items()}
  denoiser = diffusion.Denoiser(params=jax.tree.map(jax.numpy.asarray, params), unet=unet,
                                schedule=diffusion.linear_schedule())
  config = pb.BenchmarkConfig(
      attacks=("bullseye_polytope",), num_trials=2, sigmas=(0.0, 0.25), num_poisons=3,
      finetune_per_class=6, num_eval=40, victim=victim, craft_steps=3,
      finetune=pb.FineTuneConfig(epochs=2, batch_size=20), trials_per_step=2,
      denoise_batch_size=32)
  return dataset, config, denoiser


def test_each_sigma_finetunes_on_the_denoised_poisoned_set(e2e, monkeypatch):
  # The σ > 0 columns are the defense: what each victim fine-tunes on must be the poisoned
  # fine-tune set run through noise_and_denoise with the trial's s-th key, and σ = 0 must
  # leave it untouched. Fine-tuning itself is replaced by a recorder (the plumbing is the
  # unit here; the end-to-end test below runs the real thing).
  from types import SimpleNamespace

  from jaxpoison import diffusion
  dataset, config, denoiser = e2e
  assert config.sigmas == (0.0, 0.25)
  split = pb.split_training_set(dataset.y_train, finetune_per_class=config.finetune_per_class)
  finetune = dataset.x_train[split.finetune]
  keys = [pb.trial_key(config.seed, i) for i in range(2)]
  poison_sets = []
  for key in keys:
    trial = A.sample_trial(key, dataset, config.num_poisons, train_indices=split.finetune)
    poison_sets.append(A.PoisonSet(
        "poison_frogs", {}, np.zeros(2, np.uint32), trial.target_index, trial.target_class,
        trial.base_class, trial.base_indices, 255 - dataset.x_train[trial.base_indices], {}))
  seen = []

  def record(train_config, train_keys, images, *rest):
    seen.append(np.array(images))
    return np.zeros(images.shape[0], np.int32), np.zeros(images.shape[0], np.float32)

  monkeypatch.setattr(pb, "_finetune_and_score", record)
  pb.evaluate_trials(config, poison_sets, keys, finetune_images=finetune,
                     finetune_labels=dataset.y_train[split.finetune],
                     finetune_indices=split.finetune, dataset=dataset,
                     victim=SimpleNamespace(config=config.victim), denoiser=denoiser)
  assert len(seen) == 2  # One fine-tuning per σ, all trials at once.
  for i, poison_set in enumerate(poison_sets):
    poisoned = pb.poisoned_images(finetune, split.finetune, poison_set)
    np.testing.assert_array_equal(seen[0][i], poisoned)
    expected = np.asarray(diffusion.noise_and_denoise(
        denoiser, poisoned, 0.25, pb.denoise_key(keys[i], 1),
        batch_size=config.denoise_batch_size))
    np.testing.assert_array_equal(seen[1][i], expected)
    assert not np.array_equal(seen[1][i], poisoned)


def test_two_trials_end_to_end_then_resume_equals_uninterrupted(tmp_path, e2e):
  from jaxpoison import classifier
  dataset, config, denoiser = e2e
  logs = []
  full = pb.run_benchmark(config, dataset, tmp_path / "full", denoiser=denoiser,
                          log=logs.append)
  assert [r["trial"] for r in full] == [0, 1]
  assert any(line.startswith("pretraining airbench94") for line in logs)
  assert any("trials 0–1 done" in line for line in logs)  # Both fine-tuned at once.
  for record in full:
    assert record["sigmas"] == [0.0, 0.25] and record["num_poisons"] == 3
    assert record["finetune_size"] == 60 and record["scenario"] == "white-box"
    assert record["success"] == [p == record["base_class"] for p in record["target_prediction"]]
    # Accuracy on exactly num_eval test images: whole multiples of 1/num_eval (a mean over
    # any other count, e.g. the whole test split of 60, mostly is not).
    for a in record["clean_accuracy"]:
      assert abs(a * config.num_eval - round(a * config.num_eval)) < 1e-4, a
    assert "half of the training set" in record["pretraining"]
    assert "CIFAR-100" in record["pretraining"]
    assert (tmp_path / "full" / record["poison_file"]).is_file()
  table = (tmp_path / "full" / "table.md").read_text()
  assert table == pb.render_table(full) and "| Bullseye Polytope | white-box | 2 |" in table
  assert (tmp_path / "full" / "table.csv").read_text() == pb.render_table(full, format="csv")
  assert (tmp_path / "full" / "pretrained" / "victim" / "pretrained.json").is_file()

  # Interrupted after one trial, then rerun: the same records as the uninterrupted run. Here
  # each trial is fine-tuned alone (padded to the model axis of 2), there both together.
  pretrained = tmp_path / "full" / "pretrained" / "victim" / "models"
  part = pb.run_benchmark(config, dataset, tmp_path / "resumed", denoiser=denoiser,
                          pretrained=pretrained, stop_after=1, log=logs.append)
  assert [r["trial"] for r in part] == [0]
  resumed = pb.run_benchmark(config, dataset, tmp_path / "resumed", denoiser=denoiser,
                             pretrained=pretrained, log=logs.append)
  assert logs[-1].startswith("bullseye_polytope: trial 1 done")
  strip = lambda records: [{k: v for k, v in r.items() if k not in ("seconds", "pretraining")}
                           for r in records]
  assert strip(resumed) == strip(full)
  np.testing.assert_array_equal(
      np.load(tmp_path / "resumed" / full[1]["poison_file"])["images"],
      np.load(tmp_path / "full" / full[1]["poison_file"])["images"])
  # Nothing is redone on a rerun of a finished run.
  count = len(logs)
  again = pb.run_benchmark(config, dataset, tmp_path / "resumed", denoiser=denoiser,
                           pretrained=pretrained, log=logs.append)
  assert again == resumed and len(logs) == count

  # A folder written with other settings is refused, naming them.
  with pytest.raises(pb.BenchmarkConfigError, match=r"settings\.sigmas"):
    pb.run_benchmark(dataclasses.replace(config, sigmas=(0.0, 0.5)), dataset,
                     tmp_path / "resumed", denoiser=denoiser, pretrained=pretrained)
  other_denoiser = dataclasses.replace(denoiser, params=jax.tree.map(lambda p: p + 1,
                                                                     denoiser.params))
  with pytest.raises(pb.BenchmarkConfigError, match=r"denoiser\.params_sha256"):
    pb.run_benchmark(config, dataset, tmp_path / "resumed", denoiser=other_denoiser,
                     pretrained=pretrained)
  # The saved extractor is the one the run recorded (and reused on a rerun of "full").
  models = classifier.load_models(pretrained)
  assert pb.params_fingerprint(models.state) == json.loads(
      (tmp_path / "full" / pb.RUN_FILE).read_text())["victim"]["params_sha256"]
  rerun = pb.run_benchmark(config, dataset, tmp_path / "full", denoiser=denoiser,
                           log=logs.append)
  assert rerun == full and not any(line.startswith("pretraining") for line in logs[count:])


def test_load_results_and_the_script_render_the_table(tmp_path, capsys):
  import importlib.util
  from pathlib import Path
  for record in HAND_MADE:
    jp_io.atomic_write_json(pb.result_path(tmp_path, record["attack"], record["trial"]), record)
  records = pb.load_results(tmp_path)
  assert [(r["attack"], r["trial"]) for r in records] == [
      ("bullseye_polytope", 0), ("bullseye_polytope", 1), ("convex_polytope", 0),
      ("poison_frogs", 0), ("poison_frogs", 1), ("poison_frogs", 2)]
  assert pb.load_results(tmp_path, ["poison_frogs"]) == records[3:]
  script = Path(__file__).resolve().parents[1] / "scripts" / "poison_benchmark.py"
  spec = importlib.util.spec_from_file_location("poison_benchmark_script", script)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.main(["--out", str(tmp_path), "--table_only"])
  assert capsys.readouterr().out == pb.render_table(HAND_MADE)
  assert (tmp_path / "table.md").read_text() == pb.render_table(HAND_MADE)
  assert (tmp_path / "table.csv").read_text() == pb.render_table(HAND_MADE, format="csv")
