"""jaxpoison.eclipse: the split, enlargement, purification, the recipes, and the resumable run
(scripts/eclipse.py end to end on tiny data)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxpoison import diffusion, eclipse
from jaxpoison.data import CIFAR10_LABEL_NAMES, Dataset

TINY_UNET = diffusion.UNetConfig(out_channels=6, block_out_channels=(8, 16), layers_per_block=1,
                                 attention_resolutions=(), mid_attention=False,
                                 norm_num_groups=4, timestep_scale=0.25)


def _dataset(n_train=60, n_test=20, seed=0):
  rng = np.random.default_rng(seed)
  return Dataset(x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
                 y_train=np.arange(n_train) % 3,
                 x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
                 y_test=np.arange(n_test) % 3, label_names=tuple(CIFAR10_LABEL_NAMES))


def test_heldout_sparse_set_is_disjoint_and_deterministic():
  dataset = _dataset()
  config = eclipse.EclipseConfig(sparse_size=12).validate()
  data = eclipse.split(dataset, config)
  assert len(data.sparse) == 12 and len(data.x_train) == 48
  rows = {row.tobytes() for row in dataset.x_train}
  sparse, train = ({r.tobytes() for r in a} for a in (data.sparse, data.x_train))
  assert sparse | train == rows and not sparse & train
  np.testing.assert_array_equal(eclipse.split(dataset, config).sparse, data.sparse)
  other = eclipse.split(dataset, dataclasses.replace(config, seed=1))
  assert not np.array_equal(other.sparse, data.sparse)
  with pytest.warns(UserWarning, match="test accuracy is then measured partly"):
    from_test = eclipse.split(dataset, dataclasses.replace(config, sparse_source="test"))
  assert len(from_test.x_train) == 60 and len(from_test.x_test) == 20
  assert {r.tobytes() for r in from_test.sparse} <= {r.tobytes() for r in dataset.x_test}


def test_enlarge_sizes_and_errors():
  images = np.zeros((5, 2, 2, 3), np.uint8)
  assert len(eclipse.enlarge(images, 4)) == 25 and len(eclipse.enlarge(images, 4, "copies")) == 20
  assert len(eclipse.enlarge(images, 0)) == 5
  with pytest.raises(ValueError, match="expected >= 1"):
    eclipse.enlarge(images, 0, "copies")
  with pytest.raises(ValueError, match="enlarge mode"):
    eclipse.enlarge(images, 1, "mixup")


def test_purify_is_the_learned_variance_reverse_process_from_t_star():
  denoiser = diffusion.create_denoiser(TINY_UNET, diffusion.cosine_schedule(4000),
                                       jax.random.key(0))
  images = _dataset().x_train[:5]
  key = jax.random.key(1)
  ours = eclipse.purify(denoiser, images, key, t_star=10, batch_size=5)
  assert ours.dtype == np.uint8 and ours.shape == images.shape
  np.testing.assert_array_equal(ours, diffusion.denoise_multistep(
      denoiser, images, None, key, start_timestep=9, variance="learned", rounding="floor",
      batch_size=5))
  with pytest.raises(ValueError, match="t_star: expected 1..4000"):
    eclipse.purify(denoiser, images, key, t_star=0)


def test_recipes_follow_the_authors_settings():
  ddpm = eclipse.eclipse_ddpm_config()
  assert (ddpm.schedule.kind, ddpm.schedule.num_timesteps, ddpm.unet.out_channels) == (
      "cosine", 4000, 6)
  assert (ddpm.vlb_weight, ddpm.ema_decay, ddpm.learning_rate, ddpm.batch_size,
          ddpm.num_steps, ddpm.timestep_range()) == (0.001, 0.9999, 1e-4, 128, 250_000,
                                                     (0, 3999))
  victim = eclipse.eclipse_victim_config()
  assert (victim.model, victim.epochs, victim.lr, victim.momentum, victim.weight_decay,
          victim.schedule, victim.translate, victim.pad_mode, victim.batch_size) == (
              "resnet18", 80, 0.1, 0.9, 0.0, "constant", 4, "zeros", 128)
  compensated = eclipse.compensation_config(victim)
  assert (compensated.grayscale_prob, compensated.noise, compensated.noise_scale,
          compensated.noise_quantize) == (0.4, "gaussian", 0.05, True)
  config = eclipse.EclipseConfig(defenses=eclipse.DEFENSES)
  assert [eclipse.defense_training(d, config)[0] for d in eclipse.DEFENSES] == [
      "poisoned", "purified", "purified", "poisoned", "poisoned", "poisoned", "poisoned"]
  at = eclipse.defense_training("adversarial_training", config)[2]
  assert (at.adversarial_epsilon, at.adversarial_steps) == (8 / 255, 10)
  with pytest.raises(ValueError, match="purification needs up to 99"):
    eclipse.EclipseConfig(ddpm=dataclasses.replace(ddpm, max_timestep=50)).validate()
  with pytest.raises(ValueError, match="defenses: expected distinct names"):
    eclipse.EclipseConfig(defenses=("none", "jpeg")).validate()


CONFIG = """
from jaxpoison import diffusion
from jaxpoison.eclipse import EclipseConfig, eclipse_ddpm_config, eclipse_victim_config

