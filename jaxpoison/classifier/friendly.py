"""Friendly noise (Liu et al. 2022, "Friendly Noise against Adversarial Noise", FrieNDs): the
largest per-image perturbation that leaves a network's prediction unchanged.

For each training image x, δ maximizes its size while keeping the network's output:

    minimize over δ   KL(softmax f(x) ‖ softmax f(clip(x + clamp(δ), 0, 1))) − μ · mean(clamp(δ)²)

with clamp to ±`clamp` per pixel, from δ ~ U(±init), by SGD with Nesterov momentum 0.9 at a
constant learning rate (the reference, tianyu139/friendly-noise `friendly_noise.py`, builds a
MultiStepLR at steps/2 and 3·(steps // 4) but never steps it, so its rate is constant) for
`steps` steps, the network in inference mode; the result is clamp(δ). The reference averages
the objective over its batch of 128 images, which scales every image's step by 1/128; here each
image's step is the same (`loss_batch`), whatever the chunking. Defaults are the reference's:
30 steps, lr 100, μ 1, clamp 16/255, init 8/255.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["chunked_friendly_noise", "friendly_perturbation"]


def friendly_perturbation(logits_fn: Callable, images: jax.Array, key: jax.Array, *,
                          steps: int = 30, lr: float = 100.0, mu: float = 1.0,
                          clamp: float = 16 / 255, init: float = 8 / 255,
                          momentum: float = 0.9, loss_batch: int = 128) -> jax.Array:
  """Friendly noise δ (float32, |δ| ≤ clamp) for a batch of float images in [0, 1].

  Args:
    logits_fn: the network, float [B, H, W, C] in [0, 1] → logits [B, K] (images must not
      interact: inference-mode batch norm).
    images: float [B, H, W, C] in [0, 1].
    key: the initialization's randomness.
    steps, lr, mu, clamp, init, momentum: the optimization (module docstring).
    loss_batch: the batch the reference averages its objective over (each image's gradient is
      divided by it).
  """
  images = images.astype(jnp.float32)
  target = jax.lax.stop_gradient(jax.nn.log_softmax(logits_fn(images), axis=-1))

  def objective(delta):
    bounded = jnp.clip(delta, -clamp, clamp)
    log_p = jax.nn.log_softmax(logits_fn(jnp.clip(images + bounded, 0.0, 1.0)), axis=-1)
    kl = jnp.sum(jnp.exp(target) * (target - log_p), axis=-1)
    size = jnp.mean(jnp.square(bounded), axis=(1, 2, 3))
    return jnp.sum(kl - mu * size) / loss_batch

  def step(carry, _):
    delta, buf = carry
    grad = jax.grad(objective)(delta)
    buf = momentum * buf + grad  # PyTorch SGD: the first step's buffer is the gradient
    return (delta - lr * (grad + momentum * buf), buf), None

  delta = jax.random.uniform(key, images.shape, jnp.float32, -init, init)
  (delta, _), _ = jax.lax.scan(step, (delta, jnp.zeros_like(delta)), None, length=steps)
  return jnp.clip(delta, -clamp, clamp)


def chunked_friendly_noise(logits_fn: Callable, images: jax.Array, key: jax.Array, *,
                           chunk: int, finish: Callable | None = None,
                           **options) -> jax.Array:
  """`friendly_perturbation` over many images, `chunk` at a time (a `lax.map`; images are
  independent, so the chunking changes only memory), chunk i from fold_in(key, i).

  Args:
    images: [N, H, W, C], uint8 or float in [0, 1] (converted a chunk at a time).
    finish: finish(x, δ) -> what to keep of each chunk (x float in [0, 1]); default δ.
    options: friendly_perturbation's keyword arguments.
  """
  count = images.shape[0]
  chunk = min(chunk, count)
  num_chunks = -(-count // chunk)
  padded = jnp.pad(images, ((0, num_chunks * chunk - count),) + ((0, 0),) * (images.ndim - 1))
  finish = finish or (lambda x, delta: delta)

  def one_chunk(i):
    x = jax.lax.dynamic_slice_in_dim(padded, i * chunk, chunk)
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    return finish(x, friendly_perturbation(logits_fn, x, jax.random.fold_in(key, i),
                                           **options))

  out = jax.lax.map(one_chunk, jnp.arange(num_chunks))
  return out.reshape(num_chunks * chunk, *out.shape[2:])[:count]
