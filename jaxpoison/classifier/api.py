"""The classifier's public entry points: validated training, memory planning, inference,
stacking, feature extractors and checkpoints (about 500 lines: each entry point's checks of
its inputs and their messages)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpoison import io as jio
from jaxpoison._checks import check_images, check_labels
from jaxpoison.classifier.config import TrainConfig, resolve_loop
from jaxpoison.classifier.models import create_model
from jaxpoison.keys import as_key
from jaxpoison.surrogates import FeatureExtractor, GradientModel, NNXApply
from jaxpoison.classifier.train import (
    InsufficientMemoryError,
    TrainedModels,
    make_train_fn,
    make_train_parts,
    model_graphdef,
    resolve_compute_dtype,
    steps_per_epoch,
    total_steps,
)

CHECKPOINT_FORMAT = "jaxpoison.classifier/1"


class CheckpointMismatchError(ValueError):
  """A saved set of models does not match what its config describes, or what was expected."""


# ----------------------------------------------------------------------------- training


def _program_key(config: TrainConfig) -> TrainConfig:
  # The memory fields do not change the program, so they must not split the compile cache.
  return config.replace(models_per_step=0, memory_limit_bytes=0)


_COMPILED: dict = {}


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def _compiled_train(config: TrainConfig, keys, images, labels, init, num_examples=None):
  """The compiled training program for these argument shapes (compiled once, then cached)."""
  signature = (_program_key(config), keys.shape, images.shape, str(images.dtype), labels.shape,
               str(labels.dtype), None if init is None else jax.tree.structure(init),
               None if init is None else tuple(np.shape(a) for a in jax.tree.leaves(init)),
               None if num_examples is None else np.shape(num_examples))
  counts = None if num_examples is None else _abstract(num_examples)
  if signature not in _COMPILED:
    if resolve_loop(config) == "host":
      _COMPILED[signature] = _HostLoop(_program_key(config), keys, _abstract(images),
                                       _abstract(labels), init, counts)
    else:
      fn = jax.jit(make_train_fn(_program_key(config)))
      _COMPILED[signature] = fn.lower(keys, _abstract(images), _abstract(labels),
                                      init, counts).compile()
  return _COMPILED[signature]


class _HostLoop:
  """The training program with its steps called from Python (TrainConfig.loop = "host").

  Three compiled programs: start (initial carry), one step (carry donated) and finish; called
  like the scanned program and giving the same models up to float rounding. On XLA:CPU it is
  an order of magnitude faster, since convolutions inside a while loop run far slower there.
  """

  def __init__(self, config: TrainConfig, keys, images, labels, init, num_examples=None):
    parts = make_train_parts(config)
    self.num_steps = total_steps(config, images.shape[-4])

    def start(keys, images, labels, init, num_examples):
      # Fresh buffers: an init leaf passed through unchanged must not be donated to the step.
      return jax.tree.map(jnp.copy, parts.start(keys, images, labels, init, num_examples))

    self._start = jax.jit(start).lower(keys, images, labels, init, num_examples).compile()
    carry = jax.eval_shape(start, keys, images, labels, init, num_examples)
    step = jax.ShapeDtypeStruct((), jnp.int32)
    self._step = jax.jit(parts.body, donate_argnums=0).lower(
        carry, step, keys, images, labels).compile()
    self._finish = jax.jit(lambda c: parts.finish(c, self.num_steps)).lower(carry).compile()
    # Friendly noise: the images change once (to per-model copies) before switch_step.
    self.switch_at = self.num_steps
    self._switch = self._step_after = None
    if parts.switch is not None:
      self.switch_at = parts.switch_step(images.shape[-4])
      self._switch = jax.jit(parts.switch).lower(carry, keys, images).compile()
      switched = jax.eval_shape(parts.switch, carry, keys, images)
      self._step_after = jax.jit(parts.body, donate_argnums=0).lower(
          carry, step, keys, switched, labels).compile()

  def __call__(self, keys, images, labels, init, num_examples=None):
    carry = self._start(keys, images, labels, init, num_examples)
    for step in range(self.switch_at):
      carry = self._step(carry, np.int32(step), keys, images, labels)
    if self._switch is not None:
      images = self._switch(carry, keys, images)
      for step in range(self.switch_at, self.num_steps):
        carry = self._step_after(carry, np.int32(step), keys, images, labels)
    return self._finish(carry)

  def memory_analysis(self):
    # The step holds the carry, the data and its temporaries: the loop's peak (with friendly
    # noise, the larger of the two steps).
    if self._step_after is None:
      return self._step.memory_analysis()
    return max(self._step.memory_analysis(), self._step_after.memory_analysis(),
               key=_analysis_bytes)


def _analysis_bytes(stats) -> int:
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def program_bytes(compiled) -> int:
  """Device bytes a compiled program needs: arguments + outputs + temporaries − aliases."""
  return _analysis_bytes(compiled.memory_analysis())


def device_memory_limit(config: TrainConfig) -> int | None:
  """config.memory_limit_bytes, else the accelerator's own limit; None on a CPU without one."""
  if config.memory_limit_bytes:
    return int(config.memory_limit_bytes)
  stats = jax.local_devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return int(limit) if limit else None


