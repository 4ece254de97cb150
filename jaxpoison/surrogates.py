"""What attacks and classifiers both speak: networks as pure functions of their parameters.

Two adapters sit below both the networks (`jaxpoison.classifier`) and the attacks, so that a
trained classifier can be handed to an attack without either importing the other:

* `FeatureExtractor(apply_fn, params)`: `apply_fn(params, images)` maps float images in [0, 1],
  [B, H, W, C], to features [B, D] (the penultimate layer, input normalization included), for
  the feature-collision attacks and the Deep k-NN defense. `apply_fn` is static (part of the jit
  cache key, so reuse the same function object); `params` is any pytree. A stochastic extractor
  (dropout kept on while crafting, as Zhu et al. do to make poisons transfer) is called
  `apply_fn(params, images, key)`. An ensemble is a sequence of extractors.
* `GradientModel(apply_fn, params, state)`: a classifier's logits as a function of its
  parameters, for the gradient-matching attacks (Witches' Brew, Sleeper Agent).

`NNXApply`/`nnx_extractor` wrap a Flax NNX module's method in that form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from flax import nnx, struct


@struct.dataclass
class FeatureExtractor:
  """A pure feature function and its parameters.

  Attributes:
    apply_fn: `apply_fn(params, images) -> features`, images float [B, H, W, C] in [0, 1],
      features [B, D]; with `stochastic=True`, `apply_fn(params, images, key)`. Static.
    params: the parameter pytree (traced).
    stochastic: whether apply_fn takes a key (e.g. dropout on while crafting). Static.
  """
  apply_fn: Callable = struct.field(pytree_node=False)
  params: Any
  stochastic: bool = struct.field(pytree_node=False, default=False)


@dataclasses.dataclass(frozen=True)
class NNXApply:
  """`apply_fn` for an NNX module's method: merges the split state and calls `method`.

  Equal for equal graph definitions, so two checkpoints of one architecture share a jit cache
  entry and are stacked into one vmapped group of an ensemble. A stochastic method is called as
  `method(images, key=key)`.
  """
  graphdef: Any
  method: str = "features"

  def __call__(self, params, images, key=None):
    model = nnx.merge(self.graphdef, params, copy=True)
    features = getattr(model, self.method)
    return features(images) if key is None else features(images, key=key)


def nnx_extractor(model: nnx.Module, method: str = "features", *,
                  stochastic: bool = False) -> FeatureExtractor:
  """Wraps an NNX module's feature method (e.g. the penultimate layer) as a FeatureExtractor.

  Put the module in evaluation mode first (`model.eval()`) when it has batch norm: crafting
  must not update running statistics. The module itself is not modified.
  """
  if not hasattr(model, method):
    raise AttributeError(f"{type(model).__name__} has no method {method!r} to extract features")
  graphdef, state = nnx.split(model)
  return FeatureExtractor(NNXApply(graphdef, method), state, stochastic)


def as_ensemble(extractors) -> tuple[FeatureExtractor, ...]:
  """A FeatureExtractor or a non-empty sequence of them, as a tuple."""
  if isinstance(extractors, FeatureExtractor):
    return (extractors,)
  if not isinstance(extractors, Sequence) or isinstance(extractors, (str, bytes)):
    raise TypeError(
        f"extractors: expected a FeatureExtractor or a sequence of them, got "
        f"{type(extractors).__name__}")
  if len(extractors) == 0:
    raise ValueError("extractors: the ensemble is empty; expected at least one FeatureExtractor")
  for i, extractor in enumerate(extractors):
    if not isinstance(extractor, FeatureExtractor):
      raise TypeError(
          f"extractors[{i}]: expected a FeatureExtractor(apply_fn, params), got "
          f"{type(extractor).__name__}")
  return tuple(extractors)


@struct.dataclass
class GradientModel:
  """A classifier whose parameter gradient the attack matches.

  Attributes:
    apply_fn: `apply_fn(params, state, images) -> logits` for float images [B, H, W, C] in
      [0, 1], in inference mode (batch norm on its running statistics). Static: reuse the same
      function object (e.g. `classifier.gradient_model`'s) so that members of one architecture
      share a compiled program and are stacked into one vmap.
    params: the parameters the gradient is taken of (a pytree).
    state: everything else the network reads and does not train on (running statistics,
      fixed filters); any pytree, may be None.
  """
  apply_fn: Callable = struct.field(pytree_node=False)
  params: Any
  state: Any = None


def as_gradient_models(models) -> tuple[GradientModel, ...]:
  """A GradientModel or a non-empty sequence of them, as a tuple."""
  if isinstance(models, GradientModel):
    return (models,)
  if not isinstance(models, Sequence) or isinstance(models, (str, bytes)) or not models:
    raise TypeError(f"surrogates: expected a GradientModel or a non-empty sequence of them, got "
                    f"{type(models).__name__}")
  for i, model in enumerate(models):
    if not isinstance(model, GradientModel):
      raise TypeError(f"surrogates[{i}]: expected a GradientModel(apply_fn, params, state), got "
                      f"{type(model).__name__}")
  return tuple(models)