def get_config():
  unet = diffusion.UNetConfig(out_channels=6, block_out_channels=(8, 16), layers_per_block=1,
                              attention_resolutions=(), mid_attention=False, norm_num_groups=4,
                              timestep_scale=0.25)
  ddpm = eclipse_ddpm_config(unet, batch_size=8, max_timestep=9, num_steps=4,
                             steps_per_chunk=2, ema_decay=0.5)
  victim = eclipse_victim_config(widths=(4, 8, 8, 8), epochs=1, batch_size=16,
                                 compute_dtype="float32")
  return EclipseConfig(poison="urp", ddpm=ddpm, victim=victim, sparse_size=12, t_star=10,
                       purify_chunk=20, purify_batch_size=8,
                       defenses=("none", "eclipse", "iss_grayscale"))
"""


def test_run_eclipse_runs_every_stage_and_resumes(tmp_path, capsys, run_script):
  # In one process, so that the resumed calls reuse the compiled programs.
  from jaxpoison import cli
  from jaxpoison.data import load_cifar10
  (tmp_path / "config.py").write_text(CONFIG)
  made = _dataset()
  np.savez(tmp_path / "data.npz", x_train=made.x_train, y_train=made.y_train,
           x_test=made.x_test, y_test=made.y_test)
  # As the script will load it (the run folder fingerprints the arrays, dtypes included).
  dataset, run = load_cifar10(str(tmp_path / "data.npz")), tmp_path / "run"
  config = cli.load_config_file(tmp_path / "config.py")
  quiet = lambda line: None
  first = eclipse.run_eclipse(config, dataset, run, ddpm_max_minutes=0.0, say=quiet)
  assert first == {"stage": "ddpm", "ddpm_steps": 2}  # Stopped after the first DDPM chunk.
  assert not (run / "poisoned.npz").exists()
  summary = eclipse.run_eclipse(config, dataset, run, say=quiet)
  assert summary["stage"] == "done" and set(summary["defenses"]) == {"none", "eclipse",
                                                                    "iss_grayscale"}
  assert json.loads((run / "summary.json").read_text()) == summary
  assert set(summary["purification"]) == {"poison_residual", "psnr_poisoned_db",
                                          "psnr_purified_db"}
  assert len(list((run / "purified").glob("chunk_*.npz"))) == 3  # 48 images in chunks of 20
  poisoned = np.load(run / "poisoned.npz")["images"]
  data = eclipse.split(dataset, config)
  delta = poisoned.astype(int) - data.x_train.astype(int)
  assert np.abs(delta).max() <= 8 and delta.any()  # URP, ℓ∞ 8/255, on the held-out split
  # A rerun recomputes nothing; a lost victim record is recomputed identically.
  before = {p: p.stat().st_mtime_ns for p in run.rglob("*.npz")}
  record = run / "victims" / "eclipse_0.json"
  accuracy = json.loads(record.read_text())["test_accuracy"]
  record.unlink()
  said = []
  assert eclipse.run_eclipse(config, dataset, run, say=said.append) == summary
  assert any("eclipse victim 0" in line for line in said)
  assert not any("none victim 0" in line or "purified chunk" in line for line in said)
  assert json.loads(record.read_text())["test_accuracy"] == accuracy
  assert {p: p.stat().st_mtime_ns for p in run.rglob("*.npz")} == before

  # The script on the finished folder (in this process: its programs are compiled already):
  # the table, and another seed refused with one line, exit 2.
  argv = ["--config", str(tmp_path / "config.py"), "--data", str(tmp_path / "data.npz"),
          "--out", str(tmp_path / "run")]
  assert run_script("scripts/eclipse.py", argv) == 0
  finished = capsys.readouterr().out
  assert "| eclipse |" in finished and "victim 0" not in finished
  assert run_script("scripts/eclipse.py", argv + ["--seed", "1"]) == 2
  assert "seed: folder has 0, this run has 1" in capsys.readouterr().err


@pytest.mark.parametrize("poison, settings", [
    ("em", {"steps": 2, "train_steps": 2, "max_rounds": 1, "batch_size": 16}),
    ("tap", {"steps": 2, "restarts": 1, "batch_size": 16}),
    ("sep", {"steps": 2, "num_checkpoints": 2, "inner_steps": 2, "batch_size": 16}),
    ("efp", {"steps": 2, "batch_size": 16}),
])
def test_trained_poisons_craft_against_their_own_surrogates(poison, settings):
  # Every class present: SEP aligns features to each target class's mean.
  dataset = dataclasses.replace(_dataset(n_train=44), y_train=np.arange(44) % 10)
  config = eclipse.EclipseConfig(
      poison=poison, sparse_size=12, poison_settings=settings,
      poison_surrogate={"widths": (4, 8, 8, 8), "epochs": 1, "batch_size": 16,
                        "compute_dtype": "float32"}).validate()
  data = eclipse.split(dataset, config)
  poisoned = eclipse.poison_training_set(data, config, num_classes=10)
  delta = poisoned.astype(int) - data.x_train.astype(int)
  assert poisoned.dtype == np.uint8 and np.abs(delta).max() <= 8 and delta.any()
  np.testing.assert_array_equal(poisoned, eclipse.poison_training_set(data, config, 10))


def test_purification_residual_measures_what_is_left_of_the_poison():
  rng = np.random.default_rng(0)
  clean = rng.integers(40, 200, (6, 4, 4, 3)).astype(np.uint8)
  delta = rng.choice([-8, 8], clean.shape)
  delta[5] = 0  # A poison that left an image alone: no direction, skipped.
  poisoned = (clean + delta).astype(np.uint8)
  half = (clean + delta // 2).astype(np.uint8)
  out = eclipse.purification_residual(clean, poisoned, half)
  assert out["poison_residual"] == pytest.approx(0.5)
  assert out["psnr_poisoned_db"] == pytest.approx(10 * np.log10(255 ** 2 / (64 * 5 / 6)))
  assert out["psnr_purified_db"] == pytest.approx(10 * np.log10(255 ** 2 / (16 * 5 / 6)))
  assert eclipse.purification_residual(clean, poisoned, clean)["poison_residual"] == 0
  assert eclipse.purification_residual(clean, poisoned, poisoned)["poison_residual"] == 1
  assert eclipse.purification_residual(clean, clean, clean) == {
      "poison_residual": None, "psnr_poisoned_db": float("inf"),
      "psnr_purified_db": float("inf")}


def _summary(poison, accuracies):
  return {"stage": "done", "poison": poison,
          "defenses": {d: {"test_accuracy_mean": float(np.mean(a)), "test_accuracy": list(a)}
                       for d, a in accuracies.items()}}


def test_table_puts_the_papers_cells_beside_the_measured(tmp_path, capsys, run_script):
  lsp = _summary("lsp", {"none": [0.2, 0.3], "eclipse": [0.8, 0.7], "iss_jpeg": [0.6]})
  ar = _summary("ar", {"none": [0.1], "eclipse": [0.75], "purification_only": [0.5]})
  clean = _summary("none", {"none": [0.9], "eclipse": [0.85]})
  table = eclipse.render_table([clean, lsp, ar]).splitlines()
  # Columns in the poisons' order, clean last; rows in DEFENSES order, only those run.
  assert table[0] == "| defense | LSP | AR | clean |"
  assert table[2] == "| w/o | 25.0 (24.48) | 10.0 (10.59) | 90.0 (94.95) |"
  assert table[3] == "| ECLIPSE (A+B+C) | 75.0 (84.58) | 75.0 (87.32) | 85.0 (90.43) |"
  assert table[4] == "| A | — (39.93) | 50.0 (83.98) | — |"
  assert table[5] == "| ISS-J | 60.0 (79.55) | — (81.39) | — (85.23) |"
  assert len(table) == 6
  # What purification left of each poison, where the run recorded it.
  ar["purification"] = {"poison_residual": 0.123, "psnr_poisoned_db": 35.0,
                        "psnr_purified_db": 30.0}
  table = eclipse.render_table([clean, lsp, ar]).splitlines()
  assert table[6] == "| poison left by purification | — | 0.12 | — |" and len(table) == 7
  del ar["purification"]
  with pytest.raises(ValueError, match="two runs of poison 'lsp'"):
    eclipse.render_table([lsp, lsp])
  with pytest.raises(ValueError, match="unfinished"):
    eclipse.render_table([{"stage": "ddpm", "ddpm_steps": 2}])
  # The script over run folders; a folder without a summary is one line, exit 2.
  folders = []
  for summary in (lsp, ar):
    folder = tmp_path / summary["poison"]
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary))
    folders.append(str(folder))
  assert run_script("scripts/eclipse_table.py", ["--runs", *folders]) == 0
  assert "| ECLIPSE (A+B+C) | 75.0 (84.58) | 75.0 (87.32) |" in capsys.readouterr().out
  assert run_script("scripts/eclipse_table.py", ["--runs", str(tmp_path)]) == 2
  assert "has no summary.json" in capsys.readouterr().err
