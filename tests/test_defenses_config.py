"""DefenseConfig: each defense's recipe, settings and label, and its checks."""

import json

import pytest

from jaxpoison import classifier
from jaxpoison.benchmarks import common
from jaxpoison.defenses import DefenseConfig


def test_training_configs_are_the_defenses_recipes():
  victim = classifier.conservative_config("airbench94", widths=(16, 32, 64))
  dp = DefenseConfig("dp_sgd").training_config(victim)
  assert (dp.dp_clip_norm, dp.dp_noise_multiplier, dp.norm) == (1.0, 0.05, "group")
  at = DefenseConfig("adversarial_training").training_config(victim)
  assert (at.adversarial_epsilon, at.adversarial_steps, at.adversarial_step_size) == (
      4 / 255, 7, 1 / 255)
  assert dp.dp_sampling == "poisson"
  fr = DefenseConfig("friends").training_config(victim)
  # The authors' command: friendly noise at epoch 5, Bernoulli noise before the bilinear
  # RandomTransform.
  assert (fr.friendly_epoch, fr.noise, fr.noise_scale) == (5, "bernoulli", 8 / 255)
  assert fr.noise_before_augment and fr.shift == "bilinear"
  with pytest.raises(ValueError, match="friendly_begin_epoch: 5 is not before.*--friendly_begin"):
    DefenseConfig("friends").training_config(victim.replace(epochs=2))
  assert DefenseConfig("friends", friendly_begin_epoch=0).training_config(
      victim.replace(epochs=2)).friendly_epoch == 0
  for name in ("none", "deep_knn", "dpa_roe"):
    assert DefenseConfig(name).training_config(victim) == victim
  # Everything else about the victim stays.
  assert dp.replace(dp_clip_norm=0.0, dp_noise_multiplier=0.0, norm="batch",
                    dp_sampling="shuffle") == victim
  # DPA's base classifiers: the reference's recipe on the victim's network, or the victim's.
  base = DefenseConfig("dpa_roe").partition_config(victim)
  assert (base.model, base.widths, base.epochs, base.drop_last, base.lr_milestones) == (
      "airbench94", (16, 32, 64), 200, False, (61, 121, 161))
  assert DefenseConfig("dpa_roe", dpa_recipe="victim").partition_config(victim) == victim


def test_settings_and_labels():
  assert DefenseConfig("deep_knn").settings() == {"name": "deep_knn", "knn_k": 500,
                                                  "knn_rule": "plurality"}
  assert DefenseConfig("dpa_roe").settings() == {"name": "dpa_roe", "dpa_partitions": 250,
                                                 "dpa_recipe": "reference", "dpa_epochs": 200}
  assert DefenseConfig().settings() == {"name": "none"} and not DefenseConfig().active
  assert DefenseConfig("adversarial_training").label() == "AT (PGD-7, ε = 4/255)"
  assert DefenseConfig("dp_sgd").label() == "DP-SGD (C = 1, z = 0.05)"
  assert DefenseConfig("dp_sgd", dp_sampling="shuffle").label() == (
      "DP-SGD (C = 1, z = 0.05, shuffled batches)")
  assert DefenseConfig("dp_sgd").settings() == {
      "name": "dp_sgd", "dp_clip_norm": 1.0, "dp_noise_multiplier": 0.05, "dp_delta": 1e-5,
      "dp_norm": "group", "dp_sampling": "poisson"}
  frozen = DefenseConfig("dp_sgd", dp_norm="frozen_batch")
  assert frozen.settings()["dp_norm"] == "frozen_batch"
  assert frozen.label() == "DP-SGD (C = 1, z = 0.05, frozen batch norm)"
  assert frozen.training_config(classifier.tiny_config()).norm == "frozen_batch"
  assert DefenseConfig("friends").settings() == {
      "name": "friends", "friendly_begin_epoch": 5, "friendly_lr": 100.0,
      "friendly_noise_before_augment": True, "friendly_shift": "bilinear"}
  assert DefenseConfig("friends").label() == "FrieNDs (friendly noise at epoch 5)"
  tuned = DefenseConfig("friends", friendly_lr=10.0, friendly_begin_epoch=0)
  assert tuned.settings()["friendly_lr"] == 10.0
  assert tuned.label() == "FrieNDs (friendly noise at epoch 0, friendly lr 10)"
  recipe = tuned.training_config(classifier.tiny_config())
  assert (recipe.friendly_lr, recipe.noise, recipe.friendly_epoch) == (10.0, "bernoulli", 0)
  assert DefenseConfig("friends").training_config(
      classifier.tiny_config(epochs=8)).friendly_lr == 100.0
  old = DefenseConfig("friends", friendly_begin_epoch=0, friendly_noise_before_augment=False,
                      friendly_shift="integer")
  assert old.label() == ("FrieNDs (friendly noise at epoch 0, noise after the augmentation, "
                         "integer shifts)")


