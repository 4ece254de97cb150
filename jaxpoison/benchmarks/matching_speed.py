"""The cost of one Witches' Brew step (issue 15): jaxpoison's jitted sign-Adam step against a
PyTorch implementation of the same step on the same network, weights and poisons, same device.

The network is small (conv 3×3 → batch norm → ReLU, twice, the second with stride 2, global mean,
linear), in inference mode as the attack runs it. One step: the differentiable shift-and-flip
augmentation of the poisons, the poisons' parameter gradient with its graph kept
(`create_graph=True` in PyTorch, a nested `jax.grad` here), the matching loss against the
target's gradient, its gradient with respect to the perturbations, sign, Adam, and the ℓ∞
projection with the [0, 1] box. PyTorch follows the reference (forest/witchcoven/witch_base.py
`_batched_step` and `_run_trial`, witch_matching.py `_passenger_loss`) in its normalized space.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpoison.attacks.configs import FOREST_CIFAR10_MEAN, FOREST_CIFAR10_STD, WitchesBrewConfig

# The module (the package exports the function `witches_brew` under the same name).
wb = importlib.import_module("jaxpoison.attacks.witches_brew")

MEAN = np.asarray(FOREST_CIFAR10_MEAN, np.float32)
STD = np.asarray(FOREST_CIFAR10_STD, np.float32)
BN_EPS = 1e-5


def init_network(seed: int = 0, width: int = 16, classes: int = 10) -> dict[str, np.ndarray]:
  """Random weights (numpy, HWIO kernels) and batch-norm statistics of the benchmark network."""
  rng = np.random.default_rng(seed)
  normal = lambda shape, fan_in: rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
  return {
      "conv1": normal((3, 3, 3, width), 27), "conv2": normal((3, 3, width, 2 * width), 9 * width),
      "bn1_scale": rng.uniform(0.5, 1.5, width).astype(np.float32),
      "bn1_bias": rng.normal(0, 0.1, width).astype(np.float32),
      "bn1_mean": rng.normal(0, 0.1, width).astype(np.float32),
      "bn1_var": rng.uniform(0.5, 1.5, width).astype(np.float32),
      "bn2_scale": rng.uniform(0.5, 1.5, 2 * width).astype(np.float32),
      "bn2_bias": rng.normal(0, 0.1, 2 * width).astype(np.float32),
      "bn2_mean": rng.normal(0, 0.1, 2 * width).astype(np.float32),
      "bn2_var": rng.uniform(0.5, 1.5, 2 * width).astype(np.float32),
      "dense": normal((2 * width, classes), 2 * width),
      "dense_bias": np.zeros(classes, np.float32),
  }


TRAINABLE = ("conv1", "conv2", "bn1_scale", "bn1_bias", "bn2_scale", "bn2_bias", "dense",
             "dense_bias")


def jax_apply(params, state, x):
  """The network on float images in [0, 1], NHWC (batch norm on running statistics)."""
  def conv(h, kernel, stride):
    return jax.lax.conv_general_dilated(h, kernel, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def norm(h, i):
    inv = params[f"bn{i}_scale"] / jnp.sqrt(state[f"bn{i}_var"] + BN_EPS)
    return (h - state[f"bn{i}_mean"]) * inv + params[f"bn{i}_bias"]

  h = (x - MEAN) / STD
  h = jax.nn.relu(norm(conv(h, params["conv1"], 1), 1))
  h = jax.nn.relu(norm(conv(h, params["conv2"], 2), 2))
  return h.mean(axis=(1, 2)) @ params["dense"] + params["dense_bias"]


def jax_step_fn(weights, target, target_label, bases, labels, config: WitchesBrewConfig):
  """(state, jitted step) of jaxpoison's loop for one step at a time."""
  params = {k: jnp.asarray(weights[k]) for k in TRAINABLE}
  state = {k: jnp.asarray(v) for k, v in weights.items() if k not in TRAINABLE}
  surrogate = wb.GradientModel(jax_apply, params, state)
  grads = wb.target_gradients([surrogate], jnp.asarray(target[None], jnp.float32) / 255,
                              jnp.asarray([target_label]), batch_size=1)
  base_float = jnp.asarray(bases, jnp.float32) / 255
  start = wb.initial_state(jax.random.key(0), base_float, config)
  labels = jnp.asarray(labels, jnp.int32)

  @jax.jit
  def step(carry):  # one step, no loop around it (see witches_brew.resolve_loop)
    return wb._one_step(carry, jax.random.key(1), [surrogate], grads, base_float, labels, config)

  return start, step


