"""What every data-generated unlearnable poison (URP, LSP, AR) shares: the config base, the
input checks, per-index keys, scaling to a norm, and adding and quantizing in batches."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_images, check_labels
from jaxpoison._checks import check_positive as _positive
from jaxpoison._checks import set_frozen_field as _store
from jaxpoison.attacks import constraints

DEFAULT_BATCH_SIZE = 2048


def _choice(name: str, value, options: tuple[str, ...]) -> str:
  if value not in options:
    raise ValueError(f"{name}: expected one of {options}, got {value!r}")
  return value


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
  num_classes: int = 10

  def __post_init__(self):
    _store(self, "num_classes", _positive("num_classes", self.num_classes, integer=True))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# --- shared helpers -----------------------------------------------------------------------------

def _check_inputs(images, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  check_images(images, name="images", dtypes=("uint8",))
  check_labels(labels, num_classes, length=images.shape[0])
  return images, np.asarray(labels).astype(np.int32)


def indexed_keys(key, indices):
  """One key per index (image, class or candidate): fold_in(key, i) for each i."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def _scale_to_norm(x, norm: str, epsilon: float):
  """x scaled per image (over H, W, C) to norm ε exactly (in float32)."""
  axes = tuple(range(1, x.ndim))
  if norm == "l2":
    size = jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))
  else:
    size = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
  return x * (epsilon / size)


@jax.jit
def _add_clipped(images, perturbations):
  return jnp.clip(images.astype(jnp.float32) / 255.0 + perturbations, 0.0, 1.0)


def _add_and_quantize(images, perturbations, norm: str, epsilon: float):
  """uint8 images + float perturbations ([0, 1] units) → clipped, quantized uint8 poisons that
  keep the bound exactly (`constraints.quantize_poisons`)."""
  return constraints.quantize_poisons(_add_clipped(images, perturbations), images, norm, epsilon)


def _in_batches(num_images: int, batch_size: int, poison_batch: Callable) -> np.ndarray:
  """Concatenates poison_batch(indices) over consecutive index ranges of `batch_size`."""
  batch_size = _positive("batch_size", batch_size, integer=True)
  parts = [np.asarray(poison_batch(np.arange(start, min(start + batch_size, num_images))))
           for start in range(0, num_images, batch_size)]
  return np.concatenate(parts) if parts else np.zeros((0,), np.uint8)
