"""ℓ∞ PGD (Madry et al. 2018): the attack of adversarial training and of robust accuracy.

It lives on the classifier's floor because the many-model trainer runs it inside each step
(TrainConfig.adversarial_epsilon); `jaxpoison.defenses.adversarial_training` re-exports it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def pgd_linf(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array, labels: jax.Array,
             key: jax.Array | None, *, epsilon: float, steps: int, step_size: float,
             random_start: bool = True, unroll: bool | int = True) -> jax.Array:
  """Untargeted ℓ∞ projected gradient ascent of the cross-entropy on the true labels.

  x⁰ = clip(x + U(−ε, ε), 0, 1) (`random_start`; drawn as
  `jax.random.uniform(key, x.shape, float32, -ε, ε)`) or x; then `steps` times
  xᵗ⁺¹ = clip(clip(xᵗ + step_size · sign(∇ₓ Σᵢ CE(logits_fn(xᵗ)ᵢ, yᵢ)), x − ε, x + ε), 0, 1).
  The loss is summed over the batch, so each example's ascent is its own as long as
  `logits_fn` treats the examples independently (batch norm on running statistics).

  Args:
    logits_fn: float images [B, H, W, C] in [0, 1] -> logits [B, K]; traceable.
    images: float [B, H, W, C] in [0, 1] (uint8 is read as /255).
    labels: int [B], the true classes.
    key: a PRNG key for the random start (unused, may be None, without it).
    epsilon, steps, step_size: the radius, number of steps and step, in [0, 1] pixel units
      (static Python numbers).
    random_start: start from a uniform point of the ε-ball.
    unroll: forwarded to `lax.fori_loop` (True: the steps are unrolled, which XLA:CPU runs
      several times faster than convolutions inside a while loop, at the cost of compiling
      `steps` copies of the network's gradient; False or 1: a while loop).

  Returns: float32 [B, H, W, C], |x_adv − x| ≤ ε, in [0, 1], with no gradient path back to
  `images` or to what `logits_fn` closes over (stop_gradient): the attack is a data step,
  not differentiated through.
  """
  x = jnp.asarray(images)
  x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  x = jax.lax.stop_gradient(x)
  labels = jnp.asarray(labels)
  if steps < 0 or epsilon < 0 or step_size < 0:
    raise ValueError(
        f"pgd_linf: expected epsilon, steps and step_size >= 0, got {epsilon}, {steps}, "
        f"{step_size}")
  if labels.shape != x.shape[:1]:
    raise ValueError(
        f"labels: expected one label per image, shape ({x.shape[0]},), got {labels.shape}")
  lower = jnp.clip(x - epsilon, 0.0, 1.0)
  upper = jnp.clip(x + epsilon, 0.0, 1.0)
  if random_start and epsilon > 0:
    if key is None:
      raise ValueError("pgd_linf: random_start needs a PRNG key")
    noise = jax.random.uniform(key, x.shape, jnp.float32, -epsilon, epsilon)
    start = jnp.clip(x + noise, 0.0, 1.0)
  else:
    start = x

  def loss(z):
    logits = logits_fn(z).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

  def step(_, z):
    g = jax.grad(loss)(z)
    return jnp.clip(z + step_size * jnp.sign(g), lower, upper)

  if steps == 0:
    return start
  adv = jax.lax.fori_loop(0, steps, step, start, unroll=unroll)
  return jax.lax.stop_gradient(adv)
