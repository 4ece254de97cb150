"""FrieNDs (Liu et al. 2022): friendly noise plus random noise during training, Hong et al.
Table 5.

The trainer does the work (`TrainConfig.friendly_epoch` >= 0: after that many epochs every
model computes friendly noise for each training image with its current weights and trains on
the perturbed images from then on; `TrainConfig.noise`: fresh random noise on every batch);
this module names the recipe and exposes the noise itself:

    config = friends_config(classifier.conservative_config())
    models = classifier.train_models(keys, images, labels, config)

Hong et al. leave the settings unspecified; the defaults are the authors' (tianyu139/friendly-noise,
`main.py` and its README's command): friendly noise at epoch 5 (`--friendly_begin_epoch 5`;
`main.py`'s own default is 0, on a randomly initialized network, where the KL term is nearly
flat and the noise stays near its uniform start) with 30 steps of SGD at lr 100, μ = 1,
|δ| ≤ 16/255, then Bernoulli noise ±8/255 (`--noise_type friendly bernoulli`) added to each
batch before its bilinear RandomTransform (shift and flip; the interpolation leaves about 2/3
of the Bernoulli noise's std: each output pixel averages up to four noise values with weights
of a uniform real shift, E[(1 − a)² + a²] = 2/3 per axis). Its training recipe is 40 epochs of SGD (lr 0.1, Nesterov momentum 0.9,
weight decay 5e-4 except on batch-norm and bias parameters, batch 128, ×0.1 at epochs 40 //
2.667, 40 // 1.6 and 40 // 1.142 = 14, 25, 35); `classifier.conservative_config` is that up to
the decay on norms and biases and the second milestone (24).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpoison._checks import check_images
from jaxpoison.classifier.api import _as_unit, predict, select
from jaxpoison.classifier.config import TrainConfig
from jaxpoison.classifier.friendly import chunked_friendly_noise, friendly_perturbation
from jaxpoison.classifier.train import TrainedModels

__all__ = ["Friendliness", "friendliness", "friendly_noise", "friendly_perturbation",
           "friends_config"]


def friends_config(config: TrainConfig, *, begin_epoch: int = 5, noise: str = "bernoulli",
                   noise_scale: float = 8 / 255, steps: int = 30, lr: float = 100.0,
                   mu: float = 1.0, clamp: float = 16 / 255, noise_before_augment: bool = True,
                   shift: str = "bilinear") -> TrainConfig:
  """`config` with FrieNDs as its authors run it: friendly noise after `begin_epoch` epochs
  (their README's 5), and `noise` of `noise_scale` on every batch, added before the
  augmentation (`noise_before_augment`), which is the references' bilinear RandomTransform
  (`shift` "bilinear": a real shift of up to config.translate pixels, so the interpolation
  averages neighbouring noise values, about 2/3 of the noise's std remaining)."""
  if not isinstance(config, TrainConfig):
    raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
  return config.replace(friendly_epoch=int(begin_epoch), noise=noise,
                        noise_scale=float(noise_scale), friendly_steps=int(steps),
                        friendly_lr=float(lr), friendly_mu=float(mu),
                        friendly_clamp=float(clamp), noise_before_augment=noise_before_augment,
                        shift=shift)


def friendly_noise(models: TrainedModels, images, key, *, steps: int = 30, lr: float = 100.0,
                   mu: float = 1.0, clamp: float = 16 / 255, init: float = 8 / 255,
                   batch_size: int = 512) -> jax.Array:
  """Each model's friendly noise for `images`, float32 [M, P, H, W, C], |δ| ≤ clamp.

  Model m (inference mode, no test-time augmentation) optimizes its own noise from
  fold_in(fold_in(key, m), batch index); see `classifier.friendly`.
  """
  if not isinstance(models, TrainedModels):
    raise TypeError(f"models: expected TrainedModels, got {type(models).__name__}")
  check_images(images, name="images", image_shape=models.config.image_shape)
  return _friendly_noise(models, _as_unit(images), key, steps=steps, lr=lr, mu=mu,
                         clamp=clamp, init=init, batch=max(1, batch_size))


def _friendly_noise(models, images, key, *, steps, lr, mu, clamp, init, batch):
  @jax.jit
  def run(state, key, images):
    keys = jax.vmap(lambda m: jax.random.fold_in(key, m))(jnp.arange(models.num_models))

    def one_model(state, model_key):
      model = nnx.merge(models.graphdef, state, copy=True)
      return chunked_friendly_noise(lambda z: model(z, train=False), images, model_key,
                                    chunk=batch, steps=steps, lr=lr, mu=mu, clamp=clamp,
                                    init=init)
    return jax.vmap(one_model)(state, keys)

  return run(models.state, key, images)


class Friendliness(NamedTuple):
  """How friendly each model's friendly noise is on a set of images (each field [M]).

  mean_abs: mean |δ| in grey levels (0–255 units); at_bound: fraction of pixels with |δ| at the
  clamp (within half a grey level); kept: fraction of images whose prediction the noise leaves
  unchanged (the model on clip(x + δ) against the model on x).
  """
  mean_abs: np.ndarray
  at_bound: np.ndarray
  kept: np.ndarray


def friendliness(models: TrainedModels, images, key, *, steps: int = 30, lr: float = 100.0,
                 mu: float = 1.0, clamp: float = 16 / 255, init: float = 8 / 255,
                 batch_size: int = 512) -> Friendliness:
  """Measures `friendly_noise` (same arguments) on `images`: whether its step size suits the
  network. An optimization that overshoots leaves |δ| at the clamp (whose gradient is zero
  outside it) and changes predictions, and is then not the friendly noise FrieNDs means; the
  reference's lr = 100 is tuned to its ResNet-18 (BENCHMARKS.md, issue 16)."""
  noise = np.asarray(friendly_noise(models, images, key, steps=steps, lr=lr, mu=mu, clamp=clamp,
                                    init=init, batch_size=batch_size))
  x = np.asarray(_as_unit(images))
  clean = np.asarray(predict(models, x))
  kept = [float((np.asarray(predict(select(models, m), np.clip(x + noise[m], 0.0, 1.0)))[0]
                 == clean[m]).mean()) for m in range(models.num_models)]
  magnitude = np.abs(noise).reshape(models.num_models, -1)
  return Friendliness(mean_abs=magnitude.mean(1) * 255.0,
                      at_bound=(magnitude >= clamp - 0.5 / 255).mean(1), kept=np.asarray(kept))
