"""Training many classifiers at once: one jitted program, a `lax.scan` over steps, `jax.vmap`
over models.

Each model has its own key (initialization, shuffling, augmentation) and optionally its own
training set (`images` [M, N, H, W, C]: the certification pipeline's denoised copies); a shared
set [N, H, W, C] is read by every model without copying. The models' variables are a stacked
`nnx.State` (leading axis M), so the step is a plain `jax.vmap` of a single-model step over
split state, and the whole loop stays on the device.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxpoison.classifier import augment
from jaxpoison.classifier.adversarial import pgd_linf
from jaxpoison.classifier.friendly import chunked_friendly_noise
from jaxpoison.classifier.config import MULTISTEP_DIVISORS, TrainConfig, resolve_compute_dtype
from jaxpoison.classifier.models import (InputStatistics, Whitening, create_model,
                                         dataset_statistics, init_head, training_set_statistics,
                                         whitening_kernel)

# fold_in tags of a model's key, one stream per use (new streams go at the end, so that the
# others' draws stay as they were).
_INIT, _DATA, _FLIP, _AUG, _HEAD, _ADV, _DP, _NOISE, _FRIENDLY, _POISSON = range(10)
# The Poisson batch's capacity is chosen so that a sample overflows it with probability at
# most this over the whole run (`poisson_capacity`).
POISSON_OVERFLOW = 1e-9
_LOOKAHEAD_EVERY = 5
TRACES: collections.Counter = collections.Counter()


class InsufficientMemoryError(RuntimeError):
  """The requested number of concurrent models does not fit the device memory budget."""


@struct.dataclass
class TrainedModels:
  """M trained networks of one architecture.

  Attributes:
    graphdef: the NNX graph definition (static).
    state: the variables (`nnx.State`: parameters, batch-norm statistics, whitening filters),
      every leaf stacked over the M models on axis 0.
    config: the TrainConfig that built and trained them (static).
  """
  graphdef: Any = struct.field(pytree_node=False)
  state: Any
  config: TrainConfig = struct.field(pytree_node=False)

  @property
  def num_models(self) -> int:
    return int(jax.tree.leaves(self.state)[0].shape[0])


@functools.lru_cache(maxsize=None)
def model_graphdef(config: TrainConfig):
  """The graph definition of `config`'s network (abstract: no arrays are created)."""
  dtype = resolve_compute_dtype(config)
  abstract = nnx.eval_shape(lambda: create_model(config, jax.random.key(0), dtype))
  return nnx.split(abstract)[0]


