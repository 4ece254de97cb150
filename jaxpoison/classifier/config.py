"""Training recipes as frozen, hashable dataclasses (they are static arguments of jitted code)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

from jaxpoison import backend
from jaxpoison.backend import COMPUTE_DTYPES, LOOPS
from jaxpoison import runs

MODELS = ("airbench94", "resnet18")
TRAINABLE = ("all", "head")
SCHEDULES = ("airbench", "cosine", "multistep", "constant", "milestones")
# The "multistep" schedule: ×0.1 from epoch E // d for each d, as the gradient-matching code's
# MultiStepLR (forest/victims/optimization_strategy.py; 14, 24 and 35 for 40 epochs); its
# crafting loop drops the attack's rate at the same fractions of its steps
# (jaxpoison.attacks.configs.MATCHING_LR_DROP_DIVISORS is this constant).
MULTISTEP_DIVISORS = (2.667, 1.6, 1.142)
FLIPS = ("alternating", "random", "none")
PAD_MODES = ("reflect", "zeros")
NORMS = ("batch", "group", "frozen_batch")
NOISES = ("none", "bernoulli", "uniform", "gaussian")
SHIFTS = ("integer", "bilinear")
INPUT_NORMS = ("dataset", "training_set")
DP_SAMPLINGS = ("shuffle", "poisson")
# TrainConfig fields added after run folders were written with it; each default reproduces the
# training before the field existed (jaxpoison.runs lets a run with that value resume a folder
# written without the field).
ADDED_FIELDS = ("head_lr_scale", "adversarial_epsilon", "adversarial_steps",
                "adversarial_step_size", "adversarial_random_start", "norm", "dp_clip_norm",
                "dp_noise_multiplier", "noise", "noise_scale", "friendly_epoch", "friendly_steps",
                "friendly_lr", "friendly_mu", "friendly_clamp", "friendly_init",
                "friendly_batch_size", "pad_mode", "grayscale_prob", "noise_quantize",
                "drop_last", "lr_milestones", "lr_gamma", "input_norm", "shift",
                "noise_before_augment", "dp_sampling", "dp_batch_capacity")

# Per-channel statistics of the CIFAR-10 training set, in [0, 1] units; the networks normalize
# their inputs with them.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training recipe.

  Units: `lr` and `weight_decay` are read in one of two forms (`decoupled`):
  * decoupled=True (airbench94): `lr` is the step size per 1024 examples with the loss summed
    over the batch, independent of the momentum (the effective SGD rate is
    lr / (1024 (1 + 1 / (1 - momentum)))); `weight_decay` is the decay per 1024 examples,
    independent of lr (each step shrinks weights by about weight_decay * batch_size / 1024 /
    (1 + 1 / (1 - momentum)) times the schedule factor).
  * decoupled=False (resnet18): PyTorch SGD's lr and (coupled, L2) weight_decay, loss averaged
    over the batch.

  Attributes:
    model: "airbench94" or "resnet18".
    widths: channel widths of the network's stages (airbench: the three conv groups; resnet18:
      the four residual stages).
    epochs: passes over the training set (fractional: airbench's 9.9); the run has
      ceil(epochs * (N // batch_size)) steps.
    batch_size: examples per step.
    drop_last: True (airbench, the default): an epoch has N // batch_size steps and the last
      incomplete batch is dropped; False (PyTorch's DataLoader default, the DPA reference's):
      ceil(N / batch_size) steps, the last one on the remaining N mod batch_size examples (a
      padded batch whose padding is masked out of the loss and of batch norm's statistics).
      With per-model training-set sizes (`train_models(..., num_examples=)`) every model's
      epoch is its own: ceil(n_m / batch_size) steps on its n_m examples, then steps that
      leave it unchanged until the longest epoch ends (needs drop_last False).
    lr, momentum, nesterov, weight_decay, decoupled: the SGD recipe (see above).
    bias_scaler: learning-rate multiplier for batch-norm biases (airbench: 64; not applied to
      the weight decay).
    schedule: "airbench" (linear warm-up over warmup_fraction of the steps from 0.2 to 1, then
      linear decay to 0.07), "cosine" (cosine decay to 0 over the run) or "multistep" (×0.1
      from epochs E // 2.667, E // 1.6 and E // 1.142 of E: the gradient-matching code's) or
      "constant" (no schedule: ECLIPSE's victim training) or "milestones" (×lr_gamma from
      each epoch in lr_milestones: DPA's base classifiers, ×0.2 at 61, 121, 161).
    lr_milestones, lr_gamma: the "milestones" schedule (epochs at which the rate is
      multiplied by lr_gamma, counted from 0: the rate of epoch e is lr · gamma^#{m ≤ e}).
    label_smoothing: in [0, 1).
    lookahead: airbench's lookahead EMA (every 5 steps, the weights are pulled back to an EMA
      whose decay rises as 0.95**5 (t / T)**3; the EMA is returned at the end).
    whiten_bias_epochs: airbench: epochs during which the whitening conv's bias trains.
    flip: "alternating" (airbench: a random flip fixed at the first epoch, all images flipped
      on odd epochs), "random" (fresh coin per image per epoch) or "none".
    translate: random translation by up to this many pixels (a random crop of the image
      padded by as many pixels on each side).
    shift: "integer" (the default: that crop, `pad_mode` filling) or "bilinear" (the poisoning
      references' RandomTransform, as FrieNDs' reference trains: a uniform real shift in
      [−translate, translate]² pixels, bilinear interpolation, the dataset mean outside the
      image; the batch becomes float).
    pad_mode: the padding of that crop: "reflect" (airbench) or "zeros" (torchvision's
      RandomCrop(padding=4), as ECLIPSE's training).
    bn_momentum, bn_epsilon: running-average decay (Flax convention: new = m old + (1-m) batch)
      and epsilon of batch norm.
    tta_level: test-time augmentation: 0 none, 1 mirror, 2 mirror + 1-pixel translations.
    compute_dtype: "auto" (bfloat16 on an accelerator, float32 on the CPU), "float32" or
      "bfloat16": convolutions, matmuls and the activations between them; batch norm's
      statistics and arithmetic and the loss stay in float32 (its output is cast back).
    trainable: "all", or "head" (linear probe: only the final linear layer trains, the
      feature extractor is frozen and its batch norm runs on running statistics).
    reinit_head: re-initialize the final linear layer when warm-starting from `init`.
    head_lr_scale: learning-rate multiplier of the final linear layer (its weight decay per
      step unchanged, as with bias_scaler). airbench's head scales its logits by 1/9, so with
      head_lr_scale = 81 and coupled decay the head trains exactly as a plain linear layer
      W' = W/9 would with `lr` and `weight_decay` in that layer's own units
      (`head_lr_scale_for`).
    num_classes, image_shape: the data (H, W, C).
    whitening_images: how many training images estimate the whitening patch covariance.
    loop: how `train_models` runs the steps: "scan" (one program, a `lax.scan` over steps, no
      host round trips), "host" (a jitted step called from Python: XLA:CPU runs convolutions
      inside a while loop an order of magnitude slower than the same step on its own), or
      "auto" (host on the CPU, scan on an accelerator). `make_train_fn` always scans.
    models_per_step: how many models one compiled program trains at once (0: all requested
      at once, or as many as fit `memory_limit_bytes` when that is set).
    memory_limit_bytes: device memory budget for one program (0: the device's own limit on an
      accelerator; no check on the CPU).
    adversarial_epsilon: Madry-style PGD adversarial training: the ℓ∞ radius in [0, 1] pixel
      units (8/255 is 8 grey levels); 0 (the default) is standard training, with the same
      program as before these fields existed. When > 0, every step replaces the augmented
      batch by PGD adversarial examples against each model's current weights (batch norm on
      its running statistics, cross-entropy on the true labels without label smoothing) and
      takes the SGD step on them alone (no clean/adversarial mixing).
    adversarial_steps: PGD steps per training step (>= 1 when adversarial_epsilon > 0).
    adversarial_step_size: the step of each sign-gradient ascent, in [0, 1] pixel units.
    adversarial_random_start: start PGD from a uniform point of the ε-ball (Madry et al.).
    norm: "batch" (batch norm) or "group": group norm with min(32, C) groups of the same
      channels (scale and bias as the batch norm it replaces, epsilon 1e-5), the substitution
      Opacus makes (`ModuleValidator.fix`) so that examples do not interact and per-example
      gradients exist (DP-SGD); or "frozen_batch": batch norm on its running statistics in
      training too (never updated; scale and bias train), the other way to per-example
      gradients, for a network that continues from a batch-norm checkpoint (its parameters
      are batch norm's, so it loads one; from scratch its statistics stay at mean 0, var 1).
    dp_clip_norm: DP-SGD (Abadi et al. 2016): 0 (the default) is standard training; when > 0
      every example's gradient is clipped to this global ℓ2 norm (`privatize_gradients`),
      Gaussian noise of std dp_noise_multiplier · dp_clip_norm is added to their sum, and the
      step uses that sum divided by the batch size (by 1 with `decoupled`, whose loss is a
      sum). Needs norm="group" or "frozen_batch" (or trainable="head", whose features run in
      inference mode).
    dp_noise_multiplier: z, the noise's std in units of dp_clip_norm (>= 0).
    dp_sampling: how DP-SGD's batches are drawn: "shuffle" (a shuffle per epoch, fixed-size
      batches: what the privacy accountant cannot amplify; `defenses.privacy_spent` accounts
      it without amplification) or "poisson" (Abadi et al.'s and Opacus's: every step each
      training example enters independently with probability q = batch_size / N; a padded
      batch of `dp_batch_capacity` slots with the sampled examples masked in, the noisy sum
      divided by the expected batch size qN = batch_size).
    dp_batch_capacity: the Poisson batch's slots (0: automatic, the smallest capacity whose
      overflow probability over the whole run is ≤ 1e-9, `poisson_capacity`; a sample that
      overflows is truncated, and the accountant adds that probability to δ).
    input_norm: "dataset" (CIFAR-10's channel statistics, the default) or "training_set" (each
      model normalizes its inputs by its own training set's per-channel mean and std, as the
      DPA reference normalizes each partition).
    grayscale_prob: each image of each batch turned grayscale with this probability, after
      flip and translation (torchvision's RandomGrayscale: PIL's L = 0.299 R + 0.587 G +
      0.114 B, rounded, in all three channels); ECLIPSE's compensation uses 0.4.
    noise, noise_scale: random noise added to every training batch after flip, translation
      and grayscale, fresh at every step, in [0, 1] pixel units and not clipped: "none",
      "bernoulli" (±noise_scale, each pixel a fair coin), "uniform" (U(±noise_scale)) or
      "gaussian" (std noise_scale).
    noise_before_augment: add the noise before flip and translation instead (FrieNDs'
      reference adds its Bernoulli noise before its bilinear RandomTransform, which averages
      neighbouring noise values: with shift="bilinear" the noise's std falls to about 2/3).
    noise_quantize: after the noise, clip to [0, 1] and truncate to the 256 grey levels
      (ECLIPSE's clamp then ToPILImage: x·255 truncated, /255).
    friendly_epoch: FrieNDs' friendly noise (`classifier.friendly.friendly_perturbation`):
      -1 (the default) for none; K >= 0: after K epochs each model computes friendly noise for
      every training image with its current weights (inference mode), and trains the rest of
      the run, with the same optimizer state and schedule, on its images plus that noise
      (rounded to uint8). The reference computes it at epoch 0 by default and at 5 in its
      README's example.
    friendly_steps, friendly_lr, friendly_mu, friendly_clamp, friendly_init: the friendly
      noise's optimization (30 steps, lr 100 per 128-image batch, μ = 1, |δ| ≤ 16/255, from
      U(±8/255): the reference's defaults).
    friendly_batch_size: images per friendly-noise pass (memory only: images are independent).
  """
  model: str = "airbench94"
  widths: tuple[int, ...] = (64, 256, 256)
  epochs: float = 9.9
  batch_size: int = 1024
  lr: float = 11.5
  momentum: float = 0.85
  nesterov: bool = True
  weight_decay: float = 0.0153
  decoupled: bool = True
  bias_scaler: float = 64.0
  schedule: str = "airbench"
  warmup_fraction: float = 0.23
  label_smoothing: float = 0.2
  lookahead: bool = True
  whiten_bias_epochs: int = 3
  flip: str = "alternating"
  translate: int = 2
  bn_momentum: float = 0.6
  bn_epsilon: float = 1e-12
  tta_level: int = 2
  compute_dtype: str = "auto"
  trainable: str = "all"
  reinit_head: bool = False
  head_lr_scale: float = 1.0
  num_classes: int = 10
  image_shape: tuple[int, int, int] = (32, 32, 3)
  whitening_images: int = 5000
  loop: str = "auto"
  models_per_step: int = 0
  memory_limit_bytes: int = 0
  adversarial_epsilon: float = 0.0
  adversarial_steps: int = 7
  adversarial_step_size: float = 2 / 255
  adversarial_random_start: bool = True
  norm: str = "batch"
  dp_clip_norm: float = 0.0
  dp_noise_multiplier: float = 0.0
  noise: str = "none"
  noise_scale: float = 0.0
  friendly_epoch: int = -1
  friendly_steps: int = 30
  friendly_lr: float = 100.0
  friendly_mu: float = 1.0
  friendly_clamp: float = 16 / 255
  friendly_init: float = 8 / 255
  friendly_batch_size: int = 512
  pad_mode: str = "reflect"
  grayscale_prob: float = 0.0
  noise_quantize: bool = False
  drop_last: bool = True
  lr_milestones: tuple[int, ...] = ()
  lr_gamma: float = 0.1
  input_norm: str = "dataset"
  shift: str = "integer"
  noise_before_augment: bool = False
  dp_sampling: str = "shuffle"
  dp_batch_capacity: int = 0

  def __post_init__(self):
    checks = (
        (self.model in MODELS, f"model: expected one of {MODELS}, got {self.model!r}"),
        (self.trainable in TRAINABLE,
         f"trainable: expected one of {TRAINABLE}, got {self.trainable!r}"),
        (self.schedule in SCHEDULES,
         f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}"),
        (self.flip in FLIPS, f"flip: expected one of {FLIPS}, got {self.flip!r}"),
        (self.compute_dtype in COMPUTE_DTYPES,
         f"compute_dtype: expected one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}"),
        (self.loop in LOOPS, f"loop: expected one of {LOOPS}, got {self.loop!r}"),
        (self.epochs >= 0, f"epochs: expected a non-negative number, got {self.epochs}"),
        (self.batch_size >= 1, f"batch_size: expected a positive integer, got {self.batch_size}"),
        (0 <= self.label_smoothing < 1,
         f"label_smoothing: expected a value in [0, 1), got {self.label_smoothing}"),
        (0 <= self.momentum < 1, f"momentum: expected a value in [0, 1), got {self.momentum}"),
        (self.tta_level in (0, 1, 2), f"tta_level: expected 0, 1 or 2, got {self.tta_level}"),
        (self.head_lr_scale > 0,
         f"head_lr_scale: expected a positive multiplier, got {self.head_lr_scale}"),
        (self.translate >= 0, f"translate: expected >= 0 pixels, got {self.translate}"),
        (self.num_classes >= 2, f"num_classes: expected >= 2, got {self.num_classes}"),
        (len(self.image_shape) == 3,
         f"image_shape: expected (H, W, C), got {self.image_shape}"),
        (len(self.widths) == (3 if self.model == "airbench94" else 4),
         f"widths: {self.model} expects {3 if self.model == 'airbench94' else 4} stage widths, "
         f"got {self.widths}"),
        (self.whitening_images >= 1,
         f"whitening_images: expected >= 1, got {self.whitening_images}"),
        (self.models_per_step >= 0,
         f"models_per_step: expected >= 0 (0 = automatic), got {self.models_per_step}"),
        (self.memory_limit_bytes >= 0,
         f"memory_limit_bytes: expected >= 0 (0 = the device's), got {self.memory_limit_bytes}"),
        (0 <= self.adversarial_epsilon <= 1,
         f"adversarial_epsilon: expected an ℓ∞ radius in [0, 1] pixel units (0 = standard "
         f"training), got {self.adversarial_epsilon}"),
        (self.adversarial_steps >= 1 or self.adversarial_epsilon == 0,
         f"adversarial_steps: expected >= 1 PGD steps when adversarial_epsilon > 0, got "
         f"{self.adversarial_steps}"),
        (self.norm in NORMS, f"norm: expected one of {NORMS}, got {self.norm!r}"),
        (self.dp_clip_norm >= 0,
         f"dp_clip_norm: expected a clipping norm >= 0 (0 = no DP-SGD), got {self.dp_clip_norm}"),
        (self.dp_noise_multiplier >= 0,
         f"dp_noise_multiplier: expected >= 0, got {self.dp_noise_multiplier}"),
        (self.dp_clip_norm == 0 or self.norm in ("group", "frozen_batch")
         or self.trainable == "head",
         "dp_clip_norm: DP-SGD needs per-example gradients, which batch norm in training mode "
         "does not have (it mixes the batch's examples); set norm='group' or 'frozen_batch' "
         "(or train the head alone, trainable='head')"),
        (self.noise in NOISES, f"noise: expected one of {NOISES}, got {self.noise!r}"),
        (self.pad_mode in PAD_MODES,
         f"pad_mode: expected one of {PAD_MODES}, got {self.pad_mode!r}"),
        (0 <= self.grayscale_prob <= 1 and (self.grayscale_prob == 0 or self.image_shape[-1] == 3),
         f"grayscale_prob: expected a probability in [0, 1] (and RGB images), got "
         f"{self.grayscale_prob}"),
        (not self.noise_quantize or self.noise != "none",
         "noise_quantize: needs noise (it re-quantizes the noisy batch)"),
        (0 <= self.noise_scale <= 1 and (self.noise == "none") == (self.noise_scale == 0),
         f"noise_scale: expected a scale in (0, 1] pixel units with noise={self.noise!r} (0 "
         f"with noise='none'), got {self.noise_scale}"),
        (self.friendly_epoch >= -1 and (self.friendly_epoch < self.epochs
                                        or self.friendly_epoch == -1),
         f"friendly_epoch: expected -1 (no friendly noise) or an epoch in [0, epochs = "
         f"{self.epochs}), got {self.friendly_epoch}"),
        (self.friendly_steps >= 1 and self.friendly_lr > 0 and self.friendly_mu >= 0
         and 0 < self.friendly_clamp <= 1 and 0 <= self.friendly_init <= 1
         and self.friendly_batch_size >= 1,
         f"friendly_*: expected steps >= 1, lr > 0, mu >= 0, clamp in (0, 1], init in [0, 1] "
         f"and batch_size >= 1, got {self.friendly_steps}, {self.friendly_lr}, "
         f"{self.friendly_mu}, {self.friendly_clamp}, {self.friendly_init}, "
         f"{self.friendly_batch_size}"),
        (self.shift in SHIFTS, f"shift: expected one of {SHIFTS}, got {self.shift!r}"),
        (self.input_norm in INPUT_NORMS,
         f"input_norm: expected one of {INPUT_NORMS}, got {self.input_norm!r}"),
        (self.dp_sampling in DP_SAMPLINGS,
         f"dp_sampling: expected one of {DP_SAMPLINGS}, got {self.dp_sampling!r}"),
        (self.dp_batch_capacity >= 0,
         f"dp_batch_capacity: expected >= 0 (0 = automatic), got {self.dp_batch_capacity}"),
        (self.dp_sampling == "shuffle" or self.dp_clip_norm > 0,
         "dp_sampling: Poisson sampling is DP-SGD's (set dp_clip_norm > 0)"),
        (self.dp_sampling == "shuffle" or self.adversarial_epsilon == 0,
         "dp_sampling: Poisson batches with adversarial training are not supported"),
        (0 < self.lr_gamma <= 1, f"lr_gamma: expected a factor in (0, 1], got {self.lr_gamma}"),
        (all(int(m) >= 0 for m in self.lr_milestones)
         and list(self.lr_milestones) == sorted(self.lr_milestones),
         f"lr_milestones: expected increasing epochs >= 0, got {self.lr_milestones}"),
        (self.grayscale_prob == 0 or (self.shift == "integer" and not self.noise_before_augment),
         "grayscale_prob: the grayscale conversion rounds uint8 pixels; it needs integer shifts "
         "and the noise after the augmentation"),
        (not (self.noise_before_augment and self.noise == "none"),
         "noise_before_augment: needs noise"),
        (not (self.noise_before_augment and self.noise_quantize),
         "noise_before_augment: noise_quantize re-quantizes the noisy batch after the "
         "augmentation and cannot be combined with noise before it"),
        (self.adversarial_step_size > 0,
         f"adversarial_step_size: expected a positive step in [0, 1] pixel units, got "
         f"{self.adversarial_step_size}"),
    )
    for ok, message in checks:
      if not ok:
        raise ValueError(f"TrainConfig.{message}")
    # Lists from JSON become tuples, so that the config stays hashable.
    object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
    object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
    object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))

  @property
  def parameter_norm(self) -> str:
    """The normalization layer's parameters: "frozen_batch" has batch norm's (it loads and
    saves batch-norm checkpoints), so two configs whose parameter_norm agree share weights."""
    return "group" if self.norm == "group" else "batch"

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, obj: dict[str, Any]) -> "TrainConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj) - names)
    if unknown:
      raise ValueError(f"TrainConfig: unknown fields {unknown} (written by another version?)")
    return cls(**obj)

  def dumps(self) -> str:
    return json.dumps(self.to_json(), sort_keys=True)


