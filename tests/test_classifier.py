"""Tests of the many-model trainer (tiny networks, 256 synthetic images, a few steps, CPU).

Programs are shared between tests through module fixtures: each distinct shape compiles once
(compiling dominates the time on a CPU).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpoison import classifier
from jaxpoison.classifier import models
from jaxpoison.classifier import train as train_lib

NUM_TRAIN = 128
# Model i trained inside a vmapped batch of M vs alone: XLA lowers a vmapped convolution (and
# its weight gradient) to a grouped convolution whose float32 sums run in another order, so the
# two agree only to rounding, which SGD steps (and batch norm's 1/σ) amplify. Measured on the
# CPU, 8 steps: relative max |Δ| (per variable, over its max |value|) ≈ 1e-5..1e-4 with XLA's
# default LLVM -O3, 4.4e-3 and 6.1e-3 at the suite's -O1 (conftest.py), 2.4e-2 and 2.6e-2
# with YNNPACK dots (not used here): how far the roundings drift depends on the kernels. A
# model trained with another key or other data differs by O(1) (its weights are another draw),
# so 2e-2 (3× the -O1 figure) still tells a batching bug from rounding.
BATCHED_VS_ALONE_RTOL = 2e-2


PALETTE = np.array([(220, 40, 40), (40, 220, 40), (40, 40, 220)])


def _colour_data(seed, n):
  """Three classes (red, green, blue), each a flat colour plus small noise: trivially separable."""
  rng = np.random.default_rng(seed)
  palette = PALETTE
  labels = rng.integers(0, len(PALETTE), n).astype(np.int32)
  noise = rng.integers(-20, 21, (n, 32, 32, 3))
  images = np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
  return images, labels


@pytest.fixture(scope="module")
def data():
  return _colour_data(0, NUM_TRAIN), _colour_data(1, 200)  # train, test


@pytest.fixture(scope="module")
def config():
  # 8 steps. Lookahead off: airbench returns the EMA as of the last multiple of 5 steps, which
  # in so short a run discards the last steps (the head-only test runs it).
  return classifier.tiny_config(epochs=2, batch_size=32, lookahead=False)


@pytest.fixture(scope="module")
def keys():
  return jax.random.split(jax.random.key(7), 2)


@pytest.fixture(scope="module")
def batched(data, config, keys):
  (x, y), _ = data
  return classifier.train_models(keys, x, y, config)


def _rounding_tolerance(params, reference):
  """A bound on float32 rounding differences between two evaluations of one network.

  Batched, vmapped (grouped) or differently chunked evaluations sum each output's K terms in a
  different order, and two orders of a float32 sum of K terms differ by up to ~K·eps·max|term|
  (the worst case). Each of the network's L layers adds such an error, and batch norm keeps
  the layers' terms on the scale of the outputs, so the outputs may differ by about
  L·K·eps·max|output|, with K the largest fan-in (kernels [..., in, out]: the product of all
  but the last axis). Independent of the machine; errors of a wrong model, view or batch
  norm mode are orders of magnitude larger.
  """
  kernels = [a for a in jax.tree.leaves(params) if a.ndim >= 2]
  fan_in = max(int(np.prod(np.shape(k)[:-1])) for k in kernels)
  eps = float(np.finfo(np.float32).eps)
  return len(kernels) * fan_in * eps * float(np.max(np.abs(reference)))


def _leaves(models):
  return [np.asarray(a) for a in jax.tree.leaves(models.state)]


def _max_diff(a, b):
  """The largest per-variable relative difference max |u − v| / max(max |u|, 1e-6)."""
  return max(float(np.max(np.abs(u - v)) / max(float(np.max(np.abs(u))), 1e-6))
             for u, v in zip(_leaves(a), _leaves(b)))


def test_same_keys_bit_identical_and_no_recompilation(data, config, keys, batched):
  (x, y), _ = data
  traces = train_lib.TRACES[config]
  again = classifier.train_models(keys, x, y, config)
  assert train_lib.TRACES[config] == traces  # same shapes: no new trace, no new compile
  for a, b in zip(_leaves(batched), _leaves(again)):
    np.testing.assert_array_equal(a, b)
  assert batched.num_models == 2
  # Different keys give different models.
  assert not np.array_equal(_leaves(batched)[0][0], _leaves(batched)[0][1])


def test_tiny_model_learns_separable_data(data, batched):
  _, (x_test, y_test) = data
  accuracy = np.asarray(classifier.evaluate(batched, x_test, y_test, batch_size=64))
  assert accuracy.shape == (2,)
  # Chance is 1/3 and one class is 37.5% of the test set: a model that learned nothing stays
  # below 0.4. After 8 steps one of the two models still calls 9 of 200 green images blue
  # (0.9): those lie near its decision boundary, where float rounding (another CPU, another
  # XLA) moves a few across, so the bound keeps a margin of 20 images below that.
  assert np.all(accuracy >= 0.8), accuracy


def test_model_in_batch_matches_model_alone(data, config, keys, batched):
  (x, y), _ = data
  alone = classifier.train_models(keys[1:], x, y, config)
  diff = _max_diff(classifier.select(batched, 1), alone)
  print(f"batched vs alone: relative max |Δ variable| = {diff:.3g}")
  assert diff <= BATCHED_VS_ALONE_RTOL


@pytest.fixture(scope="module")
def per_model(data, config, keys):
  (x, y), _ = data
  return classifier.train_models(keys, np.stack([x, x]), np.stack([y, y]), config)


def test_shared_and_per_model_images_agree(batched, per_model):
  diff = _max_diff(batched, per_model)
  print(f"shared vs per-model images: relative max |Δ variable| = {diff:.3g}")
  assert diff <= BATCHED_VS_ALONE_RTOL


def test_per_model_images_with_shared_labels(data, config, keys, per_model):
  # Denoised copies keep their labels: labels [N] with images [M, N, ...] are every model's.
  (x, y), _ = data
  out = classifier.train_models(keys, np.stack([x, x]), y, config)
  assert out.num_models == 2
  diff = _max_diff(per_model, out)
  print(f"labels [N] vs [M, N]: relative max |Δ variable| = {diff:.3g}")
  assert diff <= BATCHED_VS_ALONE_RTOL


def test_host_loop_matches_the_scanned_program(data, config, keys, batched):
  # On the CPU, loop="auto" calls a jitted step from Python (XLA:CPU runs convolutions inside
  # a while loop far slower); the scanned program must train the same models up to rounding.
  (x, y), _ = data
  assert classifier.resolve_loop(config) == "host"
  scanned = classifier.train_models(keys, x, y, config.replace(loop="scan"))
  diff = _max_diff(batched, scanned)
  print(f"host loop vs scan: relative max |Δ variable| = {diff:.3g}")
  assert diff <= BATCHED_VS_ALONE_RTOL
  with pytest.raises(ValueError, match=r"loop: expected one of \('auto', 'scan', 'host'\)"):
    config.replace(loop="python")


def test_warm_start_with_zero_steps_returns_init_broadcast(data, config, keys, batched):
  (x, y), _ = data
  one = classifier.select(batched, 0)
  out = classifier.train_models(keys, x, y, config.replace(epochs=0), init=one)
  assert out.num_models == 2
  for a, b in zip(_leaves(one), _leaves(out)):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0], b[1])


def test_head_only_training_freezes_features(data, config, keys, batched):
  (x, y), (x_test, _) = data
  head_config = config.replace(trainable="head", reinit_head=True, epochs=2, lookahead=True)
  probed = classifier.train_models(keys, x, y, head_config, init=batched)
  before = nnx.to_flat_state(batched.state)
  after = dict(nnx.to_flat_state(probed.state))
  changed = []
  for path, var in before:
    a, b = np.asarray(var.value), np.asarray(after[path].value)
    if path[0] == "head":
      changed.append(not np.array_equal(a, b))
    else:
      np.testing.assert_array_equal(a, b, err_msg=str(path))
  assert all(changed)
  np.testing.assert_array_equal(classifier.features(batched, x_test, batch_size=64),
                                classifier.features(probed, x_test, batch_size=64))


def test_predict_logits_features_shapes_and_consistency(data, batched):
  _, (x_test, y_test) = data
  out = classifier.logits(batched, x_test, batch_size=64)
  assert out.shape == (2, 200, 10)
  pred = classifier.predict(batched, x_test, batch_size=64)
  assert pred.dtype == jnp.int32 and pred.shape == (2, 200)
  np.testing.assert_array_equal(pred, np.argmax(out, -1))
  feats = classifier.features(batched, x_test, batch_size=64)
  assert feats.shape == (2, 200, 16)
  # The logits are the TTA-weighted head of the features' views; without TTA, of the features.
  model = nnx.merge(batched.graphdef, jax.tree.map(lambda a: a[0], batched.state))
  direct = model(jnp.asarray(x_test, jnp.float32) / 255)
  np.testing.assert_allclose(model.head_logits(feats[0]), direct, rtol=0,
                             atol=_rounding_tolerance(nnx.state(model), direct))
  # Callable inside an outer jit.
  inner = jax.jit(lambda m, im: classifier.predict(m, im, batch_size=64))(batched, x_test)
  np.testing.assert_array_equal(inner, pred)


def test_logits_average_the_tta_views(batched):
  # The same networks with tta_level=2 must give the weighted mean of their TTA-free
  # (tta_level=0) logits on views built here independently of api._views.
  tta = dataclasses.replace(batched, config=batched.config.replace(tta_level=2))
  notta = dataclasses.replace(batched, config=batched.config.replace(tta_level=0))
  # Random pixels, not the flat colours of `data`: views of a flat image barely differ, so a
  # wrong view or weight would go unnoticed.
  rng = np.random.default_rng(3)
  x01 = rng.integers(0, 256, (64, 32, 32, 3)).astype(np.float32) / 255
  padded = np.pad(x01, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  down_right = padded[:, :-2, :-2]  # pixel (i, j) ← (i − 1, j − 1), the edge reflected
  up_left = padded[:, 2:, 2:]       # pixel (i, j) ← (i + 1, j + 1)

  def flip(v):
    return v[:, :, ::-1]

  views = [(x01, 0.25), (flip(x01), 0.25), (down_right, 0.125), (flip(down_right), 0.125),
           (up_left, 0.125), (flip(up_left), 0.125)]
  plain = [np.asarray(classifier.logits(notta, np.ascontiguousarray(v), batch_size=64),
                      np.float64) for v, _ in views]
  expected = sum(wt * p for p, (_, wt) in zip(plain, views))
  got = classifier.logits(tta, x01, batch_size=64)
  model = nnx.merge(batched.graphdef, jax.tree.map(lambda a: a[0], batched.state))
  atol = _rounding_tolerance(nnx.state(model), expected)
  # The check has teeth only if the views' logits differ by far more than rounding.
  assert np.max(np.abs(plain[0] - expected)) > 100 * atol
  np.testing.assert_allclose(got, expected, rtol=0, atol=atol)
  np.testing.assert_array_equal(classifier.predict(tta, x01, batch_size=64),
                                np.argmax(got, -1))


def test_feature_extractor_matches_features(data, batched):
  _, (x_test, _) = data
  extractor = classifier.feature_extractor(batched, 1)
  x01 = jnp.asarray(x_test, jnp.float32) / 255
  expected = classifier.features(batched, x_test, batch_size=64)[1]
  # All at once vs vmapped over models in chunks of 64: the same sums in another order.
  np.testing.assert_allclose(extractor.apply_fn(extractor.params, x01), expected, rtol=0,
                             atol=_rounding_tolerance(extractor.params, expected))


def test_select_stack_save_load_roundtrip(tmp_path, batched):
  restacked = classifier.stack([classifier.select(batched, 0), classifier.select(batched, 1)])
  for a, b in zip(_leaves(batched), _leaves(restacked)):
    np.testing.assert_array_equal(a, b)
  classifier.save_models(tmp_path / "m", batched)
  loaded = classifier.load_models(tmp_path / "m")
  assert loaded.config == batched.config and loaded.graphdef == batched.graphdef
  for a, b in zip(_leaves(batched), _leaves(loaded)):
    np.testing.assert_array_equal(a, b)


def test_load_mismatch_is_a_clear_error(tmp_path, batched):
  classifier.save_models(tmp_path / "m", batched)
  import json
  meta = json.loads((tmp_path / "m" / "config.json").read_text())
  meta["config"]["widths"] = [8, 16, 32]
  (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
  with pytest.raises(classifier.CheckpointMismatchError, match="widths"):
    classifier.load_models(tmp_path / "m")


def test_memory_limit_error_before_training_and_plan(data, config, keys, batched):
  (x, y), _ = data
  two = classifier.estimate_bytes(config, 2, NUM_TRAIN, shared_images=True)
  one = classifier.estimate_bytes(config, 1, NUM_TRAIN, shared_images=True)
  assert two > one > 0
  tight = config.replace(models_per_step=2, memory_limit_bytes=two - 1)
  with pytest.raises(classifier.InsufficientMemoryError, match=r"M = 2 .*MiB.*limit"):
    classifier.train_models(keys, x, y, tight)
  assert classifier.plan_models_per_step(config, NUM_TRAIN, two, shared_images=True) == 2
  assert classifier.plan_models_per_step(config, NUM_TRAIN, two - 1, shared_images=True) == 1
  assert classifier.plan_models_per_step(config, NUM_TRAIN, one - 1, shared_images=True) == 0
  with pytest.raises(classifier.InsufficientMemoryError, match="M = 1"):
    classifier.train_models(keys, x, y, config.replace(memory_limit_bytes=one // 2))
  # Automatic chunking: a budget for one model trains the two one at a time, same result.
  chunked = classifier.train_models(keys, x, y, config.replace(memory_limit_bytes=two - 1))
  assert _max_diff(chunked, batched) <= BATCHED_VS_ALONE_RTOL


@pytest.mark.parametrize("change, match", [
    (dict(images=np.zeros((NUM_TRAIN, 28, 28, 3), np.uint8)), r"\(32, 32, 3\)"),
    (dict(images=np.zeros((NUM_TRAIN, 32, 32, 3), np.float32)), "uint8"),
    (dict(images=np.zeros((3, NUM_TRAIN, 32, 32, 3), np.uint8)), "M = 2"),
    (dict(labels=np.full(NUM_TRAIN, 10, np.int32)), r"\[0, 9\]"),
    (dict(labels=np.zeros(NUM_TRAIN - 1, np.int32)), "one per image"),
    (dict(images=np.zeros((16, 32, 32, 3), np.uint8), labels=np.zeros(16, np.int32)),
     "fewer than one batch"),
    (dict(keys=np.zeros(3)), "PRNG keys"),
])
def test_argument_errors(data, config, keys, change, match):
  (x, y), _ = data
  args = dict(keys=keys, images=x, labels=y)
  args.update(change)
  with pytest.raises((ValueError, TypeError), match=match):
    classifier.train_models(args["keys"], args["images"], args["labels"], config)


def test_config_errors():
  with pytest.raises(ValueError, match="model"):
    classifier.TrainConfig(model="vgg")
  with pytest.raises(ValueError, match="trainable"):
    classifier.tiny_config(trainable="body")
  with pytest.raises(ValueError, match="widths"):
    classifier.tiny_config(widths=(8, 16))


def test_whitening_filters_whiten_the_patches():
  """Independent check with numpy: filters f_j = v_j / √(λ_j + ε) give f_j'Cf_j = λ/(λ+ε)."""
  images, _ = _colour_data(1, 64)
  kernel = np.asarray(classifier.whitening_kernel(jnp.asarray(images), 64))
  x = (images / 255.0 - np.array([0.4914, 0.4822, 0.4465])) / np.array([0.2470, 0.2435, 0.2616])
  patches = np.concatenate([x[:, dy:dy + 31, dx:dx + 31] for dy in (0, 1) for dx in (0, 1)], -1)
  patches = patches.reshape(-1, 12)
  cov = patches.T @ patches / len(patches)
  eigenvalues = np.linalg.eigh(cov)[0][::-1]
  filters = kernel.reshape(12, 24)
  quad = np.einsum("aj,ab,bj->j", filters, cov, filters)
  expected = eigenvalues / (eigenvalues + 5e-4)
  np.testing.assert_allclose(quad[:12], expected, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(filters[:, 12:], -filters[:, :12])


def test_airbench_schedule_matches_its_formula():
  config = classifier.airbench94_config()
  total = 476
  warmup = int(total * 0.23)
  for step in (0, 50, warmup, 300, 475):
    expected = (0.2 * (1 - step / warmup) + step / warmup if step < warmup
                else 1.0 * (1 - (step - warmup) / (total - warmup))
                + 0.07 * (step - warmup) / (total - warmup))
    assert abs(float(classifier.lr_factor(config, step, total)) - expected) < 1e-5
  assert classifier.total_steps(config, 50000) == 476


def test_multistep_schedule_matches_torch_multisteplr_per_epoch():
  torch = pytest.importorskip("torch")
  config = classifier.conservative_config()
  per_epoch = classifier.train.steps_per_epoch(config, 50000)
  total = classifier.total_steps(config, 50000)
  assert (per_epoch, total) == (390, 40 * 390)
  weight = torch.zeros(1, requires_grad=True)
  optimizer = torch.optim.SGD([weight], lr=1.0)
  scheduler = torch.optim.lr_scheduler.MultiStepLR(
      optimizer, milestones=[40 // 2.667, 40 // 1.6, 40 // 1.142], gamma=0.1)
  for epoch in range(40):
    expected = optimizer.param_groups[0]["lr"]
    for step in (epoch * per_epoch, epoch * per_epoch + per_epoch - 1):
      assert float(classifier.lr_factor(config, step, total)) == pytest.approx(expected, rel=1e-6)
    optimizer.step()
    scheduler.step()
  assert [40 // d for d in classifier.config.MULTISTEP_DIVISORS] == [14, 24, 35]


@pytest.mark.parametrize("config", [classifier.airbench94_config(compute_dtype="float32"),
                                    classifier.tiny_config("resnet18")])
def test_train_fn_traces_for_full_configs(config):
  """Abstract evaluation only (no compilation): the recipes trace with per-model data."""
  fn = classifier.make_train_fn(config)
  keys = jax.ShapeDtypeStruct((3,), jax.random.key(0).dtype)
  images = jax.ShapeDtypeStruct((3, 2 * config.batch_size, 32, 32, 3), jnp.uint8)
  labels = jax.ShapeDtypeStruct((3, 2 * config.batch_size), jnp.int32)
  out = jax.eval_shape(fn, keys, images, labels)
  head = out.state["head"]["kernel"].value
  assert head.shape == (3, config.widths[-1], 10)


# The training step's pieces against references written here from the recipe's definition
# (the shuffling stream, airbench's lookahead), bit for bit: the step may be rearranged (issue
# 14: no conditional inside the loop) but must train exactly the same models.


def _record_batches(monkeypatch):
  """Patches the trainer's augmentation to pass the images through and record each model's
  (key data, epoch, position in the epoch, image indices) at every step."""
  seen = []

  def record(key_data, epoch, pos, indices):
    seen.append((np.asarray(key_data).tobytes(), int(epoch), int(pos), np.asarray(indices)))

  def augment(config, key, epoch, pos, images, indices, num_train):
    jax.debug.callback(record, jax.random.key_data(key), epoch, pos, indices)
    return images

  monkeypatch.setattr(train_lib, "_augment", augment)
  return seen


def test_every_step_trains_on_its_slice_of_the_epochs_permutation(data, monkeypatch):
  (x, y), _ = data
  # 1.5 epochs of 4 steps: the run ends inside its second epoch.
  config = classifier.tiny_config(epochs=1.5, batch_size=32, lookahead=False)
  num_steps, spe = train_lib.total_steps(config, NUM_TRAIN), NUM_TRAIN // 32
  assert (num_steps, spe) == (6, 4)
  keys = jax.random.split(jax.random.key(3), 2)
  seen = _record_batches(monkeypatch)
  parts = train_lib.make_train_parts(config)
  step_fn = jax.jit(parts.body)
  carry = jax.jit(parts.start)(keys, x, y)
  for step in range(num_steps):
    carry = step_fn(carry, np.int32(step), keys, x, y)
  jax.block_until_ready(carry)
  jax.effects_barrier()
  expected = {}
  for key in keys:
    for step in range(num_steps):
      epoch, pos = divmod(step, spe)
      # The data stream: fold_in(fold_in(key, _DATA = 1), epoch), one permutation per epoch.
      perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 1), epoch),
                                    NUM_TRAIN)
      expected[(np.asarray(jax.random.key_data(key)).tobytes(), epoch, pos)] = (
          np.asarray(perm)[pos * 32:(pos + 1) * 32])
  got = {(k, e, p): i for k, e, p, i in seen}
  assert len(seen) == len(expected) == 2 * num_steps
  assert got.keys() == expected.keys()
  for k, indices in expected.items():
    np.testing.assert_array_equal(got[k], indices, err_msg=str(k[1:]))


def _assert_trees_equal(a, b, what):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 0
  for u, v in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=what)


