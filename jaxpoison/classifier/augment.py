"""Image augmentation, on device: the trainer's and the attacks', in one place.

Data augmentation of training batches (integer crops and flips, cutout, grayscale; each takes
a key and a batch [B, H, W, C] and returns a batch of the same shape and dtype, every image with
its own draw from the one key):

* `random_flip`, `random_translate` (reflect-padded crop), `cutout`, `pil_grayscale`.

Differentiable variants, for attacks that optimize images through the augmentation (gradients
flow to the images; bilinear shifts as the poisoning references' `RandomTransform`):

* `apply_shift_flip` / `random_shift_flip` (Witches' Brew, Sleeper Agent),
  `random_shift_flip_per_image` (TAP: one key per image), `flip_crop_per_image` (REM: a flip and
  a zero-padded integer crop per image, a selection of the image's values).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpoison._checks import check_images

# --- data augmentation ------------------------------------------------------------------------

# --- On-device augmentation ------------------------------------------------------------------
# Each takes a key and a batch [B, H, W, C] and returns a batch of the same shape and dtype.
# Every image gets its own random draw from the one key.


def flip_where(images, flip):
  """Each image [B, H, W, C] mirrored left-right where `flip` [B] (bool) is set."""
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def translate(images, offsets, pad: int, mode: str = "reflect"):
  """Each image [B, H, W, C] cropped back to its size from itself padded by `pad` pixels
  (`mode` "reflect" or "constant": zeros) at `offsets` [B, 2] in [0, 2·pad] (rows, columns):
  a shift by offset − pad."""
  h, w, c = images.shape[1:]
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
  return jax.vmap(lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c)))(
      padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Flips each image left-right with probability 1/2."""
  check_images(images, name="random_flip images")
  return flip_where(images, jax.random.bernoulli(key, 0.5, (images.shape[0],)))


def random_translate(key: jax.Array, images: jax.Array, pad: int = 2) -> jax.Array:
  """Shifts each image by up to `pad` pixels in each direction, filling by reflection."""
  check_images(images, name="random_translate images")
  if pad < 0:
    raise ValueError(f"pad: expected a non-negative number of pixels, got {pad}")
  if pad == 0:
    return images
  offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * pad + 1)
  return translate(images, offsets, pad, "reflect")


def cutout(key: jax.Array, images: jax.Array, size: int = 8) -> jax.Array:
  """Zeroes a `size`×`size` square at a uniformly random centre in each image (DeVries & Taylor
  2017); the square is clipped where it crosses the border."""
  check_images(images, name="cutout images")
  if size < 0:
    raise ValueError(f"size: expected a non-negative patch size, got {size}")
  batch, height, width, _ = images.shape
  centres = jax.random.randint(key, (batch, 2), 0, jnp.array([height, width]))
  top = centres[:, 0] - size // 2
  left = centres[:, 1] - size // 2
  rows = jnp.arange(height)[None, :]
  cols = jnp.arange(width)[None, :]
  in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)
  in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)
  mask = in_rows[:, :, None] & in_cols[:, None, :]
  return jnp.where(mask[..., None], jnp.zeros((), images.dtype), images)



def pil_grayscale(images):
  """PIL's convert("L") of uint8 RGB [..., 3], in all three channels: L = (19595 R + 38470 G +
  7471 B + 2^15) >> 16, i.e. 0.299 R + 0.587 G + 0.114 B rounded (libImaging/Convert.c)."""
  rgb = images.astype(jnp.int32)
  luma = (19595 * rgb[..., 0] + 38470 * rgb[..., 1] + 7471 * rgb[..., 2] + 32768) >> 16
  return jnp.broadcast_to(luma[..., None], images.shape).astype(images.dtype)



# --- differentiable ---------------------------------------------------------------------------


# RandomTransform(shift=8) on 32-pixel images: a uniform shift of up to linspace(0, 1, 32)[8] =
# 8/31 normalized units, i.e. ±4 pixels under align_corners (2 units span 31 pixels).
MAX_SHIFT_PIXELS = 4.0


