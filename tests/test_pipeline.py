"""Unit tests of the certification pipeline's pieces (results folder, chunks, analysis)."""

import json
import os

import jax
import numpy as np
import pytest
from scipy import stats

from jaxpoison import certify as certify_lib
from jaxpoison import pipeline
from jaxpoison.io import atomic_save_npz


def test_model_keys_depend_only_on_seed_sigma_index():
  a_noise, a_train = pipeline.model_keys(0, 0.25, 7)
  b_noise, b_train = pipeline.model_keys(0, 0.25, 7)
  assert np.array_equal(jax.random.key_data(a_noise), jax.random.key_data(b_noise))
  assert np.array_equal(jax.random.key_data(a_train), jax.random.key_data(b_train))
  others = [pipeline.model_keys(0, 0.25, 8)[0], pipeline.model_keys(1, 0.25, 7)[0],
            pipeline.model_keys(0, 0.5, 7)[0], a_train]
  for other in others:
    assert not np.array_equal(jax.random.key_data(a_noise), jax.random.key_data(other))
  # Traced indices (as inside the jitted chunk) give the same keys as Python ints.
  traced = jax.jit(lambda i: jax.random.key_data(pipeline.model_keys(0, 0.25, i)[0]))(7)
  assert np.array_equal(np.asarray(traced), jax.random.key_data(a_noise))


def _touch_chunk(votes_dir, start, stop, num_points=3):
  indices = np.arange(start, stop)
  atomic_save_npz(pipeline.chunk_path(votes_dir, start, stop), model_indices=indices,
                  votes=np.tile(indices[:, None] % 10, (1, num_points)).astype(np.int16))