def steps_per_epoch(config: TrainConfig, num_train: int) -> int:
  """N // batch_size (the last incomplete batch dropped) or, with drop_last False,
  ceil(N / batch_size)."""
  if config.drop_last:
    return num_train // config.batch_size
  return -(-num_train // config.batch_size)


def poisson_rate(config: TrainConfig, num_train: int) -> float:
  """DP-SGD's Poisson sampling rate q = batch_size / N (each example's chance per step)."""
  return min(config.batch_size / num_train, 1.0)


def poisson_overflow(capacity: int, num_train: int, rate: float) -> float:
  """P(Binomial(N, q) > capacity): one step's chance that the Poisson sample does not fit."""
  from scipy import stats  # scipy ships with jax; only the DP path asks for it
  return float(stats.binom.sf(capacity, num_train, rate))


def poisson_capacity(config: TrainConfig, num_train: int) -> int:
  """The Poisson batch's slots: config.dp_batch_capacity, or the smallest capacity c with
  total_steps · P(Binomial(N, q) > c) ≤ POISSON_OVERFLOW (at most N)."""
  if config.dp_batch_capacity:
    return min(config.dp_batch_capacity, num_train)
  from scipy import stats
  rate = poisson_rate(config, num_train)
  per_step = POISSON_OVERFLOW / max(total_steps(config, num_train), 1)
  # isf: the smallest c with P(X > c) ≤ per_step.
  return int(min(stats.binom.isf(per_step, num_train, rate), num_train))


def total_steps(config: TrainConfig, num_train: int) -> int:
  """ceil(epochs × steps per epoch), as airbench counts them."""
  return int(math.ceil(config.epochs * steps_per_epoch(config, num_train) - 1e-9))


def lr_factor(config: TrainConfig, step: jax.Array, num_steps: int) -> jax.Array:
  """The schedule's multiplier of the learning rate (and of the coupled decay) at `step`."""
  step = jnp.asarray(step, jnp.float32)
  if config.schedule == "cosine":
    return 0.5 * (1.0 + jnp.cos(jnp.pi * step / max(num_steps, 1)))
  if config.schedule == "constant":
    return jnp.ones_like(step)
  if config.schedule == "milestones":
    per_epoch = num_steps / max(config.epochs, 1e-9)
    drops = sum((step >= round(m * per_epoch)).astype(jnp.float32) for m in config.lr_milestones)
    return jnp.asarray(config.lr_gamma, jnp.float32) ** drops
  if config.schedule == "multistep":
    # Milestones at whole epochs: epoch E // d starts at step (E // d) · (steps per epoch).
    per_epoch = num_steps / max(config.epochs, 1e-9)
    drops = sum((step >= round((config.epochs // d) * per_epoch)).astype(jnp.float32)
                for d in MULTISTEP_DIVISORS)
    return 0.1 ** drops
  warmup = max(int(num_steps * config.warmup_fraction), 1)
  rise = 0.2 + 0.8 * step / warmup
  fall = 1.0 - 0.93 * (step - warmup) / max(num_steps - warmup, 1)
  return jnp.where(step < warmup, rise, fall)


def _leaf_rules(config: TrainConfig, state) -> tuple[Any, Any, Any]:
  """Per-leaf (trainable, lr multiplier, is the whitening bias) trees for the parameters."""
  def rule(path, _):
    names = [getattr(p, "key", getattr(p, "name", None)) for p in path]
    names = [str(n) for n in names if n is not None]
    is_head = names[0] == "head"
    is_whiten_bias = names[0] == "whiten_bias"
    is_norm_bias = names[-1] == "bias" or (len(names) > 1 and names[-2] == "bias")
    is_norm_bias = is_norm_bias and any("norm" in n for n in names)
    trainable = is_head or config.trainable == "all"
    if is_whiten_bias and config.whiten_bias_epochs <= 0 and config.model == "airbench94":
      trainable = False
    scale = config.bias_scaler if is_norm_bias else 1.0
    if is_head:
      scale = config.head_lr_scale
    return trainable, scale, is_whiten_bias

  rules = jax.tree_util.tree_map_with_path(rule, state)
  pick = lambda i: jax.tree.map(lambda r: r[i], rules, is_leaf=lambda r: isinstance(r, tuple))
  return pick(0), pick(1), pick(2)


def _sgd_constants(config: TrainConfig) -> tuple[float, float]:
  """(effective PyTorch-SGD learning rate, its weight-decay coefficient times lr)."""
  if config.decoupled:
    kilostep = 1024.0 * (1.0 + 1.0 / (1.0 - config.momentum))
    return config.lr / kilostep, config.weight_decay * config.batch_size / kilostep
  return config.lr, config.weight_decay * config.lr


def _augment(config: TrainConfig, key, epoch, step_in_epoch, images, indices, num_train):
  """Flip and translate one model's batch [B, H, W, C] on the device (uint8, or float in
  [0, 1] units with noise before the augmentation; float after a bilinear shift)."""
  batch_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, _AUG), epoch),
                                 step_in_epoch)
  if config.flip == "alternating":
    # One random flip per image fixed at the start, and every image flipped on odd epochs.
    base = jax.random.bernoulli(jax.random.fold_in(key, _FLIP), 0.5, (num_train,))
    flip = base[indices] ^ (epoch % 2 == 1)
  elif config.flip == "random":
    flip = jax.random.bernoulli(jax.random.fold_in(batch_key, 0), 0.5, (images.shape[0],))
  else:
    flip = None
  if config.shift == "bilinear":  # static
    # RandomTransform: a real shift, bilinear, the dataset mean outside (its zero padding in
    # normalized units); the flip as drawn above.
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images
    shifts = jax.random.uniform(jax.random.fold_in(batch_key, 1), (images.shape[0], 2),
                                jnp.float32, -config.translate, config.translate)
    flips = jnp.zeros((images.shape[0],), bool) if flip is None else flip
    images = augment.apply_shift_flip(x, shifts, flips, dataset_statistics(images.shape[-1])[0])
    flip = None
  elif flip is not None:
    images = augment.flip_where(images, flip)
  pad = config.translate
  if pad > 0 and config.shift == "integer":
    offsets = jax.random.randint(jax.random.fold_in(batch_key, 1), (images.shape[0], 2), 0,
                                 2 * pad + 1)
    images = augment.translate(images, offsets, pad,
                               "reflect" if config.pad_mode == "reflect" else "constant")
  if config.grayscale_prob > 0:  # static
    gray = jax.random.bernoulli(jax.random.fold_in(batch_key, 2), config.grayscale_prob,
                                (images.shape[0],))
    images = jnp.where(gray[:, None, None, None], augment.pil_grayscale(images), images)
  return images


def privatize_gradients(per_example_grads, key, clip_norm, noise_multiplier):
  """DP-SGD's gradient sum (Abadi et al. 2016): every example's gradient clipped to global ℓ2
  norm `clip_norm` (each pytree of [B, ...] leaves is one example's), summed, plus Gaussian
  noise of std noise_multiplier · clip_norm on every coordinate (drawn from `key`).

  Returns (the noisy sum, shaped as one example's gradient, float32; how many of the B
  examples were clipped). The clipping is optax's `per_example_global_norm_clip`.
  """
  leaves, treedef = jax.tree.flatten(per_example_grads)
  leaves = [g.astype(jnp.float32) for g in leaves]
  summed, num_clipped = optax.per_example_global_norm_clip(leaves, clip_norm)
  keys = jax.random.split(key, len(summed))
  std = noise_multiplier * clip_norm
  noisy = [g + std * jax.random.normal(k, g.shape, jnp.float32) for g, k in zip(summed, keys)]
  return jax.tree.unflatten(treedef, noisy), num_clipped


def _train_noise(config: TrainConfig, key, shape) -> jax.Array:
  """One model's batch of `TrainConfig.noise` (float32, [0, 1] pixel units)."""
  scale = config.noise_scale
  if config.noise == "bernoulli":
    return scale * (2.0 * jax.random.bernoulli(key, 0.5, shape).astype(jnp.float32) - 1.0)
  if config.noise == "uniform":
    return jax.random.uniform(key, shape, jnp.float32, -scale, scale)
  return scale * jax.random.normal(key, shape, jnp.float32)


def add_train_noise(config: TrainConfig, key, step, images):
  """One model's batch (uint8, or float in [0, 1] units) plus `TrainConfig.noise` drawn for
  `step` from the model's key: float32 in [0, 1] pixel units (clipped and truncated to grey
  levels with noise_quantize)."""
  noise = _train_noise(config, jax.random.fold_in(jax.random.fold_in(key, _NOISE), step),
                       images.shape)
  x = (images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images) + noise
  if config.noise_quantize:  # static
    x = jnp.floor(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0
  return x


class TrainParts(NamedTuple):
  """The training loop in pieces, for callers that run the steps themselves.

  start(keys, images, labels, init=None) -> carry; body(carry, step, keys, images, labels) ->
  carry after step `step` (int32 scalar, 0 ≤ step < total_steps); finish(carry, num_steps) ->
  TrainedModels. All traceable; `make_train_fn` is start, a `lax.scan` of body, finish. The
  carry (a TrainCarry) is a pytree whose every leaf has the models on axis 0; body has no
  data-dependent control flow (no conditional inside the loop).

  With friendly noise (config.friendly_epoch >= 0) the images change once, before step
  switch_step(num_train): images = switch(carry, keys, images) (per model, [M, N, H, W, C]);
  callers running the steps themselves must do the same (None: no switch).
  """
  start: Callable
  body: Callable
  finish: Callable
  switch: Callable | None = None
  switch_step: Callable | None = None


class TrainCarry(NamedTuple):
  """The training loop's state between steps (internal to TrainParts; every leaf [M, ...]).

  Attributes:
    params, rest: the models' nnx.Param variables and the others (batch-norm statistics,
      whitening filters).
    momentum: the SGD momentum buffers, shaped as params.
    ema: airbench's lookahead EMA (params, rest), or None without lookahead.
    perms: int32 [M, E, N], model m's order of the N training images in epoch e, for every
      epoch the run touches (E = ceil(total_steps / steps_per_epoch), at least 1).
  """
  params: Any
  rest: Any
  momentum: Any
  ema: Any
  perms: jax.Array


def epoch_permutations(keys: jax.Array, num_train: int, num_epochs: int,
                       num_examples: jax.Array | None = None,
                       length: int | None = None) -> jax.Array:
  """int32 [M, num_epochs, length]: each model's shuffle of the training set in each epoch,
  drawn from fold_in(fold_in(keys[m], _DATA), epoch).

  With `num_examples` [M], model m's epoch is a shuffle of its first n_m examples (those of
  a random permutation of all N slots below n_m, in that order); the slots after its n_m
  examples, and after N up to `length` (default N), hold -1 (padding)."""
  length = num_train if length is None else length

  def one(key, epoch, count):
    key = jax.random.fold_in(jax.random.fold_in(key, _DATA), epoch)
    perm = jax.random.permutation(key, num_train).astype(jnp.int32)
    if count is not None:
      invalid = perm >= count
      order = jnp.argsort(invalid, stable=True)  # the model's own examples first, in order
      perm = jnp.where(invalid[order], -1, perm[order])
    return jnp.pad(perm, (0, length - num_train), constant_values=-1)

  epochs = jnp.arange(num_epochs, dtype=jnp.int32)
  counts_axis = None if num_examples is None else 0
  return jax.vmap(jax.vmap(one, (None, 0, None)), (0, None, counts_axis))(
      keys, epochs, num_examples)


def poisson_batch(key: jax.Array, step, num_train: int, rate: float, capacity: int):
  """One model's Poisson-sampled batch at `step`: (indices int32 [capacity], mask bool
  [capacity]); every example enters independently with probability `rate` (drawn from
  fold_in(fold_in(key, _POISSON), step)); the sampled indices come first in increasing order,
  the unused slots are masked out (index 0), and a sample larger than the capacity is
  truncated to its first `capacity` examples."""
  key = jax.random.fold_in(jax.random.fold_in(key, _POISSON), step)
  chosen = jax.random.bernoulli(key, rate, (num_train,))
  idx = jnp.nonzero(chosen, size=capacity, fill_value=-1)[0].astype(jnp.int32)
  return jnp.maximum(idx, 0), idx >= 0


def num_epochs_touched(config: TrainConfig, num_train: int) -> int:
  """How many epochs the run's steps reach into (the last may be partial), at least 1."""
  spe = steps_per_epoch(config, num_train)
  return max(-(-total_steps(config, num_train) // spe), 1) if spe > 0 else 1


def uses_poisson(config: TrainConfig) -> bool:
  return config.dp_clip_norm > 0 and config.dp_sampling == "poisson"


def make_train_parts(config: TrainConfig) -> TrainParts:
  """The pieces of `make_train_fn(config)`'s loop (see TrainParts); arguments as there."""
  graphdef = model_graphdef(config)
  dtype = resolve_compute_dtype(config)
  lr_eff, decay_eff = _sgd_constants(config)
  mu = config.momentum

  def init_one(key, model_images, count):
    model = create_model(config, jax.random.fold_in(key, _INIT), dtype)
    state = nnx.state(model)
    statistics = None
    valid = None if count is None else jnp.arange(model_images.shape[0]) < count
    if config.input_norm == "training_set":  # static
      statistics = training_set_statistics(model_images, valid)
      state["input_statistics"] = InputStatistics(statistics)
    if config.model == "airbench94":
      kernel = whitening_kernel(model_images, config.whitening_images, statistics, valid)
      state["whiten_kernel"] = Whitening(kernel)
    return state

  def fresh_head(key):
    return init_head(config, jax.random.fold_in(key, _HEAD), dtype)

  def start(keys, images, labels, init: TrainedModels | None = None, num_examples=None):
    """The loop's initial TrainCarry (num_examples [M]: model m trains on its first n_m
    images; needs drop_last False)."""
    TRACES[config] += 1  # Runs once per trace: the tests' recompilation counter.
    num_models = keys.shape[0]
    shared = images.ndim == 4
    num_train = images.shape[-4]
    if num_examples is not None and config.drop_last:
      raise ValueError("num_examples: per-model training-set sizes need drop_last=False")
    if init is None:
      state = jax.vmap(init_one, in_axes=(0, None if shared else 0,
                                          None if num_examples is None else 0))(
          keys, images, num_examples)
    else:
      state = init.state
      if init.num_models == 1 and num_models != 1:
        state = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_models, *x.shape[1:])), state)
      if config.reinit_head:
        state = nnx.State(dict(state))
        state["head"] = jax.vmap(fresh_head)(keys)
    params, rest = nnx.split_state(state, nnx.Param, ...)
    buf = jax.tree.map(jnp.zeros_like, params)
    ema = (params, rest) if config.lookahead else None
    # Every epoch's shuffle drawn up front, so that the step only slices it (drawing it at an
    # epoch's first step would need a conditional inside the loop, which on XLA:GPU can cost a
    # device-to-host sync per step). The table is M × E × N int32 in the carry: 16 models ×
    # 10 epochs × 50,000 images is 32 MB, small beside the models' activations.
    num_epochs = num_epochs_touched(config, num_train)
    if uses_poisson(config):  # Poisson batches are drawn per step: no shuffle to keep
      perms = jnp.zeros((num_models, num_epochs, 0), jnp.int32)
    else:
      length = (num_train if config.drop_last
                else steps_per_epoch(config, num_train) * config.batch_size)
      perms = epoch_permutations(keys, num_train, num_epochs, num_examples, length)
    return TrainCarry(params, rest, buf, ema, perms)

  def body(carry, step, keys, images, labels):
    """One SGD step of every model: the carry after step `step` (an int32 scalar)."""
    shared = images.ndim == 4
    num_train = images.shape[-4]
    spe = steps_per_epoch(config, num_train)
    num_steps = total_steps(config, num_train)
    whiten_steps = config.whiten_bias_epochs * spe
    trainable, lr_scale, is_whiten_bias = _leaf_rules(config, carry[0])
    poisson = uses_poisson(config)
    capacity = poisson_capacity(config, num_train) if poisson else 0

    def loss_fn(p, r, x, y, mask=None):
      """The batch's loss (sum or mean); `mask` [B]: the examples that count (padding out of
      the loss and of batch norm's statistics; the mean is over the counted ones)."""
      model = nnx.merge(graphdef, p, r, copy=True)
      # uint8 batches (standard training) or float [0, 1] ones (adversarial examples).
      x01 = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x
      if config.trainable == "head":
        # Linear probe: frozen features, batch norm on its running statistics.
        logits = model.head_logits(jax.lax.stop_gradient(model.features(x01, train=False)))
      else:
        # frozen_batch: batch norm on its running statistics (they stay as they are).
        logits = model(x01, train=config.norm != "frozen_batch", mask=mask)
      _, _, new_r = nnx.split(model, nnx.Param, ...)
      targets = optax.smooth_labels(jax.nn.one_hot(y, config.num_classes),
                                    config.label_smoothing)
      losses = optax.softmax_cross_entropy(logits, targets)
      if mask is None:
        loss = losses.sum() if config.decoupled else losses.mean()
      else:
        losses = jnp.where(mask, losses, 0.0)
        loss = losses.sum() if config.decoupled else losses.sum() / jnp.maximum(mask.sum(), 1)
      return loss, new_r

    def private_grads(p, r, x, y, key, step, mask):
      """DP-SGD: per-example gradients of the trained leaves, clipped, summed and noised
      (masked-out examples contribute nothing)."""
      def example_loss(q, xi, yi, wi):
        return loss_fn(q, r, xi[None], yi[None])[0] * wi

      weights = jnp.ones(x.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
      per_example = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0, 0))(p, x, y, weights)
      # Leaves that never train do not enter the clipping norm.
      per_example = jax.tree.map(lambda t, g: g if t else jnp.zeros_like(g), trainable,
                                 per_example)
      key = jax.random.fold_in(jax.random.fold_in(key, _DP), step)
      total, _ = privatize_gradients(per_example, key, config.dp_clip_norm,
                                     config.dp_noise_multiplier)
      # The loss's sum (decoupled) or mean: over the batch size, which for Poisson batches is
      # the expected one, qN = batch_size (Opacus), and for padded batches the examples in it.
      if config.decoupled:
        scale = 1.0
      elif poisson:
        scale = 1.0 / config.batch_size
      elif mask is not None:
        scale = 1.0 / jnp.maximum(mask.sum(), 1)
      else:
        scale = 1.0 / x.shape[0]
      # Group norm, frozen batch norm or the head on frozen features: no batch statistics,
      # r unchanged.
      return jax.tree.map(lambda g: g * scale, total), r

    def single_step(p, r, buf, x, y, factor, whiten_on, key, step, mask):
      if config.dp_clip_norm > 0:  # static: standard training's program is unchanged
        grads, new_r = private_grads(p, r, x, y, key, step, mask)
      else:
        grads, new_r = jax.grad(loss_fn, has_aux=True)(p, r, x, y, mask)

      def update(train, scale, wb, w, g, b):
        if not train:
          return w, b
        # PyTorch SGD with (coupled) decay decay_eff / (lr_eff · scale): the decay's size does
        # not depend on the bias scaler, as in airbench.
        d = g.astype(jnp.float32) + (decay_eff / (lr_eff * scale)) * w
        b_new = mu * b + d
        direction = d + mu * b_new if config.nesterov else b_new
        w_new = w - factor * lr_eff * scale * direction
        if wb:
          w_new = jnp.where(whiten_on, w_new, w)
          b_new = jnp.where(whiten_on, b_new, b)
        return w_new, b_new

      pairs = jax.tree.map(update, trainable, lr_scale, is_whiten_bias, p, grads, buf)
      is_pair = lambda t: isinstance(t, tuple)
      new_p = jax.tree.map(lambda t: t[0], pairs, is_leaf=is_pair)
      new_buf = jax.tree.map(lambda t: t[1], pairs, is_leaf=is_pair)
      if config.trainable == "head":
        new_r = r  # Frozen features: running statistics untouched.
      if mask is not None and not poisson:
        # An epoch step past this model's own epoch (its training set is smaller than the
        # longest): no example, no step (a Poisson step with none still adds its noise).
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(mask.any(), a, b), new, old)
        new_p, new_r, new_buf = keep((new_p, new_r, new_buf), (p, r, buf))
      return new_p, new_r, new_buf

    def adversarial_batch(p, r, key, x, y, step):
      """One model's batch replaced by PGD examples against its current weights."""
      # Batch norm runs on its running statistics during the attack (Madry's reference runs
      # the attack in train mode). Eval mode keeps the attack's forward passes from updating
      # the running statistics (nnx would carry each pass's update out), makes every example's
      # attack independent of the rest of the batch, and attacks the function the model
      # computes at test time. The SGD step that follows runs in the config's mode as usual.
      # The weights enter as constants (stop_gradient): the attack is not differentiated
      # through, the gradient step sees its output as data.
      model = nnx.merge(graphdef, jax.lax.stop_gradient(p), r, copy=True)
      key = jax.random.fold_in(jax.random.fold_in(key, _ADV), step)
      return pgd_linf(lambda z: model(z, train=False), x, y, key,
                      epsilon=config.adversarial_epsilon, steps=config.adversarial_steps,
                      step_size=config.adversarial_step_size,
                      random_start=config.adversarial_random_start)

    def gather(data, idx, shared):
      if shared:
        return data[idx]
      return jax.vmap(lambda d, i: d[i])(data, idx)

    p, r, buf, ema, perms = carry
    epoch = step // spe
    pos = step % spe
    num_models = perms.shape[0]
    if poisson:
      rate = poisson_rate(config, num_train)
      idx, mask = jax.vmap(lambda k: poisson_batch(k, step, num_train, rate, capacity))(keys)
    else:
      idx = jax.lax.dynamic_slice(perms, (0, epoch, pos * config.batch_size),
                                  (num_models, 1, config.batch_size))[:, 0]
      mask = None
      if not config.drop_last:  # static: the padded last batch, masked
        mask = idx >= 0
        idx = jnp.maximum(idx, 0)
    x = gather(images, idx, shared)
    # Labels [N] are shared even when the images are per model (denoised copies keep the
    # labels), so they are read without an [M, N] copy.
    y = gather(labels, idx, labels.ndim == 1)
    if config.noise_before_augment:  # static
      x = jax.vmap(lambda k, xi: add_train_noise(config, k, step, xi))(keys, x)
    x = jax.vmap(lambda k, xi, ii: _augment(config, k, epoch, pos, xi, ii, num_train))(
        keys, x, idx)
    if config.noise != "none" and not config.noise_before_augment:  # static
      x = jax.vmap(lambda k, xi: add_train_noise(config, k, step, xi))(keys, x)
    if config.adversarial_epsilon > 0:  # static: standard training's program is unchanged
      x = jax.vmap(adversarial_batch, in_axes=(0, 0, 0, 0, 0, None))(p, r, keys, x, y, step)
    factor = lr_factor(config, step, num_steps)
    p, r, buf = jax.vmap(single_step, in_axes=(0, 0, 0, 0, 0, None, None, 0, None, 0))(
        p, r, buf, x, y, factor, step < whiten_steps, keys, step, mask)
    if config.lookahead:
      t = step + 1
      # decay ≤ 0.95⁵ for t ≤ T, so the clamp changes no value; it ends the product, so that
      # XLA:CPU, fusing this scalar into every variable's pull below, cannot contract 1 − decay
      # into a multiply-add: decay is rounded to float32 once, as when the pull sat in a
      # conditional's branch, and the models are those of that program bit for bit.
      decay = jnp.minimum(0.95 ** 5 * (t.astype(jnp.float32) / num_steps) ** 3, 1.0)
      # Every LOOKAHEAD_EVERY steps the EMA moves towards the weights and the weights are
      # reset to it. The pull is computed at every step and selected (no conditional inside
      # the loop): a few elementwise passes over the variables, negligible beside the step.
      pulled = jax.tree.map(lambda e, v: e + (1.0 - decay) * (v - e), ema, (p, r))
      now = t % _LOOKAHEAD_EVERY == 0
      pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(now, a, b), new, old)
      p, r = pick(pulled, (p, r))
      ema = pick(pulled, ema)
    return TrainCarry(p, r, buf, ema, perms)

  def finish(carry, num_steps: int) -> TrainedModels:
    params, rest = carry.params, carry.rest
    if config.lookahead and num_steps > 0:
      params, rest = carry.ema  # airbench returns the lookahead EMA.
    return TrainedModels(graphdef, nnx.merge_state(params, rest), config)

  if config.friendly_epoch < 0:
    return TrainParts(start, body, finish)

  def switch_step(num_train: int) -> int:
    return min(config.friendly_epoch * steps_per_epoch(config, num_train),
               total_steps(config, num_train))

  def switch(carry, keys, images):
    """Each model's images plus its friendly noise (current weights), uint8 [M, N, H, W, C]."""
    def perturbed(x, delta):
      return jnp.round(jnp.clip(x + delta, 0.0, 1.0) * 255.0).astype(jnp.uint8)

    def one_model(p, r, key, model_images):
      model = nnx.merge(graphdef, p, r, copy=True)
      return chunked_friendly_noise(
          lambda z: model(z, train=False), model_images, jax.random.fold_in(key, _FRIENDLY),
          chunk=config.friendly_batch_size, finish=perturbed, steps=config.friendly_steps,
          lr=config.friendly_lr, mu=config.friendly_mu, clamp=config.friendly_clamp,
          init=config.friendly_init)

    in_images = None if images.ndim == 4 else 0
    return jax.vmap(one_model, in_axes=(0, 0, 0, in_images))(carry.params, carry.rest, keys,
                                                            images)

  return TrainParts(start, body, finish, switch, switch_step)


