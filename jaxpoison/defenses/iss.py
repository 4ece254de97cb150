"""Image Shortcut Squeezing (Liu et al. 2023, "Image Shortcut Squeezing: Countering Perturbative
Availability Poisons with Compression"): the cheap baselines of ECLIPSE's tables (ISS-J, ISS-G).

A fixed compression of every training image before training removes most of an unlearnable
poison's shortcut: JPEG at a low quality (ISS-J, quality 10) against low-frequency ℓ2 poisons,
grayscale (ISS-G) against colour-coded ones. As in the reference (liuzrcc/ImageShortcutSqueezing,
augmentations.py `aug_train`), each is applied to the uint8 training images before crop and
flip, by PIL (JPEG: `Image.save(..., "JPEG", quality=q)` and decode; grayscale:
`transforms.Grayscale(3)`, PIL's convert("L") in three channels). Both are deterministic, so
applying them once to the stored set is the reference's per-epoch transform. Test images stay
as they are (the reference's `ISS_both_train_test` is off by default).
"""

from __future__ import annotations

import io

import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_images
from jaxpoison.classifier.augment import pil_grayscale

ISS_JPEG_QUALITY = 10  # ISS README and ECLIPSE §4.2's "ISS-J".


def iss_jpeg(images, quality: int = ISS_JPEG_QUALITY) -> np.ndarray:
  """Every image JPEG-compressed at `quality` (1..95) and decoded by PIL: uint8 [N, H, W, C]
  (C = 3, or 1 for grayscale images) in, same shape out."""
  from PIL import Image
  images = np.asarray(images)
  check_images(images)
  if images.dtype != np.uint8:
    raise ValueError(f"images: expected uint8 (JPEG stores grey levels), got {images.dtype}")
  if images.shape[-1] not in (1, 3):
    raise ValueError(f"images: expected 1 or 3 channels, got {images.shape[-1]}")
  if not 1 <= int(quality) <= 95:
    raise ValueError(f"quality: expected 1..95 (PIL's range), got {quality}")
  out = np.empty_like(images)
  for i, image in enumerate(images):
    buffer = io.BytesIO()
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    pil.save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer))
    out[i] = decoded.reshape(image.shape)
  return out


def iss_grayscale(images) -> np.ndarray:
  """Every RGB image turned to PIL's grayscale L = 0.299 R + 0.587 G + 0.114 B (rounded), in all
  three channels: uint8 [N, H, W, 3]."""
  images = np.asarray(images)
  check_images(images)
  if images.dtype != np.uint8 or images.shape[-1] != 3:
    raise ValueError(f"images: expected uint8 RGB [N, H, W, 3], got {images.dtype} "
                     f"{images.shape}")
  return np.asarray(pil_grayscale(jnp.asarray(images)))
