"""DP-SGD as a defense against poisoning (Ma et al. 2019; Hong et al. 2020), Hong et al. Table 5.

The trainer does the work (`TrainConfig.dp_clip_norm` > 0: per-example gradients clipped to
that norm, summed, Gaussian noise of std dp_noise_multiplier · dp_clip_norm added; see
`classifier.privatize_gradients`); this module names the recipe and accounts for it.

Hong et al. train "(1.0, 0.05)-DP, following Lecuyer et al. 2019" with Opacus, "all other
configurations the same". Two readings (`../shared/specs/round2.md` §4.2): (ε = 1.0,
δ = 0.05), or clip C = 1.0 with noise multiplier 0.05; δ = 0.05 ≫ 1/n suggests the second.
Both are expressible: `dp_sgd_config(config, clip_norm=1.0, noise_multiplier=0.05)` for the
second, `noise_multiplier_for_epsilon(1.0, 0.05, config, n)` for the z of the first.

Batch norm mixes examples, so per-example gradients need another normalization: the recipe
switches the network to group norm (`TrainConfig.norm = "group"`), as Opacus's
`ModuleValidator.fix` does; or (`norm="frozen_batch"`) keeps batch norm on its running
statistics, for victims that continue from a batch-norm network (the statistics are the start's
and are not updated, so they hold no information about the tampered set; the usual way to
fine-tune a batch-norm network privately).

Accounting (`privacy_spent`) uses Google's `dp-accounting` (RDP or PLD accountant) for the
Poisson-subsampled Gaussian mechanism with sampling rate q = batch / N, composed over the
run's steps. The trainer draws batches by shuffling each epoch (fixed batch size), as most
DP-SGD implementations do; accounting it as Poisson subsampling is the common approximation
(Opacus and TF Privacy report the same), not a proof for shuffled batches.
"""

from __future__ import annotations

from jaxpoison._checks import check_positive
from jaxpoison.classifier.config import TrainConfig
from jaxpoison.classifier.train import steps_per_epoch, total_steps

__all__ = ["ACCOUNTANTS", "DP_NORMS", "dp_sgd_config", "noise_multiplier_for_epsilon",
           "privacy_spent"]

ACCOUNTANTS = ("rdp", "pld")
DP_NORMS = ("group", "frozen_batch")


def dp_sgd_config(config: TrainConfig, clip_norm: float = 1.0,
                  noise_multiplier: float = 0.05, norm: str = "group") -> TrainConfig:
  """`config` with DP-SGD: per-example clipping to `clip_norm`, noise multiplier z, and `norm`
  (group norm, or batch norm frozen at its running statistics) in place of batch norm (unless
  only the head trains)."""
  if not isinstance(config, TrainConfig):
    raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
  check_positive("clip_norm", clip_norm)
  check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
  if norm not in DP_NORMS:
    raise ValueError(f"norm: expected one of {DP_NORMS}, got {norm!r}")
  norm = config.norm if config.trainable == "head" else norm
  return config.replace(norm=norm, dp_clip_norm=float(clip_norm),
                        dp_noise_multiplier=float(noise_multiplier))


def _dp_accounting():
  try:
    import dp_accounting
  except ImportError as e:  # an optional dependency (the "privacy" and "dev" extras)
    raise ImportError("privacy accounting needs Google's dp-accounting package: "
                      "pip install dp-accounting (or jaxpoison[privacy])") from e
  return dp_accounting


def _event(noise_multiplier: float, sampling_rate: float, steps: int):
  dp = _dp_accounting()
  return dp.SelfComposedDpEvent(
      dp.PoissonSampledDpEvent(sampling_rate, dp.GaussianDpEvent(noise_multiplier)), steps)


def _accountant(name: str):
  dp = _dp_accounting()
  if name == "rdp":
    return dp.rdp.RdpAccountant()
  if name == "pld":
    return dp.pld.PLDAccountant()
  raise ValueError(f"accountant: expected one of {ACCOUNTANTS}, got {name!r}")


def _run_shape(config: TrainConfig, num_train: int) -> tuple[float, int]:
  check_positive("num_train", num_train, integer=True)
  if steps_per_epoch(config, num_train) < 1:
    raise ValueError(f"num_train: {num_train} images are fewer than one batch of "
                     f"{config.batch_size}")
  return config.batch_size / num_train, total_steps(config, num_train)


def privacy_spent(config: TrainConfig, num_train: int, delta: float, *,
                  accountant: str = "rdp") -> float:
  """ε at δ of one model trained with `config` on `num_train` images (inf without noise).

  The config's steps (`total_steps`) of the Gaussian mechanism with noise multiplier
  config.dp_noise_multiplier, each on a Poisson sample at rate batch_size / num_train.
  """
  if config.dp_clip_norm <= 0:
    raise ValueError("config: not a DP-SGD config (dp_clip_norm is 0); see dp_sgd_config")
  if not 0 < delta < 1:
    raise ValueError(f"delta: expected a value in (0, 1), got {delta}")
  if config.dp_noise_multiplier == 0:
    return float("inf")
  rate, steps = _run_shape(config, num_train)
  acc = _accountant(accountant)
  acc.compose(_event(config.dp_noise_multiplier, rate, steps))
  return float(acc.get_epsilon(delta))


def noise_multiplier_for_epsilon(epsilon: float, delta: float, config: TrainConfig,
                                 num_train: int, *, accountant: str = "rdp") -> float:
  """The smallest noise multiplier z (to dp-accounting's search tolerance) with which
  `config`'s run on `num_train` images is (epsilon, delta)-DP."""
  check_positive("epsilon", epsilon)
  if not 0 < delta < 1:
    raise ValueError(f"delta: expected a value in (0, 1), got {delta}")
  rate, steps = _run_shape(config, num_train)
  dp = _dp_accounting()
  return float(dp.calibrate_dp_mechanism(
      lambda: _accountant(accountant), lambda z: _event(z, rate, steps), epsilon, delta,
      dp.LowerEndpointAndGuess(1e-3, 1.0)))
