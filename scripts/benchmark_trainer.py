"""Seconds per model of the vmapped trainer against M separate runs and a PyTorch loop.

For each M, trains M models in one program (`train_models`, vmapped over models) and compares
with M one-model runs of the same compiled one-model program; compilation is excluded (timed
separately). The reference is the same network and optimizer written as an eager PyTorch
training loop (airbench94's components: whitening conv, conv groups with batch norm and GELU,
Nesterov SGD with airbench's decoupled hyperparameters), run for the same steps on the same
batch size, one model at a time, on the device JAX uses (--torch_device auto: CUDA when JAX runs
on a GPU, else the CPU with --torch_threads), under bfloat16 autocast where the JAX trainer
computes in bfloat16 (compute_dtype "auto" on an accelerator). When JAX runs on a GPU and
PyTorch has no CUDA, the reference is skipped and its ratios are reported as not measured.

    PYTHONPATH=$PWD python scripts/benchmark_trainer.py --data /tmp/cifar10.npz \
        --num_train 2048 --widths 16,32,32 --batch_size 256 --epochs 1 --models 1,2,4

On a GPU, run at airbench94 settings (--widths 64,256,256 --batch_size 1024 --epochs 9.9
--num_train 50000 --models 1,4,16,64) for the seconds per model and accuracies that matter.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxpoison as jp
from jaxpoison import classifier, cli
from jaxpoison.benchmarks.peers import describe_torch_device, torch_device


def timed(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def torch_reference(x, y, config, steps, repeats, threads, device, bf16):
  """Eager PyTorch training loop of the same airbench-shaped net on `device`: (seconds of the
  warm-up run, median seconds per model of `repeats` more)."""
  import torch
  from torch import nn
  torch.set_num_threads(threads)
  w1, w2, w3 = config.widths

  def group(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
        nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4), nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4), nn.GELU())

  def make():
    return nn.Sequential(nn.Conv2d(3, 24, 2, bias=True), nn.GELU(), group(24, w1),
                         group(w1, w2), group(w2, w3), nn.MaxPool2d(3), nn.Flatten(),
                         nn.Linear(w3, 10, bias=False))

  # The data lives on `device` from the start, as the JAX trainer's does.
  images = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div(255)
  labels = torch.from_numpy(y.astype(np.int64)).to(device)
  # CUDA runs queued kernels after the Python call returns: wait before reading the clock.
  sync = torch.cuda.synchronize if device == "cuda" else lambda: None
  kilostep = 1024 * (1 + 1 / (1 - config.momentum))
  lr = config.lr / kilostep
  wd = config.weight_decay * config.batch_size / kilostep
  loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing, reduction="sum")

  def run():
    net = make().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=config.momentum, nesterov=True,
                          weight_decay=wd / lr)
    perm = torch.randperm(len(images), device=device)
    for step in range(steps):
      idx = perm[(step * config.batch_size) % (len(images) - config.batch_size + 1):][
          :config.batch_size]
      batch = images[idx]
      batch = torch.where(torch.rand(len(idx), 1, 1, 1, device=device) < 0.5, batch.flip(-1),
                          batch)
      # Convolutions and matmuls in bfloat16 where JAX's are; autocast keeps the loss in float32.
      with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        logits = net(batch)
      loss = loss_fn(logits.float(), labels[idx])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    return net

  sync()
  start = time.perf_counter()
  run()
  sync()
  warmup = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    sync()
    times.append(time.perf_counter() - start)
  return warmup, float(np.median(times))


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="official")
  parser.add_argument("--num_train", type=int, default=2048)
  parser.add_argument("--widths", type=cli.comma_separated(int), default="16,32,32")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--epochs", type=float, default=1.0)
  parser.add_argument("--models", type=cli.comma_separated(int), default="1,2,4")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument("--torch_device", default="auto", choices=("auto", "cpu", "cuda"),
                      help="where the PyTorch reference runs (auto: the device JAX uses)")
  parser.add_argument("--no_torch", action="store_true")
  args = parser.parse_args(argv)
  with cli.user_errors(ValueError, TypeError):  # Bad flag values, before loading anything.
    config = classifier.airbench94_config(
        widths=args.widths, batch_size=args.batch_size, epochs=args.epochs,
        whitening_images=min(5000, args.num_train))
  bf16 = classifier.resolve_compute_dtype(config) == jnp.bfloat16
  with cli.user_errors(ValueError):
    device, why = (None, "--no_torch") if args.no_torch else torch_device(args.torch_device)
  torch_desc = (describe_torch_device(device, args.torch_threads) +
                (", bfloat16 autocast" if bf16 else "") if device else f"not run ({why})")

  data = jp.load_cifar10(args.data)
  # Random subsets: some copies of CIFAR-10 store the images sorted by class.
  rng = np.random.default_rng(0)
  subset = rng.permutation(len(data.x_train))[:args.num_train]
  x, y = data.x_train[subset], data.y_train[subset]
  test = rng.permutation(len(data.x_test))[:2000]
  x_test, y_test = data.x_test[test], data.y_test[test]
  steps = classifier.total_steps(config, args.num_train)
  print(f"device: {jax.devices()[0].device_kind}; {config.widths=}, batch {args.batch_size}, "
        f"{steps} steps, {args.num_train} images; {'bfloat16' if bf16 else 'float32'}; "
        f"PyTorch reference: {torch_desc}")
  key = jax.random.key(0)
  one_model = None
  rows = []
  for m in args.models:
    keys = jax.random.split(key, m)
    start = time.perf_counter()
    models = jax.block_until_ready(classifier.train_models(keys, x, y, config))
    first = time.perf_counter() - start
    vmapped = timed(lambda: classifier.train_models(keys, x, y, config), args.repeats)
    if one_model is None:
      one_model = vmapped if m == 1 else timed(
          lambda: classifier.train_models(keys[:1], x, y, config), args.repeats)
    accuracy = np.asarray(classifier.evaluate(models, x_test, y_test))
    rows.append((m, first, vmapped / m, one_model, one_model / (vmapped / m), accuracy.mean()))
    print(f"M={m}: first call {first:.1f} s (with compilation); vmapped {vmapped / m:.3f} s per "
          f"model; separate {one_model:.3f} s per model; separate/vmapped "
          f"{one_model / (vmapped / m):.2f}; test acc (2000 imgs) {accuracy.mean():.3f}",
          flush=True)
  reference = None
  if device is not None:
    warmup, ref = torch_reference(x, y, config, steps, args.repeats, args.torch_threads, device,
                                  bf16)
    reference = (f"{warmup:.1f}", f"{ref:.3f}", f"{ref / one_model:.2f}",
                 f"{ref / min(r[2] for r in rows):.2f}")
    print(f"PyTorch eager reference on {torch_desc}, one model at a time: {ref:.3f} s per model "
          f"(warm-up {warmup:.1f} s); PyTorch / jaxpoison (M=1): {reference[2]}; "
          f"PyTorch / jaxpoison best vmapped: {reference[3]}")
  elif not args.no_torch:
    print(f"PyTorch eager reference: not measured ({why}); PyTorch / jaxpoison: not measured")
  print("| M | first call (s) | vmapped s/model | separate s/model | separate / vmapped |"
        " test acc |")
  print("|---:|---:|---:|---:|---:|---:|")
  for m, first, per, sep, ratio, acc in rows:
    print(f"| {m} | {first:.1f} | {per:.3f} | {sep:.3f} | {ratio:.2f} | {acc:.3f} |")
  if not args.no_torch:
    print()
    print("| PyTorch device | warm-up (s) | PyTorch s/model | PyTorch / jaxpoison (M=1) |"
          " PyTorch / jaxpoison best vmapped |")
    print("|---|---:|---:|---:|---:|")
    print(f"| {torch_desc if device else 'not run'} | " +
          " | ".join(reference or ("not measured",) * 4) + " |")


if __name__ == "__main__":
  cli.run(main)
