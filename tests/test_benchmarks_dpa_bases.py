"""jaxpoison.benchmarks.dpa_bases and scripts/dpa_base_accuracy.py: base classifiers scored per
recipe; the script's user errors."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from jaxpoison import classifier, cli, defenses
from jaxpoison.benchmarks import dpa_bases


def test_measure_scores_each_recipes_base_classifiers():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (90, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, 90)
  victim = classifier.tiny_config(num_classes=3, whitening_images=16, epochs=1, batch_size=16)
  recipes = {"reference": defenses.dpa_base_config(victim, 2).replace(batch_size=16),
             "victim": victim}
  out = dpa_bases.measure(images, labels, images[:20], labels[:20], recipes, num_partitions=3)
  parts = defenses.partition_training_sets(images, labels, 3)
  assert out["parts"] == [int(parts.sizes.min()), int(parts.sizes.max())]
  # The reference recipe: 2 epochs of ceil(n / 16) steps on the largest part; the victim's
  # drops the last partial batch of the padded parts.
  assert out["reference"]["steps"] == 2 * -(-int(parts.sizes.max()) // 16)
  assert out["victim"]["steps"] == parts.indices.shape[1] // 16
  for name in recipes:
    r = out[name]
    assert 0 <= r["accuracy_min"] <= r["accuracy_mean"] <= r["accuracy_max"] <= 1
    assert 0 <= r["dpa_accuracy"] <= 1 and 0 <= r["roe_accuracy"] <= 1


def _script():
  path = Path(__file__).resolve().parents[1] / "scripts" / "dpa_base_accuracy.py"
  spec = importlib.util.spec_from_file_location("dpa_base_accuracy", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main


@pytest.mark.parametrize("args, message", [
    (["--recipes", "reference,bagging"], "--recipes: expected names in"),
    (["--num_partitions", "0"], "--num_partitions: expected a positive integer"),
    (["--data", "/nonexistent/cifar10.npz"], "cifar10.npz"),
])
def test_script_user_errors_are_one_line(args, message, capsys):
  with pytest.raises(SystemExit) as info:
    cli.run(_script(), args)
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