runs.register_added_settings({f.name: f.default for f in dataclasses.fields(TrainConfig)
                              if f.name in ADDED_FIELDS})

# Logit scale of each model's final linear layer (models.Airbench94.scale; ResNet-18 has none).
HEAD_LOGIT_SCALE = {"airbench94": 1.0 / 9.0, "resnet18": 1.0}


def head_lr_scale_for(model: str) -> float:
  """The head_lr_scale that makes `lr` and `weight_decay` (coupled) act on `model`'s final
  linear layer as on a plain linear layer producing the logits: the gradient with respect to
  W is the scale times that with respect to W' = scale · W, so the step needs 1/scale² more."""
  if model not in HEAD_LOGIT_SCALE:
    raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
  return 1.0 / HEAD_LOGIT_SCALE[model] ** 2


def resolve_compute_dtype(config: TrainConfig, target: backend.Target | None = None):
  """The jnp dtype of convolutions and matmuls for this config on `target` (default: the
  default device); the rule is `backend.resolve_compute_dtype`."""
  return jnp.dtype(backend.resolve_compute_dtype(config.compute_dtype, target))


def resolve_loop(config: TrainConfig, target: backend.Target | None = None) -> str:
  """"scan" or "host": how `train_models` runs this config's steps on `target` (default: the
  default device); the rule is `backend.resolve_loop`."""
  return backend.resolve_loop(config.loop, target)