def make_train_fn(config: TrainConfig):
  """A pure function that trains M models: `fn(keys, images, labels, init=None)`.

  Args (of the returned function):
    keys: typed PRNG keys [M]; model m's initialization, shuffling and augmentation are drawn
      from fold_in(keys[m], ·), so model m's result does not depend on the other models.
    images: uint8 [N, H, W, C] (shared by all models) or [M, N, H, W, C] (one set per model).
    labels: int [N] (every model's, also with per-model images) or [M, N].
    init: optional TrainedModels with M (or 1, broadcast) models to warm-start from (their
      whitening filters are kept; `config.reinit_head` draws a fresh final layer).
    num_examples: optional int [M]: model m trains on its first n_m images (config.drop_last
      False; see TrainConfig.drop_last).

  Returns: TrainedModels with M models. Traceable: may be called inside an outer jax.jit (with
  the models axis sharded); it does not validate its arguments (train_models does). The steps
  run in one `lax.scan`, whatever `config.loop` says.
  """
  parts = make_train_parts(config)

  def train_fn(keys, images, labels, init: TrainedModels | None = None, num_examples=None):
    carry = parts.start(keys, images, labels, init, num_examples)
    num_steps = total_steps(config, images.shape[-4])
    begin = num_steps if parts.switch is None else parts.switch_step(images.shape[-4])

    def run(carry, first, last, images):
      if last <= first:
        return carry
      carry, _ = jax.lax.scan(
          lambda c, step: (parts.body(c, step, keys, images, labels), None), carry,
          jnp.arange(first, last, dtype=jnp.int32))
      return carry

    carry = run(carry, 0, begin, images)
    if parts.switch is not None:
      carry = run(carry, begin, num_steps, parts.switch(carry, keys, images))
    return parts.finish(carry, num_steps)

  return train_fn


pil_grayscale = augment.pil_grayscale  # its earlier home
