"""Self-ensemble protection (SEP; Chen, Wang et al., ICLR 2023, "Self-Ensemble Protection:
Training Checkpoints Are Good Data Protectors"; code Sizhe-Chen/SEP), one of the eight poisons of
ECLIPSE's Table 1 (round2.md §6.8).

SEP trains one network on the clean data, keeps checkpoints along its training, and pushes every
image towards another class (y + 5 mod K) against the ensemble of checkpoints, within ℓ∞ ε.
The paper's full method, SEP-FA-VR (`ens_feature_svre.py`), has two additions, each a flag here:

* **FA, feature alignment**: the loss is the mean squared distance between the image's
  penultimate features and the target class's mean feature (per checkpoint, over the clean
  training set) instead of the target class's cross-entropy (`ens.py`).
* **VR, variance reduction** (after SVRE, Xiong et al. 2022): each outer step first takes every
  checkpoint's gradient g_j at the current images and their mean ḡ, then runs an inner loop
  of `inner_steps` steps on a copy, each with one checkpoint k drawn at random and the corrected
  gradient ∇L_k(x_v) − g_k + ḡ accumulated into a running sum G; the images step by
  −step_size·sign(G) in every inner step and, after the loop, the outer images step once by
  −step_size·sign(G). Without VR each outer step is −step_size·sign(ḡ) (`ens.py`).

Every step projects onto the ε-ball around the clean image and the [0, 1] box. Batch norm runs on
running statistics (`net.eval()`), so every image's trajectory is its own: the batch size is
memory only. The checkpoint drawn at inner step s of outer step t comes from
fold_in(fold_in(key, t), s), shared by all images (the reference draws one per step for its batch
of 5,000), so the result does not depend on the batch size either.

Differences from the reference, all deliberate:
* Its inner loop aligns features to `fs[j]`, the class means of the *last* checkpoint of the
  preceding full pass, whichever checkpoint it drew; here checkpoint k aligns to its own means,
  as the paper's Algorithm 1 writes it.
* Its protecting network saves a checkpoint whenever test accuracy improves and takes
  `num_model` of those evenly spaced; here the checkpoints are taken at evenly spaced steps
  ending with the last (`checkpoint_steps`), which needs no test set.
* Its first checkpoint's class means come from the network in training mode (a fresh module
  before the first `net.eval()`); here every checkpoint runs in inference mode.
* The poisons are rounded to grey levels within the bound (`constraints.quantize_poisons`); the
  reference stores floats and its loader floors them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpoison._checks import check_perturbation_bound
from jaxpoison._checks import check_positive as _positive
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks.unlearnable.trained import (SurrogateRun, TrainedPoisonConfig, check_config,
                                                class_mean_features, check_data,
                                                check_target_offset, cross_entropy, map_batches,
                                                target_classes)
from jaxpoison.backend import resolve_loop
from jaxpoison.attacks import constraints
from jaxpoison.classifier.adversarial import signed_step
from jaxpoison.classifier.api import stack
from jaxpoison.classifier.config import TrainConfig, resnet18_config
from jaxpoison.classifier.train import TrainedModels, total_steps
from jaxpoison.keys import as_key


SEP_EPSILON = 8 / 255


@dataclasses.dataclass(frozen=True)
class SEPConfig(TrainedPoisonConfig):
  """SEP-FA-VR as the reference's CIFAR-10 task list runs it (`ens_feature_svre.py`,
  `yield_task_parameters`: `--num_model=15 --msvrg=15 --eps=8`, the other flags at their
  argparse defaults).

  Attributes:
    num_classes: labels lie in [0, num_classes).
    epsilon: the ℓ∞ bound (8/255: `--eps=8`, the budget of ECLIPSE's and ISS's tables; the
      argparse default is 2/255).
    steps: outer steps (30: `--epoch`).
    step_size: the sign step in [0, 1] pixel units (1/255: `--alpha 1`).
    num_checkpoints: checkpoints in the ensemble (15: `--num_model=15`).
    inner_steps: VR's inner steps per outer step (15: `--msvrg=15`; the argparse default 16).
    target_offset: an image of class y is pushed toward (y + target_offset) mod K (5:
      `(targets + 5) % 10`).
    feature_alignment: FA (True): squared feature distance to the target class's mean
      feature; False: the target class's cross-entropy (`ens.py`).
    variance_reduction: VR (True), or the plain ensemble sign step (`ens.py`).
    batch_size: images per batch (memory only).
  """
  epsilon: float = SEP_EPSILON
  steps: int = 30
  step_size: float = 1 / 255
  num_checkpoints: int = 15
  inner_steps: int = 15
  target_offset: int = 5
  feature_alignment: bool = True
  variance_reduction: bool = True
  batch_size: int = 500

  def __post_init__(self):
    super().__post_init__()
    _store(self, "epsilon", check_perturbation_bound("linf", self.epsilon))
    _store(self, "steps", _positive("steps", self.steps, integer=True))
    _store(self, "step_size", _positive("step_size", self.step_size))
    _store(self, "num_checkpoints", _positive("num_checkpoints", self.num_checkpoints,
                                              integer=True))
    _store(self, "inner_steps", _positive("inner_steps", self.inner_steps, integer=True))
    _store(self, "target_offset", check_target_offset(self.target_offset, self.num_classes))
    _store(self, "feature_alignment", bool(self.feature_alignment))
    _store(self, "variance_reduction", bool(self.variance_reduction))
    _store(self, "batch_size", _positive("batch_size", self.batch_size, integer=True))


class SEPResult(NamedTuple):
  """SEP's poisons (uint8 [N, H, W, C]) and, per checkpoint, the share of poisons (before
  rounding) it classifies as their target class (float [num_checkpoints])."""
  poisons: np.ndarray
  target_rate: np.ndarray


def sep_surrogate_config(**changes) -> "TrainConfig":
  """SEP's protecting network (`vanilla.py`): ResNet-18, 120 epochs of SGD, lr 0.1, momentum
  0.9, weight decay 5e-4, batches of 128, random 4-pixel zero-padded crop and flip
  (`transform_train`). Its learning rate drops ×0.1 at epochs 75 and 90 after a one-epoch
  warm-up from 0.001; here the trainer's "multistep" schedule drops ×0.1 at E // 2.667,
  E // 1.6 and E // 1.142 (45, 75, 105 of 120) without warm-up. `changes` override any field."""
  defaults = dict(epochs=120, batch_size=128, lr=0.1, momentum=0.9, nesterov=False,
                  weight_decay=5e-4, schedule="multistep", flip="random", translate=4,
                  pad_mode="zeros")
  return resnet18_config(**{**defaults, **changes})


