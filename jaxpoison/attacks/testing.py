"""Tiny feature extractors for tests and examples: an NNX CNN and a plain-jax MLP.

They stand in for the pretrained networks of a real run (seconds on a CPU instead of hours on
a GPU) and exercise both ways of building a FeatureExtractor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpoison.attacks.core import FeatureExtractor, nnx_extractor


class TinyCNN(nnx.Module):
  """Normalize, two 3×3 convolutions, global average pool, a linear layer: features [B, D]."""

  def __init__(self, *, rngs: nnx.Rngs, channels: int = 3, width: int = 8,
               feature_dim: int = 16, dropout: float = 0.0,
               mean: tuple[float, ...] = (0.49, 0.48, 0.45),
               std: tuple[float, ...] = (0.2, 0.2, 0.2)):
    self.conv1 = nnx.Conv(channels, width, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (3, 3), strides=(2, 2), rngs=rngs)
    self.head = nnx.Linear(2 * width, feature_dim, rngs=rngs)
    self.dropout = dropout
    self.mean = tuple(mean[:channels])
    self.std = tuple(std[:channels])

  def features(self, images: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
    x = (images - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    x = jnp.mean(x, axis=(1, 2))
    if key is not None and self.dropout > 0:
      # Dropout kept on while crafting (Zhu et al.): a fresh mask per call.
      keep = jax.random.bernoulli(key, 1.0 - self.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - self.dropout), 0.0)
    return self.head(x)


def _random_state(abstract_state, seed: int):
  """Fills an abstract NNX state: kernels ~ N(0, 1/fan_in), biases 0, from numpy's generator.

  numpy instead of jax.random keeps test set-up free of XLA compilations (on a CPU, compiling
  the PRNG for every parameter shape costs seconds).
  """
  rng = np.random.default_rng(seed)

  def fill(leaf):
    if len(leaf.shape) == 1:
      return jnp.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape), leaf.dtype)

  return jax.tree.map(fill, abstract_state)


def tiny_cnn_extractor(seed: int = 0, *, channels: int = 3, width: int = 8, feature_dim: int = 16,
                       dropout: float = 0.0) -> FeatureExtractor:
  """A randomly initialized TinyCNN as a FeatureExtractor (stochastic when dropout > 0)."""
  abstract = nnx.eval_shape(lambda: TinyCNN(rngs=nnx.Rngs(0), channels=channels, width=width,
                                            feature_dim=feature_dim, dropout=dropout))
  graphdef, state = nnx.split(abstract)
  model = nnx.merge(graphdef, _random_state(state, seed))
  return nnx_extractor(model, "features", stochastic=dropout > 0)


def mlp_features(params, images: jax.Array) -> jax.Array:
  """A one-hidden-layer tanh MLP on the flattened image."""
  x = images.reshape(images.shape[0], -1) * 2.0 - 1.0
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return hidden @ params["w2"] + params["b2"]


def mlp_extractor(seed: int, image_shape: tuple[int, int, int], *, hidden: int = 32,
                  feature_dim: int = 8) -> FeatureExtractor:
  """A randomly initialized `mlp_features` extractor for images of `image_shape`."""
  rng = np.random.default_rng(seed)
  num_inputs = int(image_shape[0] * image_shape[1] * image_shape[2])
  params = {
      "w1": jnp.asarray(rng.normal(0, 1 / np.sqrt(num_inputs), (num_inputs, hidden)), jnp.float32),
      "b1": jnp.zeros((hidden,)),
      "w2": jnp.asarray(rng.normal(0, 1 / np.sqrt(hidden), (hidden, feature_dim)), jnp.float32),
      "b2": jnp.zeros((feature_dim,)),
  }
  return FeatureExtractor(mlp_features, params)
