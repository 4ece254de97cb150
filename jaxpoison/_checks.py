"""Argument checks shared by the public entry points.

Every check raises with a message that says what was passed and what was expected, so a
mistake in a long experiment fails at the boundary rather than deep inside a jitted trace.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

IMAGE_DTYPES = ("uint8", "float32", "bfloat16", "float16")


def _dtype_name(x) -> str:
  return np.dtype(x.dtype).name if hasattr(x, "dtype") else type(x).__name__


def check_images(
    images,
    *,
    name: str = "images",
    ndims: Sequence[int] = (4,),
    image_shape: tuple[int, int, int] | None = None,
    dtypes: Sequence[str] = IMAGE_DTYPES,
) -> None:
  """Checks a batch of NHWC images (or a stack of batches, when ndims allows 5).

  `image_shape` is the expected (H, W, C); None accepts any H and W with C in {1, 3}.
  """
  if not hasattr(images, "shape") or not hasattr(images, "dtype"):
    raise TypeError(f"{name}: expected an array of images, got {type(images).__name__}")
  shape = tuple(images.shape)
  if len(shape) not in tuple(ndims):
    dims = " or ".join(f"{d}-D" for d in ndims)
    raise ValueError(
        f"{name}: expected a {dims} array of NHWC images "
        f"([..., height, width, channels]), got shape {shape}")
  if image_shape is not None and shape[-3:] != tuple(image_shape):
    raise ValueError(
        f"{name}: expected images of shape {tuple(image_shape)} (H, W, C), got {shape[-3:]} "
        f"(full shape {shape})")
  if image_shape is None and shape[-1] not in (1, 3):
    raise ValueError(
        f"{name}: expected channels-last images with 1 or 3 channels, got shape {shape}")
  if _dtype_name(images) not in tuple(dtypes):
    raise TypeError(
        f"{name}: expected dtype {' or '.join(dtypes)}, got {_dtype_name(images)}")


def check_labels(labels, num_classes: int, *, name: str = "labels", length: int | None = None):
  """Checks integer class labels in [0, num_classes)."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D array of class indices, got shape {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"{name}: expected integer class indices, got dtype {labels.dtype}")
  if length is not None and labels.shape[0] != length:
    raise ValueError(f"{name}: expected {length} labels (one per image), got {labels.shape[0]}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
        f"{name}: labels must lie in [0, {num_classes - 1}], found values in "
        f"[{labels.min()}, {labels.max()}]")


def check_sigma(sigma, *, name: str = "sigma", allow_zero: bool = False) -> float:
  """Checks a noise level in [0, 1] pixel units and returns it as a float.

  σ is the standard deviation of Gaussian noise added to images scaled to [0, 1] (the
  convention of Cohen et al. 2019 and Carlini et al. 2023); values above a few units drown
  any image, so larger ones are almost surely a unit mistake (σ given in [0, 255] units).
  """
  try:
    value = float(sigma)
  except (TypeError, ValueError):
    raise TypeError(f"{name}: expected a number, got {sigma!r}") from None
  if not math.isfinite(value):
    raise ValueError(f"{name}: expected a finite noise level, got {value}")
  lower_ok = value >= 0 if allow_zero else value > 0
  if not lower_ok:
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"{name}: expected a noise level {bound} in [0, 1] pixel units, got {value}")
  if value > 4.0:
    raise ValueError(
        f"{name}: {value} is far beyond the useful range; σ is in [0, 1] pixel units "
        "(images scaled to [0, 1]), not [0, 255]")
  return value


PERTURBATION_NORMS = ("linf", "l2")


def check_perturbation_bound(norm, epsilon, *, name: str = "epsilon",
                             num_pixels: int | None = None) -> float:
  """Checks an attack's perturbation bound ε (in [0, 1] pixel units) and returns it as a float.

  `norm` is "linf" or "l2". A bound below one grey level (1/255) leaves no room for a uint8
  poison; an ℓ∞ bound >= 1 or an ℓ2 bound beyond the image box's diameter (√num_pixels) is
  almost surely a unit mistake (ε given in [0, 255] units).
  """
  if norm not in PERTURBATION_NORMS:
    raise ValueError(f"norm: expected one of {PERTURBATION_NORMS}, got {norm!r}")
  try:
    value = float(epsilon)
  except (TypeError, ValueError):
    raise TypeError(f"{name}: expected a number, got {epsilon!r}") from None
  if not math.isfinite(value) or value <= 0:
    raise ValueError(f"{name}: expected a positive, finite {norm} bound, got {value}")
  if value * 255 < 1:
    raise ValueError(
        f"{name}: {value} is below one grey level (1/255 ≈ 0.0039); a uint8 poison could not "
        "differ from its base image")
  if norm == "linf" and value >= 1:
    raise ValueError(
        f"{name}: an ℓ∞ bound of {value} allows any image; ε is in [0, 1] pixel units "
        f"(e.g. 16/255 ≈ 0.0627), not [0, 255]")
  if norm == "l2" and num_pixels is not None and value > math.sqrt(num_pixels):
    raise ValueError(
        f"{name}: an ℓ2 bound of {value} exceeds the diameter √{num_pixels} ≈ "
        f"{math.sqrt(num_pixels):.1f} of the image box; ε is in [0, 1] pixel units")
  return value


def check_alpha(alpha, *, name: str = "alpha") -> float:
  value = float(alpha)
  if not 0.0 < value < 1.0:
    raise ValueError(f"{name}: expected a failure probability in (0, 1), got {value}")
  return value


def check_positive(name: str, value, *, integer: bool = False, allow_zero: bool = False):
  """`value` as a finite number > 0 (>= 0 with allow_zero; an int with integer), else an error
  naming `name`."""
  kind = int if integer else float
  if integer and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
    raise TypeError(f"{name}: expected an integer, got {value!r}")
  try:
    number = kind(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name}: expected a number, got {value!r}") from None
  if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"{name}: expected a finite value {bound}, got {value!r}")
  return number


def set_frozen_field(config, name: str, value) -> None:
  """Sets a validated field on a frozen config (as a plain Python value: hashable, JSON-able)."""
  object.__setattr__(config, name, value)