def airbench94_config(**changes) -> TrainConfig:
  """airbench94 (Jordan 2024): 94% on CIFAR-10 in 9.9 epochs (3.8 s on an A100 in PyTorch)."""
  return TrainConfig(**changes)


def resnet18_config(**changes) -> TrainConfig:
  """ResNet-18 (CIFAR variant) with the standard recipe: SGD momentum 0.9, lr 0.1 with cosine
  decay, weight decay 5e-4, batch 128, 40 epochs, random crop (4-pixel padding) and flip."""
  defaults = dict(
      model="resnet18", widths=(64, 128, 256, 512), epochs=40, batch_size=128, lr=0.1,
      momentum=0.9, nesterov=False, weight_decay=5e-4, decoupled=False, bias_scaler=1.0,
      schedule="cosine", label_smoothing=0.0, lookahead=False, whiten_bias_epochs=0,
      flip="random", translate=4, bn_momentum=0.9, bn_epsilon=1e-5, tta_level=0)
  defaults.update(changes)
  return TrainConfig(**defaults)


def conservative_config(model: str = "resnet18", **changes) -> TrainConfig:
  """The "conservative" recipe Witches' Brew and Sleeper Agent train surrogates and victims with
  (forest/hyperparameters.py): SGD with Nesterov momentum 0.9, lr 0.1 (×0.1 for convnet /
  MobileNet / VGG / AlexNet names; not for these two), weight decay 5e-4, batch 128, 40 epochs,
  ×0.1 at epochs 14, 24 and 35, random flips and ±4-pixel translations (here integer shifts
  with reflection padding; the reference shifts bilinearly with zero fill)."""
  base = resnet18_config() if model == "resnet18" else resnet18_config(
      model="airbench94", widths=(64, 256, 256), bn_momentum=0.6, bn_epsilon=1e-12)
  defaults = dict(
      model=base.model, widths=base.widths, epochs=40, batch_size=128, lr=0.1, momentum=0.9,
      nesterov=True, weight_decay=5e-4, decoupled=False, bias_scaler=1.0, schedule="multistep",
      label_smoothing=0.0, lookahead=False, whiten_bias_epochs=0, flip="random", translate=4,
      bn_momentum=base.bn_momentum, bn_epsilon=base.bn_epsilon, tta_level=0,
      head_lr_scale=head_lr_scale_for(base.model))
  defaults.update(changes)
  return TrainConfig(**defaults)


def tiny_config(model: str = "airbench94", **changes) -> TrainConfig:
  """A very small network and run for tests: widths 8/16/16 (resnet18: 4/8/8/8), 2 epochs of
  batch 64, float32."""
  if model == "airbench94":
    defaults = dict(widths=(8, 16, 16), epochs=2, batch_size=64, whiten_bias_epochs=1,
                    compute_dtype="float32", whitening_images=500)
    defaults.update(changes)
    return airbench94_config(**defaults)
  if model == "resnet18":
    defaults = dict(widths=(4, 8, 8, 8), epochs=2, batch_size=64, compute_dtype="float32")
    defaults.update(changes)
    return resnet18_config(**defaults)
  raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
