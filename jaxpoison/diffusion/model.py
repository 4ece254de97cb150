"""The `Denoiser` pytree (UNet config + schedule + params), its ε prediction and its files.

Params are a flat dict {dotted name: array}, names as in the NNX module tree
("down_blocks.1.attentions.0.to_q.kernel"), float32 unless converted otherwise. A directory
written by `save_denoiser` holds `denoiser.json` (configs) and `params/` (an orbax checkpoint).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpoison.diffusion.schedule import ScheduleConfig
from jaxpoison.diffusion.unet import UNet, UNetConfig
from jaxpoison.keys import as_key
from jaxpoison.io import atomic_write_dir, atomic_write_json

CONFIG_FILE = "denoiser.json"
PARAMS_DIR = "params"
FORMAT = "jaxpoison.denoiser"
FORMAT_VERSION = 1
DEFAULT_DENOISER_PATH = Path(__file__).resolve().parent.parent / "assets" / "default_denoiser"


class CheckpointMismatchError(ValueError):
  """Params (a checkpoint or a converted state dict) do not fit the architecture of the config."""


@flax.struct.dataclass
class Denoiser:
  """A DDPM ε-prediction model: `unet` and `schedule` are static, `params` a flat dict pytree.

  A pytree: pass it into jit, shard or replicate it like any array tree.

  `timestep_range` (lo, hi): the steps the network was trained on (None: the whole schedule,
  as for a converted checkpoint). Denoising at a σ whose step t* lies outside is refused unless
  asked for (`denoise.check_trained_sigma`).
  """
  params: dict[str, Any]
  unet: UNetConfig = flax.struct.field(pytree_node=False)
  schedule: ScheduleConfig = flax.struct.field(pytree_node=False)
  timestep_range: tuple[int, int] | None = flax.struct.field(pytree_node=False, default=None)

  @property
  def trained_timesteps(self) -> tuple[int, int]:
    """(lo, hi), inclusive: the steps this denoiser was trained on."""
    if self.timestep_range is None:
      return 0, self.schedule.num_timesteps - 1
    return int(self.timestep_range[0]), int(self.timestep_range[1])

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(v.shape)) for v in self.params.values())


def _name(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


@functools.lru_cache(maxsize=32)
def _structure(unet: UNetConfig):
  """graphdef, treedef of the nested params, the flat names and their shapes, for one config."""
  model = nnx.eval_shape(lambda: UNet(unet, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
  names = tuple(_name(p) for p, _ in leaves)
  shapes = {n: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for n, (_, leaf) in zip(names, leaves)}
  return graphdef, treedef, names, shapes


def param_shapes(unet: UNetConfig) -> dict[str, jax.ShapeDtypeStruct]:
  """{name: ShapeDtypeStruct} of the params a config needs."""
  return dict(_structure(unet)[3])


def check_params(unet: UNetConfig, params: dict, *, source: str = "params") -> None:
  """Raises CheckpointMismatchError naming the first missing, unexpected or misshapen params."""
  expected = _structure(unet)[3]
  missing = [n for n in expected if n not in params]
  unexpected = sorted(n for n in params if n not in expected)
  wrong = [f"{n}: {tuple(params[n].shape)} != expected {tuple(expected[n].shape)}"
           for n in expected if n in params and tuple(params[n].shape) != expected[n].shape]
  if missing or unexpected or wrong:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing (first: {missing[:5]})")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected (first: {unexpected[:5]})")
    if wrong:
      parts.append(f"{len(wrong)} with the wrong shape (first: {wrong[:3]})")
    raise CheckpointMismatchError(
        f"{source} do not match the UNet config ({'; '.join(parts)}); config: {unet}")


def create_denoiser(unet: UNetConfig, schedule: ScheduleConfig, key) -> Denoiser:
  """A randomly initialized denoiser (float32 params; PyTorch-like default inits of flax)."""
  key = jax.random.key(key) if isinstance(key, int) else as_key(key)
  model = UNet(unet, rngs=nnx.Rngs(params=key))
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
  return Denoiser(params={_name(p): v for p, v in leaves}, unet=unet, schedule=schedule)


def unet_apply(unet: UNetConfig, params: dict, x, t, *, compute_dtype=jnp.float32,
               dropout_key=None, attention: str = "auto"):
  """Runs the UNet: x float [B, H, W, C] (NHWC), t [B] steps -> float32 [B, H, W, out_channels].

  Floating params and x are cast to `compute_dtype` (bfloat16 halves the memory traffic; the
  GroupNorm statistics and the attention softmax stay in float32); params already in that dtype
  (`cast_params`) are used as they are. attention: "auto", "xla" or "cudnn"
  (`unet.attention_implementation`).
  """
  graphdef, treedef, names, _ = _structure(unet)
  leaves = [params[n].astype(compute_dtype) for n in names]
  model = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))
  out = model(x.astype(compute_dtype), t, dropout_key=dropout_key, attention=attention)
  return out.astype(jnp.float32)


def predict_eps(denoiser: Denoiser, x, t, *, compute_dtype=jnp.float32, attention: str = "auto"):
  """ε_θ(x_t, t): float32 [B, H, W, C] (the first C channels when the model learns Σ too)."""
  out = unet_apply(denoiser.unet, denoiser.params, x, t, compute_dtype=compute_dtype,
                   attention=attention)
  return out[..., :denoiser.unet.eps_channels]


def cast_params(denoiser: Denoiser, dtype) -> Denoiser:
  """The denoiser with its parameters in `dtype`: cast once, before a loop over batches or
  models, rather than in every UNet call."""
  dtype = jnp.dtype(dtype)
  return denoiser.replace(params={k: jnp.asarray(v).astype(dtype)
                                  for k, v in denoiser.params.items()})


# ----------------------------------------------------------------------------- files


def _config_dict(denoiser: Denoiser, extra: dict | None) -> dict:
  extra = dict(extra or {})
  if denoiser.timestep_range is not None:
    extra["timestep_range"] = list(denoiser.trained_timesteps)
  return {"format": FORMAT, "version": FORMAT_VERSION, "unet": denoiser.unet.to_dict(),
          "schedule": denoiser.schedule.to_dict(), "extra": extra}


def _timestep_range(extra: dict, schedule: ScheduleConfig, source) -> tuple[int, int] | None:
  """The trained steps recorded in a denoiser file's metadata (None: the whole schedule)."""
  value = extra.get("timestep_range")
  if value is None:
    return None
  lo, hi = (int(v) for v in value)
  if not 0 <= lo <= hi < schedule.num_timesteps:
    raise ValueError(f"{source}: timestep_range {value} is not inside [0, "
                     f"{schedule.num_timesteps})")
  return lo, hi


