"""The backdoor triggers of the poisoning benchmark, where they go, and pasting them.

Both patterns are the benchmark's own PNGs, read from aks2203/poisoning-benchmark at commit
97a67ae5065b9ef1df946ed10ff5094fcee91bbc (the files date from 649ba1f, June 2020), stored
here as literal uint8 pixels:

* `CLBD_TRIGGER`: `poison_crafting/triggers/clbd.png`, a 5×5 grey/black/white pattern (the
  benchmark's `Resize((5, 5))` leaves it unchanged). Grey pixels have R = G = B.
* `HTBD_TRIGGER`: `poison_crafting/triggers/htbd.png` is an 80×80 random-colour pattern; the
  benchmark resizes it with torchvision's `Resize((5, 5))`, which on a PIL image is PIL's
  bilinear resize. The values below are `Image.open(htbd.png).convert("RGB").resize((5, 5),
  Image.BILINEAR)` (Pillow 13). The 80×80 original is not embedded, so only the 5×5 size of
  this trigger is available.

Placement (rows, columns of the top-left corner, for an H×W image and a p×p patch):
* label-consistent backdoor (`craft_poisons_clbd.py`): the bottom-right corner, (H − p, W − p),
  i.e. rows/cols 27–31 of a CIFAR image;
* hidden-trigger backdoor (`craft_poisons_htbd.py`): 5 pixels in from that corner,
  (H − p − 5, W − p − 5), i.e. rows/cols 22–26.
The same position is used for the poisons (or the patched sources) and for the test image.

* `SLEEPER_AGENT_TRIGGER`: hsouri/Sleeper-Agent's `patches/trigger_10.png` (80×80 RGB, commit
  60ba3a61e03be992b8e8d0792d0234aedb56a805, June 2021) resized to 8×8 as its
  `torchvision.transforms.Resize(8)` does on the PIL image (PIL bilinear; values from Pillow
  13). Sleeper Agent pastes it at a uniformly random position per image
  (`random_trigger_positions`, `paste_trigger_per_image`).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

TRIGGER_SOURCE = ("github.com/aks2203/poisoning-benchmark@97a67ae5065b9ef1df946ed10ff5094fcee91bbc:"
                  "poison_crafting/triggers/{clbd,htbd}.png")

CLBD_TRIGGER = np.array([
    [[0, 0, 0], [0, 0, 0], [0, 0, 0], [171, 171, 171], [255, 255, 255]],
    [[0, 0, 0], [33, 33, 33], [101, 101, 101], [141, 141, 141], [154, 154, 154]],
    [[0, 0, 0], [101, 101, 101], [255, 255, 255], [101, 101, 101], [0, 0, 0]],
    [[166, 166, 166], [140, 140, 140], [101, 101, 101], [133, 133, 133], [154, 154, 154]],
    [[255, 255, 255], [158, 158, 158], [0, 0, 0], [158, 158, 158], [255, 255, 255]],
], np.uint8)

# htbd.png (80×80) resized to 5×5 with PIL bilinear, as the benchmark does; see the docstring.
HTBD_TRIGGER = np.array([
    [[234, 214, 26], [93, 77, 26], [8, 12, 11], [6, 26, 83], [21, 26, 233]],
    [[244, 72, 179], [200, 25, 178], [78, 87, 80], [52, 179, 78], [161, 180, 228]],
    [[128, 119, 129], [218, 37, 128], [195, 62, 57], [170, 138, 32], [244, 138, 110]],
    [[82, 172, 77], [142, 113, 77], [218, 40, 79], [230, 9, 80], [178, 8, 77]],
    [[212, 43, 229], [83, 173, 229], [136, 128, 231], [183, 7, 231], [40, 0, 230]],
], np.uint8)

# trigger_10.png (80×80) resized to 8×8 with PIL bilinear, as Sleeper Agent does; see above.
SLEEPER_AGENT_TRIGGER = np.array([
    [[253, 2, 2], [200, 60, 1], [56, 204, 2], [1, 196, 61], [1, 47, 195], [52, 40, 253],
     [191, 183, 255], [253, 253, 255]],
    [[199, 59, 72], [165, 118, 46], [97, 223, 10], [61, 218, 57], [60, 109, 192],
     [112, 104, 253], [214, 209, 255], [254, 254, 255]],
    [[55, 203, 215], [94, 222, 151], [172, 249, 37], [209, 247, 50], [207, 219, 188],
     [220, 218, 253], [247, 246, 254], [253, 253, 253]],
    [[1, 200, 208], [42, 198, 145], [150, 196, 35], [206, 196, 55], [204, 199, 197],
     [199, 199, 248], [196, 196, 210], [194, 194, 183]],
    [[0, 55, 59], [9, 57, 37], [41, 59, 8], [58, 59, 67], [57, 56, 209], [57, 56, 223],
     [59, 59, 107], [61, 61, 39]],
    [[0, 52, 52], [12, 33, 34], [37, 6, 8], [52, 8, 48], [53, 36, 155], [35, 37, 170],
     [8, 10, 88], [2, 2, 44]],
    [[2, 196, 196], [45, 137, 143], [144, 32, 42], [197, 37, 10], [197, 146, 40],
     [143, 151, 92], [41, 46, 160], [1, 1, 192]],
    [[2, 253, 253], [65, 195, 203], [203, 51, 65], [254, 59, 2], [254, 208, 1], [203, 215, 55],
     [64, 72, 199], [2, 2, 253]],
], np.uint8)

for _pattern in (CLBD_TRIGGER, HTBD_TRIGGER, SLEEPER_AGENT_TRIGGER):
  _pattern.setflags(write=False)

TRIGGERS = {"clbd": CLBD_TRIGGER, "htbd": HTBD_TRIGGER, "sleeper_agent": SLEEPER_AGENT_TRIGGER}
# Pixels between the patch and the bottom-right corner of the image, per placement rule. The
# attack names are accepted as aliases of their triggers' rules.
TRIGGER_INSETS = {"clbd": 0, "htbd": 5, "label_consistent": 0, "hidden_trigger": 5}


def _check_trigger_name(name) -> str:
  if not isinstance(name, str) or name not in TRIGGERS:
    raise ValueError(f"trigger: expected one of {sorted(TRIGGERS)}, got {name!r}")
  return name


def _check_patch_size(patch_size) -> int:
  if isinstance(patch_size, bool) or not isinstance(patch_size, numbers.Integral):
    raise TypeError(f"patch_size: expected a positive integer, got {patch_size!r}")
  if patch_size < 1:
    raise ValueError(f"patch_size: expected a positive integer, got {patch_size!r}")
  return int(patch_size)


@functools.lru_cache(maxsize=None)
def _resized(name: str, patch_size: int) -> np.ndarray:
  pattern = TRIGGERS[name]
  if patch_size == pattern.shape[0]:
    return pattern
  if name != "clbd":
    side = pattern.shape[0]
    raise ValueError(
        f"trigger {name!r}: only the {side}×{side} resize of its 80×80 original is embedded, "
        f"so patch_size must be {side}, got {patch_size}")
  # clbd.png is itself 5×5, so resizing the stored pixels equals resizing the file, as the
  # benchmark's torchvision Resize (PIL bilinear on a PIL image) does.
  from PIL import Image
  image = Image.fromarray(np.asarray(pattern)).resize((patch_size, patch_size),
                                                      Image.Resampling.BILINEAR)
  resized = np.asarray(image, np.uint8).copy()
  resized.setflags(write=False)
  return resized


def get_trigger(name: str, patch_size: int = 5) -> np.ndarray:
  """The trigger `name` (in `TRIGGERS`) as read-only uint8 [patch_size, patch_size, 3]."""
  return _resized(_check_trigger_name(name), _check_patch_size(patch_size))


def _image_hw(image_shape) -> tuple[int, int]:
  shape = tuple(int(s) for s in image_shape)
  if len(shape) not in (2, 3) or min(shape) < 1:
    raise ValueError(f"image_shape: expected (H, W) or (H, W, C), got {tuple(image_shape)}")
  return shape[0], shape[1]


def check_position(position, patch_size: int, image_shape) -> tuple[int, int]:
  """Checks that a p×p patch with top-left corner `position` = (row, col) fits in the image."""
  height, width = _image_hw(image_shape)
  if (not isinstance(position, Sequence) or isinstance(position, str) or len(position) != 2
      or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in position)):
    raise TypeError(f"position: expected (row, col), two integers, got {position!r}")
  row, col = int(position[0]), int(position[1])
  if row < 0 or col < 0 or row + patch_size > height or col + patch_size > width:
    raise ValueError(
        f"position: a {patch_size}×{patch_size} trigger at (row, col) = ({row}, {col}) does not "
        f"fit in a {height}×{width} image; expected 0 <= row <= {height - patch_size} and "
        f"0 <= col <= {width - patch_size}")
  return row, col


def trigger_position(spec, image_shape, patch_size: int | None = None) -> tuple[int, int]:
  """The top-left corner (row, col) of the trigger in images of `image_shape` ((H, W[, C])).

  Args:
    spec: a backdoor config (its `position`, or its attack's default placement when that is
      None, and its `patch_size`); a placement name: "clbd"/"label_consistent" for the bottom-
      right corner, "htbd"/"hidden_trigger" for 5 pixels in from it; or an explicit (row, col).
    image_shape: (H, W) or (H, W, C).
    patch_size: the trigger's side (default: the config's, else 5).

  Raises:
    ValueError if the trigger does not fit in the image.
  """
  if hasattr(spec, "trigger_inset") and hasattr(spec, "position"):
    size = _check_patch_size(spec.patch_size if patch_size is None else patch_size)
    position, inset = spec.position, spec.trigger_inset
  elif isinstance(spec, str):
    if spec not in TRIGGER_INSETS:
      raise ValueError(f"trigger_position: expected a placement in {sorted(TRIGGER_INSETS)}, "
                       f"a backdoor config or (row, col), got {spec!r}")
    size = _check_patch_size(5 if patch_size is None else patch_size)
    position, inset = None, TRIGGER_INSETS[spec]
  else:
    size = _check_patch_size(5 if patch_size is None else patch_size)
    position, inset = spec, None
  if position is None:
    height, width = _image_hw(image_shape)
    position = (height - size - inset, width - size - inset)
    if min(position) < 0:
      raise ValueError(
          f"trigger_position: a {size}×{size} trigger {inset} pixels in from the bottom-right "
          f"corner does not fit in a {height}×{width} image")
  return check_position(position, size, image_shape)


def paste_trigger(images, trigger, position) -> np.ndarray | jax.Array:
  """Images with the trigger's pixels in place of theirs at `position` (the rest unchanged).

  Args:
    images: uint8 [N, H, W, C] or [H, W, C] (numpy: a numpy copy is returned; a jax array or
      a tracer: a jax array, usable under jit).
    trigger: uint8 [p, q, C] (e.g. `get_trigger("clbd")`).
    position: (row, col) of the trigger's top-left corner, static Python integers.

  Returns:
    uint8 images of the input's shape; the trigger fully replaces the pixels under it, as the
    benchmark pastes it.
  """
  for name, value in (("images", images), ("trigger", trigger)):
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
      raise TypeError(f"{name}: expected a uint8 array, got {type(value).__name__}")
    if np.dtype(value.dtype) != np.uint8:
      raise TypeError(f"{name}: expected dtype uint8 (pixels in [0, 255]), got "
                      f"{np.dtype(value.dtype).name}")
  if images.ndim not in (3, 4):
    raise ValueError(f"images: expected uint8 [N, H, W, C] or [H, W, C], got shape "
                     f"{tuple(images.shape)}")
  if trigger.ndim != 3 or trigger.shape[-1] != images.shape[-1]:
    raise ValueError(f"trigger: expected uint8 [p, q, C] with the images' C = {images.shape[-1]} "
                     f"channels, got shape {tuple(trigger.shape)}")
  if trigger.shape[0] != trigger.shape[1]:
    raise ValueError(f"trigger: expected a square patch, got shape {tuple(trigger.shape)}")
  size = int(trigger.shape[0])
  row, col = check_position(position, size, images.shape[-3:])
  window = (..., slice(row, row + size), slice(col, col + size), slice(None))
  if isinstance(images, np.ndarray):
    out = images.copy()
    out[window] = np.asarray(trigger)
    return out
  return jnp.asarray(images).at[window].set(jnp.asarray(trigger))


def random_trigger_positions(key: jax.Array, num_images: int, patch_size: int,
                             image_shape) -> jax.Array:
  """Uniform top-left corners int32 [num_images, 2] (row, col) of a p×p patch that fits in
  images of `image_shape`, one per image (Sleeper Agent's `random_patch`)."""
  height, width = _image_hw(image_shape)
  size = _check_patch_size(patch_size)
  if size > min(height, width):
    raise ValueError(f"patch_size: a {size}×{size} trigger does not fit in a {height}×{width} "
                     "image")
  k_row, k_col = jax.random.split(key)
  rows = jax.random.randint(k_row, (num_images,), 0, height - size + 1)
  cols = jax.random.randint(k_col, (num_images,), 0, width - size + 1)
  return jnp.stack([rows, cols], axis=1).astype(jnp.int32)


@jax.jit
def _paste_per_image(images, trigger, positions):
  def one(image, position):
    return jax.lax.dynamic_update_slice(image, trigger, (position[0], position[1], 0))
  return jax.vmap(one)(images, positions)


def paste_trigger_per_image(images, trigger, positions) -> jax.Array:
  """uint8 images [N, H, W, C] with the trigger [p, p, C] pasted at positions[i] = (row, col)
  (int [N, 2], e.g. `random_trigger_positions`), fully replacing the pixels under it."""
  images, trigger = jnp.asarray(images), jnp.asarray(trigger)
  if images.dtype != jnp.uint8 or trigger.dtype != jnp.uint8:
    raise TypeError(f"images, trigger: expected uint8, got {images.dtype} and {trigger.dtype}")
  if images.ndim != 4 or trigger.ndim != 3 or trigger.shape[-1] != images.shape[-1]:
    raise ValueError(f"images, trigger: expected [N, H, W, C] and [p, p, C], got "
                     f"{tuple(images.shape)} and {tuple(trigger.shape)}")
  positions = jnp.asarray(positions, jnp.int32)
  if positions.shape != (images.shape[0], 2):
    raise ValueError(f"positions: expected int [{images.shape[0]}, 2] (row, col per image), got "
                     f"shape {tuple(positions.shape)}")
  return _paste_per_image(images, trigger, positions)
