"""The from-scratch attack benchmark (Tables 2 and 3): the subset, the config, and the harness
end to end on tiny models, a tiny dataset and a tiny random denoiser, with resume."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

from jaxpoison import attacks, classifier, defenses
from jaxpoison.benchmarks import common
from jaxpoison.benchmarks import from_scratch as fs
from test_poison_benchmark import E2E_SHAPE, E2E_SPEC, _dataset, tiny_random_denoiser


def test_training_subset_is_seeded_balanced_and_sorted():
  labels = np.arange(200) % 10
  subset = fs.training_subset(labels, 5, key=jax.random.key(0))
  assert subset.size == 50 and np.all(np.diff(subset) > 0)
  assert np.all(np.bincount(labels[subset], minlength=10) == 5)
  np.testing.assert_array_equal(subset, fs.training_subset(labels, 5))  # key(0) by default
  assert not np.array_equal(subset, fs.training_subset(labels, 5, key=jax.random.key(1)))
  with pytest.warns(DeprecationWarning, match="seed= is deprecated"):
    np.testing.assert_array_equal(subset, fs.training_subset(labels, 5, 0))
  np.testing.assert_array_equal(fs.training_subset(labels, None), np.arange(200))
  with pytest.raises(ValueError, match="class 0 has 20"):
    fs.training_subset(labels, 21)


@pytest.mark.parametrize("changes,match", [
    (dict(attacks=("poison_frogs",)), "not a from-scratch attack"),
    (dict(budget=None), "set one"),
    (dict(budget=1.5), "fraction"),
    (dict(warm_start_epochs=40), "leaves no epoch"),
    (dict(sigmas=(0.0, 0.0)), "distinct"),
    (dict(victim="resnet18"), "TrainConfig"),
    (dict(poison_class="nearest"), "poison_class"),
    (dict(clean_start_epochs=-1), "clean_start_epochs"),
    (dict(clean_start_epochs=2, warm_start_epochs=2), "leaves no epoch of the victim's 2"),
    (dict(clean_start_epochs=2, clean_start_from="checkpoint"), "clean_start_from"),
    (dict(clean_start_from="surrogate"), "needs clean_start_epochs"),
    (dict(clean_start_epochs=2, clean_start_from="surrogate",
          surrogate=classifier.conservative_config("airbench94")), "white-box"),
    (dict(clean_start_epochs=2, clean_start_from="surrogate",
          defense=defenses.DefenseConfig(name="dp_sgd")), "group norm"),
    (dict(correct_targets="yes"), "correct_targets"),
])
def test_config_errors(changes, match):
  with pytest.raises((ValueError, TypeError), match=match):
    fs.FromScratchConfig(**changes)


def test_other_harnesses_and_craft_refuse_from_scratch_attacks():
  from jaxpoison.benchmarks import transfer
  with pytest.raises(ValueError, match="from_scratch"):
    transfer.TransferConfig(attacks=("witches_brew",))
  with pytest.raises(TypeError, match="surrogate classifiers.*attacks.witches_brew"):
    attacks.craft("witches_brew", jax.random.key(0), [], np.zeros((4, 4, 3), np.uint8),
                  np.zeros((1, 4, 4, 3), np.uint8))


def test_config_defaults_are_the_papers():
  config = fs.FromScratchConfig()
  assert config.poisons_for(50000) == 500 and config.white_box
  assert config.victim_config == classifier.conservative_config()
  wb = config.attack_config("witches_brew")
  assert (wb.num_steps, wb.restarts, wb.epsilon) == (250, 8, 16 / 255)
  sa = config.attack_config("sleeper_agent")
  assert (sa.restarts, sa.retrain_every, sa.patch_size) == (1, 50, 8)
  black = fs.FromScratchConfig(surrogate=classifier.conservative_config("airbench94"))
  assert not black.white_box and "black-box (airbench94" in fs._scenario(black)


@pytest.fixture(scope="module")
def scratch():
  dataset = _dataset(per_class=20, num_test=60, shape=E2E_SHAPE, spec=E2E_SPEC, seed=5)
  victim = classifier.tiny_config("airbench94", image_shape=E2E_SHAPE, epochs=2, batch_size=50,
                                  whitening_images=100, tta_level=0)
  denoiser = tiny_random_denoiser()
  config = fs.FromScratchConfig(
      attacks=("witches_brew", "sleeper_agent"), num_trials=2, sigmas=(0.0, 0.25),
      num_poisons=4, num_eval=40, victim=victim, craft_steps=4, restarts=1, retrain_every=2,
      trials_per_step=2, denoise_batch_size=100)
  return dataset, config, denoiser


def test_end_to_end_then_resume_equals_uninterrupted(tmp_path, scratch):
  dataset, config, denoiser = scratch
  logs = []
  full = fs.run_benchmark(config, dataset, tmp_path / "full", denoiser=denoiser,
                          log=logs.append)
  assert [(r["attack"], r["trial"]) for r in full] == [
      ("witches_brew", 0), ("witches_brew", 1), ("sleeper_agent", 0), ("sleeper_agent", 1)]
  assert any("trials 0–1 done" in line for line in logs)  # two victims trained at once
  for record in full:
    assert record["sigmas"] == [0.0, 0.25] and record["num_poisons"] == 4
    assert record["train_size"] == 200 and record["scenario"] == "white-box"
    assert record["success"] == [p == record["base_class"] for p in record["target_prediction"]]
    assert record["diverged"] == [False, False]
    probabilities = record["target_poison_probability"]
    assert len(probabilities) == 2 and all(0 <= p <= 1 for p in probabilities)
    # The victim's argmax is its prediction: a probability above 1/2 means success.
    assert all(s for s, p in zip(record["success"], probabilities) if p > 0.5)
    poison_set = attacks.load_poisons(tmp_path / "full" / record["poison_file"], dataset)
    bases = np.asarray(dataset.x_train[poison_set.indices]).astype(int)
    assert np.abs(poison_set.images.astype(int) - bases).max() <= 16
    assert np.all(np.asarray(dataset.y_train)[poison_set.indices] == record["base_class"])
    if record["attack"] == "sleeper_agent":
      assert len(record["source_success"]) == 2
      assert all(0 <= rate <= 1 for rate in record["source_success"])
      # The single patched target is one of the source class's test images.
      assert dataset.y_test[record["target_index"]] == record["target_class"]
  table = (tmp_path / "full" / "table.md").read_text()
  assert "| Witches' Brew | white-box | ℓ∞ 16/255 | 2 |" in table
  assert "Sleeper Agent, patched source-class test images" in table
  assert "The victims' probability of the poison class" in table

  # Interrupted after one trial, then rerun: the same records as the uninterrupted run (where
  # both trials trained together). Witches' Brew alone: which attacks run is not part of a
  # run's identity, and Sleeper Agent's retraining would double the test's time.
  brew_only = dataclasses.replace(config, attacks=("witches_brew",))
  part = fs.run_benchmark(brew_only, dataset, tmp_path / "resumed", denoiser=denoiser,
                          stop_after=1, log=logs.append)
  assert len(part) == 1
  resumed = fs.run_benchmark(brew_only, dataset, tmp_path / "resumed", denoiser=denoiser,
                             log=logs.append)
  strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]
  assert strip(resumed) == strip(full[:2])
  with pytest.raises(common.BenchmarkConfigError, match=r"settings\.sigmas"):
    fs.run_benchmark(dataclasses.replace(config, sigmas=(0.0, 0.5)), dataset,
                     tmp_path / "resumed", denoiser=denoiser)


def test_defenses_share_the_runs_poisons(tmp_path, scratch):
  # Tables 4 and 5: each defense's trials sit beside the undefended ones, on the same poisons.
  dataset, config, denoiser = scratch
  base = dataclasses.replace(config, attacks=("witches_brew",), num_trials=1, sigmas=(0.0,),
                             trials_per_step=1)
  out = tmp_path / "run"
  fs.run_benchmark(base, dataset, out, denoiser=denoiser, log=lambda _: None)
  poison_file = out / "poisons" / "witches_brew" / "trial_000.npz"
  crafted = poison_file.stat().st_mtime_ns
  # The training-time defenses only change the victim's recipe (DefenseConfig.training_config,
  # tested in test_defenses_config.py): the two with their own paths run here.
  settings = {"deep_knn": dict(knn_k=5), "dpa_roe": dict(dpa_partitions=3, dpa_epochs=2)}
  for name, changes in settings.items():
    defended = dataclasses.replace(base, defense=defenses.DefenseConfig(name, **changes))
    records = fs.run_benchmark(defended, dataset, out, denoiser=denoiser, log=lambda _: None)
    record = [r for r in records if r.get("defense_settings", {}).get("name") == name][0]
    assert record["defense"] == defended.defense.label()
    assert (out / "results" / f"witches_brew+{name}" / "trial_000.json").is_file()
    if name == "deep_knn":
      (details,) = record["defense_details"]
      assert details["poisons"] == 4 and details["removed"] + details["kept"] == 200
      assert 0 <= details["true_positives"] <= 4
      # The filtered victim's softmax on the target, consistent with its prediction.
      (probability,) = record["target_poison_probability"]
      assert 0 <= probability <= 1
      assert probability <= 0.5 or record["target_prediction"] == [record["base_class"]]
    if name == "dpa_roe":
      (details,) = record["defense_details"]
      assert 0 <= details["certified_poisons"] <= 1  # k = 3 base classifiers: at most ⌊3/2⌋
      assert details["poison_class_votes"] in (0, 1 / 3, 2 / 3, 1)
      assert 0 <= details["base_classifier_accuracy"] <= 1
      assert "target_poison_probability" not in record  # no single victim
  assert poison_file.stat().st_mtime_ns == crafted  # crafted once, reused by every defense
  table = (out / "table.md").read_text()
  assert "| defense |" in table and "Deep k-NN (k = 5)" in table
  assert "DPA + ROE (k = 3, reference recipe, 2 epochs)" in table
  assert "| Witches' Brew | white-box | ℓ∞ 16/255 | none | 1 |" in table
  assert "removed" in table and "target certified against" in table
  assert re.search(r"base classifiers vote the poison class", table)
  # The poison-class probability table has the filtered victim's row (DPA + ROE has none).
  assert re.search(r"\| witches_brew \|[^\n]*\| Deep k-NN \(k = 5\) \| 1 \| 0\.\d{3} \|", table)
  assert not re.search(r"\| witches_brew \|[^\n]*\| DPA \+ ROE", table)
  with pytest.raises(ValueError, match="other|defense settings"):
    fs.run_benchmark(dataclasses.replace(base, defense=defenses.DefenseConfig("deep_knn",
                                                                              knn_k=7)),
                     dataset, out, denoiser=denoiser, log=lambda _: None)


def _diverge(models, which):
  """`models` with NaN weights in the models `which` selects (a bool [M] mask)."""
  mask = np.asarray(which)

  def poison(leaf):
    if not jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact):
      return leaf
    shape = (-1,) + (1,) * (leaf.ndim - 1)
    return jax.numpy.where(mask.reshape(shape), jax.numpy.nan, leaf)
  return classifier.TrainedModels(models.graphdef, jax.tree.map(poison, models.state),
                                  models.config)


def test_finite_models_marks_each_diverged_model():
  victim = classifier.tiny_config("airbench94", image_shape=E2E_SHAPE)
  models = classifier.train_models(jax.random.split(jax.random.key(0), 3),
                                   np.zeros((64, *E2E_SHAPE), np.uint8), np.arange(64) % 10,
                                   victim.replace(epochs=0))
  np.testing.assert_array_equal(classifier.finite_models(models), [True] * 3)
  np.testing.assert_array_equal(classifier.finite_models(_diverge(models, [False, True, False])),
                                [True, False, True])
  with pytest.raises(TypeError, match="expected TrainedModels"):
    classifier.finite_models(models.state)


def test_diverged_victims_are_flagged_not_scored(tmp_path, scratch, monkeypatch):
  # A victim whose training diverged (NaN weights) is recorded as such and left out of the
  # success table, instead of counting as a failed attack; likewise under Deep k-NN and when a
  # DPA base classifier diverges.
  dataset, config, denoiser = scratch
  base = dataclasses.replace(config, attacks=("witches_brew",), num_trials=2, sigmas=(0.0,),
                             trials_per_step=2)
  train = fs._train

  def diverging_train(train_config, keys, images, labels, init=None):
    models = train(train_config, keys, images, labels, init)
    # The last victim of a batch of two (trial 1); under Deep k-NN every network.
    return _diverge(models, [False, True] if models.num_models == 2 else [True])

  partition_models = defenses.train_partition_models

  def one_diverged_base(*args, **kwargs):
    models, parts = partition_models(*args, **kwargs)
    return _diverge(models, np.arange(models.num_models) == 0), parts

  monkeypatch.setattr(fs, "_train", diverging_train)
  monkeypatch.setattr(defenses, "train_partition_models", one_diverged_base)
  records = fs.run_benchmark(base, dataset, tmp_path, denoiser=denoiser, log=lambda _: None)
  assert [r["diverged"] for r in records] == [[False], [True]]
  assert np.isnan(records[1]["target_poison_probability"][0])
  line = [l for l in (tmp_path / "table.md").read_text().splitlines()
          if l.startswith("| Witches' Brew")][0]
  assert line.endswith(", 1 diverged |") and "| 2 |" in line
  assert "| 1 |" in [l for l in (tmp_path / "table.md").read_text().splitlines()
                     if l.startswith("| witches_brew")][0]  # the probability table: trial 0
  one = dataclasses.replace(base, num_trials=1, trials_per_step=1)
  knn = fs.run_benchmark(dataclasses.replace(one, defense=defenses.DefenseConfig(
      "deep_knn", knn_k=5)), dataset, tmp_path, denoiser=denoiser, log=lambda _: None)
  assert [r["diverged"] for r in knn if r.get("defense_settings")] == [[True]]
  dpa = fs.run_benchmark(dataclasses.replace(one, defense=defenses.DefenseConfig(
      "dpa_roe", dpa_partitions=3, dpa_epochs=2)), dataset, tmp_path, denoiser=denoiser,
      log=lambda _: None)
  (record,) = [r for r in dpa if r.get("defense_settings", {}).get("name") == "dpa_roe"]
  assert record["diverged"] == [True]
  assert record["defense_details"][0]["diverged_base_classifiers"] == 1


def test_no_poison_control_measures_the_trigger_without_poisons(tmp_path, scratch, monkeypatch):
  # The control's source_success: its victim (trained on the clean set) on the source-class
  # test images with Sleeper Agent's trigger pasted where trial t's Sleeper Agent pastes it.
  dataset, config, denoiser = scratch
  control = dataclasses.replace(config, attacks=("no_poison",), num_trials=1, sigmas=(0.0,),
                                trials_per_step=1)
  victims = []
  train = fs._train

  def keep(*args, **kwargs):
    victims.append(train(*args, **kwargs))
    return victims[-1]

  monkeypatch.setattr(fs, "_train", keep)
  (record,) = fs.run_benchmark(control, dataset, tmp_path, denoiser=denoiser,
                               log=lambda _: None)
  sources = np.flatnonzero(np.asarray(dataset.y_test) == record["target_class"])
  key = jax.random.fold_in(jax.random.fold_in(common.trial_key(config.seed, 0), common.SAMPLE), 2)
  patched, _ = attacks.patch_images(key, np.asarray(dataset.x_test[sources]),
                                    attacks.SleeperAgentConfig())
  predictions = np.asarray(classifier.predict(victims[-1], np.asarray(patched)))[0]
  assert record["source_success"] == [pytest.approx((predictions == record["base_class"]).mean())]
  assert "no poisons" in record["source_measure"]
  # Its target is the clean test image (the Witches' Brew control's), not a patched one.
  clean = np.asarray(classifier.predict(victims[-1], dataset.x_test[record["target_index"]][None]))
  assert record["target_prediction"] == [int(clean[0, 0])]
  table = (tmp_path / "table.md").read_text()
  assert re.search(r"\| no_poison \| white-box \|[^\n]*\| none \| 1 \| \d+\.\d% \|", table)


def test_sleeper_agent_selects_the_largest_gradients(scratch, tmp_path):
  dataset, config, _ = scratch
  subset = fs.training_subset(dataset.y_train, None)
  surrogates = fs.load_or_train_surrogates(tmp_path, config, dataset, subset, log=lambda _: None)
  trial = fs.sample_scratch_trial(config, dataset, subset, 0)
  poison_set = fs.craft_trial(dataclasses.replace(config, retrain_every=0), "sleeper_agent",
                              dataset, subset, 0, surrogates)
  candidates = subset[np.asarray(dataset.y_train)[subset] == trial.base_class]
  norms = np.asarray(attacks.gradient_norms(fs._gradient_models(surrogates),
                                            np.asarray(dataset.x_train[candidates]),
                                            np.full(candidates.size, trial.base_class)))
  assert set(poison_set.indices) == set(candidates[np.argsort(norms)[-4:]])


def test_runner_up_poison_class_is_the_surrogates_most_probable_wrong_class(scratch, tmp_path):
  dataset, config, _ = scratch
  subset = fs.training_subset(dataset.y_train, None)
  surrogates = fs.load_or_train_surrogates(tmp_path, config, dataset, subset, log=lambda _: None)
  runner_up = dataclasses.replace(config, poison_class="runner_up")
  with pytest.raises(ValueError, match="needs the surrogates"):
    fs.sample_scratch_trial(runner_up, dataset, subset, 0)
  logits = np.concatenate([np.asarray(classifier.logits(m, dataset.x_test)) for m in surrogates])
  probabilities = np.exp(logits - logits.max(-1, keepdims=True))
  probabilities = (probabilities / probabilities.sum(-1, keepdims=True)).mean(0)
  for index in range(4):
    plain = fs.sample_scratch_trial(config, dataset, subset, index)
    trial = fs.sample_scratch_trial(runner_up, dataset, subset, index, surrogates)
    # The same target; the class is the numpy argmax over the other classes.
    assert (trial.target_index, trial.target_class) == (plain.target_index, plain.target_class)
    ranked = np.argsort(-probabilities[trial.target_index], kind="stable")
    expected = [c for c in ranked if c != trial.target_class][0]
    assert trial.base_class == expected
    assert np.all(np.asarray(dataset.y_train)[trial.base_indices] == expected)
    assert np.all(np.isin(trial.base_indices, subset))
    again = fs.sample_scratch_trial(runner_up, dataset, subset, index, surrogates)
    np.testing.assert_array_equal(again.base_indices, trial.base_indices)
  # The setting is part of a run's identity only when it is not the paper's.
  identity = lambda c: fs.run_identity(c, dataset=dataset, surrogates=surrogates, denoiser=None,
                                       victim_init=None)["settings"]
  assert "poison_class" not in identity(config)
  assert identity(runner_up)["poison_class"] == "runner_up"


@pytest.fixture
def training_calls(monkeypatch):
  """Every victim training of the harness, as (TrainConfig, images, init), in order."""
  calls = []
  real = fs._train

  def recording(train_config, keys, images, labels, init=None):
    calls.append((train_config, np.array(images), init))
    return real(train_config, keys, images, labels, init)

  monkeypatch.setattr(fs, "_train", recording)
  return calls


def test_warm_start_trains_first_on_the_tampered_set(scratch, training_calls):
  dataset, config, denoiser = scratch
  config = dataclasses.replace(config, warm_start_epochs=1, attacks=("no_poison",))
  subset = fs.training_subset(dataset.y_train, None)
  poison_set = fs.craft_trial(config, "no_poison", dataset, subset, 0, [])
  fs.evaluate_trials(config, [poison_set], [0], dataset=dataset, subset=subset,
                     denoiser=denoiser)
  (c0, first, init0), (c1, clean, init1), (c2, denoised, init2) = training_calls
  assert (c0.epochs, c1.epochs, c2.epochs) == (1, 1, 1)
  assert (init0 is None, init1 is None, init2 is None) == (True, False, False)
  np.testing.assert_array_equal(first[0], dataset.x_train)  # the tampered set (no poison here)
  np.testing.assert_array_equal(clean[0], dataset.x_train)  # σ = 0: the tampered set again
  assert not np.array_equal(denoised[0], dataset.x_train)   # σ = 0.25: denoised


def test_clean_start_victims_continue_from_a_clean_network_that_is_not_a_surrogate(
    scratch, tmp_path, training_calls):
  dataset, config, denoiser = scratch
  config = dataclasses.replace(config, clean_start_epochs=1, attacks=("no_poison",),
                               num_trials=1, trials_per_step=1)
  calls = training_calls
  records = fs.run_benchmark(config, dataset, tmp_path / "run", denoiser=denoiser,
                             log=lambda _: None)
  subset = fs.training_subset(dataset.y_train, None)
  start = fs.load_or_train_clean_start(tmp_path / "run", config, dataset, subset)
  surrogate = fs.load_or_train_surrogates(tmp_path / "run", config, dataset, subset)[0]
  # Its own key: the attacker's surrogate and the victims' starting point differ.
  assert common.params_fingerprint(start.state) != common.params_fingerprint(surrogate.state)
  assert start.config == config.victim_config
  # One victim per σ, each from the clean network's weights (head kept), for K epochs.
  assert len(calls) == len(config.sigmas)
  for train_config, _, init in calls:
    assert train_config.epochs == 1 and not train_config.reinit_head
    assert common.params_fingerprint(init.state) == common.params_fingerprint(start.state)
  assert records[0]["finetune"] == "from a clean-trained network, 1 epochs"
  identity = json.loads((tmp_path / "run" / common.RUN_FILE).read_text())
  assert identity["settings"]["clean_start_epochs"] == 1
  assert identity["clean_start"] == common.params_fingerprint(start.state)
  plain = fs.run_identity(dataclasses.replace(config, clean_start_epochs=0), dataset=dataset,
                          surrogates=[surrogate], denoiser=None, victim_init=None)
  assert "clean_start_epochs" not in plain["settings"] and "clean_start" not in plain
  with pytest.raises(ValueError, match="give one"):
    fs.run_benchmark(config, dataset, tmp_path / "run", denoiser=denoiser, victim_init=start)
  poison_set = fs.craft_trial(config, "no_poison", dataset, subset, 0, [])
  with pytest.raises(ValueError, match="clean_start"):
    fs.evaluate_trials(config, [poison_set], [0], dataset=dataset, subset=subset,
                       denoiser=denoiser)
  # With a warm start: the first epochs from the clean network on the tampered set, once.
  # (Batches of 20: 10 steps an epoch, so airbench's lookahead, every 5 steps, moves.)
  warm = dataclasses.replace(config, clean_start_epochs=2, warm_start_epochs=1,
                             victim=config.victim.replace(batch_size=20))
  assert fs._training_label(warm, None) == ("from a clean-trained network: 1 epochs tampered, "
                                            "then 1 denoised")
  calls.clear()
  fs.evaluate_trials(warm, [poison_set], [0], dataset=dataset, subset=subset,
                     denoiser=denoiser, clean_start=start)
  assert [c.epochs for c, _, _ in calls] == [1] * (1 + len(config.sigmas))
  assert common.params_fingerprint(calls[0][2].state) == common.params_fingerprint(start.state)
  warmed = common.params_fingerprint(calls[1][2].state)
  assert warmed != common.params_fingerprint(start.state)
  assert all(common.params_fingerprint(init.state) == warmed for _, _, init in calls[1:])
  # From the attacker's own network: the victims start from surrogate 0.
  known = dataclasses.replace(config, clean_start_from="surrogate")
  calls.clear()
  record = fs.run_benchmark(known, dataset, tmp_path / "known", denoiser=denoiser,
                            log=lambda _: None)[0]
  surrogate = fs.load_or_train_surrogates(tmp_path / "known", known, dataset, subset)[0]
  assert [common.params_fingerprint(init.state) for _, _, init in calls] == (
      [common.params_fingerprint(surrogate.state)] * len(config.sigmas))
  assert record["finetune"] == "from the surrogate, 1 epochs"
  assert not (tmp_path / "known" / "pretrained" / "clean_start").exists()
  settings = json.loads((tmp_path / "known" / common.RUN_FILE).read_text())["settings"]
  assert settings["clean_start_from"] == "surrogate"


def test_defenses_after_a_clean_start_start_from_a_clean_network_of_their_architecture(
    scratch, tmp_path, training_calls):
  dataset, config, denoiser = scratch
  config = dataclasses.replace(config, clean_start_epochs=1, attacks=("no_poison",),
                               num_trials=1, trials_per_step=1, sigmas=(0.0,))
  with pytest.raises(ValueError, match="DPA"):
    dataclasses.replace(config, defense=defenses.DefenseConfig(name="dpa_roe"))
  calls = training_calls
  subset = fs.training_subset(dataset.y_train, None)
  fingerprint = lambda models: common.params_fingerprint(models.state)
  starts = {}
  for name, trainings in (("deep_knn", 2), ("dp_sgd", 1)):  # Deep k-NN: extractor, victim
    defended = dataclasses.replace(config, defense=defenses.DefenseConfig(name=name, knn_k=5))
    calls.clear()
    # This run's records first, then the folder's other defenses'.
    record = fs.run_benchmark(defended, dataset, tmp_path / "run", denoiser=denoiser,
                              log=lambda _: None)[0]
    assert record["defense"] == defended.defense.label()
    start = fs.load_or_train_clean_start(tmp_path / "run", defended, dataset, subset,
                                         defended=True)
    starts[name] = start
    assert len(calls) == trainings
    for train_config, _, init in calls:
      assert train_config.epochs == 1 and fingerprint(init) == fingerprint(start)
      assert train_config.norm == start.config.norm
  # DP-SGD's group norm needs its own clean network (same key, undefended recipe); its ε
  # counts the one defended epoch.
  assert starts["dp_sgd"].config.norm == "group" and starts["deep_knn"].config.norm != "group"
  assert starts["dp_sgd"].config.dp_clip_norm == config.victim_config.dp_clip_norm
  assert (tmp_path / "run" / "pretrained" / "clean_start_group").is_dir()
  dp_victim = defenses.dp_sgd_config(config.victim_config).replace(epochs=1)
  assert record["defense_settings"]["epsilon_at_delta"] == pytest.approx(
      defenses.privacy_spent(dp_victim, 200, defenses.DefenseConfig().dp_delta))
  # With batch norm frozen at its statistics, DP-SGD continues from the batch-norm start (no
  # network of its own), and so may start from the attacker's surrogate, which group norm may
  # not; its own records folder, as another setting of the defense.
  frozen = defenses.DefenseConfig(name="dp_sgd", dp_norm="frozen_batch")
  with pytest.raises(ValueError, match="cannot start a dp_sgd"):
    dataclasses.replace(config, clean_start_from="surrogate",
                        defense=defenses.DefenseConfig(name="dp_sgd"))
  for start_from, folder in (("own", "frozen"), ("surrogate", "frozen_surrogate")):
    defended = dataclasses.replace(config, defense=frozen, clean_start_from=start_from)
    calls.clear()
    record = fs.run_benchmark(defended, dataset, tmp_path / folder, denoiser=denoiser,
                              log=lambda _: None)[0]
    start = (fs.load_or_train_clean_start(tmp_path / folder, defended, dataset, subset)
             if start_from == "own" else
             fs.load_or_train_surrogates(tmp_path / folder, defended, dataset, subset)[0])
    assert start.config.norm == "batch"
    [(train_config, _, init)] = calls
    assert (train_config.norm, train_config.dp_clip_norm) == ("frozen_batch", 1.0)
    assert fingerprint(init) == fingerprint(start)
    assert record["defense"] == "DP-SGD (C = 1, z = 0.05, frozen batch norm)"
    assert record["defense_settings"]["dp_norm"] == "frozen_batch"
  assert not (tmp_path / "frozen" / "pretrained" / "clean_start_batch").exists()


def test_correct_targets_come_from_what_the_surrogates_classify_correctly(scratch, tmp_path):
  dataset, config, _ = scratch
  subset = fs.training_subset(dataset.y_train, None)
  surrogates = fs.load_or_train_surrogates(tmp_path, config, dataset, subset, log=lambda _: None)
  pool = fs.correct_target_pool(surrogates, dataset, batch_size=7)  # batches end unevenly
  logits = np.concatenate([np.asarray(classifier.logits(m, dataset.x_test)) for m in surrogates])
  probabilities = np.exp(logits - logits.max(-1, keepdims=True))
  probabilities = (probabilities / probabilities.sum(-1, keepdims=True)).mean(0)
  np.testing.assert_array_equal(pool, np.flatnonzero(probabilities.argmax(-1) == dataset.y_test))
  assert 0 < pool.size < dataset.y_test.size  # the tiny surrogate is neither perfect nor blind
  correct = dataclasses.replace(config, correct_targets=True, poison_class="runner_up")
  with pytest.raises(ValueError, match="needs the surrogates"):
    fs.sample_scratch_trial(correct, dataset, subset, 0)
  for index in range(6):
    trial = fs.sample_scratch_trial(correct, dataset, subset, index, surrogates, pool)
    assert trial.target_index in pool and trial.base_class != trial.target_class
    again = fs.sample_scratch_trial(correct, dataset, subset, index, surrogates)  # pool computed
    assert (again.target_index, again.base_class) == (trial.target_index, trial.base_class)
  identity = lambda c: fs.run_identity(c, dataset=dataset, surrogates=surrogates, denoiser=None,
                                       victim_init=None)["settings"]
  assert identity(correct)["correct_targets"] is True
  assert "correct_targets" not in identity(config)


def test_probability_table_is_the_mean_per_row_and_sigma():
  def record(attack, probabilities, **more):
    return {"attack": attack, "scenario": "white-box", "bound": "ℓ∞ 16/255", "finetune": "f",
            "sigmas": [0.0, 0.25], "target_poison_probability": probabilities, **more}
  rng = np.random.default_rng(0)
  brew, control = rng.uniform(size=(3, 2)), rng.uniform(size=(3, 2))
  results = ([record("witches_brew", list(p)) for p in brew]
             + [record("no_poison", list(p)) for p in control]
             + [record("witches_brew", [0.9, 0.9], defense="FrieNDs")]
             + [{"attack": "sleeper_agent"}])  # a record without probabilities is skipped
  lines = fs.render_probability_table(results).splitlines()
  rows = {tuple(c.strip() for c in line.strip("|").split("|")[:5]): line for line in lines[4:]}
  cells = lambda line: [float(c) for c in line.strip("|").split("|")[6:]]
  key = ("witches_brew", "white-box", "ℓ∞ 16/255", "f", "none")
  np.testing.assert_allclose(cells(rows[key]), brew.mean(0), atol=5e-4)
  np.testing.assert_allclose(cells(rows[("no_poison",) + key[1:]]), control.mean(0), atol=5e-4)
  assert cells(rows[key[:4] + ("FrieNDs",)]) == [0.9, 0.9]
  assert len(rows) == 3 and fs.render_probability_table([{"attack": "x"}]) == ""


def test_script_tables_from_several_folders_adds_the_probability_table(tmp_path, capsys):
  from jaxpoison import io as jp_io
  records = []
  for name, bound in (("linf", "ℓ∞ 16/255"), ("l2", "ℓ2 3.48")):
    record = {"attack": "witches_brew", "scenario": "white-box", "bound": bound,
              "finetune": "f", "trial": 0, "sigmas": [0.0], "target_prediction": [1],
              "success": [True], "clean_accuracy": [0.7], "target_poison_probability": [0.6]}
    jp_io.atomic_write_json(common.result_path(tmp_path / name, "witches_brew", 0), record)
    common.claim_run(tmp_path / name, {"seed": 0})
    records.append(record)
  _script_main()(["--tables_from", f"{tmp_path / 'linf'},{tmp_path / 'l2'}"])
  out = capsys.readouterr().out
  assert out.startswith(common.render_table(records))
  assert out.endswith(fs.render_probability_table(records))


def _script_main():
  import importlib.util
  from pathlib import Path
  path = Path(__file__).resolve().parent.parent / "scripts" / "poison_benchmark.py"
  spec = importlib.util.spec_from_file_location("poison_benchmark_script", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main


@pytest.mark.parametrize("config,flag", [
    ("configs/poison_benchmark_from_scratch.py", ["--finetune_mode", "linear_probe"]),
    ("configs/poison_benchmark_from_scratch.py", ["--craft_only"]),
    ("configs/poison_benchmark.py", ["--warm_start_epochs", "3"]),
])
def test_script_refuses_flags_of_the_other_setting(config, flag, capsys):
  from pathlib import Path
  from jaxpoison import cli
  repo = Path(__file__).resolve().parent.parent
  with pytest.raises(SystemExit) as info:
    cli.run(_script_main(), ["--config", str(repo / config), "--data", "unused.npz", *flag])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert flag[0] in err and len(err.strip().splitlines()) == 1


def test_script_refuses_dpa_for_transfer_learning(capsys):
  from pathlib import Path
  from jaxpoison import cli
  repo = Path(__file__).resolve().parent.parent
  with pytest.raises(SystemExit) as info:
    cli.run(_script_main(), ["--config", str(repo / "configs/poison_benchmark.py"), "--data",
                             "unused.npz", "--defense", "dpa_roe"])
  err = capsys.readouterr().err
  assert info.value.code == 2 and "DPA + ROE" in err and len(err.strip().splitlines()) == 1


def test_script_runs_a_from_scratch_config(tmp_path, scratch, monkeypatch, capsys):
  # The command line's overrides reach the FromScratchConfig the harness gets.
  from jaxpoison import cli
  import jaxpoison as jp
  dataset, config, denoiser = scratch
  (tmp_path / "config.py").write_text(
      "def get_config():\n  return CONFIG\n")
  seen = {}

  def fake_run(config, dataset, out_dir, **kwargs):
    seen.update(config=config, kwargs=kwargs)
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "table.md").write_text("| table |\n")
    return []

  monkeypatch.setattr(cli, "load_config_file", lambda path: config)
  monkeypatch.setattr(fs, "run_benchmark", fake_run)
  monkeypatch.setattr(jp, "load_cifar10", lambda data: dataset)
  with pytest.raises(SystemExit) as info:
    cli.run(_script_main(), ["--config", str(tmp_path / "config.py"), "--out",
                             str(tmp_path / "out"), "--num_surrogates", "3", "--restarts", "2",
                             "--warm_start_epochs", "1", "--budget", "0.02", "--victim_init",
                             "ckpt"])

  assert info.value.code in (None, 0)
  got = seen["config"]
  assert (got.num_surrogates, got.restarts, got.warm_start_epochs) == (3, 2, 1)
  assert got.budget == 0.02 and got.num_poisons is None
  assert seen["kwargs"]["victim_init"] == "ckpt"
  assert "| table |" in capsys.readouterr().out
  assert not got.defense.active
  with pytest.raises(SystemExit):
    cli.run(_script_main(), ["--config", str(tmp_path / "config.py"), "--out",
                             str(tmp_path / "out"), "--defense", "deep_knn", "--knn_k", "7"])
  assert seen["config"].defense.settings() == {"name": "deep_knn", "knn_k": 7,
                                               "knn_rule": "plurality"}
  with pytest.raises(SystemExit):
    cli.run(_script_main(), ["--config", str(tmp_path / "config.py"), "--out",
                             str(tmp_path / "out"), "--defense", "dp_sgd", "--dp_norm",
                             "frozen_batch", "--dp_noise_multiplier", "0.5"])
  assert seen["config"].defense == defenses.DefenseConfig(
      "dp_sgd", dp_norm="frozen_batch", dp_noise_multiplier=0.5)
  with pytest.raises(SystemExit):
    cli.run(_script_main(), ["--config", str(tmp_path / "config.py"), "--out",
                             str(tmp_path / "out"), "--defense", "friends", "--friendly_lr", "10"])
  assert seen["config"].defense == defenses.DefenseConfig("friends", friendly_lr=10.0)
  with pytest.raises(SystemExit) as info:
    cli.run(_script_main(), ["--config", str(tmp_path / "config.py"), "--out",
                             str(tmp_path / "out"), "--defense", "friends",
                             "--friendly_lr", "-1"])
  assert info.value.code == 2 and "friendly_lr" in capsys.readouterr().err
  with pytest.raises(SystemExit) as info:
    cli.run(_script_main(), ["--config", str(tmp_path / "config.py"), "--out",
                             str(tmp_path / "out"), "--defense", "dpa_roe",
                             "--dpa_partitions", "0"])
  assert info.value.code == 2 and "dpa_partitions" in capsys.readouterr().err
  assert got.clean_start_epochs == 0
  with pytest.raises(SystemExit):
    cli.run(_script_main(), ["--config", str(tmp_path / "config.py"), "--out",
                             str(tmp_path / "out"), "--clean_start_epochs", "2",
                             "--retrain_every", "0", "--clean_start_from", "surrogate",
                             "--correct_targets", "true"])
  got = seen["config"]
  assert (got.clean_start_epochs, got.retrain_every, got.clean_start_from,
          got.correct_targets) == (2, 0, "surrogate", True)
  with pytest.raises(SystemExit) as info:
    cli.run(_script_main(), ["--config", str(tmp_path / "config.py"), "--out",
                             str(tmp_path / "out"), "--correct_targets", "maybe"])
  assert info.value.code == 2 and "not a boolean" in capsys.readouterr().err


def test_surrogates_per_trial_are_each_trials_own(scratch, tmp_path):
  # The references train a crafting ensemble per crafting run: trials must not share one (their
  # poisons would be correlated through it and the intervals over trials optimistic).
  dataset, config, denoiser = scratch
  own = dataclasses.replace(config, attacks=("witches_brew", "no_poison"), sigmas=(0.0,),
                            surrogates_per_trial=True, trials_per_step=1)
  records = fs.run_benchmark(own, dataset, tmp_path, denoiser=denoiser, log=lambda _: None)
  assert not (tmp_path / "pretrained" / "surrogate_0").exists()
  subset = fs.training_subset(dataset.y_train, None)
  fingerprints = []
  for trial in (0, 1):
    assert (tmp_path / "pretrained" / f"trial_{trial}" / "surrogate_0").is_dir()
    surrogates = fs.load_or_train_surrogates(tmp_path, own, dataset, subset,
                                             log=lambda _: None, trial=trial)
    fingerprints.append(common.params_fingerprint(surrogates[0].state))
    # The trial's poisons are the ones its own ensemble crafts.
    crafted = fs.craft_trial(own, "witches_brew", dataset, subset, trial, surrogates)
    saved = attacks.load_poisons(tmp_path / "poisons" / "witches_brew" / f"trial_{trial:03d}.npz",
                                 dataset)
    np.testing.assert_array_equal(crafted.images, saved.images)
  assert fingerprints[0] != fingerprints[1]
  run_level = fs.load_or_train_surrogates(tmp_path / "shared", own, dataset, subset,
                                          log=lambda _: None)
  assert common.params_fingerprint(run_level[0].state) not in fingerprints
  brew = [r for r in records if r["attack"] == "witches_brew"]
  assert all(r["crafted_on"].endswith("the trial's own") for r in brew)
  # The control trains no surrogate (its class and target need none).
  assert not (tmp_path / "pretrained" / "trial_2").exists()
  with pytest.raises(ValueError, match="surrogates_per_trial"):
    dataclasses.replace(config, surrogates_per_trial=True, clean_start_epochs=1,
                        clean_start_from="surrogate")


def test_sleeper_agent_victims_train_their_own_epochs(scratch, training_calls):
  dataset, config, denoiser = scratch
  config = dataclasses.replace(config, sleeper_agent_victim_epochs=3, sigmas=(0.0,))
  subset = fs.training_subset(dataset.y_train, None)
  control = fs.craft_trial(config, "no_poison", dataset, subset, 0, [])
  fs.evaluate_trials(config, [control], [0], dataset=dataset, subset=subset, denoiser=denoiser)
  sleeper = dataclasses.replace(control, attack="sleeper_agent",
                                config=config.attack_config("sleeper_agent").to_dict())
  fs.evaluate_trials(config, [sleeper], [0], dataset=dataset, subset=subset, denoiser=denoiser)
  assert [c.epochs for c, _, _ in training_calls] == [2, 3]
  assert fs.FromScratchConfig().sleeper_agent_victim_epochs is None
