"""Witches' Brew (Geiping et al. 2021): clean-label poisons crafted by gradient matching.

The poisons' training gradient is made to point where the target's adversarial gradient points:
with g_t = ∇_θ CE(f_θ(x_t), y_adv) (the target relabelled to the poison class) and
g_p = ∇_θ CE(f_θ(aug(x_p + δ)), y_p) (the poisons with their true labels), the attack minimizes

    1 − ⟨g_t, g_p⟩ / (‖g_t‖·‖g_p‖)        (norms and inner product over all parameters at once)

over δ within the ε-ball, differentiating through g_p (a second-order derivative), with the
network in inference mode (batch norm on its running statistics) and the poisons under
differentiable random shifts and flips. This module holds the objective's pieces; they take any
`apply_fn(params, images) -> logits` (images float in [0, 1]), so the same code serves one
surrogate or each member of an ensemble (whose losses are summed).

Reference: JonasGeiping/poisoning-gradient-matching, forest/witchcoven/witch_matching.py
(`_passenger_loss`) and forest/data/diff_data_augmentation.py (`RandomTransform`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

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
  """
  _, h, w, _ = images.shape
  rows = jnp.arange(h, dtype=jnp.float32)[:, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, :]

  def one(image, shift, flip):
    src_r = jnp.broadcast_to(rows + shift[0], (h, w))
    src_c = jnp.where(flip, (w - 1) - cols - shift[1], cols + shift[1])
    src_c = jnp.broadcast_to(src_c, (h, w))
    r0, c0 = jnp.floor(src_r), jnp.floor(src_c)
    fr, fc = src_r - r0, src_c - c0

    def tap(r, c):
      inside = (r >= 0) & (r <= h - 1) & (c >= 0) & (c <= w - 1)
      ri = jnp.clip(r, 0, h - 1).astype(jnp.int32)
      ci = jnp.clip(c, 0, w - 1).astype(jnp.int32)
      return jnp.where(inside[..., None], image[ri, ci], fill)

    return ((1 - fr)[..., None] * (1 - fc)[..., None] * tap(r0, c0)
            + (1 - fr)[..., None] * fc[..., None] * tap(r0, c0 + 1)
            + fr[..., None] * (1 - fc)[..., None] * tap(r0 + 1, c0)
            + fr[..., None] * fc[..., None] * tap(r0 + 1, c0 + 1))

  return jax.vmap(one)(images, shifts.astype(jnp.float32), flips)


def random_shift_flip(images, key, fill, *, max_shift: float = MAX_SHIFT_PIXELS,
                      flip: bool = True):
  """`apply_shift_flip` with a fresh uniform shift in [−max_shift, max_shift]² pixels and a fair
  coin for the flip per image, drawn from `key`."""
  k_shift, k_flip = jax.random.split(key)
  shifts = jax.random.uniform(k_shift, (images.shape[0], 2), jnp.float32, -max_shift, max_shift)
  flips = (jax.random.bernoulli(k_flip, 0.5, (images.shape[0],)) if flip
           else jnp.zeros((images.shape[0],), bool))
  return apply_shift_flip(images, shifts, flips, jnp.asarray(fill, images.dtype))


def parameter_gradient(apply_fn: Callable, params, images, labels):
  """∇_θ of the mean cross-entropy of `apply_fn(params, images)` against integer labels."""
  def loss(p):
    logits = apply_fn(p, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return jax.grad(loss)(params)


def _dot(a, b):
  return sum(jnp.vdot(x, y).real for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def gradient_matching_loss(target_grad, poison_grad):
  """1 − cosine similarity of two parameter-gradient pytrees (one global inner product and
  norm over all leaves), in [0, 2]."""
  target_norm = jnp.sqrt(_dot(target_grad, target_grad))
  poison_norm = jnp.sqrt(_dot(poison_grad, poison_grad))
  return 1.0 - _dot(target_grad, poison_grad) / (target_norm * poison_norm)


def matching_objective(apply_fn: Callable, params, target_grad, poisons, labels, key=None, *,
                       fill=None, max_shift: float = MAX_SHIFT_PIXELS):
  """The matching loss of poisons (float [B, H, W, C] in [0, 1], the bases plus δ) for one
  network; differentiable in `poisons` (second order through the parameter gradient).

  key: draws the differentiable shift-and-flip augmentation (None: no augmentation); fill: the
  value outside shifted images (the reference's zero in normalized space: the data mean).
  """
  if key is not None:
    if fill is None:
      raise ValueError("matching_objective: augmentation needs `fill` (the data mean per channel)")
    poisons = random_shift_flip(poisons, key, fill, max_shift=max_shift)
  return gradient_matching_loss(target_grad, parameter_gradient(apply_fn, params, poisons, labels))