def test_pending_chunks_cover_exactly_the_missing_models(tmp_path):
  assert pipeline.pending_chunks(tmp_path, 10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
  _touch_chunk(tmp_path, 0, 4)
  _touch_chunk(tmp_path, 6, 8)
  assert pipeline.pending_chunks(tmp_path, 10, 4) == [range(4, 6), range(8, 10)]
  assert pipeline.pending_chunks(tmp_path, 12, 3) == [range(4, 6), range(8, 11), range(11, 12)]
  # Stray temporary files of an interrupted write are not chunks.
  (tmp_path / ".models_000008-000009.npz.abc.tmp").write_bytes(b"partial")
  assert pipeline.pending_chunks(tmp_path, 10, 4) == [range(4, 6), range(8, 10)]
  _touch_chunk(tmp_path, 4, 6)
  _touch_chunk(tmp_path, 8, 10)
  assert pipeline.pending_chunks(tmp_path, 10, 4) == []
  votes = pipeline.load_votes(tmp_path, 10, 3)
  np.testing.assert_array_equal(votes[:, 0], np.arange(10) % 10)


def test_load_votes_names_missing_models(tmp_path):
  _touch_chunk(tmp_path, 0, 4)
  with pytest.raises(ValueError, match="no votes yet for 2 of 6 models"):
    pipeline.load_votes(tmp_path, 6, 3)


def test_environment_changes_refused_unless_allowed(tmp_path):
  settings = {"seed": 0, "environment": {"platform": "cpu", "trainer_compute_dtype": "float32",
                                         "jax_version": "0.10.2"}}
  out = tmp_path / "run"
  pipeline.claim_results_dir(out, settings)
  moved = {"seed": 0, "environment": {"platform": "gpu", "trainer_compute_dtype": "bfloat16",
                                      "jax_version": "0.10.2"}}
  with pytest.raises(pipeline.ResultsMismatch, match=r'environment\.platform: folder has "cpu", '
                     r'this run has "gpu".*\n.*environment\.trainer_compute_dtype'):
    pipeline.claim_results_dir(out, moved)
  with pytest.raises(pipeline.ResultsMismatch, match="allow_environment_change"):
    pipeline.claim_results_dir(out, moved)
  # Allowed: recorded, and the new environment is the one later resumes compare with.
  pipeline.claim_results_dir(out, moved, allow_environment_change=True)
  stored = json.loads((out / pipeline.SETTINGS_FILE).read_text())
  assert stored["environment"] == moved["environment"]
  assert stored["environment_history"] == [settings["environment"]]
  pipeline.claim_results_dir(out, moved)
  # The override never covers settings that define the votes.
  with pytest.raises(pipeline.ResultsMismatch, match="seed: folder has 0, this run has 1"):
    pipeline.claim_results_dir(out, {**moved, "seed": 1}, allow_environment_change=True)


def test_run_settings_resolve_dtype_loop_platform_and_jax_version():
  from jaxpoison import classifier
  env = pipeline.environment_settings(classifier.tiny_config(compute_dtype="auto"))
  assert env["platform"] == jax.default_backend() == "cpu"
  assert env["jax_version"] == jax.__version__
  # "auto" is resolved: float32 and the host loop on the CPU.
  assert env["trainer_compute_dtype"] == "float32" and env["trainer_loop"] == "host"
  env = pipeline.environment_settings(classifier.tiny_config(compute_dtype="bfloat16",
                                                             loop="scan"))
  assert env["trainer_compute_dtype"] == "bfloat16" and env["trainer_loop"] == "scan"
  # The denoiser's dtype: "auto" is float32 on the CPU (bfloat16 on accelerators); the
  # concurrency is recorded only when it is not the default (older folders still resume).
  assert env["denoiser_compute_dtype"] == "float32" and "concurrency" not in env
  env = pipeline.environment_settings(classifier.tiny_config(), "bfloat16", "vmap")
  assert env["denoiser_compute_dtype"] == "bfloat16" and env["concurrency"] == "vmap"
  assert pipeline.resolve_denoise_dtype("auto") == "float32"


def test_choose_models_per_step_plans_by_concurrency_and_caps_vmap(monkeypatch, caplog):
  from jaxpoison import classifier
  config = classifier.tiny_config(image_shape=(32, 32, 3))
  # No memory budget (a CPU): one model per device, whatever the concurrency.
  assert pipeline.choose_models_per_step(None, config, 1000, 2) == 2
  assert pipeline.choose_models_per_step(None, config, 1000, 2, concurrency="vmap") == 2
  # A 10 GB device: sequential holds one model's training program (1 GB here) and the
  # denoising program (2 GB) once, plus a denoised copy (1000 × 3072 bytes) per model.
  monkeypatch.setattr(classifier, "device_memory_limit", lambda c: 10 * 10**9)
  monkeypatch.setattr(classifier, "estimate_bytes", lambda c, m, n, **k: 10**9)
  copy = 1000 * 32 * 32 * 3
  expected = (int(0.9 * 10 * 10**9) - 2 * 10**9 - 10**9) // copy + 1
  assert pipeline.choose_models_per_step(None, config, 1000, 1,
                                         denoise_bytes=2 * 10**9) == min(expected, 128)
  monkeypatch.setattr(classifier, "plan_models_per_step", lambda c, n, memory_bytes: 500)
  assert pipeline.choose_models_per_step(None, config, 1000, 1, concurrency="vmap") == 32
  # A request past vmap's cap is cut, with a message; sequential keeps it.
  with caplog.at_level("WARNING", logger="jaxpoison.certification"):
    assert pipeline.choose_models_per_step(128, config, 1000, 2, concurrency="vmap") == 64
  assert "crashed at 64" in caplog.text
  assert pipeline.choose_models_per_step(128, config, 1000, 2) == 128
  monkeypatch.setattr(classifier, "estimate_bytes", lambda c, m, n, **k: 10**10)
  with pytest.raises(classifier.InsufficientMemoryError, match="does not fit"):
    pipeline.choose_models_per_step(None, config, 1000, 1)


def test_claim_results_dir_refuses_other_settings(tmp_path):
  settings = {"seed": 0, "trainer": {"epochs": 2, "model": "tiny"}, "num_test": 5}
  out = tmp_path / "run"
  pipeline.claim_results_dir(out, settings)
  pipeline.claim_results_dir(out, settings)  # Same settings: a resume.
  changed = {"seed": 0, "trainer": {"epochs": 3, "model": "tiny"}, "num_test": 5}
  with pytest.raises(pipeline.ResultsMismatch, match=r"trainer\.epochs: folder has 2, this run has 3"):
    pipeline.claim_results_dir(out, changed)
  assert json.loads((out / pipeline.SETTINGS_FILE).read_text()) == settings
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(pipeline.ResultsMismatch, match="not a results folder"):
    pipeline.claim_results_dir(foreign, settings)


def test_config_validation_messages():
  good = pipeline.CertifyConfig(num_models=10, n0=2)
  assert good.validate().sigmas == (0.25,)
  with pytest.raises(ValueError, match="must exceed n0"):
    pipeline.CertifyConfig(num_models=5, n0=5).validate()
  with pytest.raises(ValueError, match="sigma"):
    pipeline.CertifyConfig(sigmas=(25.0,)).validate()
  with pytest.raises(ValueError, match="sigma"):
    pipeline.CertifyConfig(sigmas=(0.0,)).validate()
  with pytest.raises(ValueError, match="alpha"):
    pipeline.CertifyConfig(alpha=1.0).validate()
  with pytest.raises(ValueError, match="trainer"):
    pipeline.CertifyConfig(trainer="vgg").validate()
  with pytest.raises(ValueError, match="each noise level once"):
    pipeline.CertifyConfig(sigmas=(0.25, 0.25)).validate()
  with pytest.raises(ValueError, match="denoise_dtype: expected one of"):
    pipeline.CertifyConfig(denoise_dtype="float16").validate()
  with pytest.raises(ValueError, match="concurrency: expected one of"):
    pipeline.CertifyConfig(concurrency="pmap").validate()


def test_analyse_votes_matches_certify_and_the_radius_formula():
  rng = np.random.default_rng(0)
  num_models, num_points, n0, sigma, alpha = 60, 40, 10, 0.5, 0.01
  labels = rng.integers(0, 3, num_points)
  # Each point's models vote its label with a point-specific probability.
  p = rng.uniform(0.2, 1.0, num_points)
  agree = rng.uniform(size=(num_models, num_points)) < p
  votes = np.where(agree, labels, (labels + 1) % 3)
  per_point, summary = pipeline.analyse_votes(votes, labels, n0=n0, sigma=sigma, alpha=alpha,
                                              num_classes=3, num_train=500)
  counts_select = certify_lib.vote_counts(votes[:n0], 3)
  counts_estimate = certify_lib.vote_counts(votes[n0:], 3)
  # Radii from the counts, independently: σ Φ⁻¹(Clopper–Pearson lower bound).
  c_a = counts_select.argmax(1)
  k = counts_estimate[np.arange(num_points), c_a]
  p_a = stats.beta.ppf(alpha, k, num_models - n0 - k + 1)
  expected = np.where(p_a > 0.5, sigma * stats.norm.ppf(p_a), 0.0)
  np.testing.assert_allclose(per_point["radius"], expected, rtol=1e-9, atol=1e-12)
  # CERTIFY's labels from the counts alone: ĉA where the bound exceeds 1/2.
  np.testing.assert_array_equal(per_point["predict"], np.where(p_a > 0.5, c_a, -1))
  correct = (p_a > 0.5) & (c_a == labels)
  assert summary["certify_accuracy"] == pytest.approx(correct.mean())
  assert summary["abstention_rate"] == pytest.approx((p_a <= 0.5).mean())
  for r, acc in summary["certified_accuracy"].items():
    assert acc == pytest.approx(np.mean(correct & (expected >= float(r))))
  # PREDICT on all models' votes, with scipy's exact two-sided binomial test of the top two.
  smoothed, majority = [], []
  for point in range(num_points):
    counts = np.bincount(votes[:, point], minlength=3)
    order = sorted(range(3), key=lambda c: (-counts[c], c))
    n_a, n_b = counts[order[0]], counts[order[1]]
    test = stats.binomtest(int(n_a), int(n_a + n_b), 0.5)
    smoothed.append(order[0] if test.pvalue <= alpha else -1)
    majority.append(order[0])
  smoothed, majority = np.array(smoothed), np.array(majority)
  assert 0 < (smoothed == -1).sum() < num_points  # The test abstains on some points only.
  np.testing.assert_array_equal(per_point["smoothed_predict"], smoothed)
  assert summary["smoothed_accuracy"] == pytest.approx(np.mean(smoothed == labels))
  assert summary["smoothed_abstention_rate"] == pytest.approx(np.mean(smoothed == -1))
  assert summary["majority_vote_accuracy"] == pytest.approx(np.mean(majority == labels))
  assert summary["majority_vote_accuracy"] > summary["smoothed_accuracy"]
  model_acc = (votes == labels).mean(1)
  assert summary["model_accuracy_mean"] == pytest.approx(model_acc.mean())
  assert summary["model_accuracy_sd"] == pytest.approx(model_acc.std(ddof=1))
  n = num_models - n0
  assert summary["max_certifiable_radius"] == pytest.approx(
      sigma * stats.norm.ppf(alpha ** (1 / n)))
  # The dataset-level bound (pB = 1 − pA): σΦ⁻¹(pA)/√r per certified and correct point; with r
  # = 1 and every model agreeing it is the largest certifiable radius.
  assert summary["poisoning_radius"]["1%"]["r"] == 5
  assert summary["poisoning_radius"]["1"]["max_with_these_models"] == pytest.approx(
      summary["max_certifiable_radius"])
  ok = correct
  assert ok.sum() >= 3  # Several certified, correct points: the statistics below mean something.
  for name, r in (("1", 1), ("1%", 5), ("100%", 500)):
    entry = summary["poisoning_radius"][name]
    per = np.where(ok, sigma * stats.norm.ppf(np.where(ok, p_a, 0.75)) / np.sqrt(r), 0.0)
    assert entry["max_with_these_models"] == pytest.approx(
        sigma * stats.norm.ppf(alpha ** (1 / n)) / np.sqrt(r))
    assert entry["median_certified_correct"] == pytest.approx(np.median(per[ok]))
    assert entry["mean_over_test_points"] == pytest.approx(per.mean())


def test_write_certify_table_is_cohen_format(tmp_path):
  per_point = {"label": np.array([1, 2]), "predict": np.array([1, -1]),
               "radius": np.array([0.12345, 0.0]), "correct": np.array([1, 0])}
  path = pipeline.write_certify_table(tmp_path / "certify.tsv", np.array([40, 7]), per_point)
  lines = path.read_text().splitlines()
  assert lines == ["idx\tlabel\tpredict\tradius\tcorrect", "40\t1\t1\t0.1235\t1",
                   "7\t2\t-1\t0.0000\t0"]


def test_subset_indices_fixed_and_sorted():
  a = pipeline.subset_indices(1000, 50)
  assert np.array_equal(a, pipeline.subset_indices(1000, 50))
  assert np.all(np.diff(a) > 0) and len(a) == 50
  assert np.array_equal(pipeline.subset_indices(10, None), np.arange(10))


def test_train_subset_is_a_fixed_random_subset_of_every_class():
  from jaxpoison.data import make_dataset
  y = np.repeat(np.arange(10), 50)  # Sorted by class, like some CIFAR-10 copies.
  x = np.zeros((500, 32, 32, 3), np.uint8)
  dataset = make_dataset(x, y, x[:10], y[:10])
  subset = pipeline.train_subset(dataset, 100)
  assert len(subset.y_train) == 100 and len(np.unique(subset.y_train)) == 10
  np.testing.assert_array_equal(subset.y_train, pipeline.train_subset(dataset, 100).y_train)
  assert pipeline.train_subset(dataset, None) is dataset


def test_configure_cpu_devices_respects_xla_flags(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  assert pipeline.configure_cpu_devices(3) == 3
  assert pipeline.CPU_DEVICES_FLAG + "=3" in os.environ["XLA_FLAGS"]
  assert "--xla_dump_to=/tmp/x" in os.environ["XLA_FLAGS"]
  # A count already in XLA_FLAGS (a user's, or the tests' virtual devices) is left alone.
  assert pipeline.configure_cpu_devices(5) is None
  monkeypatch.delenv("XLA_FLAGS")
  assert pipeline.configure_cpu_devices() >= 1
  monkeypatch.delenv("XLA_FLAGS")
  with pytest.raises(ValueError, match="cpu_devices"):
    pipeline.configure_cpu_devices(0)


def test_resume_edge_cases_at_the_chunk_level(tmp_path):
  # A run of 10 models in chunks of 4 stopped after 0-3 and 4-7, resumed with chunks of 3: only
  # 8-9 remain, as one chunk (the runner pads it to 3 and drops the padding).
  _touch_chunk(tmp_path, 0, 4)
  _touch_chunk(tmp_path, 4, 8)
  assert pipeline.pending_chunks(tmp_path, 10, 3) == [range(8, 10)]
  _touch_chunk(tmp_path, 8, 10)
  # Extending the finished run to 15 models computes only the new ones.
  assert pipeline.pending_chunks(tmp_path, 15, 4) == [range(10, 14), range(14, 15)]
  # Analysing fewer models than are on disk reads exactly the first ones.
  votes = pipeline.load_votes(tmp_path, 6, 3)
  np.testing.assert_array_equal(votes[:, 0], np.arange(6))
  # Chunks written for another number of test points are refused, not silently mixed.
  _touch_chunk(tmp_path, 10, 12, num_points=4)
  with pytest.raises(pipeline.ResultsMismatch, match="votes for 4 test points, expected 3"):
    pipeline.load_votes(tmp_path, 12, 3)


@pytest.mark.parametrize("loop", ["host", "scan"])
def test_sequential_and_vmap_concurrency_give_the_same_votes(loop):
  from jaxpoison import classifier, diffusion
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  y_train = (np.arange(64) % 3).astype(np.int32)
  x_test = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
  unet = diffusion.UNetConfig(sample_size=32, block_out_channels=(8, 16), layers_per_block=1,
                              attention_resolutions=(16,), norm_num_groups=4)
  # Random weights from numpy: jax.random initialization compiles the PRNG for every parameter
  # shape, tens of seconds on a CPU, and any weights serve this comparison.
  params = {name: np.asarray(rng.normal(0.0, 0.05, s.shape), s.dtype)
            for name, s in diffusion.param_shapes(unet).items()}
  denoiser = diffusion.Denoiser(params=jax.tree.map(jax.numpy.asarray, params), unet=unet,
                                schedule=diffusion.linear_schedule())
  trainer = classifier.tiny_config(epochs=2, batch_size=16, num_classes=10,
                                   image_shape=(32, 32, 3), whitening_images=64, loop=loop)
  mesh = pipeline.models_mesh()
  indices = np.arange(2 * mesh.devices.size, dtype=np.int32)  # two models per device
  arrays = pipeline.replicate((denoiser, x_train, y_train, x_test), mesh)
  votes = {}
  for concurrency in ("sequential", "vmap"):
    computer = pipeline.ChunkComputer(
        mesh=mesh, seed=0, sigma=0.25, denoiser=denoiser, train_config=trainer, num_train=64,
        denoise_batch_size=32, allow_untrained_sigma=True, concurrency=concurrency)
    votes[concurrency], _ = computer(*arrays, indices)
  assert votes["sequential"].shape == (len(indices), 20)
  # Each model's own training, one after another or vmapped: the same models up to float
  # rounding (grouped against plain convolutions), so the same votes.
  np.testing.assert_array_equal(votes["sequential"], votes["vmap"])
  # And model k's votes do not depend on the chunk it was computed in.
  alone, _ = pipeline.ChunkComputer(
      mesh=mesh, seed=0, sigma=0.25, denoiser=denoiser, train_config=trainer, num_train=64,
      denoise_batch_size=32, allow_untrained_sigma=True)(*arrays, indices[:mesh.devices.size])
  np.testing.assert_array_equal(alone, votes["sequential"][:mesh.devices.size])