def checkpoint_steps(total_steps: int, num_checkpoints: int) -> np.ndarray:
  """`num_checkpoints` distinct steps in [1, total_steps], evenly spaced, the last the end of
  training: round(total_steps · k / n) for k = 1..n."""
  if not 1 <= num_checkpoints <= total_steps:
    raise ValueError(f"num_checkpoints: expected 1..{total_steps} (the training run's steps), got "
                     f"{num_checkpoints}")
  k = np.arange(1, num_checkpoints + 1)
  return np.round(total_steps * k / num_checkpoints).astype(np.int64)


def train_checkpoints(key, images, labels, train_config: "TrainConfig",
                      num_checkpoints: int) -> "TrainedModels":
  """Trains one network on (images, labels) with `train_config` and returns `num_checkpoints`
  snapshots of it (`checkpoint_steps`), stacked as TrainedModels with one model per checkpoint
  (the last the trained network)."""
  if not isinstance(train_config, TrainConfig):
    raise TypeError(f"train_config: expected a classifier TrainConfig, got "
                    f"{type(train_config).__name__}")
  images, labels = check_data(images, labels, train_config.num_classes)
  if tuple(train_config.image_shape) != tuple(images.shape[1:]):
    raise ValueError(f"train_config.image_shape: expected the images' {tuple(images.shape[1:])}, "
                     f"got {train_config.image_shape}")
  if train_config.batch_size > images.shape[0]:
    raise ValueError(f"train_config.batch_size: {train_config.batch_size} exceeds the "
                     f"{images.shape[0]} training images; lower it")
  num_steps = total_steps(train_config, images.shape[0])
  stops = checkpoint_steps(num_steps, num_checkpoints)
  x, y = jnp.asarray(images), jnp.asarray(labels)
  run = SurrogateRun(train_config, num_steps, as_key(key), x, y)
  snapshots, done = [], 0
  for stop in stops:
    run.train(done, int(stop) - done, x, y)
    done = int(stop)
    # A copy: the next span donates the carry's buffers.
    snapshots.append(jax.tree.map(jnp.copy, run.trained_models(num_steps)))
  return stack(snapshots)