def test_lookahead_pulls_the_weights_to_the_ema_every_fifth_step(data):
  (x, y), _ = data
  # 10 steps: the pull happens after steps 5 and 10 (t = step + 1).
  config = classifier.tiny_config(epochs=2.5, batch_size=32, lookahead=True)
  num_steps = train_lib.total_steps(config, NUM_TRAIN)
  assert num_steps == 10
  keys = jax.random.split(jax.random.key(5), 2)
  parts = train_lib.make_train_parts(config)
  plain = train_lib.make_train_parts(config.replace(lookahead=False))
  step_fn, plain_fn = jax.jit(parts.body), jax.jit(plain.body)
  eps = float(np.finfo(np.float32).eps)

  def pull(e, v, t):
    # airbench: decay 0.95⁵ (t / T)³; the EMA moves towards the weights by 1 − decay.
    decay = 0.95 ** 5 * (t / num_steps) ** 3
    e, v = np.asarray(e, np.float64), np.asarray(v, np.float64)
    return e + (1.0 - decay) * (v - e)

  carry = jax.jit(parts.start)(keys, x, y)
  _assert_trees_equal((carry.params, carry.rest), carry.ema, "start")
  pulls = 0
  for step in range(num_steps):
    # Each step against the plain (lookahead-free) step from the same carry: between pulls
    # the weights are that step's bit for bit and the EMA stays as it was.
    before = carry
    carry = step_fn(carry, np.int32(step), keys, x, y)
    ref = plain_fn(before._replace(ema=None), np.int32(step), keys, x, y)
    _assert_trees_equal(carry.momentum, ref.momentum, f"momentum, step {step}")
    _assert_trees_equal(carry.perms, before.perms, f"permutations, step {step}")
    t = step + 1
    if t % 5:
      _assert_trees_equal((carry.params, carry.rest), (ref.params, ref.rest), f"step {step}")
      _assert_trees_equal(carry.ema, before.ema, f"EMA, step {step}")
      continue
    pulls += 1
    # The pull: the weights become the new EMA, bit for bit.
    _assert_trees_equal((carry.params, carry.rest), carry.ema, f"pull, step {step}")
    # Which is the EMA formula up to float32 rounding: XLA:CPU may contract a multiply-add
    # or round the decay differently by the program it sits in (a few ulps of decay and of
    # each term, far below the pull's own size: 1 − decay ≥ 0.22 of |v − e|).
    for e, v, got in zip(jax.tree.leaves(before.ema), jax.tree.leaves((ref.params, ref.rest)),
                         jax.tree.leaves(carry.ema)):
      e64, v64 = np.asarray(e, np.float64), np.asarray(v, np.float64)
      tol = 8 * eps * (np.abs(e64) + np.abs(v64 - e64))
      np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - pull(e, v, t)),
                                   tol + np.finfo(np.float32).tiny, err_msg=f"step {step}")
  assert pulls == 2
  out = parts.finish(carry, num_steps)
  _assert_trees_equal(out.state, nnx.merge_state(*carry.ema), "finish returns the EMA")


