"""PRNG keys at the public boundary: the one place a key argument is checked and coerced.

Every library function takes explicit keys. A caller may pass a typed key
(`jax.random.key(seed)`, the form used inside the library) or a legacy raw key
(`jax.random.PRNGKey(seed)`, uint32 [..., 2]); both come back as typed keys holding the same
bits, so the random streams drawn from them are the same either way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_EXAMPLES = {0: "jax.random.key(seed)", 1: "jax.random.split(jax.random.key(seed), M)"}


def is_typed_key(key) -> bool:
  return isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def as_key(key, *, name: str = "key", ndim: int = 0) -> jax.Array:
  """`key` as a typed PRNG key array of `ndim` dimensions (a single key by default).

  Accepts typed keys and legacy raw uint32 keys (one more trailing axis of 2); raises TypeError
  or ValueError naming `name`, what was passed and what was expected.
  """
  expected = _EXAMPLES.get(ndim, f"typed PRNG keys of {ndim} dimensions")
  if is_typed_key(key):
    if key.ndim != ndim or (ndim == 1 and key.shape[0] < 1):
      what = "a single PRNG key" if ndim == 0 else f"a {ndim}-D array of PRNG keys ({expected})"
      raise ValueError(f"{name}: expected {what}, got a key array of shape {key.shape}")
    return key
  shape, dtype = getattr(key, "shape", None), getattr(key, "dtype", None)
  if (shape is not None and len(shape) == ndim + 1 and shape[-1] == 2 and dtype == jnp.uint32
      and (ndim == 0 or shape[0] >= 1)):
    return jax.random.wrap_key_data(jnp.asarray(key))
  what = "a PRNG key" if ndim == 0 else "typed PRNG keys"
  raise TypeError(
      f"{name}: expected {what} ({expected}, or the legacy jax.random.PRNGKey form), got "
      f"{type(key).__name__} with shape {shape} and dtype {dtype}")


def key_data(key) -> np.ndarray:
  """The raw uint32 data of a typed or raw key, on the host (e.g. to record it in a file)."""
  if is_typed_key(key):
    key = jax.random.key_data(key)
  return np.asarray(key, np.uint32)
