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
  fr = DefenseConfig("friends").training_config(victim)
  assert (fr.friendly_epoch, fr.noise, fr.noise_scale) == (0, "bernoulli", 8 / 255)
  for name in ("none", "deep_knn", "dpa_roe"):
    assert DefenseConfig(name).training_config(victim) == victim
  # Everything else about the victim stays.
  assert dp.replace(dp_clip_norm=0.0, dp_noise_multiplier=0.0, norm="batch") == victim


def test_settings_and_labels():
  assert DefenseConfig("deep_knn").settings() == {"name": "deep_knn", "knn_k": 500,
                                                  "knn_rule": "plurality"}
  assert DefenseConfig("dpa_roe").settings() == {"name": "dpa_roe", "dpa_partitions": 250}
  assert DefenseConfig().settings() == {"name": "none"} and not DefenseConfig().active
  assert DefenseConfig("adversarial_training").label() == "AT (PGD-7, ε = 4/255)"
  assert DefenseConfig("dp_sgd").label() == "DP-SGD (C = 1, z = 0.05)"
  assert DefenseConfig("dp_sgd").settings() == {
      "name": "dp_sgd", "dp_clip_norm": 1.0, "dp_noise_multiplier": 0.05, "dp_delta": 1e-5,
      "dp_norm": "group"}
  frozen = DefenseConfig("dp_sgd", dp_norm="frozen_batch")
  assert frozen.settings()["dp_norm"] == "frozen_batch"
  assert frozen.label() == "DP-SGD (C = 1, z = 0.05, frozen batch norm)"
  assert frozen.training_config(classifier.tiny_config()).norm == "frozen_batch"
  assert DefenseConfig("friends").settings() == {"name": "friends", "friendly_begin_epoch": 0,
                                                 "friendly_lr": 100.0}
  assert DefenseConfig("friends").label() == "FrieNDs"
  tuned = DefenseConfig("friends", friendly_lr=10.0)
  assert tuned.settings()["friendly_lr"] == 10.0
  assert tuned.label() == "FrieNDs (friendly lr 10)"
  recipe = tuned.training_config(classifier.tiny_config())
  assert (recipe.friendly_lr, recipe.noise, recipe.friendly_epoch) == (10.0, "bernoulli", 0)
  assert DefenseConfig("friends").training_config(classifier.tiny_config()).friendly_lr == 100.0


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
    ({"name": "dp_sgd", "dp_clip_norm": 1.0, "dp_noise_multiplier": 0.05, "dp_delta": 1e-5},
     True),
    ({"name": "dp_sgd", "dp_clip_norm": 1.0, "dp_noise_multiplier": 0.05, "dp_delta": 1e-5,
      "dp_norm": "group", "epsilon_at_delta": 3.0}, True),
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
                                               DefenseConfig("dp_sgd"))
  if accepted:
    check()
  else:
    with pytest.raises(ValueError, match="its trials ran with defense settings"):
      check()
