"""URP, class-wise random noise (the random-noise baseline of Huang et al. 2021): one fixed
noise pattern per class, ℓ∞ ε = 8/255 (`urp_poison`). The family, its bounds, randomness,
quantization and references: `jaxpoison.attacks.indiscriminate`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_perturbation_bound
from jaxpoison._checks import check_positive as _positive
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks.unlearnable.base import PoisonConfig, _check_inputs, _choice, indexed_keys
from jaxpoison.attacks import constraints

URP_EPSILON = 8 / 255


@dataclasses.dataclass(frozen=True)
class URPConfig(PoisonConfig):
  """Class-wise random noise (URP).

  Attributes:
    num_classes: labels lie in [0, num_classes) (CIFAR-10: 10).
    epsilon: the ℓ∞ bound in [0, 1] pixel units (8/255: Huang et al.'s
      scripts/cifar10/random-noise/classwise-noise/exp_setting.sh, `epsilon=8`; the spec's
      suggestion for URP).
    distribution: "uniform", U(−ε, ε) per value, as Huang et al.'s reference
      (`PerturbationTool.random_noise`: `uniform_(-epsilon, epsilon)` on a [10, 3, 32, 32]
      tensor, one pattern per class); or "gaussian", N(0, std²) per value clipped to [−ε, ε],
      after ECLIPSE's wording ("same random Gaussian noise for images of the same category",
      §2.1), which gives neither σ nor code. Default "uniform": the only executable source.
    std: σ of the "gaussian" noise in [0, 1] units; None takes ε (UNSPECIFIED in ECLIPSE).
  """
  epsilon: float = URP_EPSILON
  distribution: str = "uniform"
  std: float | None = None

  def __post_init__(self):
    super().__post_init__()
    _store(self, "epsilon", check_perturbation_bound("linf", self.epsilon))
    _choice("distribution", self.distribution, ("uniform", "gaussian"))
    if self.std is not None:
      if self.distribution != "gaussian":
        raise ValueError(f"std: only the 'gaussian' distribution has a σ; got std={self.std!r} "
                         f"with distribution={self.distribution!r}")
      _store(self, "std", _positive("std", self.std))

  @property
  def noise_std(self) -> float:
    return self.epsilon if self.std is None else self.std


# --- URP: class-wise random noise ---------------------------------------------------------------

def urp_class_noise(key, image_shape, config: URPConfig | None = None) -> jax.Array:
  """The per-class noise patterns: float32 [num_classes, H, W, C] in [−ε, ε] ([0, 1] units).

  Class k's pattern is drawn from fold_in(key, k): U(−ε, ε) per value, or N(0, σ²) clipped to
  [−ε, ε] (`URPConfig.distribution`).
  """
  config = URPConfig() if config is None else config
  shape = tuple(int(s) for s in image_shape)
  keys = indexed_keys(key, jnp.arange(config.num_classes))
  if config.distribution == "uniform":
    draw = lambda k: jax.random.uniform(k, shape, jnp.float32, -config.epsilon, config.epsilon)
  else:
    draw = lambda k: jnp.clip(config.noise_std * jax.random.normal(k, shape, jnp.float32),
                              -config.epsilon, config.epsilon)
  return jax.vmap(draw)(keys)


def urp_grey_levels(noise, epsilon: float) -> jax.Array:
  """Float noise in [0, 1] units → int32 grey-level offsets, rounded to nearest and kept
  within ±`constraints.linf_budget(ε)` (= 8 for 8/255)."""
  budget = constraints.linf_budget(epsilon)
  return jnp.clip(jnp.round(noise * 255.0), -budget, budget).astype(jnp.int32)


@jax.jit
def _add_offsets(images, offsets):
  return jnp.clip(images.astype(jnp.int32) + offsets, 0, 255).astype(jnp.uint8)


def urp_poison(key, images, labels, config: URPConfig | None = None) -> np.ndarray:
  """Class-wise random noise poison (URP): every image plus its class's fixed noise pattern.

  Args:
    key: a jax.random key; the patterns come from `urp_class_noise(key, ...)`.
    images: uint8 [N, H, W, C], the clean training images.
    labels: int [N] in [0, config.num_classes).
    config: `URPConfig` (default: U(−8/255, 8/255), 10 classes).

  Returns:
    uint8 [N, H, W, C]: clip(image + round(255·noise[label]), 0, 255). Before the clip, all
    images of a class get identical offsets; after it, |poison − image| <= ⌊255ε⌋ grey levels.
  """
  config = URPConfig() if config is None else config
  images, labels = _check_inputs(images, labels, config.num_classes)
  noise = urp_class_noise(key, images.shape[1:], config)
  offsets = urp_grey_levels(noise, config.epsilon)
  return np.asarray(_add_offsets(jnp.asarray(images), offsets[jnp.asarray(labels)]))