@pytest.mark.parametrize("model, shared", [("airbench94", True), ("airbench94", False),
                                           ("resnet18", True)])
def test_training_step_has_no_conditional(model, shared):
  # A conditional inside an XLA:GPU while loop can cost a device-to-host sync per step.
  def lowered_text(fn, *args):
    return jax.jit(fn).lower(*args).as_text()

  # The check's teeth: this JAX lowers lax.cond to stablehlo.case.
  assert "stablehlo.case" in lowered_text(
      lambda p, v: jax.lax.cond(p, lambda: v, lambda: -v), True, 1.0)
  config = classifier.tiny_config(model, batch_size=32, lookahead=True)
  parts = train_lib.make_train_parts(config)
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 2))
  lead = () if shared else (2,)
  images = jax.ShapeDtypeStruct((*lead, NUM_TRAIN, 32, 32, 3), jnp.uint8)
  labels = jax.ShapeDtypeStruct((NUM_TRAIN,), jnp.int32)
  carry = jax.eval_shape(parts.start, keys, images, labels)
  step = jax.ShapeDtypeStruct((), jnp.int32)
  texts = {"step": lowered_text(parts.body, carry, step, keys, images, labels),
           "scan": lowered_text(classifier.make_train_fn(config), keys, images, labels)}
  for name, text in texts.items():
    for op in ("stablehlo.case", "stablehlo.if", "conditional"):
      assert op not in text, f"{name}: {op}"