def save_denoiser(denoiser: Denoiser, path: str | os.PathLike, *, extra: dict | None = None,
                  overwrite: bool = True) -> Path:
  """Writes `path/denoiser.json` and `path/params/` (orbax), atomically.

  Everything is written to a temporary directory beside `path` and renamed onto it, so a
  crash leaves either the old denoiser or the new one. `extra` (JSON) is stored as metadata.
  """
  import orbax.checkpoint as ocp

  check_params(denoiser.unet, denoiser.params)
  path = Path(path).absolute()
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")

  def write(tmp: Path) -> None:
    params = {k: np.asarray(jax.device_get(v)) for k, v in denoiser.params.items()}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    checkpointer.close()
    atomic_write_json(tmp / CONFIG_FILE, _config_dict(denoiser, extra))

  return atomic_write_dir(path, write)


def read_denoiser_config(path: str | os.PathLike) -> tuple[UNetConfig, ScheduleConfig, dict]:
  """(unet, schedule, extra) from a denoiser directory's `denoiser.json`."""
  file = Path(path) / CONFIG_FILE
  if not file.is_file():
    raise FileNotFoundError(f"{path}: not a denoiser directory (no {CONFIG_FILE})")
  d = json.loads(file.read_text())
  if d.get("format") != FORMAT:
    raise ValueError(f"{file}: format {d.get('format')!r}, expected {FORMAT!r}")
  if int(d.get("version", 0)) > FORMAT_VERSION:
    raise ValueError(f"{file}: version {d['version']} is newer than this jaxpoison reads "
                     f"({FORMAT_VERSION})")
  return UNetConfig.from_dict(d["unet"]), ScheduleConfig.from_dict(d["schedule"]), d.get("extra", {})


def load_denoiser(path: str | os.PathLike) -> Denoiser:
  """Loads a directory written by `save_denoiser`; params come back as float32 jax arrays.

  Raises CheckpointMismatchError when the params do not fit the stored UNet config.
  """
  import orbax.checkpoint as ocp

  path = Path(path).absolute()
  unet, schedule, extra = read_denoiser_config(path)
  timestep_range = _timestep_range(extra, schedule, path / CONFIG_FILE)
  checkpointer = ocp.StandardCheckpointer()
  try:
    raw = checkpointer.restore(path / PARAMS_DIR)
  finally:
    checkpointer.close()
  params = {str(k): v for k, v in raw.items()}
  check_params(unet, params, source=f"params in {path}")
  params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  return Denoiser(params=params, unet=unet, schedule=schedule, timestep_range=timestep_range)


@functools.lru_cache(maxsize=1)
def _default_denoiser() -> Denoiser:
  return load_denoiser(DEFAULT_DENOISER_PATH)


def default_denoiser() -> Denoiser:
  """The small CIFAR-10 DDPM shipped in `jaxpoison/assets/default_denoiser/` (loaded once)."""
  if not (DEFAULT_DENOISER_PATH / CONFIG_FILE).is_file():
    raise FileNotFoundError(
        f"the embedded default denoiser is missing from {DEFAULT_DENOISER_PATH}; reinstall "
        "jaxpoison or train one with scripts/train_denoiser.py")
  return _default_denoiser()


# The denoiser spec that means "noise only": the smoothing noise is added and not removed.
NOISE_ONLY = "none"


def resolve_denoiser(spec) -> Denoiser | None:
  """The denoiser a config or a command line names: a `Denoiser` as given; None or "default":
  the embedded default; NOISE_ONLY ("none"): None (noise without denoising); anything else: a
  denoiser folder's path (`load_denoiser`)."""
  if isinstance(spec, Denoiser):
    return spec
  if isinstance(spec, str) and spec == NOISE_ONLY:
    return None
  if spec is None or (isinstance(spec, str) and spec == "default"):
    return default_denoiser()
  return load_denoiser(spec)
