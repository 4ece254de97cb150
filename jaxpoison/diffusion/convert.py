"""Conversion of PyTorch DDPM checkpoints to a `Denoiser`.

Sources:
* a diffusers `UNet2DModel` folder (`config.json` + `diffusion_pytorch_model.safetensors` or
  `.bin`), a pipeline folder with a `unet/` subfolder (its `scheduler/scheduler_config.json`
  gives the schedule), or a bare state dict with a `UNetConfig`;
* an improved-diffusion `UNetModel` state dict (`.pt`), e.g. cifar10_uncond_50M_500K.pt, with
  `improved_diffusion_cifar10_config()` and `cosine_schedule(4000)` by default.

Weights map by name: PyTorch conv kernels [O, I, kh, kw] become HWIO, linear weights [O, I] are
transposed, GroupNorm weights become `scale`. improved-diffusion's fused attention projection
`qkv` (a 1×1 conv to 3C channels laid out per head as [q, k, v]) is split into to_q/to_k/to_v.
A state dict that does not fit the config raises `CheckpointMismatchError` naming the first
missing, unexpected or misshapen keys. Needs PyTorch or safetensors only to read files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxpoison.diffusion.model import (CheckpointMismatchError, Denoiser, check_params,
                                       param_shapes)
from jaxpoison.diffusion.schedule import ScheduleConfig, cosine_schedule, linear_schedule
from jaxpoison.diffusion.unet import UNetConfig, improved_diffusion_cifar10_config

_DIFFUSERS_ATTENTION_RENAMES = {"query": "to_q", "key": "to_k", "value": "to_v",
                                "proj_attn": "to_out", "to_out.0": "to_out"}


def _numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):  # a torch tensor
    v = v.detach().cpu().float().numpy()
  return np.asarray(v, dtype=np.float32)


def _place(params: dict, expected: dict, base: str, value: np.ndarray, source_key: str,
           unexpected: list) -> None:
  """Stores a PyTorch weight/bias under its Flax name (kernel/scale/bias), transposed."""
  if base.endswith(".bias"):
    name = base
  else:
    stem = base[: -len(".weight")] if base.endswith(".weight") else base
    name = next((f"{stem}.{leaf}" for leaf in ("kernel", "scale") if f"{stem}.{leaf}" in expected),
                f"{stem}.kernel")
  if value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  elif value.ndim == 3 and name.endswith(".kernel"):  # 1×1 conv1d [O, I, 1] -> linear [I, O]
    value = value[..., 0].T
  elif value.ndim == 2:
    value = value.T
  if name not in expected:
    unexpected.append(source_key)
    return
  params[name] = value


def _finish(params: dict, unexpected: list, unet: UNetConfig, schedule: ScheduleConfig,
            source: str) -> Denoiser:
  if unexpected:
    raise CheckpointMismatchError(
        f"{source}: {len(unexpected)} unexpected keys for the UNet config (first: "
        f"{unexpected[:5]}); config: {unet}")
  check_params(unet, params, source=f"{source} (converted names)")
  return Denoiser(params={k: jnp.asarray(v) for k, v in params.items()}, unet=unet,
                  schedule=schedule)


# ----------------------------------------------------------------------------- diffusers


def unet_config_from_diffusers(config: dict) -> UNetConfig:
  """UNetConfig from a diffusers UNet2DModel config.json dict (the options jaxpoison supports)."""
  def get(name, default):
    v = config.get(name, default)
    return default if v is None else v

  checks = {"time_embedding_type": "positional", "act_fn": "silu", "center_input_sample": False,
            "class_embed_type": None, "num_class_embeds": None, "mid_block_scale_factor": 1,
            "downsample_type": "conv", "upsample_type": "conv",
            "mid_block_type": "UNetMidBlock2D"}
  for name, want in checks.items():
    if name in config and config[name] != want:
      raise ValueError(f"diffusers config: {name}={config[name]!r} is not supported "
                       f"(expected {want!r})")
  down = list(get("down_block_types", ()))
  up = list(get("up_block_types", ()))
  allowed_down, allowed_up = {"DownBlock2D", "AttnDownBlock2D"}, {"UpBlock2D", "AttnUpBlock2D"}
  if set(down) - allowed_down or set(up) - allowed_up:
    raise ValueError(f"diffusers config: block types {down} / {up} are not supported (only "
                     f"{sorted(allowed_down)} and {sorted(allowed_up)})")
  attn_down = [b == "AttnDownBlock2D" for b in down]
  attn_up = [b == "AttnUpBlock2D" for b in reversed(up)]
  if attn_down != attn_up:
    raise ValueError(f"diffusers config: attention in the up blocks {up} does not mirror the "
                     f"down blocks {down}, which jaxpoison's UNet assumes")
  size = config.get("sample_size") or 32
  if isinstance(size, (list, tuple)):
    if len(set(size)) != 1:
      raise ValueError(f"diffusers config: non-square sample_size {size} is not supported")
    size = size[0]
  groups = get("norm_num_groups", 32)
  if (config.get("resnet_time_scale_shift") == "scale_shift" and config.get("add_attention", True)
      and config.get("attn_norm_num_groups") is None):
    # diffusers then builds the middle block's attention without a GroupNorm.
    raise ValueError("diffusers config: resnet_time_scale_shift='scale_shift' without "
                     "attn_norm_num_groups (a mid-block attention with no GroupNorm) is not supported")
  if config.get("attn_norm_num_groups") not in (None, groups):
    raise ValueError("diffusers config: attn_norm_num_groups != norm_num_groups is not supported")
  return UNetConfig(
      sample_size=int(size), in_channels=int(get("in_channels", 3)),
      out_channels=int(get("out_channels", 3)),
      block_out_channels=tuple(get("block_out_channels", (224, 448, 672, 896))),
      layers_per_block=int(get("layers_per_block", 2)),
      attention_resolutions=tuple(int(size) // 2 ** i for i, a in enumerate(attn_down) if a),
      norm_num_groups=int(groups), norm_eps=float(get("norm_eps", 1e-5)),
      flip_sin_to_cos=bool(get("flip_sin_to_cos", True)), freq_shift=float(get("freq_shift", 0)),
      dropout=float(get("dropout", 0.0)), layout="diffusers",
      downsample_padding=int(get("downsample_padding", 1)),
      attention_head_dim=config.get("attention_head_dim", 8),
      mid_attention=bool(get("add_attention", True)),
      scale_shift_norm=get("resnet_time_scale_shift", "default") == "scale_shift")


def diffusers_config_from_unet(unet: UNetConfig) -> dict:
  """The `UNet2DModel(**kwargs)` arguments of a diffusers-layout UNetConfig (the inverse of
  `unet_config_from_diffusers`): PyTorch references and benchmarks build the same network."""
  if unet.layout != "diffusers" or unet.patch_size != 1:
    raise ValueError("diffusers_config_from_unet: needs a diffusers-layout UNet without "
                     f"space-to-depth, got layout {unet.layout!r}, patch_size {unet.patch_size}")
  attention = [unet.level_has_attention(i) for i in range(len(unet.block_out_channels))]
  kwargs = dict(
      sample_size=unet.sample_size, in_channels=unet.in_channels, out_channels=unet.out_channels,
      block_out_channels=unet.block_out_channels, layers_per_block=unet.layers_per_block,
      down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
      up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
      downsample_padding=unet.downsample_padding, flip_sin_to_cos=unet.flip_sin_to_cos,
      freq_shift=unet.freq_shift, norm_eps=unet.norm_eps, norm_num_groups=unet.norm_num_groups,
      attention_head_dim=unet.attention_head_dim, add_attention=unet.mid_attention)
  if unet.scale_shift_norm:
    # FiLM time conditioning; diffusers then needs the middle attention's GroupNorm named, or
    # it builds that attention without one.
    kwargs.update(resnet_time_scale_shift="scale_shift", attn_norm_num_groups=unet.norm_num_groups)
  return kwargs


def schedule_from_diffusers(config: dict) -> ScheduleConfig:
  """ScheduleConfig from a diffusers DDPMScheduler config (linear or squaredcos_cap_v2)."""
  kind = config.get("beta_schedule", "linear")
  steps = int(config.get("num_train_timesteps", 1000))
  if kind == "linear":
    return linear_schedule(steps, config.get("beta_start", 1e-4), config.get("beta_end", 0.02))
  if kind == "squaredcos_cap_v2":
    return cosine_schedule(steps)
  raise ValueError(f"scheduler config: beta_schedule {kind!r} is not supported")


def convert_diffusers_state_dict(state_dict: dict, unet: UNetConfig,
                                 schedule: ScheduleConfig | None = None, *,
                                 source: str = "state dict") -> Denoiser:
  """A diffusers UNet2DModel state dict (torch tensors or arrays) -> Denoiser."""
  expected = param_shapes(unet)
  params, unexpected = {}, []
  for key, value in state_dict.items():
    base = key
    for old, new in _DIFFUSERS_ATTENTION_RENAMES.items():
      base = re.sub(rf"(attentions\.\d+)\.{re.escape(old)}\.", rf"\1.{new}.", base)
    _place(params, expected, base, _numpy(value), key, unexpected)
  return _finish(params, unexpected, unet, schedule or linear_schedule(), source)


def _read_state_dict(path: Path) -> dict:
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file
    return load_file(str(path))
  import torch
  sd = torch.load(str(path), map_location="cpu", weights_only=True)
  if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
    sd = sd["state_dict"]
  if not isinstance(sd, dict):
    raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
  return sd


def load_diffusers(path: str | os.PathLike, *, schedule: ScheduleConfig | None = None) -> Denoiser:
  """A diffusers UNet2DModel folder (or a pipeline folder with unet/) -> Denoiser."""
  path = Path(path)
  folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
  if not (folder / "config.json").is_file():
    raise FileNotFoundError(f"{path}: no config.json (expected a diffusers UNet2DModel folder)")
  config = json.loads((folder / "config.json").read_text())
  if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
    raise ValueError(f"{folder}: _class_name {config['_class_name']!r}, expected UNet2DModel")
  unet = unet_config_from_diffusers(config)
  if schedule is None:
    sched_file = folder.parent / "scheduler" / "scheduler_config.json"
    schedule = (schedule_from_diffusers(json.loads(sched_file.read_text()))
                if sched_file.is_file() else linear_schedule())
  for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
    if (folder / name).is_file():
      weights = folder / name
      break
  else:
    raise FileNotFoundError(f"{folder}: no diffusion_pytorch_model.safetensors or .bin")
  return convert_diffusers_state_dict(_read_state_dict(weights), unet, schedule,
                                      source=str(weights))


# ----------------------------------------------------------------------------- improved-diffusion


def improved_diffusion_key_map(unet: UNetConfig) -> dict[str, str]:
  """{improved-diffusion module prefix: jaxpoison module prefix} for a UNetConfig."""
  m = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
       "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
       "middle_block.0": "mid_block.resnets.0", "middle_block.1": "mid_block.attentions.0",
       "middle_block.2": "mid_block.resnets.1"}
  resblock = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
              "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
  levels, nrb = len(unet.block_out_channels), unet.layers_per_block

  def add_res(src, dst):
    for a, b in resblock.items():
      m[f"{src}.{a}"] = f"{dst}.{b}"

  add_res("middle_block.0", "mid_block.resnets.0")
  add_res("middle_block.2", "mid_block.resnets.1")
  k = 0
  for level in range(levels):
    for i in range(nrb):
      k += 1
      add_res(f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{i}")
      m[f"input_blocks.{k}.1"] = f"down_blocks.{level}.attentions.{i}"
    if level < levels - 1:
      k += 1
      m[f"input_blocks.{k}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
  k = 0
  for j, level in enumerate(reversed(range(levels))):
    attn = unet.level_has_attention(level)
    for i in range(nrb + 1):
      add_res(f"output_blocks.{k}.0", f"up_blocks.{j}.resnets.{i}")
      if attn:
        m[f"output_blocks.{k}.1"] = f"up_blocks.{j}.attentions.{i}"
      if level > 0 and i == nrb:
        m[f"output_blocks.{k}.{2 if attn else 1}.conv"] = f"up_blocks.{j}.upsamplers.0.conv"
      k += 1
  return m


def convert_improved_diffusion_state_dict(state_dict: dict, unet: UNetConfig | None = None,
                                          schedule: ScheduleConfig | None = None, *,
                                          source: str = "state dict") -> Denoiser:
  """An improved-diffusion UNetModel state dict -> Denoiser (CIFAR-10 defaults)."""
  unet = unet or improved_diffusion_cifar10_config()
  schedule = schedule or cosine_schedule(4000)
  expected = param_shapes(unet)
  mapping = improved_diffusion_key_map(unet)
  params, unexpected = {}, []
  for key, value in state_dict.items():
    value = _numpy(value)
    prefix, _, leaf = key.rpartition(".")
    module, _, part = prefix.rpartition(".")
    if module in mapping and ".attentions." in mapping[module]:
      dst = mapping[module]
      if part == "norm":
        _place(params, expected, f"{dst}.group_norm.{leaf}", value, key, unexpected)
      elif part == "qkv":
        c = value.shape[0] // 3
        heads = unet.heads(c)
        w = value.reshape(heads, 3, c // heads, *value.shape[1:])
        for idx, name in enumerate(("to_q", "to_k", "to_v")):
          _place(params, expected, f"{dst}.{name}.{leaf}", w[:, idx].reshape(c, *value.shape[1:]),
                 key, unexpected)
      elif part == "proj_out":
        _place(params, expected, f"{dst}.to_out.{leaf}", value, key, unexpected)
      else:
        unexpected.append(key)
      continue
    if prefix not in mapping:
      unexpected.append(key)
      continue
    dst = mapping[prefix]
    _place(params, expected, f"{dst}.{leaf}", value, key, unexpected)
  return _finish(params, unexpected, unet, schedule, source)



def load_improved_diffusion(path: str | os.PathLike, unet: UNetConfig | None = None,
                            schedule: ScheduleConfig | None = None) -> Denoiser:
  """An improved-diffusion `.pt` state dict file -> Denoiser."""
  return convert_improved_diffusion_state_dict(_read_state_dict(Path(path)), unet, schedule,
                                               source=str(path))


def convert_checkpoint(src: str | os.PathLike, *, kind: str = "auto",
                       unet: UNetConfig | None = None,
                       schedule: ScheduleConfig | None = None) -> Denoiser:
  """Any supported source -> Denoiser. kind: "auto", "diffusers" or "improved_diffusion".

  auto: a directory is a diffusers folder; a file is a state dict whose key names tell the
  layout (improved-diffusion's start with input_blocks/time_embed). A bare diffusers state
  dict file needs `unet` (else the google/ddpm-cifar10-32 config is assumed).
  """
  src = Path(src)
  if src.is_dir():
    if kind not in ("auto", "diffusers"):
      raise ValueError(f"{src}: a directory is read as a diffusers folder, not {kind!r}")
    return load_diffusers(src, schedule=schedule)
  sd = _read_state_dict(src)
  if kind == "auto":
    kind = "improved_diffusion" if any(k.startswith(("input_blocks.", "time_embed."))
                                       for k in sd) else "diffusers"
  if kind == "improved_diffusion":
    return convert_improved_diffusion_state_dict(sd, unet, schedule, source=str(src))
  if kind == "diffusers":
    from jaxpoison.diffusion.unet import ddpm_cifar10_config
    return convert_diffusers_state_dict(sd, unet or ddpm_cifar10_config(), schedule,
                                        source=str(src))
  raise ValueError(f"kind: expected 'auto', 'diffusers' or 'improved_diffusion', got {kind!r}")