# Batch norm under bfloat16 compute: float32 statistics and arithmetic, output in bfloat16.

BF16_EPS = float(jnp.finfo(jnp.bfloat16).eps)  # 2⁻⁷: bfloat16 carries an 8-bit significand


def test_batch_norm_computes_in_float32_and_outputs_the_compute_dtype():
  rng = np.random.default_rng(0)
  # A bfloat16 convolution's output, off-centre, with a bias to add.
  x = jnp.asarray(rng.normal(2.0, 3.0, (16, 8, 8, 6)), jnp.bfloat16)
  bias = jnp.asarray(rng.normal(0.0, 1.0, 6), jnp.float32)
  for out_dtype in (jnp.bfloat16, jnp.float32):
    bn = models.BatchNorm(6, momentum=0.6, epsilon=1e-5, out_dtype=out_dtype, rngs=nnx.Rngs(0))
    ref = nnx.BatchNorm(6, momentum=0.6, epsilon=1e-5, dtype=jnp.float32, rngs=nnx.Rngs(0))
    bn.bias[...] = ref.bias[...] = bias
    for train in (True, True, False):  # two updates of the running statistics, then eval
      got = bn(x, use_running_average=not train)
      want = ref(x, use_running_average=not train)  # float32 throughout
      assert got.dtype == out_dtype
      # The float32 result, rounded once: bit for bit (float32 output: unchanged).
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want.astype(out_dtype)))
      # Round to nearest moves each value by at most half a unit of its last place.
      np.testing.assert_array_less(
          np.abs(np.asarray(got, np.float32) - np.asarray(want)),
          BF16_EPS / 2 * np.abs(np.asarray(want)) + 1e-30)
      for stat in ("mean", "var"):
        assert getattr(bn, stat)[...].dtype == jnp.float32
        np.testing.assert_array_equal(getattr(bn, stat)[...], getattr(ref, stat)[...])


