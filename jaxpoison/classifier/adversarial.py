"""ℓ∞ sign-gradient PGD, the one implementation in the package.

`signed_step` is the ℓ∞ steepest step and its projection; `sign_pgd` the loop over
perturbations δ of a batch of images under any per-image loss (the unlearnable poisons' EM,
TAP and REM, the label-consistent backdoor); `pgd_linf` the untargeted attack on a classifier
(Madry et al. 2018) that adversarial training and robust accuracy use. They live on the
classifier's floor because the many-model trainer runs `pgd_linf` inside each step
(TrainConfig.adversarial_epsilon); attacks and defenses import them from here
(`jaxpoison.defenses.adversarial_training` re-exports `pgd_linf`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def signed_step(value, gradient, step_size, lower, upper):
  """clip(value + step_size · sign(gradient), lower, upper): one ℓ∞ steepest-ascent step
  (descent with a negative step_size) and its projection onto the box [lower, upper]."""
  return jnp.clip(value + step_size * jnp.sign(gradient), lower, upper)


def sign_pgd(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], images, delta, *,
             epsilon: float, steps: int, step_size: float, minimize: bool,
             history: bool = False, unroll: bool | int = 1):
  """ℓ∞ projected sign-gradient descent (or ascent) over perturbations δ of float images x.

  δ₀ = Π(delta); then `steps` times δ ← Π(δ ∓ step_size · sign(∇_δ Σ loss_fn(x + δ, t))), t
  the step index (e.g. to draw that step's augmentation), − when `minimize`. Π clips to
  [−ε, ε] and then to [−x, 1 − x] (the projection onto the ε-ball ∩ the image box), so x + δ
  stays a valid image: the form of Fowl et al.'s `_pgd_step`, and of Huang et al.'s
  `min_min_attack` and Fu et al.'s adversary, which step the clipped image x + δ. With per-image
  losses (and batch norm on running statistics) each image's step is its own.

  Args:
    loss_fn: (float images [B, H, W, C] in [0, 1], int32 step) → per-image losses [B] (or any
      array; its sum is differentiated); traceable.
    images: float [B, H, W, C] in [0, 1].
    delta: float [B, H, W, C], the start.
    epsilon, step_size: in [0, 1] pixel units; steps: >= 0 (static).
    minimize: descend (True) or ascend (False).
    history: return every step's losses [steps, ...] instead of the last step's.
    unroll: forwarded to the loop (True unrolls it: XLA:CPU runs convolutions inside a while
      loop several times slower, at the cost of compiling `steps` copies of the gradient).

  Returns:
    (δ float32, with |δ| <= ε and x + δ in [0, 1]; loss_fn's value at the start of the last
    step, the one whose gradient it took, or at δ₀ when steps = 0 — with `history`, those of
    every step, [steps, ...]).
  """
  x = jnp.asarray(images, jnp.float32)
  lower = jnp.maximum(-x, -epsilon)
  upper = jnp.minimum(1.0 - x, epsilon)
  signed = -step_size if minimize else step_size

  def total(d, t):
    losses = loss_fn(x + d, t).astype(jnp.float32)
    return jnp.sum(losses), losses

  gradient = jax.grad(total, has_aux=True)

  def step(t, d):
    grad, losses = gradient(d, t)
    return signed_step(d, grad, signed, lower, upper), losses

  d0 = jnp.clip(jnp.asarray(delta, jnp.float32), lower, upper)
  if history:
    return jax.lax.scan(lambda d, t: step(t, d), d0, jnp.arange(steps, dtype=jnp.int32),
                        unroll=unroll)
  if steps == 0:
    return d0, total(d0, jnp.int32(0))[1]
  losses0 = jax.eval_shape(lambda d: total(d, jnp.int32(0))[1], d0)
  return jax.lax.fori_loop(0, steps, lambda t, carry: step(t, carry[0]),
                           (d0, jnp.zeros(losses0.shape, jnp.float32)), unroll=unroll)


def pgd_linf(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array, labels: jax.Array,
             key: jax.Array | None, *, epsilon: float, steps: int, step_size: float,
             random_start: bool = True, unroll: bool | int = True) -> jax.Array:
  """Untargeted ℓ∞ projected gradient ascent of the cross-entropy on the true labels.

  x⁰ = clip(x + U(−ε, ε), 0, 1) (`random_start`; drawn as
  `jax.random.uniform(key, x.shape, float32, -ε, ε)`) or x; then `steps` times
  xᵗ⁺¹ = clip(clip(xᵗ + step_size · sign(∇ₓ Σᵢ CE(logits_fn(xᵗ)ᵢ, yᵢ)), x − ε, x + ε), 0, 1),
  computed as x + δ by `sign_pgd` (the same points up to float rounding).
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
  if random_start and epsilon > 0:
    if key is None:
      raise ValueError("pgd_linf: random_start needs a PRNG key")
    start = jax.random.uniform(key, x.shape, jnp.float32, -epsilon, epsilon)
  else:
    start = jnp.zeros_like(x)

  def loss(z, _):
    logits = logits_fn(z).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

  delta, _ = sign_pgd(loss, x, start, epsilon=epsilon, steps=steps, step_size=step_size,
                      minimize=False, unroll=unroll)
  return jax.lax.stop_gradient(x + delta)