def torch_step_fn(torch, device, weights, target, target_label, bases, labels,
                  config: WitchesBrewConfig, seed: int = 0):
  """(run one step) of the reference loop in PyTorch on `device`."""
  t = lambda a: torch.tensor(np.asarray(a), device=device)
  conv1 = t(weights["conv1"].transpose(3, 2, 0, 1)).requires_grad_()
  conv2 = t(weights["conv2"].transpose(3, 2, 0, 1)).requires_grad_()
  trainable = [conv1, conv2] + [t(weights[k]).requires_grad_() for k in TRAINABLE[2:]]
  bn = {k: t(weights[k]) for k in ("bn1_mean", "bn1_var", "bn2_mean", "bn2_var")}
  _, _, s1, b1, s2, b2, dense, dense_bias = trainable
  F = torch.nn.functional

  def forward(x):
    h = F.relu(F.batch_norm(F.conv2d(x, conv1, padding=1), bn["bn1_mean"], bn["bn1_var"], s1, b1,
                            False, 0.0, BN_EPS))
    h = F.relu(F.batch_norm(F.conv2d(h, conv2, stride=2, padding=1), bn["bn2_mean"],
                            bn["bn2_var"], s2, b2, False, 0.0, BN_EPS))
    return h.mean(dim=(2, 3)) @ dense + dense_bias

  mean = t(MEAN).view(1, 3, 1, 1)
  std = t(STD).view(1, 3, 1, 1)
  to_normalized = lambda u: (t(np.asarray(u, np.float32) / 255).permute(0, 3, 1, 2) - mean) / std
  loss = F.cross_entropy(forward(to_normalized(target[None])), t([target_label]))
  target_grad = torch.autograd.grad(loss, trainable)
  target_norm = torch.sqrt(sum((g * g).sum() for g in target_grad))
  bases_n = to_normalized(bases)
  labels_t = t(np.asarray(labels, np.int64))
  generator = torch.Generator(device=device).manual_seed(seed)
  delta = (torch.randn(bases_n.shape, generator=generator, device=device) * config.epsilon
           / std).clamp(-config.epsilon / std, config.epsilon / std).requires_grad_()
  optimizer = torch.optim.Adam([delta], lr=config.step_size, weight_decay=0)
  size = bases_n.shape[-1]
  # ±max_shift pixels in grid units under align_corners (linspace(0, 1, 32)[8] for 4 of 32).
  shift = config.max_shift * 2 / (size - 1)
  line = torch.linspace(-1, 1, size, device=device)
  identity = torch.stack(torch.meshgrid(line, line, indexing="xy"), dim=-1)[None]

  def augment(x):
    # forest/data/diff_data_augmentation.py RandomTransform: shifted, randomly mirrored grid.
    r = torch.rand(x.shape[0], 4, generator=generator, device=device)
    grid = identity.repeat(x.shape[0], 1, 1, 1).clone()
    grid[..., 0] = grid[..., 0] + ((r[:, 0] - 0.5) * 2 * shift)[:, None, None]
    grid[..., 1] = grid[..., 1] + ((r[:, 1] - 0.5) * 2 * shift)[:, None, None]
    flip = (r[:, 2] > 0.5)[:, None, None]
    grid[..., 0] = torch.where(flip, -grid[..., 0], grid[..., 0])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

  def step():
    optimizer.zero_grad()
    inputs = augment(bases_n + delta)
    poison_grad = torch.autograd.grad(F.cross_entropy(forward(inputs), labels_t), trainable,
                                      create_graph=True)
    passenger = -sum((a * b).sum() for a, b in zip(target_grad, poison_grad)) / target_norm
    passenger = 1 + passenger / torch.sqrt(sum((p * p).sum() for p in poison_grad))
    passenger.backward()
    delta.grad.sign_()
    optimizer.step()
    with torch.no_grad():
      delta.data = torch.max(torch.min(delta, config.epsilon / std), -config.epsilon / std)
      delta.data = torch.max(torch.min(delta, (1 - mean) / std - bases_n), -mean / std - bases_n)
    if device == "cuda":
      torch.cuda.synchronize()
    return float(passenger.detach())

  return step


def _median_seconds(call, warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    call()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure(num_poisons: int = 64, width: int = 16, image_size: int = 32, *, warmup: int = 3,
            repeats: int = 10, torch_device: str | None = "cpu", threads: int | None = None,
            seed: int = 0) -> dict[str, Any]:
  """Median seconds per step of both implementations and their ratio (PyTorch / jaxpoison)."""
  rng = np.random.default_rng(seed)
  weights = init_network(seed, width)
  target = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
  bases = rng.integers(0, 256, (num_poisons, image_size, image_size, 3), dtype=np.uint8)
  labels = np.zeros(num_poisons, np.int64)
  config = WitchesBrewConfig(num_steps=250, restarts=1, poison_batch_size=512)
  state, step = jax_step_fn(weights, target, 1, bases, labels, config)
  carry = [state]

  def jax_call():
    carry[0], loss = step(carry[0])
    loss.block_until_ready()

  result = {"num_poisons": num_poisons, "width": width, "image_size": image_size,
            "jax_backend": jax.default_backend(),
            "jax_seconds_per_step": _median_seconds(jax_call, warmup, repeats)}
  if torch_device is not None:
    import torch
    from jaxpoison.benchmarks.peers import describe_torch_device
    if threads is not None:
      torch.set_num_threads(threads)
    torch_step = torch_step_fn(torch, torch_device, weights, target, 1, bases, labels, config)
    result["torch_device"] = describe_torch_device(torch_device)
    result["torch_seconds_per_step"] = _median_seconds(torch_step, warmup, repeats)
    result["ratio_torch_over_jax"] = (result["torch_seconds_per_step"]
                                      / result["jax_seconds_per_step"])
  return result
