"""Label-consistent backdoor (Turner, Tsipras & Madry 2019), as the poisoning benchmark crafts it.

The bases keep their true label (the base class, which is also the class the backdoored test
image should be given). Their content is first made hard to classify by untargeted PGD against
a surrogate, an adversarially trained network in the benchmark (`ResNet18_CIFAR10_adv.pth`),
so that a network trained on them leans on the trigger instead:

    x₀ = b + U(−ε, ε)                         (random start, then projected)
    x_{j+1} = Π_{ε-ball ∩ [0,1]}(x_j + α·sign ∇_x Σ CE(s(x_j), y_base))    (num_steps times)

Then the trigger replaces the perturbed pixels in its patch, and the whole difference to the
base, trigger included, is clipped into the ball:

    δ = clip(paste(x_N, trigger) − b, −ε, ε),   poison = clip(b + δ, 0, 1)

(the benchmark first masks the perturbation out of the patch and then pastes the trigger over
it; the paste alone overwrites the same pixels). The poison therefore carries a trigger that is
only as visible as ε allows; the test image gets the full trigger at the same position.

Facts from aks2203/poisoning-benchmark `poison_crafting/craft_poisons_clbd.py` (read, not
copied): 20 steps of 2/255, CE summed over the batch, random start, bottom-right 5×5 patch.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.attacks import constraints, core, triggers
from jaxpoison.attacks.configs import AttackResult, LabelConsistentConfig
from jaxpoison.classifier.adversarial import sign_pgd
from jaxpoison.keys import as_key


def _cross_entropy(groups, images, label, key):
  """Per-image CE of `label` [P], summed over the ensemble members (each gives logits)."""
  logits = core.group_features(groups, images, key)
  return sum(jnp.sum(-jax.nn.log_softmax(l.astype(jnp.float32), axis=-1)[..., label], axis=0)
             for l in logits)


@functools.partial(jax.jit, static_argnames=("config",))
def _label_consistent(key, ensemble, base_images, base_label, config: LabelConsistentConfig):
  groups = core.group_ensemble(ensemble)
  bases = core.to_unit_float(base_images)

  def per_image(x, step_index):
    return _cross_entropy(groups, x, base_label, jax.random.fold_in(key, step_index + 1))

  if config.random_start:
    # The reference evaluates its first gradient at the unclipped start; projecting it keeps
    # every iterate a valid image and changes only pixels already at 0 or 1.
    start = jax.random.uniform(jax.random.fold_in(key, 0), bases.shape, jnp.float32,
                               -config.epsilon, config.epsilon)
  else:
    start = jnp.zeros_like(bases)
  delta, history = sign_pgd(per_image, bases, start, epsilon=config.epsilon,
                            steps=config.num_steps, step_size=config.step_size,
                            minimize=False, history=True)
  x = bases + delta

  patch = triggers.get_trigger(config.trigger, config.patch_size)
  row, col = triggers.trigger_position(config, bases.shape[1:])
  size = config.patch_size
  with_trigger = x.at[:, row:row + size, col:col + size, :].set(
      jnp.asarray(patch, jnp.float32) / 255.0)
  delta = jnp.clip(with_trigger - bases, -config.epsilon, config.epsilon)
  poisons_float = jnp.clip(bases + delta, 0.0, 1.0)
  poisons = constraints._quantize(poisons_float, base_images, "linf", config.epsilon)

  final_key = jax.random.fold_in(key, config.num_steps + 1)
  return AttackResult(
      poisons=poisons,
      poisons_float=poisons_float,
      initial_loss=_cross_entropy(groups, bases, base_label, final_key),
      final_loss=_cross_entropy(groups, core.to_unit_float(poisons), base_label, final_key),
      loss_history=history,
      coefficients=None)


def check_label(label, num_classes: int, *, name: str) -> int:
  """An integer class index in [0, num_classes) (int, numpy or 0-d array)."""
  value = label
  if hasattr(value, "shape") and hasattr(value, "dtype"):
    if tuple(value.shape) != () or not np.issubdtype(np.dtype(value.dtype), np.integer):
      raise TypeError(f"{name}: expected one integer class index, got an array of shape "
                      f"{tuple(value.shape)} and dtype {np.dtype(value.dtype).name}")
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name}: expected an integer class index, got {label!r}")
  if not 0 <= value < num_classes:
    raise ValueError(f"{name}: expected a class in [0, {num_classes - 1}] (the surrogate gives "
                     f"{num_classes} logits), got {value}")
  return int(value)


def label_consistent_backdoor(key: jax.Array, surrogate, base_images: jax.Array, base_label,
                              config: LabelConsistentConfig | None = None) -> AttackResult:
  """Crafts label-consistent backdoor poisons, one per base image, all at once.

  Args:
    key: PRNG key for the random start (and stochastic surrogates: a fresh draw per step).
    surrogate: a FeatureExtractor whose apply_fn returns LOGITS [B, num_classes] for float
      images in [0, 1] (any input normalization inside it), or a sequence of them (the CE is
      summed over members; all must give the same number of classes). The benchmark's is an
      adversarially trained CIFAR-10 ResNet-18 without input normalization.
    base_images: uint8 [P, H, W, C], training images of the base class (the poisons' label).
    base_label: the bases' true class (int); PGD raises its cross-entropy.
    config: LabelConsistentConfig (default: the benchmark's, with Hong et al.'s ε = 16/255).

  Returns:
    AttackResult: poisons uint8 [P, H, W, C] within ε of their bases (trigger included);
    initial_loss / final_loss the surrogate's CE [P] on base_label at the bases / at the
    quantized poisons; loss_history [num_steps, P] the CE at the iterate each step's gradient
    was taken at; coefficients None. Test time: paste `get_trigger(config.trigger,
    config.patch_size)` at `trigger_position(config, image_shape)` on the target image.
  """
  config = LabelConsistentConfig() if config is None else config
  if not isinstance(config, LabelConsistentConfig):
    raise TypeError(f"config: expected a LabelConsistentConfig, got {type(config).__name__}")
  key = as_key(key)
  ensemble = core.as_ensemble(surrogate)
  image_shape = core.check_bases(base_images)
  triggers.trigger_position(config, image_shape)
  constraints.check_quantizable(config.norm, config.epsilon, image_shape)
  widths = core.check_extractor_outputs(ensemble, image_shape)
  if len(set(widths)) != 1:
    raise ValueError(f"surrogate: every member must give logits over the same classes, got "
                     f"{widths} outputs")
  label = check_label(base_label, widths[0], name="base_label")
  return _label_consistent(key, ensemble, base_images, jnp.asarray(label, jnp.int32), config)