def _equations(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in it (jit, custom_jvp, ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _equations(sub)


@pytest.mark.parametrize("model", ["airbench94", "resnet18"])
def test_bfloat16_networks_keep_activations_in_bfloat16(model):
  config = classifier.tiny_config(model, compute_dtype="bfloat16")
  images, _ = _colour_data(0, 64)
  key = jax.random.key(0)
  nets = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    nets[dtype] = models.create_model(config, key, dtype)
    if model == "airbench94":
      nets[dtype].whiten_kernel[...] = models.whitening_kernel(jnp.asarray(images), 64)
  net = nets[jnp.bfloat16]
  norms = [m for _, m in nnx.iter_graph(net) if isinstance(m, nnx.BatchNorm)]
  assert norms and all(isinstance(m, models.BatchNorm) for m in norms)
  assert all(jnp.dtype(m.out_dtype) == jnp.bfloat16 for m in norms)
  # Random pixels: flat colours would leave batch norm dividing by tiny spreads.
  x01 = jnp.asarray(np.random.default_rng(1).random((32, 32, 32, 3)), jnp.float32)
  # The non-linearities after batch norm (airbench: exact GELU, its erfc; ResNet: ReLU, a
  # max with 0) run on bfloat16 activations.
  graphdef, state = nnx.split(net)
  jaxpr = jax.make_jaxpr(
      lambda s, v: nnx.merge(graphdef, s, copy=True)(v, train=True))(state, x01).jaxpr
  prim = "erfc" if model == "airbench94" else "max"
  acts = [e.invars[0].aval for e in _equations(jaxpr)
          if e.primitive.name == prim and e.invars[0].aval.ndim == 4]
  assert acts and all(a.dtype == jnp.bfloat16 for a in acts), [a.dtype for a in acts]
  # The running statistics stay float32 through a training forward pass.
  stats = [np.array(a) for a in jax.tree.leaves(nnx.state(net, nnx.BatchStat))]
  logits = {dtype: m(x01, train=True) for dtype, m in nets.items()}
  new_stats = jax.tree.leaves(nnx.state(net, nnx.BatchStat))
  assert len(stats) == len(new_stats) == 2 * len(norms)
  for before, after in zip(stats, new_stats):
    assert after.dtype == jnp.float32 and not np.array_equal(before, after)
  # The same function as in float32 up to bfloat16 rounding: each of the L layers with
  # weights rounds its input, its weights, its output and its batch norm's output to 8
  # significant bits (relative 2⁻⁸ each), about 2⁻⁶ = 2 eps per layer.
  num_layers = sum(a.ndim >= 2 for a in jax.tree.leaves(nnx.state(net, nnx.Param)))
  scale = float(jnp.max(jnp.abs(logits[jnp.float32])))
  diff = float(jnp.max(jnp.abs(logits[jnp.bfloat16] - logits[jnp.float32])))
  print(f"{model}: bfloat16 vs float32 logits, max |Δ| / max |logit| = {diff / scale:.3g} "
        f"(bound {2 * num_layers * BF16_EPS:.3g})")
  assert diff <= 2 * num_layers * BF16_EPS * scale


# ----------------------------------------------------------------------------- ECLIPSE's compensation


def _compensation(**changes):
  settings = dict(flip="none", translate=0, grayscale_prob=0.4, noise="gaussian",
                  noise_scale=0.05, noise_quantize=True)
  return dataclasses.replace(classifier.tiny_config("resnet18"), **{**settings, **changes})


def test_grayscale_is_pils_convert_L():
  from PIL import Image
  images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  ours = np.asarray(train_lib.pil_grayscale(jnp.asarray(images)))
  for image, gray in zip(images, ours):
    reference = np.asarray(Image.fromarray(image).convert("L"))
    np.testing.assert_array_equal(gray, np.repeat(reference[..., None], 3, axis=-1))


def test_compensation_statistics():
  # ECLIPSE's training augmentation: grayscale with p = 0.4, then N(0, 0.05²), clipped and
  # truncated to grey levels, fresh at every step.
  config = _compensation()
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  images[..., 0] = np.maximum(images[..., 0], 1)
  images[..., 1] = 0  # No image is grey already: grey outputs are the grayscale draws.
  gray_share, draws = [], 0
  for step in range(60):
    key = jax.random.fold_in(jax.random.key(2), step)
    seen = np.asarray(train_lib._augment(config, key, 0, step, jnp.asarray(images),
                                         jnp.arange(64), 64))
    grey = (seen[..., 0] == seen[..., 1]).all(axis=(1, 2)) & (seen[..., 1] == seen[..., 2]).all(
        axis=(1, 2))
    converted = np.asarray(train_lib.pil_grayscale(jnp.asarray(images)))
    np.testing.assert_array_equal(seen[grey], converted[grey])
    np.testing.assert_array_equal(seen[~grey], images[~grey])
    gray_share.append(grey.mean())
    draws += len(grey)
  # Four standard errors of a Bernoulli(0.4) share over 3,840 draws: 0.032.
  assert abs(np.mean(gray_share) - 0.4) < 4 * np.sqrt(0.4 * 0.6 / draws)

  flat = np.full((64, 32, 32, 3), 128, np.uint8)  # Far from 0 and 255: clipping is negligible.
  x = np.asarray(train_lib.add_train_noise(config, jax.random.key(3), 7, jnp.asarray(flat)))
  levels = x * 255.0
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)  # Truncated to grey levels.
  difference = levels - 128  # floor(128 + 12.75 z): mean −½, variance 12.75² + 1/12.
  n = difference.size
  assert abs(difference.mean() + 0.5) < 4 * 12.75 / np.sqrt(n)
  assert abs(difference.std() / np.sqrt(12.75 ** 2 + 1 / 12) - 1) < 4 * np.sqrt(2 / n)
  other = np.asarray(train_lib.add_train_noise(config, jax.random.key(3), 8, jnp.asarray(flat)))
  assert not np.array_equal(x, other)  # Fresh at every step.


def test_zero_padded_crop_and_constant_schedule():
  white = jnp.full((32, 8, 8, 3), 255, jnp.uint8)
  zeros = _compensation(translate=4, pad_mode="zeros", grayscale_prob=0.0)
  reflect = dataclasses.replace(zeros, pad_mode="reflect")
  seen = np.asarray(train_lib._augment(zeros, jax.random.key(4), 0, 0, white, jnp.arange(32), 32))
  assert (seen == 0).any() and set(np.unique(seen)) == {0, 255}
  assert (np.asarray(train_lib._augment(reflect, jax.random.key(4), 0, 0, white,
                                        jnp.arange(32), 32)) == 255).all()
  constant = dataclasses.replace(zeros, schedule="constant")
  np.testing.assert_array_equal(train_lib.lr_factor(constant, jnp.arange(10), 10), np.ones(10))
  with pytest.raises(ValueError, match="pad_mode: expected one of"):
    dataclasses.replace(zeros, pad_mode="edge")
  with pytest.raises(ValueError, match="grayscale_prob: expected a probability"):
    dataclasses.replace(zeros, grayscale_prob=1.5)
  with pytest.raises(ValueError, match="noise_quantize: needs noise"):
    dataclasses.replace(zeros, noise="none", noise_scale=0.0)


@pytest.mark.parametrize("shape,window,dtype", [((3, 31, 31, 5), 2, jnp.float32),
                                                ((2, 9, 9, 4), 3, jnp.float32),
                                                ((2, 8, 7, 3), 2, jnp.bfloat16)])
def test_max_pool_equals_linen_in_value_and_gradient_with_ties(shape, window, dtype):
  # Small integers: most windows hold ties, which both give to the first maximum (row-major).
  from flax import linen
  from jaxpoison.classifier.models import max_pool
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 3, shape).astype(np.float32), dtype)
  pooled_shape = (shape[0], shape[1] // window, shape[2] // window, shape[3])
  g = jnp.asarray(rng.normal(size=pooled_shape), dtype)
  ours, ours_vjp = jax.vjp(lambda v: max_pool(v, window), x)
  ref, ref_vjp = jax.vjp(lambda v: linen.max_pool(v, (window, window), (window, window)), x)
  np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(ref, np.float32))
  np.testing.assert_array_equal(np.asarray(ours_vjp(g)[0], np.float32),
                                np.asarray(ref_vjp(g)[0], np.float32))