def apply_shift_flip(images, shifts, flips, fill):
  """Translates and mirrors images with bilinear interpolation (differentiable in `images`).

  images: float [B, H, W, C]; shifts: float [B, 2], (rows, columns) in pixels; flips: bool [B]
  (horizontal); fill: float [C], the value outside the image. Output pixel (i, j) samples the
  input at (i + dy, j + dx), or at (i + dy, W − 1 − j − dx) when flipped: PyTorch's
  `grid_sample(align_corners=True, padding_mode="zeros")` on a shifted (and x-negated) identity
  grid, with "zeros" meaning `fill` here (zero in the reference's normalized space is the
  dataset mean in [0, 1] pixels).

  A translation is separable, and bilinear weights are the hat function max(0, 1 − |s − h|) of
  the sampling position s and the pixel h, so each image is two small matrix products,
  R · (x − fill) · Cᵀ + fill, with no gather (whose transpose, a scatter-add, is what makes the
  second-order gradient slow).
  """
  _, h, w, _ = images.shape
  shifts = shifts.astype(images.dtype)
  rows = jnp.arange(h, dtype=images.dtype)
  cols = jnp.arange(w, dtype=images.dtype)
  src_r = rows[None, :] + shifts[:, :1]                                   # [B, H]
  src_c = jnp.where(flips[:, None], (w - 1) - cols[None, :] - shifts[:, 1:],
                    cols[None, :] + shifts[:, 1:])                         # [B, W]

  def hat(src, n):
    return jnp.maximum(0.0, 1.0 - jnp.abs(src[:, :, None] - jnp.arange(n, dtype=images.dtype)))

  row_weights, col_weights = hat(src_r, h), hat(src_c, w)                 # [B, H, H], [B, W, W]
  fill = jnp.asarray(fill, images.dtype)
  centred = images - fill
  out = jnp.einsum("bih,bhwc->biwc", row_weights, centred)
  out = jnp.einsum("bjw,biwc->bijc", col_weights, out)
  return out + fill


def random_shift_flip(images, key, fill, *, max_shift: float = MAX_SHIFT_PIXELS,
                      flip: bool = True):
  """`apply_shift_flip` with a fresh uniform shift in [−max_shift, max_shift]² pixels and a fair
  coin for the flip per image, drawn from `key`."""
  k_shift, k_flip = jax.random.split(key)
  shifts = jax.random.uniform(k_shift, (images.shape[0], 2), jnp.float32, -max_shift, max_shift)
  flips = (jax.random.bernoulli(k_flip, 0.5, (images.shape[0],)) if flip
           else jnp.zeros((images.shape[0],), bool))
  return apply_shift_flip(images, shifts, flips, jnp.asarray(fill, images.dtype))




def random_shift_flip_per_image(images, keys, fill, max_shift: float):
  """RandomTransform's shift (uniform in [−max_shift, max_shift]² pixels) and horizontal flip
  (a fair coin), drawn per image from its own key, applied bilinearly (`apply_shift_flip`)."""
  def draw(k):
    k_shift, k_flip = jax.random.split(k)
    return (jax.random.uniform(k_shift, (2,), jnp.float32, -max_shift, max_shift),
            jax.random.bernoulli(k_flip, 0.5))
  shifts, flips = jax.vmap(draw)(keys)
  return apply_shift_flip(images, shifts, flips, fill)




def flip_crop_per_image(images, keys, translate: int):
  """The training transform per image, from its own key: a horizontal flip (a fair coin) and a
  crop of the image zero-padded by `translate` pixels (offsets uniform in [0, 2·translate]);
  differentiable in the images (a selection of their values)."""
  h, w, c = images.shape[1:]

  def one(image, k):
    k_flip, k_crop = jax.random.split(k)
    image = jnp.where(jax.random.bernoulli(k_flip, 0.5), image[:, ::-1], image)
    if translate == 0:
      return image
    padded = jnp.pad(image, ((translate, translate), (translate, translate), (0, 0)))
    offsets = jax.random.randint(k_crop, (2,), 0, 2 * translate + 1)
    return jax.lax.dynamic_slice(padded, (offsets[0], offsets[1], 0), (h, w, c))

  return jax.vmap(one)(images, keys)