def _abstract_args(config: TrainConfig, num_models: int, num_train: int, shared: bool):
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), num_models))
  lead = () if shared else (num_models,)
  images = jax.ShapeDtypeStruct((*lead, num_train, *config.image_shape), jnp.uint8)
  labels = jax.ShapeDtypeStruct((*lead, num_train), jnp.int32)
  return keys, images, labels


def estimate_bytes(config: TrainConfig, num_models: int, num_train: int, *,
                   shared_images: bool = False) -> int:
  """Compiled memory footprint (bytes) of training `num_models` models on `num_train` images."""
  keys, images, labels = _abstract_args(config, num_models, num_train, shared_images)
  return program_bytes(_compiled_train(config, keys, images, labels, None))


def plan_models_per_step(config: TrainConfig, num_train: int, memory_bytes: int | None = None,
                         *, shared_images: bool = False) -> int:
  """The largest number of models one program can train within the memory budget.

  The footprint is measured from XLA's compiled programs for 1 and 2 models (per-model image
  sets unless `shared_images`) and extrapolated linearly: bytes(M) = base + M · per_model.
  The budget is `memory_bytes`, else config.memory_limit_bytes, else the accelerator's limit.
  Returns 0 when not even one model fits.
  """
  limit = memory_bytes if memory_bytes is not None else device_memory_limit(config)
  if limit is None:
    raise ValueError(
        "plan_models_per_step: no memory budget is known on this device (the CPU reports "
        "none); pass memory_bytes or set TrainConfig.memory_limit_bytes")
  one = estimate_bytes(config, 1, num_train, shared_images=shared_images)
  two = estimate_bytes(config, 2, num_train, shared_images=shared_images)
  per_model = max(two - one, 1)
  base = one - per_model
  return max(0, int((int(limit) - base) // per_model))


def _check_init(init, config: TrainConfig, num_models: int):
  if not isinstance(init, TrainedModels):
    raise TypeError(f"init: expected TrainedModels (or None), got {type(init).__name__}")
  if model_graphdef(init.config) != model_graphdef(config):
    raise ValueError(
        f"init: its architecture ({init.config.model}, widths {init.config.widths}, "
        f"{init.config.num_classes} classes, images {init.config.image_shape}) differs from "
        f"the config's ({config.model}, widths {config.widths}, {config.num_classes} classes, "
        f"images {config.image_shape})")
  if init.num_models not in (1, num_models):
    raise ValueError(
        f"init: expected 1 or M = {num_models} models to warm-start from, got {init.num_models}")
  return TrainedModels(init.graphdef, init.state, config)


def _slice(tree, start, stop):
  return jax.tree.map(lambda a: a[start:stop], tree)


def train_models(keys, images, labels, config: TrainConfig,
                 init: TrainedModels | None = None, *, num_examples=None) -> TrainedModels:
  """Trains M models, one per key, and returns them stacked (see make_train_fn).

  Args:
    keys: typed PRNG keys [M].
    images: uint8 [N, H, W, C] shared by all models, or [M, N, H, W, C] one set per model.
    labels: int [N] in [0, num_classes), the same for every model (with shared or per-model
      images), or [M, N] one set per model (with per-model images).
    config: the recipe.
    init: TrainedModels with 1 or M models to warm-start from.
    num_examples: int [M], each model's training-set size: model m trains on its first n_m
      images (1 ≤ n_m ≤ N; the rest is padding it never sees), its epochs ceil(n_m /
      batch_size) steps (config.drop_last must be False).

  Models are trained `config.models_per_step` at a time (0: all at once when they fit the
  memory budget, else as many as fit); each chunk runs one compiled program, compiled once
  per shape. Raises InsufficientMemoryError before any training when a chunk does not fit.
  """
  if not isinstance(config, TrainConfig):
    raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
  keys = as_key(keys, name="keys", ndim=1)
  num_models = keys.shape[0]
  check_images(images, name="images", ndims=(4, 5), image_shape=config.image_shape,
               dtypes=("uint8",))
  shared = images.ndim == 4
  if not shared and images.shape[0] != num_models:
    raise ValueError(
        f"images: per-model image sets [M, N, H, W, C] need M = {num_models} (one per key), "
        f"got {images.shape[0]} sets (shape {tuple(images.shape)})")
  num_train = images.shape[-4]
  label_arr = np.asarray(labels)
  if label_arr.ndim == 2:
    if label_arr.shape[0] != num_models:
      raise ValueError(
          f"labels: per-model labels [M, N] need M = {num_models}, got shape {label_arr.shape}")
    check_labels(label_arr.reshape(-1), config.num_classes, name="labels")
    if label_arr.shape[1] != num_train:
      raise ValueError(
          f"labels: expected {num_train} labels per model (one per image), got "
          f"{label_arr.shape[1]}")
  else:
    check_labels(label_arr, config.num_classes, name="labels", length=num_train)
  if label_arr.ndim == 2 and shared:
    raise ValueError("labels: per-model labels [M, N] need per-model images [M, N, H, W, C]")
  if steps_per_epoch(config, num_train) < 1 and config.epochs > 0:
    raise ValueError(
        f"images: {num_train} training images are fewer than one batch of "
        f"{config.batch_size}; lower TrainConfig.batch_size")
  if init is not None:
    init = _check_init(init, config, num_models)
  if num_examples is not None:
    counts = np.asarray(num_examples)
    if config.drop_last:
      raise ValueError("num_examples: per-model training-set sizes need "
                       "TrainConfig.drop_last=False (each model's last batch is partial)")
    if (counts.shape != (num_models,) or not np.issubdtype(counts.dtype, np.integer)
        or counts.min() < 1 or counts.max() > num_train):
      raise ValueError(
          f"num_examples: expected {num_models} integers in [1, {num_train}] (one training-set "
          f"size per model), got {counts.dtype} of shape {counts.shape}"
          + (f" in [{counts.min()}, {counts.max()}]" if counts.size else ""))
    num_examples = jnp.asarray(counts, jnp.int32)

  limit = device_memory_limit(config)
  chunk = config.models_per_step or num_models
  chunk = min(chunk, num_models)

  def program(m):
    k = keys[:m]
    im = images if shared else jax.ShapeDtypeStruct((m, *images.shape[1:]), images.dtype)
    lab = labels if labels.ndim == 1 else jax.ShapeDtypeStruct((m, num_train), labels.dtype)
    ini = None
    if init is not None:
      ini = init if init.num_models == 1 else _slice(init, 0, m)
    counts = None if num_examples is None else num_examples[:m]
    return _compiled_train(config, k, im, lab, ini, counts)

  compiled = program(chunk)
  if limit is not None:
    needed = program_bytes(compiled)
    if needed > limit:
      if config.models_per_step:
        raise InsufficientMemoryError(
            f"training M = {chunk} models at once needs an estimated {needed / 2**20:.1f} MiB, "
            f"more than the memory limit of {limit / 2**20:.1f} MiB; lower "
            f"TrainConfig.models_per_step or the number of training images")
      fits = plan_models_per_step(config, num_train, limit, shared_images=shared)
      if fits < 1:
        raise InsufficientMemoryError(
            f"training even M = 1 model needs an estimated "
            f"{estimate_bytes(config, 1, num_train, shared_images=shared) / 2**20:.1f} MiB, "
            f"more than the memory limit of {limit / 2**20:.1f} MiB (M = {num_models} "
            f"requested: {needed / 2**20:.1f} MiB)")
      chunk = min(fits, num_models)
      compiled = program(chunk)

  results = []
  for start in range(0, num_models, chunk):
    stop = min(start + chunk, num_models)
    idx = np.arange(start, start + chunk).clip(max=num_models - 1)  # last chunk padded
    k = keys[idx]
    im = images if shared else images[idx]
    lab = labels if labels.ndim == 1 else labels[idx]
    ini = None
    if init is not None:
      ini = init if init.num_models == 1 else jax.tree.map(lambda a: a[idx], init)
    counts = None if num_examples is None else num_examples[idx]
    out = compiled(k, im, lab, ini, counts)
    results.append(TrainedModels(out.graphdef, _slice(out.state, 0, stop - start), config))
  return results[0] if len(results) == 1 else stack(results)


# ----------------------------------------------------------------------------- inference


def _views(images: jax.Array, tta_level: int):
  """TTA views and weights: identity, mirror, and 1-pixel translations (airbench's scheme)."""
  views = [(images, 1.0)]
  if tta_level >= 1:
    views = [(images, 0.5), (images[:, :, ::-1, :], 0.5)]
  if tta_level >= 2:
    h, w = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    views = [(v, 0.5 * wt) for v, wt in views]
    for shifted in (padded[:, :h, :w], padded[:, 2:, 2:]):
      views += [(shifted, 0.125), (shifted[:, :, ::-1, :], 0.125)]
  return views


def _as_unit(images) -> jax.Array:
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def _batched(models: TrainedModels, images, batch_size: int, per_model_fn):
  """per_model_fn(model, x01 [B, H, W, C]) -> [B, ...], over all models, in batches of P."""
  check_images(images, name="images", image_shape=models.config.image_shape)
  x = _as_unit(images)
  count = x.shape[0]
  batch = max(1, min(batch_size, count))
  padded = -(-count // batch) * batch
  x = jnp.pad(x, ((0, padded - count), (0, 0), (0, 0), (0, 0)))
  chunks = x.reshape(padded // batch, batch, *x.shape[1:])

  def one_model(state):
    model = nnx.merge(models.graphdef, state, copy=True)
    return jax.lax.map(lambda c: per_model_fn(model, c), chunks)

  out = jax.vmap(one_model)(models.state)  # [M, chunks, B, ...]
  out = out.reshape(out.shape[0], padded, *out.shape[3:])
  return out[:, :count]


def _logits(models: TrainedModels, images, batch_size: int = 1000) -> jax.Array:
  level = models.config.tta_level

  def fn(model, x):
    return sum(wt * model(v, train=False) for v, wt in _views(x, level))

  return _batched(models, images, batch_size, fn)


_logits_jit = jax.jit(_logits, static_argnames="batch_size")


def logits(models: TrainedModels, images, *, batch_size: int = 1000) -> jax.Array:
  """Logits [M, P, C] of every model on images [P, H, W, C] (uint8 or float in [0, 1]),
  averaged over the config's test-time augmentation views (jitted; traceable)."""
  return _logits_jit(models, images, batch_size=batch_size)


def features(models: TrainedModels, images, *, batch_size: int = 1000) -> jax.Array:
  """Penultimate features [M, P, D] (no test-time augmentation)."""
  return _features_jit(models, images, batch_size=batch_size)


_features_jit = jax.jit(
    lambda models, images, batch_size: _batched(
        models, images, batch_size, lambda m, x: m.features(x, train=False)),
    static_argnames="batch_size")


def predict(models: TrainedModels, images, *, batch_size: int = 1000) -> jax.Array:
  """Each model's predicted class, int32 [M, P] (with the config's test-time augmentation)."""
  return jnp.argmax(logits(models, images, batch_size=batch_size), axis=-1).astype(jnp.int32)


def evaluate(models: TrainedModels, images, labels, *, batch_size: int = 1000) -> jax.Array:
  """Each model's accuracy on (images, labels), float32 [M]."""
  labels = jnp.asarray(labels)
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise ValueError(
        f"labels: expected one label per image, shape [{images.shape[0]}], got {labels.shape}")
  pred = predict(models, images, batch_size=batch_size)
  return jnp.mean(pred == labels[None, :], axis=1, dtype=jnp.float32)


def finite_models(models: TrainedModels) -> np.ndarray:
  """Whether each model's parameters and statistics are all finite, bool [M]: False marks a
  model whose training diverged (its predictions are argmaxes of NaN, not a classifier's)."""
  if not isinstance(models, TrainedModels):
    raise TypeError(f"models: expected TrainedModels, got {type(models).__name__}")
  finite = np.ones(models.num_models, bool)
  for leaf in jax.tree.leaves(models.state):
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
      finite &= np.asarray(jnp.isfinite(leaf).reshape(leaf.shape[0], -1).all(axis=1))
  return finite


# ----------------------------------------------------------------------------- collections


def select(models: TrainedModels, index) -> TrainedModels:
  """Model `index` alone (M = 1)."""
  if not isinstance(index, (int, np.integer)) or not 0 <= index < models.num_models:
    raise IndexError(f"index: expected an int in [0, {models.num_models}), got {index!r}")
  return _slice(models, int(index), int(index) + 1)


def stack(models: Sequence[TrainedModels]) -> TrainedModels:
  """Concatenates sets of models of one architecture along the models axis."""
  models = list(models)
  if not models:
    raise ValueError("stack: expected at least one TrainedModels")
  first = models[0]
  for i, m in enumerate(models[1:], 1):
    if m.graphdef != first.graphdef or m.config != first.config:
      raise ValueError(
          f"stack: models[{i}] has a different architecture or config than models[0]")
  state = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *[m.state for m in models])
  return TrainedModels(first.graphdef, state, first.config)


def feature_extractor(models: TrainedModels, index: int = 0) -> FeatureExtractor:
  """Model `index`'s penultimate layer as an attacks.FeatureExtractor (float [0, 1] images)."""
  one = select(models, index)
  state = jax.tree.map(lambda a: a[0], one.state)
  return FeatureExtractor(NNXApply(models.graphdef, "features"), state)


def logits_extractor(models: TrainedModels, index: int = 0) -> FeatureExtractor:
  """Model `index`'s logits as an attacks.FeatureExtractor (e.g. the surrogate classifier of the
  label-consistent backdoor); no test-time augmentation."""
  one = select(models, index)
  state = jax.tree.map(lambda a: a[0], one.state)
  return FeatureExtractor(NNXApply(models.graphdef, "__call__"), state)


@dataclasses.dataclass(frozen=True)
class NNXLogits:
  """`apply_fn(params, state, images) -> logits` of an NNX classifier in inference mode (batch
  norm on running statistics). Equal for equal graph definitions, so surrogates of one
  architecture share compiled programs and stack into one vmap."""
  graphdef: Any

  def __call__(self, params, state, images):
    return nnx.merge(self.graphdef, params, state, copy=True)(images)


def gradient_model(models: TrainedModels, index: int = 0) -> GradientModel:
  """Model `index` as a gradient-matching surrogate (attacks.witches_brew.GradientModel): its
  nnx.Param leaves are the parameters the gradient is taken of (as the reference's
  `model.parameters()`), the rest (batch-norm statistics, whitening filters) held fixed."""
  one = select(models, index)
  state = jax.tree.map(lambda a: a[0], one.state)
  params, rest = nnx.split_state(state, nnx.Param, ...)
  return GradientModel(NNXLogits(models.graphdef), params, rest)


# ----------------------------------------------------------------------------- checkpoints


def _flat(state) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save_models(path: str | os.PathLike, models: TrainedModels) -> Path:
  """Writes `path/` with config.json and params.npz (each file written atomically; the JSON,
  written last, marks a complete checkpoint)."""
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  jio.atomic_save_npz(path / "params.npz", **_flat(models.state))
  jio.atomic_write_json(path / "config.json", {
      "format": CHECKPOINT_FORMAT, "num_models": models.num_models,
      "config": models.config.to_json()})
  return path


def load_models(path: str | os.PathLike) -> TrainedModels:
  """Reads a save_models directory; CheckpointMismatchError when the files disagree."""
  path = Path(path)
  if not (path / "config.json").exists() or not (path / "params.npz").exists():
    raise FileNotFoundError(
        f"{path}: expected a directory with config.json and params.npz written by save_models")
  meta = json.loads((path / "config.json").read_text())
  if meta.get("format") != CHECKPOINT_FORMAT:
    raise CheckpointMismatchError(
        f"{path}: format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
  config = TrainConfig.from_json(meta["config"])
  num_models = int(meta["num_models"])
  graphdef = model_graphdef(config)
  dtype = resolve_compute_dtype(config)
  abstract = nnx.state(nnx.eval_shape(lambda: create_model(config, jax.random.key(0), dtype)))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  with np.load(path / "params.npz") as data:
    stored = {k: data[k] for k in data.files}
  expected = {jax.tree_util.keystr(p) for p, _ in leaves}
  if set(stored) != expected:
    missing, extra = sorted(expected - set(stored)), sorted(set(stored) - expected)
    raise CheckpointMismatchError(
        f"{path}: the parameters do not match a {config.model} with widths {config.widths}: "
        f"missing {missing[:5]}, unexpected {extra[:5]}")
  arrays = []
  for p, leaf in leaves:
    name = jax.tree_util.keystr(p)
    want = (num_models, *leaf.shape)
    if stored[name].shape != want:
      raise CheckpointMismatchError(
          f"{path}: {name} has shape {stored[name].shape}, expected {want} for "
          f"{num_models} models of config {config.model} widths {config.widths}")
    arrays.append(jnp.asarray(stored[name], leaf.dtype))
  state = jax.tree_util.tree_unflatten(treedef, arrays)
  return TrainedModels(graphdef, state, config)