def test_max_pool_second_derivative_equals_linen_without_ties():
  # Gradients of gradients (Witches' Brew differentiates the parameter gradient by the
  # input): equal where no window ties (at a tie the maximum is not differentiable; ours keeps
  # the first maximum there too).
  from flax import linen
  from jaxpoison.classifier.models import max_pool
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  w, v = (jnp.asarray(rng.normal(size=(3,)), jnp.float32) for _ in range(2))

  def second(pool):
    def inner(x):
      grad_w = jax.grad(lambda w: jnp.sum(jnp.tanh(pool(x * w)) ** 2))(w)
      return jnp.vdot(grad_w, v)
    return jax.grad(inner)(x)
  np.testing.assert_array_equal(second(lambda z: max_pool(z, 2)),
                                second(lambda z: linen.max_pool(z, (2, 2), (2, 2))))


# --- the last partial batch (drop_last False), per-model training-set sizes, masks ----------


def test_drop_last_false_keeps_the_partial_batch_and_each_epoch_is_a_permutation():
  config = classifier.tiny_config(batch_size=32, drop_last=False, epochs=3)
  assert classifier.train.steps_per_epoch(config, 70) == 3  # 32 + 32 + 6
  assert classifier.train.steps_per_epoch(config.replace(drop_last=True), 70) == 2
  assert classifier.total_steps(config, 70) == 9
  keys = jax.random.split(jax.random.key(0), 2)
  perms = np.asarray(train_lib.epoch_permutations(keys, 70, 3, jnp.asarray([70, 41]), 96))
  assert perms.shape == (2, 3, 96)
  for model, count in enumerate((70, 41)):
    for epoch in range(3):
      row = perms[model, epoch]
      # The model's own examples first, each once, in a shuffled order; then padding.
      np.testing.assert_array_equal(np.sort(row[:count]), np.arange(count))
      assert (row[count:] == -1).all()
  assert not np.array_equal(perms[0, 0, :70], np.arange(70))
  # Without sizes or padding: the shuffle as before; a model with n = N draws it too.
  plain = np.asarray(train_lib.epoch_permutations(keys, 70, 3))
  np.testing.assert_array_equal(plain[0], perms[0, :, :70])  # n = N: the permutation itself


