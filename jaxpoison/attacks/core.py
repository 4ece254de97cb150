"""Ensembles of feature extractors (`jaxpoison.surrogates`), and the attacks' shared checks.

A feature extractor is a pair (apply_fn, params): `apply_fn(params, images)` maps float images
in [0, 1], [B, H, W, C], to features [B, D] (the penultimate layer, normalization of the input
included). `apply_fn` is static (part of the jit cache key, so reuse the same function object);
`params` is any pytree. A stochastic extractor (dropout kept on while crafting, as Zhu et al. do
to make poisons transfer) is called `apply_fn(params, images, key)`.

An ensemble is a sequence of extractors. Members with the same apply_fn and the same parameter
shapes (e.g. several checkpoints of one architecture) are stacked and evaluated with one vmap;
different architectures are evaluated one after the other inside the same jitted program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison._checks import check_images
from jaxpoison.keys import as_key
from jaxpoison.surrogates import FeatureExtractor, NNXApply, as_ensemble, nnx_extractor  # noqa: F401  (re-exported)


class Group(NamedTuple):
  """Ensemble members that share apply_fn and parameter shapes, parameters stacked on axis 0."""
  apply_fn: Callable
  stochastic: bool
  params: Any
  size: int
  members: tuple[int, ...]  # positions in the ensemble


def _signature(extractor: FeatureExtractor):
  leaves, treedef = jax.tree.flatten(extractor.params)
  shapes = tuple((tuple(np.shape(leaf)), jnp.result_type(leaf)) for leaf in leaves)
  return extractor.apply_fn, extractor.stochastic, treedef, shapes


def group_ensemble(ensemble: Sequence[FeatureExtractor]) -> list[Group]:
  """Groups stackable members (same apply_fn, stochasticity and parameter shapes)."""
  signatures, members = [], []
  for i, extractor in enumerate(ensemble):
    signature = _signature(extractor)
    for j, known in enumerate(signatures):
      if known == signature:
        members[j].append(i)
        break
    else:
      signatures.append(signature)
      members.append([i])
  groups = []
  for signature, indices in zip(signatures, members):
    apply_fn, stochastic = signature[:2]
    params = [ensemble[i].params for i in indices]
    stacked = params[0] if len(params) == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *params)
    groups.append(Group(apply_fn, stochastic, stacked, len(indices), tuple(indices)))
  return groups


def group_features(groups: Sequence[Group], images: jax.Array, key: jax.Array) -> list[jax.Array]:
  """Each group's features of `images`, [group size, B, D_group]; `key` feeds stochastic ones."""
  features = []
  for index, group in enumerate(groups):
    group_key = jax.random.fold_in(key, index)
    if group.size == 1:
      args = (group_key,) if group.stochastic else ()
      features.append(group.apply_fn(group.params, images, *args)[None])
    elif group.stochastic:
      keys = jax.random.split(group_key, group.size)
      features.append(jax.vmap(lambda p, k, g=group: g.apply_fn(p, images, k))(group.params, keys))
    else:
      features.append(jax.vmap(lambda p, g=group: g.apply_fn(p, images))(group.params))
  return features


@jax.jit
def _extract_features(ensemble, images, key):
  groups = group_ensemble(ensemble)
  out = [None] * len(ensemble)
  for group, features in zip(groups, group_features(groups, images, key)):
    for position, member in enumerate(group.members):
      out[member] = features[position]
  return out


def extract_features(extractors, images, key: jax.Array | None = None) -> list[jax.Array]:
  """Every member's features of float images [B, H, W, C] in [0, 1], in ensemble order."""
  ensemble = as_ensemble(extractors)
  check_images(images, name="images", dtypes=("float32", "bfloat16", "float16"))
  key = jax.random.key(0) if key is None else as_key(key)
  return _extract_features(ensemble, images, key)


def check_extractor_outputs(ensemble: Sequence[FeatureExtractor], image_shape) -> list[int]:
  """Traces each member abstractly on [2, *image_shape] and returns its feature widths."""
  images = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  widths = []
  for i, extractor in enumerate(ensemble):
    args = (key,) if extractor.stochastic else ()
    try:
      out = jax.eval_shape(extractor.apply_fn, extractor.params, images, *args)
    except Exception as e:
      raise ValueError(
          f"extractors[{i}]: apply_fn(params, images{', key' if args else ''}) failed on float32 "
          f"images of shape {images.shape} ({type(e).__name__}: {e})") from e
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != 2 or shape[1] < 1:
      raise ValueError(
          f"extractors[{i}]: expected features of shape [batch, D] = [2, D] for 2 images, got "
          f"{shape if shape is not None else type(out).__name__}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
      raise TypeError(f"extractors[{i}]: expected floating-point features, got {out.dtype}")
    widths.append(int(shape[1]))
  return widths


def check_bases(base_images, image_shape=None) -> tuple[int, int, int]:
  """Checks a non-empty batch of uint8 bases [P, H, W, C] (of `image_shape` when given);
  returns (H, W, C)."""
  check_images(base_images, name="base_images", image_shape=image_shape, dtypes=("uint8",))
  if base_images.shape[0] < 1:
    raise ValueError("base_images: expected at least one base image, got an empty batch")
  return tuple(base_images.shape[1:])


def check_target_and_bases(target_image, base_images) -> tuple[int, int, int]:
  """Checks a uint8 target [H, W, C] and uint8 bases [P, H, W, C]; returns (H, W, C)."""
  check_images(target_image, name="target_image", ndims=(3,), dtypes=("uint8",))
  return check_bases(base_images, tuple(target_image.shape))


def to_unit_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] to float32 [0, 1]."""
  return jnp.asarray(images, jnp.float32) / 255.0