def _check_checkpoints(checkpoints, images, config: SEPConfig):
  if not isinstance(checkpoints, TrainedModels):
    raise TypeError(f"checkpoints: expected classifier TrainedModels (e.g. train_checkpoints(...)), "
                    f"got {type(checkpoints).__name__}")
  if checkpoints.num_models != config.num_checkpoints:
    raise ValueError(f"checkpoints: expected config.num_checkpoints = {config.num_checkpoints} "
                     f"stacked models, got {checkpoints.num_models}")
  if tuple(checkpoints.config.image_shape) != tuple(images.shape[1:]):
    raise ValueError(f"checkpoints: trained on images of shape {checkpoints.config.image_shape}, "
                     f"got images of shape {tuple(images.shape[1:])}")
  if checkpoints.config.num_classes != config.num_classes:
    raise ValueError(f"checkpoints: {checkpoints.config.num_classes} classes, config.num_classes "
                     f"is {config.num_classes}")


def _loss(graphdef, feature_alignment: bool):
  """(checkpoint state, its class means [K, D], images z, targets) → Σ over images of SEP's
  loss (batch norm on running statistics: each image's gradient is its own)."""
  def loss(state, class_means, z, targets):
    model = nnx.merge(graphdef, state, copy=True)
    if feature_alignment:
      distance = model.features(z, train=False) - class_means[targets]
      return jnp.sum(jnp.mean(jnp.square(distance), axis=-1))
    return jnp.sum(cross_entropy(model(z, train=False), targets))
  return loss


def _descend(z, direction, lower, upper, step_size: float):
  return signed_step(z, direction, -step_size, lower, upper)


def checkpoint_draws(key, config: SEPConfig) -> jax.Array:
  """VR's checkpoint at inner step s of outer step t: randint from fold_in(fold_in(key, t), s),
  int32 [steps, inner_steps] (shared by every image)."""
  def draw(t, s):
    return jax.random.randint(jax.random.fold_in(jax.random.fold_in(key, t), s), (), 0,
                              config.num_checkpoints)
  return jax.vmap(lambda t: jax.vmap(lambda s: draw(t, s))(jnp.arange(config.inner_steps)))(
      jnp.arange(config.steps))


