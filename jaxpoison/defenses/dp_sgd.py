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

Sampling and accounting. `dp_sgd_config` samples batches as Opacus does by default and as the
accountant assumes: Poisson sampling (`TrainConfig.dp_sampling = "poisson"`; every step each
example enters with probability q = batch / N, in a padded batch of fixed capacity, the noisy
sum divided by the expected batch size). `privacy_spent` then composes dp-accounting's
Poisson-subsampled Gaussian mechanism over the run's steps, and adds to δ the probability that
a sample ever overflowed the batch's capacity and was truncated (the truncated run differs from
the Poisson one only on that event; ≤ 1e-9 at the automatic capacity). With shuffled
fixed-size batches (`dp_sampling = "shuffle"`, the trainer's other mode) no amplification by
sampling is proved: each example is in exactly one batch per epoch, so the run is accounted as
the Gaussian mechanism composed once per epoch touched (for fixed-size batches "add/remove" is
read as the example's gradient replaced by zero, dp-accounting's REPLACE_SPECIAL, which for the
Gaussian mechanism is the same privacy loss; replace-one doubles the sensitivity); an ε for that mode from a Poisson
accountant would overclaim (z = 0.722 over 2 epochs at q = 0.02: ε = 1.0 at δ = 0.05
for Poisson batches, 4.4 for shuffled ones).

Neighbouring datasets. The default relation is add/remove one example (Opacus's and dp-accounting's
default). A clean-label poison *replaces* a training image (the attacker perturbs images that
are already in the set), i.e. a change of one example's gradient by up to 2C: `relation =
"replace_one"` accounts that (PLD accountant, dp-accounting's REPLACE_ONE). Records carry both.
"""

from __future__ import annotations

from jaxpoison._checks import check_positive
from jaxpoison.classifier.config import DP_SAMPLINGS, TrainConfig
from jaxpoison.classifier.train import (num_epochs_touched, poisson_capacity, poisson_overflow,
                                        poisson_rate, steps_per_epoch, total_steps)

__all__ = ["ACCOUNTANTS", "DP_NORMS", "RELATIONS", "dp_sgd_config",
           "noise_multiplier_for_epsilon", "privacy_record", "privacy_spent"]

ACCOUNTANTS = ("rdp", "pld")
DP_NORMS = ("group", "frozen_batch")
RELATIONS = ("add_or_remove", "replace_one")


def dp_sgd_config(config: TrainConfig, clip_norm: float = 1.0,
                  noise_multiplier: float = 0.05, norm: str = "group",
                  sampling: str = "poisson") -> TrainConfig:
  """`config` with DP-SGD: per-example clipping to `clip_norm`, noise multiplier z, `norm`
  (group norm, or batch norm frozen at its running statistics) in place of batch norm (unless
  only the head trains), and batches drawn by `sampling` ("poisson", what the accountant
  assumes; or "shuffle", accounted without amplification)."""
  if not isinstance(config, TrainConfig):
    raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
  check_positive("clip_norm", clip_norm)
  check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
  if norm not in DP_NORMS:
    raise ValueError(f"norm: expected one of {DP_NORMS}, got {norm!r}")
  if sampling not in DP_SAMPLINGS:
    raise ValueError(f"sampling: expected one of {DP_SAMPLINGS}, got {sampling!r}")
  norm = config.norm if config.trainable == "head" else norm
  return config.replace(norm=norm, dp_clip_norm=float(clip_norm),
                        dp_noise_multiplier=float(noise_multiplier), dp_sampling=sampling)


def _dp_accounting():
  try:
    import dp_accounting
  except ImportError as e:  # an optional dependency (the "privacy" and "dev" extras)
    raise ImportError("privacy accounting needs Google's dp-accounting package: "
                      "pip install dp-accounting (or jaxpoison[privacy])") from e
  return dp_accounting


def _relation(relation: str):
  dp = _dp_accounting()
  if relation not in RELATIONS:
    raise ValueError(f"relation: expected one of {RELATIONS}, got {relation!r}")
  return (dp.NeighboringRelation.ADD_OR_REMOVE_ONE if relation == "add_or_remove"
          else dp.NeighboringRelation.REPLACE_ONE)


class _Run:
  """What the accountant needs of one model's DP-SGD run on `num_train` images."""

  def __init__(self, config: TrainConfig, num_train: int):
    check_positive("num_train", num_train, integer=True)
    if config.dp_clip_norm <= 0:
      raise ValueError("config: not a DP-SGD config (dp_clip_norm is 0); see dp_sgd_config")
    if steps_per_epoch(config, num_train) < 1:
      raise ValueError(f"num_train: {num_train} images are fewer than one batch of "
                       f"{config.batch_size}")
    self.poisson = config.dp_sampling == "poisson"
    self.steps = total_steps(config, num_train)
    self.rate = poisson_rate(config, num_train)
    self.epochs = num_epochs_touched(config, num_train)
    self.capacity = poisson_capacity(config, num_train) if self.poisson else 0
    # The chance that some step's Poisson sample overflowed the batch and was truncated.
    self.overflow = (min(1.0, self.steps * poisson_overflow(self.capacity, num_train, self.rate))
                     if self.poisson else 0.0)

  def event(self, noise_multiplier: float):
    dp = _dp_accounting()
    gaussian = dp.GaussianDpEvent(noise_multiplier)
    if self.poisson:
      return dp.SelfComposedDpEvent(dp.PoissonSampledDpEvent(self.rate, gaussian), self.steps)
    # Shuffled batches: each example in one batch per epoch, no amplification.
    return dp.SelfComposedDpEvent(gaussian, self.epochs)


def _accountant(name: str, relation: str = "add_or_remove"):
  dp = _dp_accounting()
  if name not in ACCOUNTANTS:
    raise ValueError(f"accountant: expected one of {ACCOUNTANTS}, got {name!r}")
  if name == "rdp":
    if relation != "add_or_remove":
      raise ValueError("relation: the RDP accountant has no replace-one analysis of Poisson "
                       "sampling; use accountant='pld'")
    return dp.rdp.RdpAccountant()
  return dp.pld.PLDAccountant(neighboring_relation=_relation(relation))


def _check_delta(delta: float) -> None:
  if not 0 < delta < 1:
    raise ValueError(f"delta: expected a value in (0, 1), got {delta}")


def privacy_spent(config: TrainConfig, num_train: int, delta: float, *,
                  accountant: str = "rdp", relation: str = "add_or_remove") -> float:
  """ε at δ of one model trained with `config` on `num_train` images (inf without noise).

  Poisson sampling: the config's steps (`total_steps`) of the Gaussian mechanism (noise
  multiplier z) on a Poisson sample at rate batch_size / num_train, at δ minus the chance that
  a sample overflowed the batch's capacity (inf when that chance is ≥ δ). Shuffled batches: the
  Gaussian mechanism once per epoch touched (no amplification). `relation`: "add_or_remove"
  or "replace_one" (a clean-label poison; PLD accountant only).
  """
  run = _Run(config, num_train)
  _check_delta(delta)
  if relation not in RELATIONS:
    raise ValueError(f"relation: expected one of {RELATIONS}, got {relation!r}")
  if config.dp_noise_multiplier == 0 or run.overflow >= delta:
    return float("inf")
  acc = _accountant(accountant, relation)
  acc.compose(run.event(config.dp_noise_multiplier))
  return float(acc.get_epsilon(delta - run.overflow))


def privacy_record(config: TrainConfig, num_train: int, delta: float) -> dict:
  """What a trial record says about its DP-SGD run: the sampling, ε at δ for add/remove
  neighbours (RDP, `epsilon_at_delta`) and for replace-one (PLD), and the Poisson batch's
  capacity and overflow probability (already inside both ε's δ)."""
  run = _Run(config, num_train)
  return {
      "dp_sampling": config.dp_sampling,
      "epsilon_at_delta": privacy_spent(config, num_train, delta),
      "neighbouring_relation": "add_or_remove",
      "epsilon_replace_one": privacy_spent(config, num_train, delta, accountant="pld",
                                           relation="replace_one"),
      "dp_batch_capacity": run.capacity,
      "dp_overflow_probability": run.overflow,
  }


def noise_multiplier_for_epsilon(epsilon: float, delta: float, config: TrainConfig,
                                 num_train: int, *, accountant: str = "rdp",
                                 relation: str = "add_or_remove") -> float:
  """The smallest noise multiplier z (to dp-accounting's search tolerance) with which
  `config`'s run on `num_train` images is (epsilon, delta)-DP (as `privacy_spent` counts)."""
  check_positive("epsilon", epsilon)
  run = _Run(config, num_train)
  _check_delta(delta)
  if run.overflow >= delta:
    raise ValueError(f"delta: {delta} is below the chance {run.overflow:.3g} that a Poisson "
                     f"batch overflows its capacity {run.capacity}; raise dp_batch_capacity")
  dp = _dp_accounting()
  return float(dp.calibrate_dp_mechanism(
      lambda: _accountant(accountant, relation), run.event, epsilon, delta - run.overflow,
      dp.LowerEndpointAndGuess(1e-3, 1.0)))