@pytest.mark.parametrize("changes,match", [
    (dict(name="bagging"), "defense: expected one of"),
    (dict(name="deep_knn", knn_k=0), "knn_k"),
    (dict(name="deep_knn", knn_rule="vote"), "knn_rule"),
    (dict(name="dp_sgd", dp_delta=0.0), "dp_delta"),
    (dict(name="dp_sgd", dp_noise_multiplier=-1.0), "dp_noise_multiplier"),
    (dict(name="dp_sgd", dp_norm="layer"), "dp_norm"),
    (dict(name="friends", friendly_lr=0.0), "friendly_lr"),
])
def test_errors(changes, match):
  with pytest.raises(ValueError, match=match):
    DefenseConfig(**changes)


@pytest.mark.parametrize("recorded, accepted", [
    # Written before dp_norm existed (group norm then): the same settings.
    ({"name": "dp_sgd", "dp_clip_norm": 1.0, "dp_noise_multiplier": 0.05, "dp_delta": 1e-5,
      "dp_sampling": "shuffle"}, True),
    ({"name": "dp_sgd", "dp_clip_norm": 1.0, "dp_noise_multiplier": 0.05, "dp_delta": 1e-5,
      "dp_norm": "group", "dp_sampling": "shuffle", "epsilon_at_delta": 3.0}, True),
    ({"name": "dp_sgd", "dp_clip_norm": 1.0, "dp_noise_multiplier": 0.05, "dp_delta": 1e-5,
      "dp_norm": "frozen_batch"}, False),
    ({"name": "dp_sgd", "dp_clip_norm": 2.0, "dp_noise_multiplier": 0.05, "dp_delta": 1e-5},
     False),
])
def test_records_from_before_an_added_setting_keep_their_identity(tmp_path, recorded, accepted):
  folder = tmp_path / "results" / "witches_brew+dp_sgd"
  folder.mkdir(parents=True)
  (folder / "trial_000.json").write_text(json.dumps({"defense_settings": recorded}))
  check = lambda: common.check_defense_records(tmp_path, "witches_brew+dp_sgd",
                                               DefenseConfig("dp_sgd", dp_sampling="shuffle"))
  if accepted:
    check()
  else:
    with pytest.raises(ValueError, match="its trials ran with defense settings"):
      check()


def test_dp_records_from_before_poisson_sampling_are_refused_by_name(tmp_path):
  # Records written before Poisson sampling drew shuffled batches and hold a Poisson ε: a
  # Poisson run may not add to them, and the refusal says why.
  folder = tmp_path / "results" / "witches_brew+dp_sgd"
  folder.mkdir(parents=True)
  old = {"name": "dp_sgd", "dp_clip_norm": 1.0, "dp_noise_multiplier": 0.05, "dp_delta": 1e-5,
         "dp_norm": "group", "epsilon_at_delta": 17809.0}
  (folder / "trial_000.json").write_text(json.dumps({"defense_settings": old}))
  with pytest.raises(ValueError, match="shuffled batches and record an ε computed for Poisson"):
    common.check_defense_records(tmp_path, "witches_brew+dp_sgd", DefenseConfig("dp_sgd"))
  # Asked for explicitly, shuffled batches continue the old trials (accounted anew).
  common.check_defense_records(tmp_path, "witches_brew+dp_sgd",
                               DefenseConfig("dp_sgd", dp_sampling="shuffle"))


def test_friends_and_dpa_records_from_before_the_fixes_keep_their_old_settings(tmp_path):
  for unit, old, new in (
      ("witches_brew+friends", {"name": "friends", "friendly_begin_epoch": 0,
                                "friendly_lr": 10.0},
       DefenseConfig("friends", friendly_begin_epoch=0, friendly_lr=10.0)),
      ("witches_brew+dpa_roe", {"name": "dpa_roe", "dpa_partitions": 10},
       DefenseConfig("dpa_roe", dpa_partitions=10))):
    folder = tmp_path / "results" / unit
    folder.mkdir(parents=True)
    (folder / "trial_000.json").write_text(json.dumps({"defense_settings": old}))
    # Those records stand for the earlier behaviour (noise after an integer shift; the
    # victim's recipe): the corrected defense does not add to them.
    with pytest.raises(ValueError, match="its trials ran with defense settings"):
      common.check_defense_records(tmp_path, unit, new)
  common.check_defense_records(tmp_path, "witches_brew+friends", DefenseConfig(
      "friends", friendly_begin_epoch=0, friendly_lr=10.0, friendly_noise_before_augment=False,
      friendly_shift="integer"))
  common.check_defense_records(tmp_path, "witches_brew+dpa_roe",
                               DefenseConfig("dpa_roe", dpa_partitions=10, dpa_recipe="victim"))