def _box(x_uint8, epsilon: float):
  x = x_uint8.astype(jnp.float32) / 255.0
  return x, jnp.maximum(x - epsilon, 0.0), jnp.minimum(x + epsilon, 1.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _sep_scan(graphdef, states, means, images, labels, draws, config: SEPConfig):
  """The unrounded poisons, float [N, H, W, C]: every step in one program (accelerators)."""
  gradient = jax.grad(_loss(graphdef, config.feature_alignment), argnums=2)
  every_gradient = jax.vmap(gradient, in_axes=(0, 0, None, None))

  def batch(x_uint8, y):
    x, lower, upper = _box(x_uint8, config.epsilon)
    targets = target_classes(y, config.num_classes, config.target_offset)
    descend = lambda z, g: _descend(z, g, lower, upper, config.step_size)

    def outer(z, step_draws):
      grads = every_gradient(states, means, z, targets)  # [M, B, H, W, C]
      mean_grad = jnp.mean(grads, axis=0)
      if not config.variance_reduction:
        return descend(z, mean_grad), None

      def inner(carry, k):
        z_inner, total = carry
        state_k = jax.tree.map(lambda a: a[k], states)
        total = total + gradient(state_k, means[k], z_inner, targets) - grads[k] + mean_grad
        return (descend(z_inner, total), total), None

      (_, total), _ = jax.lax.scan(inner, (z, jnp.zeros_like(z)), step_draws)
      return descend(z, total), None

    return jax.lax.scan(outer, x, draws)[0]

  return map_batches(batch, (images, labels), config.batch_size)


@functools.partial(jax.jit, static_argnames=("graphdef", "feature_alignment"))
def _gradient_of(graphdef, states, means, k, z, targets, feature_alignment: bool):
  """Checkpoint k's gradient at z (k a traced index: one program for every checkpoint)."""
  state_k = jax.tree.map(lambda a: a[k], states)
  return jax.grad(_loss(graphdef, feature_alignment), argnums=2)(state_k, means[k], z, targets)


@functools.partial(jax.jit, static_argnames=("graphdef", "config"), donate_argnums=(4, 5))
def _inner_step(graphdef, states, means, k, z_inner, total, grad_k, mean_grad, targets, lower,
                upper, config: SEPConfig):
  fresh = _gradient_of(graphdef, states, means, k, z_inner, targets, config.feature_alignment)
  total = total + fresh - grad_k + mean_grad
  return _descend(z_inner, total, lower, upper, config.step_size), total


_descend_jit = jax.jit(_descend, static_argnames="step_size")


def _sep_host(graphdef, states, means, images, labels, draws, config: SEPConfig):
  """`_sep_scan`'s computation with the steps driven from Python, each gradient its own jitted
  call: XLA:CPU runs a network inside a loop, or vmapped over checkpoints, ~5× slower than
  alone (BENCHMARKS, issue 17)."""
  draws = np.asarray(draws)
  size = min(config.batch_size, images.shape[0])
  out = []
  for first in range(0, images.shape[0], size):
    x, lower, upper = _box(images[first:first + size], config.epsilon)
    targets = target_classes(labels[first:first + size], config.num_classes,
                             config.target_offset)
    z = x
    for t in range(config.steps):
      grads = [_gradient_of(graphdef, states, means, np.int32(k), z, targets,
                            config.feature_alignment) for k in range(config.num_checkpoints)]
      mean_grad = sum(grads[1:], grads[0]) / config.num_checkpoints
      if config.variance_reduction:
        z_inner, total = jnp.copy(z), jnp.zeros_like(z)
        for k in draws[t]:
          z_inner, total = _inner_step(graphdef, states, means, np.int32(k), z_inner, total,
                                       grads[k], mean_grad, targets, lower, upper, config)
        mean_grad = total
      z = _descend_jit(z, mean_grad, lower, upper, step_size=config.step_size)
    out.append(z)
  return jnp.concatenate(out)


@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _target_rate(graphdef, states, z, labels, config: SEPConfig):
  """Each checkpoint's share of z classified as its target, float32 [M]."""
  targets = target_classes(labels, config.num_classes, config.target_offset)

  def hits(state):
    model = nnx.merge(graphdef, state, copy=True)
    predicted = map_batches(lambda b: jnp.argmax(model(b, train=False), -1), (z,),
                             config.batch_size)
    return jnp.mean(predicted == targets, dtype=jnp.float32)

  return jax.lax.map(hits, states)


def sep_poison(key, checkpoints: "TrainedModels", images, labels,
               config: SEPConfig | None = None, *, loop: str = "auto") -> SEPResult:
  """Self-ensemble protection (SEP-FA-VR by default; see the module docstring): every image
  pushed toward class (y + 5) mod K against an ensemble of one network's training checkpoints.

  Args:
    key: a jax.random key (VR's checkpoint draws; unused without VR).
    checkpoints: TrainedModels with config.num_checkpoints models, the snapshots of one network
      trained on the clean images (`train_checkpoints(key, images, labels,
      sep_surrogate_config(...), config.num_checkpoints)`).
    images: uint8 [N, H, W, C], the clean training images (FA's class means come from them).
    labels: int [N] in [0, config.num_classes), every class present when FA is on.
    config: `SEPConfig` (default: the reference's CIFAR-10 SEP-FA-VR, ε = 8/255).
    loop: "scan" (every step in one program), "host" (each gradient a jitted call from Python:
      XLA:CPU runs networks in loops ~5× slower) or "auto" (host on the CPU, scan elsewhere);
      the same computation.

  Returns:
    `SEPResult`: poisons uint8 within ⌊255ε⌋ grey levels, and each checkpoint's target rate.
  """
  config = check_config(config, SEPConfig)
  key = as_key(key)
  images, labels = check_data(images, labels, config.num_classes)
  epsilon = constraints.check_quantizable("linf", config.epsilon, images.shape[1:])
  _check_checkpoints(checkpoints, images, config)
  loop = resolve_loop(loop)
  x, y = jnp.asarray(images), jnp.asarray(labels)
  if config.feature_alignment:
    means = class_mean_features(checkpoints, x, y, config.num_classes)
  else:  # Unused by the cross-entropy loss; a placeholder of the indexed shape.
    means = jnp.zeros((config.num_checkpoints, config.num_classes, 1), jnp.float32)
  run = _sep_scan if loop == "scan" else _sep_host
  z = run(checkpoints.graphdef, checkpoints.state, means, x, y, checkpoint_draws(key, config),
          config)
  rate = _target_rate(checkpoints.graphdef, checkpoints.state, z, y, config)
  poisons = constraints.quantize_poisons(z, x, "linf", epsilon)
  return SEPResult(np.asarray(poisons), np.asarray(rate))
