"""Hidden-trigger backdoor (Saha, Subramanya & Pirsiavash 2020), as the benchmark crafts it.

The poisons look like (and are labelled as) the base class, but their features copy those of
target-class images that carry the trigger; a model fine-tuned on them learns "trigger ⇒ base
class" without ever seeing the trigger. With s_k the trigger-patched source images (training
images of the target class) and f the feature extractor (penultimate layer):

    repeat, from x = b:
      pair every poison j with a source π(j) by a greedy matching of cdist(f(s), f(x))
      L = Σ_j ‖f(s_π(j)) − f(x_j)‖²                     (f(s) is a constant)
      x ← Π_{ε-ball ∩ [0,1]}(x − lr_j ∇_x L),  lr_j = lr·decay^⌊j/decay_every⌋
    until L < stop_loss (the step at that L is still taken) or num_steps steps.

Plain gradient steps (not sign steps), in [0, 1] pixel units.

Matching. The benchmark's loop (the same as Saha et al.'s code) takes the global minimum of
the distance matrix P times and strikes out only that entry, overwriting the poison's partner
each time, and keeps the overwritten feature matrix for the next step: it is not one-to-one.
`HiddenTriggerConfig.matching` picks "one_to_one" (default: strike out the row and column, a
greedy one-to-one matching, see `greedy_matching`) or "benchmark" (that loop, exactly; see
`benchmark_matching`).

Ensembles: the loss is summed over members, each with its own matching (the benchmark uses one
model, a CIFAR-100 ResNet-18 with CIFAR-10 input normalization).

Facts from aks2203/poisoning-benchmark `poison_crafting/craft_poisons_htbd.py` (read, not
copied): lr 0.001, ×0.95 every 2000 steps on CIFAR-10, 5000 steps, stop below 10, all bases in
one batch, the trigger at (H − 10, W − 10) on the sources.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxpoison._checks import check_images
from jaxpoison.attacks import constraints, core, triggers
from jaxpoison.attacks.configs import AttackResult, HiddenTriggerConfig
from jaxpoison.keys import as_key


def pairwise_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  """Euclidean distances [P, Q] between the rows of a [P, D] and b [Q, D] (torch.cdist)."""
  highest = jax.lax.Precision.HIGHEST
  squared = (jnp.sum(jnp.square(a), -1)[:, None] + jnp.sum(jnp.square(b), -1)[None, :]
             - 2.0 * jnp.matmul(a, b.T, precision=highest))
  return jnp.sqrt(jnp.maximum(squared, 0.0))


def greedy_matching(distances: jax.Array) -> jax.Array:
  """Greedy one-to-one matching of a square distance matrix.

  Repeatedly takes the smallest remaining entry (i, j) (ties: the first in row-major order),
  pairs row i with column j, and strikes out row i and column j.

  Args:
    distances: [P, P], rows the trigger-patched sources, columns the poisons.

  Returns:
    int32 [P], a permutation: `match[j]` is the row paired with column j.
  """
  num = distances.shape[0]
  if distances.ndim != 2 or distances.shape[1] != num:
    raise ValueError(f"distances: expected a square [P, P] matrix, got shape {distances.shape}")

  def take(_, state):
    free_rows, free_cols, match = state
    # Row minima, then the column within the best row: the same entry as a flat argmin (first
    # in row-major order on ties), but plain min reductions run ~20× faster than a flat
    # (value, index) argmin on a CPU.
    masked = jnp.where(free_cols[None, :], distances, jnp.inf)
    row = jnp.argmin(jnp.where(free_rows, jnp.min(masked, axis=1), jnp.inf))
    col = jnp.argmin(masked[row])
    return free_rows.at[row].set(False), free_cols.at[col].set(False), match.at[col].set(row)

  free = jnp.ones((num,), bool)
  _, _, match = jax.lax.fori_loop(0, num, take, (free, free, jnp.zeros((num,), jnp.int32)))
  return match


def benchmark_matching(distances: jax.Array, assignment: jax.Array) -> jax.Array:
  """One step of the benchmark's (and Saha et al.'s) pairing loop.

  The reference holds a matrix of source features F (row j: the source currently paired with
  poison j), computes D = cdist(F, f(x)) and, P times, takes the global minimum (i, j) of D,
  sets F[j] ← F_old[i] and D[i, j] ← 1e5. That visits the P smallest entries of D in
  increasing order, the last one in each column winning; columns with no such entry keep their
  partner. F persists to the next step. Here F = sources[assignment].

  Args:
    distances: [P, P], D = cdist(sources[assignment], features of the poisons).
    assignment: int32 [P], the source index each poison is paired with (start: arange(P)).

  Returns:
    int32 [P], the new assignment (not necessarily a permutation).
  """
  num = distances.shape[1]
  # lax.top_k puts equal values in index order: the reference's first hit on ties.
  _, order = jax.lax.top_k(-distances.reshape(-1), num)
  rows, cols = order // num, order % num

  def overwrite(k, new):
    return new.at[cols[k]].set(assignment[rows[k]])

  return jax.lax.fori_loop(0, num, overwrite, assignment.astype(jnp.int32))


def _member_loss(sources, features, assignment, one_to_one: bool):
  """‖sources[π] − features‖²_F for one member, with π the new pairing ([P, D] each)."""
  constant = jax.lax.stop_gradient(features)
  if one_to_one:
    pairing = greedy_matching(pairwise_distances(sources, constant))
  else:
    pairing = benchmark_matching(pairwise_distances(sources[assignment], constant), assignment)
  return jnp.sum(jnp.square(sources[pairing] - features)), pairing


@functools.partial(jax.jit, static_argnames=("config",))
def _hidden_trigger(key, ensemble, base_images, source_images, config: HiddenTriggerConfig):
  groups = core.group_ensemble(ensemble)
  bases = core.to_unit_float(base_images)
  num_poisons = bases.shape[0]
  patch = triggers.get_trigger(config.trigger, config.patch_size)
  position = triggers.trigger_position(config, bases.shape[1:])
  patched = core.to_unit_float(triggers.paste_trigger(source_images, patch, position))
  sources = [jax.lax.stop_gradient(f.astype(jnp.float32))
             for f in core.group_features(groups, patched, jax.random.fold_in(key, 0))]
  one_to_one = config.matching == "one_to_one"
  member_loss = jax.vmap(functools.partial(_member_loss, one_to_one=one_to_one))

  def loss(x, assignments, step_key):
    features = core.group_features(groups, x, step_key)
    losses, pairings = zip(*(member_loss(s, f.astype(jnp.float32), a)
                             for s, f, a in zip(sources, features, assignments)))
    return sum(jnp.sum(l) for l in losses), list(pairings)

  loss_and_grad = jax.value_and_grad(loss, has_aux=True)

  def keep_going(state):
    step, _, _, _, done = state
    return (step < config.num_steps) & ~done

  def descend(state):
    step, x, assignments, history, _ = state
    (value, assignments), grad = loss_and_grad(x, assignments, jax.random.fold_in(key, step + 1))
    rate = config.learning_rate * jnp.power(
        jnp.float32(config.lr_decay), (step // config.decay_every).astype(jnp.float32))
    x = constraints.project_linf(x - rate * grad, bases, config.epsilon)
    # As the benchmark: the loss is that of the iterate before this step, and the step is kept.
    return step + 1, x, assignments, history.at[step].set(value), value < config.stop_loss

  start = [jnp.broadcast_to(jnp.arange(num_poisons, dtype=jnp.int32), (g.size, num_poisons))
           for g in groups]
  # One spare slot keeps the (never executed) write in range when num_steps = 0.
  history = jnp.full((config.num_steps + 1,), jnp.nan, jnp.float32)
  state = (jnp.zeros((), jnp.int32), bases, start, history, jnp.zeros((), bool))
  _, x, assignments, history, _ = jax.lax.while_loop(keep_going, descend, state)
  history = history[:config.num_steps]

  poisons = constraints._quantize(x, base_images, "linf", config.epsilon)
  final_key = jax.random.fold_in(key, config.num_steps + 1)
  return AttackResult(
      poisons=poisons,
      poisons_float=x,
      initial_loss=loss(bases, start, final_key)[0],
      final_loss=loss(core.to_unit_float(poisons), assignments, final_key)[0],
      loss_history=history,
      coefficients=None)


def hidden_trigger_backdoor(key: jax.Array, extractors, base_images: jax.Array,
                            source_images: jax.Array,
                            config: HiddenTriggerConfig | None = None) -> AttackResult:
  """Crafts hidden-trigger backdoor poisons from all bases at once.

  Args:
    key: PRNG key; it only matters for stochastic extractors (a fresh draw per step).
    extractors: a FeatureExtractor (penultimate-layer features, input normalization inside) or
      a sequence of them (losses summed, one matching per member).
    base_images: uint8 [P, H, W, C], training images of the base class (the poisons' label).
    source_images: uint8 [P, H, W, C], as many training images of the TARGET class (the
      benchmark draws len(bases) of them at random); the trigger is pasted on them here, at
      `trigger_position(config, (H, W))`.
    config: HiddenTriggerConfig (default: the benchmark's, with Hong et al.'s ε = 16/255).

  Returns:
    AttackResult: poisons uint8 [P, H, W, C] within ε of their bases; initial_loss /
    final_loss the matched feature loss (a scalar) at the bases / the quantized poisons;
    loss_history [num_steps], the loss before each step, NaN after an early stop; coefficients
    None. Test time: paste the same trigger at the same position on the target image.
  """
  config = HiddenTriggerConfig() if config is None else config
  if not isinstance(config, HiddenTriggerConfig):
    raise TypeError(f"config: expected a HiddenTriggerConfig, got {type(config).__name__}")
  key = as_key(key)
  ensemble = core.as_ensemble(extractors)
  image_shape = core.check_bases(base_images)
  check_images(source_images, name="source_images", image_shape=image_shape, dtypes=("uint8",))
  if source_images.shape[0] != base_images.shape[0]:
    raise ValueError(
        f"source_images: expected one target-class image per base ({base_images.shape[0]}), got "
        f"{source_images.shape[0]}")
  triggers.trigger_position(config, image_shape)
  constraints.check_quantizable(config.norm, config.epsilon, image_shape)
  core.check_extractor_outputs(ensemble, image_shape)
  return _hidden_trigger(key, ensemble, base_images, source_images, config)