@pytest.mark.parametrize("model", ["airbench94", "resnet18"])
def test_masked_batch_norm_equals_the_batch_without_its_padding(model):
  config = classifier.tiny_config(model)
  net = classifier.create_model(config, jax.random.key(0))
  state = nnx.state(net)
  x = jax.random.uniform(jax.random.key(1), (10, 32, 32, 3))
  mask = jnp.arange(10) < 6
  garbage = x.at[6:].set(jax.random.uniform(jax.random.key(2), (4, 32, 32, 3)) * 50.0)

  def run(images, m):
    model_ = nnx.merge(train_lib.model_graphdef(config), state, copy=True)
    logits = model_(images, train=True, mask=m)
    return logits, nnx.state(model_, nnx.BatchStat)

  padded, stats_padded = run(garbage, mask)
  alone, stats_alone = run(x[:6], None)
  # The same statistics over the same six examples (summed in another order: float32).
  np.testing.assert_allclose(padded[:6], alone, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(stats_padded), jax.tree.leaves(stats_alone)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_padding_never_reaches_a_model_trained_on_its_first_examples():
  (x, y), _ = _colour_data(3, 90), None
  config = classifier.tiny_config(batch_size=32, drop_last=False, epochs=2, lookahead=False,
                                  input_norm="training_set")
  keys = jax.random.split(jax.random.key(4), 2)
  counts = np.array([90, 50])
  rng = np.random.default_rng(5)
  sets_a = np.stack([x, x])
  sets_b = sets_a.copy()
  sets_b[1, 50:] = rng.integers(0, 256, sets_b[1, 50:].shape, dtype=np.uint8)
  labels = np.stack([y, y])
  labels_b = labels.copy()
  labels_b[1, 50:] = (labels_b[1, 50:] + 1) % 3
  a = classifier.train_models(keys, sets_a, labels, config, num_examples=counts)
  b = classifier.train_models(keys, sets_b, labels_b, config, num_examples=counts)
  # Whatever fills model 1's slots past its 50 examples, it is the same model, bit for bit
  # (its whitening filters, input statistics, batches, batch norm and loss never see them).
  for u, v in zip(_leaves(classifier.select(a, 1)), _leaves(classifier.select(b, 1))):
    np.testing.assert_array_equal(u, v)
  # The input statistics are its own 50 images' (per channel, population std).
  stats = np.asarray(classifier.select(a, 1).state["input_statistics"][...])[0]
  own = x[:50].astype(np.float64) / 255.0
  np.testing.assert_allclose(stats[0], own.mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(stats[1], own.std(axis=(0, 1, 2)), rtol=1e-4)
  # Model 0 (all 90) is model 0 of a run without sizes (n = N: same batches, same masks).
  full = classifier.train_models(keys, sets_a, labels, config)
  for u, v in zip(_leaves(classifier.select(a, 0)), _leaves(classifier.select(full, 0))):
    np.testing.assert_array_equal(u, v)
  with pytest.raises(ValueError, match="num_examples: per-model training-set sizes need"):
    classifier.train_models(keys, sets_a, labels, config.replace(drop_last=True),
                            num_examples=counts)
  with pytest.raises(ValueError, match=r"num_examples: expected 2 integers in \[1, 90\]"):
    classifier.train_models(keys, sets_a, labels, config, num_examples=np.array([91, 3]))


def test_the_last_partial_batch_is_one_plain_step_on_its_examples():
  # One epoch over 40 examples at batch 32 without momentum or decay: steps on 32, then 8.
  # The second step equals one step of batch 8 on exactly those 8 examples (mean loss over
  # them, batch norm over them).
  (x, y), _ = _colour_data(6, 40), None
  config = classifier.tiny_config(model="resnet18", batch_size=32, drop_last=False, epochs=1,
                                  momentum=0.0, weight_decay=0.0, flip="none", translate=0,
                                  schedule="constant", label_smoothing=0.0, lookahead=False,
                                  whiten_bias_epochs=0)
  keys = jax.random.split(jax.random.key(8), 1)
  parts = train_lib.make_train_parts(config)
  carry = parts.start(keys, x, y)
  after_first = parts.body(carry, jnp.int32(0), keys, x, y)
  after_second = parts.body(after_first, jnp.int32(1), keys, x, y)
  last = np.asarray(carry.perms[0, 0, 32:40])
  eight = config.replace(batch_size=8, drop_last=True)
  parts8 = train_lib.make_train_parts(eight)
  # Start the batch-8 run from the state after the first step, on the 8 examples alone.
  start8 = parts8.start(keys, x[last], y[last])
  carry8 = start8._replace(params=after_first.params, rest=after_first.rest,
                           momentum=after_first.momentum)
  stepped = parts8.body(carry8, jnp.int32(0), keys, x[last], y[last])
  for u, v in zip(jax.tree.leaves((after_second.params, after_second.rest)),
                  jax.tree.leaves((stepped.params, stepped.rest))):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)


def test_milestones_schedule_is_the_dpa_references():
  from jaxpoison.defenses import dpa_base_config
  config = dpa_base_config(classifier.tiny_config())
  per_epoch = classifier.train.steps_per_epoch(config, 200)
  total = classifier.total_steps(config, 200)
  assert (per_epoch, total) == (2, 400)  # 200 images at batch 128, the last batch kept
  # The reference's loop: lr ×0.2 at the end of epochs 60, 120 and 160.
  lr = 1.0
  for epoch in range(200):
    for step in (epoch * per_epoch, epoch * per_epoch + per_epoch - 1):
      assert float(classifier.lr_factor(config, step, total)) == pytest.approx(lr, rel=1e-6)
    if epoch in (60, 120, 160):
      lr *= 0.2
