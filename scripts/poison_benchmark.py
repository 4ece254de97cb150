"""Clean-label attack benchmark against the denoising defense (the paper's Tables 1–3).

Crafts poisons for many trials, trains the victim on the poisoned training set denoised at each
σ, and writes one record per trial and the table (attack success with its 95% interval, clean
accuracy in parentheses) as Markdown and CSV. Resumable: rerun the same command to continue.
Settings come from a config file (`get_config()`, default configs/poison_benchmark.py); flags
override them. The config's type picks the setting: a TransferConfig runs transfer learning
(Table 1: Poison Frogs, Convex and Bullseye Polytope, the label-consistent and hidden-trigger
backdoors; jaxpoison.benchmarks.transfer), a FromScratchConfig trains victims from scratch
(Tables 2–3: Witches' Brew, Sleeper Agent; jaxpoison.benchmarks.from_scratch).

    python scripts/poison_benchmark.py --data /tmp/cifar10.npz --out runs/table1
    python scripts/poison_benchmark.py --config configs/poison_benchmark_from_scratch.py \
        --data /tmp/cifar10.npz --out runs/table2
    python scripts/poison_benchmark.py --config configs/poison_benchmark_from_scratch.py \
        --data /tmp/cifar10.npz --out runs/table2 --sigmas 0 --defense deep_knn
    python scripts/poison_benchmark.py --out runs/table1 --table_only
    python scripts/poison_benchmark.py --tables_from runs/t1_wb_l2,runs/t1_backdoors
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from jaxpoison import cli
from jaxpoison.defenses.config import DEFENSES as DEFENSE_NAMES
from jaxpoison.classifier.config import DP_SAMPLINGS
from jaxpoison.defenses.dp_sgd import DP_NORMS

ROOT = Path(__file__).resolve().parents[1]


def _names(text: str) -> tuple[str, ...]:
  return tuple(v.strip() for v in text.split(",") if v.strip())


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--config", default=str(ROOT / "configs" / "poison_benchmark.py"),
                 help="a Python file whose get_config() returns a TransferConfig")
  p.add_argument("--data", default="official",
                 help="'official' (download once), 'tfds' or a path (.npz, JPEG pack, folder)")
  p.add_argument("--out", default="runs/poison_benchmark", help="output directory")
  p.add_argument("--craft_only", action="store_true",
                 help="only pretrain (if needed) and craft the poison files; no fine-tuning")
  p.add_argument("--table_only", action="store_true",
                 help="only re-render table.md/table.csv from the records under --out")
  p.add_argument("--tables_from", type=cli.comma_separated(str),
                 help="print one table of the records of these run folders (comma-separated) "
                 "and exit")
  group = p.add_argument_group("settings (override the config file)")
  group.add_argument("--attacks", type=_names, help="comma-separated attack names")
  group.add_argument("--num_trials", type=int)
  group.add_argument("--seed", type=int)
  group.add_argument("--sigmas", type=cli.comma_separated(float),
                     help="comma-separated σ; 0 = no defense")
  group.add_argument("--num_poisons", type=int)
  group.add_argument("--budget", type=float,
                     help="poisons as a fraction of the fine-tune set (instead of --num_poisons)")
  group.add_argument("--finetune_per_class", type=int)
  group.add_argument("--num_eval", type=int, help="clean accuracy on this many test images")
  group.add_argument("--victim_model",
                     help="architecture pretrained for the victim: resnet18, airbench94, "
                          "tiny_resnet18, tiny_airbench94")
  group.add_argument("--craft_model",
                     help="black-box: craft on this architecture (pretrained the same way)")
  group.add_argument("--craft_widths", type=cli.comma_separated(int),
                     help="stage widths of the black-box crafting model (with --craft_model)")
  group.add_argument("--pretrain_epochs", type=float, help="epochs of the pretraining runs")
  group.add_argument("--pretrain_classes", type=cli.comma_separated(int),
                     help="pretrain on these classes, fine-tune on the others (\"\": split by "
                     "images instead)")
  group.add_argument("--finetune_mode", choices=("linear_probe", "whole_network"))
  group.add_argument("--augment", choices=("none", "flip_translate"),
                     help="the victim's fine-tuning augmentation")
  group.add_argument("--pretrained", help="victim checkpoint (save_models output) to use")
  group.add_argument("--craft_pretrained", help="checkpoint of the black-box crafting model")
  group.add_argument("--denoiser", help="denoiser directory (default: the shipped one)")
  group.add_argument("--norm", choices=("linf", "l2"))
  group.add_argument("--epsilon", type=float, help="bound in [0, 1] pixel units")
  group.add_argument("--craft_steps", type=int, help="crafting iterations (default: published)")
  group.add_argument("--finetune_epochs", type=int)
  group.add_argument("--trials_per_step", type=int, help="trials fine-tuned at once")
  group.add_argument("--stop_after", type=int, help="finish at most this many trials, then stop")
  group.add_argument("--time_limit_s", type=float, help="start no new trials after this long")
  scratch = p.add_argument_group("from scratch (a FromScratchConfig)")
  scratch.add_argument("--train_per_class", type=int,
                       help="train on this many images per class (a seeded subset)")
  scratch.add_argument("--num_surrogates", type=int, help="size of the crafting ensemble")
  scratch.add_argument("--poison_class", choices=("random", "runner_up"),
                       help="a trial's poison class: random (the paper's) or the surrogates' "
                            "most probable wrong class for the target")
  scratch.add_argument("--restarts", type=int, help="crafting restarts (default: published)")
  scratch.add_argument("--retrain_every", type=int,
                       help="Sleeper Agent: retrain the surrogates every this many crafting "
                            "steps (0: never; default: the reference's 50)")
  scratch.add_argument("--warm_start_epochs", type=int,
                       help="Table 3: train this many epochs on the tampered set first")
  scratch.add_argument("--clean_start_epochs", type=int,
                       help="victims start from a clean-trained network and train this many "
                            "epochs (a reduction for small settings; 0: from scratch)")
  scratch.add_argument("--clean_start_from", choices=("own", "surrogate"),
                       help="the clean start: a network of the harness's own seed, or the "
                            "attacker's surrogate")
  scratch.add_argument("--surrogates_per_trial", type=cli.parse_bool,
                       help="true: every trial trains its own crafting ensemble (the "
                            "references'); false: one per run, shared by the trials")
  scratch.add_argument("--sleeper_agent_victim_epochs", type=float,
                       help="Sleeper Agent's victims train this many epochs (the reference: 80)")
  scratch.add_argument("--correct_targets", type=cli.parse_bool,
                       help="true: targets among the test images the surrogates classify "
                            "correctly")
  scratch.add_argument("--victim_init",
                       help="Table 3 out-of-domain: start every victim from this checkpoint")
  defense = p.add_argument_group("baseline defenses (Tables 4 and 5)")
  defense.add_argument("--defense", choices=DEFENSE_NAMES,
                       help="train the victims under this baseline defense, on the run's "
                            "poisons (results beside the undefended ones)")
  defense.add_argument("--knn_k", type=int, help="Deep k-NN's neighbours (default 500)")
  defense.add_argument("--dpa_partitions", type=int,
                       help="DPA's partitions (default 250; from scratch only)")
  defense.add_argument("--dpa_recipe", choices=("reference", "victim"),
                       help="DPA's base classifiers: the DPA reference's recipe (default) or "
                            "the victim's")
  defense.add_argument("--dpa_epochs", type=int,
                       help="DPA's base classifiers' epochs with the reference recipe "
                            "(default 200, the reference's)")
  defense.add_argument("--dp_clip_norm", type=float, help="DP-SGD's clip (default 1.0)")
  defense.add_argument("--dp_noise_multiplier", type=float,
                       help="DP-SGD's noise multiplier (default 0.05)")
  defense.add_argument("--dp_norm", choices=DP_NORMS,
                       help="DP-SGD's normalization: group norm (default), or batch norm frozen "
                            "at its running statistics (victims from a batch-norm clean start)")
  defense.add_argument("--dp_sampling", choices=DP_SAMPLINGS,
                       help="DP-SGD's batches: poisson (default; what the accountant assumes) "
                            "or shuffle (accounted without amplification)")
  defense.add_argument("--friendly_lr", type=float,
                       help="FrieNDs' friendly-noise step size (default 100, the reference's)")
  defense.add_argument("--friendly_begin_epoch", type=int,
                       help="FrieNDs: the epoch its friendly noise is computed at (default 5, "
                            "the authors' command; 0 for victims that continue from a trained "
                            "network)")
  return p.parse_args(argv)


TRANSFER_ONLY = ("finetune_per_class", "pretrain_classes", "pretrain_epochs", "finetune_mode",
                 "augment", "pretrained", "craft_pretrained", "finetune_epochs")
SCRATCH_ONLY = ("train_per_class", "num_surrogates", "poison_class", "restarts", "retrain_every",
                "warm_start_epochs", "clean_start_epochs", "clean_start_from", "correct_targets",
                "victim_init", "surrogates_per_trial", "sleeper_agent_victim_epochs")
DEFENSE_FLAGS = ("knn_k", "dpa_partitions", "dpa_recipe", "dpa_epochs", "dp_clip_norm", "dp_noise_multiplier", "dp_norm",
                 "dp_sampling", "friendly_lr", "friendly_begin_epoch")


def _defense_changes(args, config) -> dict:
  """{"defense": the config's DefenseConfig with the flags' changes}, or {} without flags."""
  changes = {name: getattr(args, name) for name in DEFENSE_FLAGS
             if getattr(args, name) is not None}
  if args.defense is not None:
    changes["name"] = args.defense
  return {"defense": dataclasses.replace(config.defense, **changes)} if changes else {}


def _from_scratch(args, config):
  """Runs a FromScratchConfig with the flags' overrides."""
  from jaxpoison.benchmarks import from_scratch as fs
  from jaxpoison import benchmarks as pb
  given = [name for name in TRANSFER_ONLY if getattr(args, name) not in (None, False)]
  if given or args.craft_only:
    raise cli.UsageError(f"--{(given or ['craft_only'])[0]}: a transfer-learning flag; the config "
                         f"{args.config} trains from scratch")
  changes = {name: getattr(args, name) for name in (
      "attacks", "num_trials", "seed", "sigmas", "num_poisons", "budget", "num_eval", "norm",
      "epsilon", "craft_steps", "trials_per_step", "train_per_class", "num_surrogates",
      "poison_class", "restarts", "retrain_every", "warm_start_epochs", "clean_start_epochs",
      "clean_start_from", "correct_targets", "surrogates_per_trial",
      "sleeper_agent_victim_epochs")
      if getattr(args, name) is not None}
  if args.budget is not None:
    changes["num_poisons"] = None
  with cli.user_errors(ValueError, TypeError):
    if args.victim_model is not None:
      changes["victim"] = pb.model_config(args.victim_model)
    if args.craft_model is not None:
      widths = {} if args.craft_widths is None else {"widths": tuple(args.craft_widths)}
      victim = changes.get("victim", config.victim_config)
      base = victim if args.craft_model == victim.model else pb.model_config(args.craft_model)
      changes["surrogate"] = dataclasses.replace(base, **widths)
    elif args.craft_widths is not None:
      raise ValueError("--craft_widths: give --craft_model too")
    changes.update(_defense_changes(args, config))
    config = dataclasses.replace(config, **changes)
  import jaxpoison as jp
  dataset = jp.load_cifar10(args.data)
  start = time.perf_counter()
  results = fs.run_benchmark(config, dataset, args.out, denoiser=args.denoiser,
                             victim_init=args.victim_init, stop_after=args.stop_after,
                             time_limit_s=args.time_limit_s)
  print(f"{len(results)} finished trials under {args.out} "
        f"({time.perf_counter() - start:.0f} s this run)")
  print((Path(args.out) / "table.md").read_text(), end="")


def main(argv=None) -> None:
  args = parse_args(argv)
  import jaxpoison as jp
  from jaxpoison import benchmarks as pb

  if args.tables_from:
    records = []
    for folder in args.tables_from:
      if not (Path(folder) / pb.RUN_FILE).is_file():
        raise cli.UsageError(f"--tables_from {folder}: no {pb.RUN_FILE}; not a benchmark run "
                             "folder")
      records += pb.load_results(folder)
    from jaxpoison.benchmarks import tables  # the from-scratch sections are empty elsewhere
    print("\n".join(t for t in (tables.render_table(records), tables.render_source_table(records),
                                tables.render_probability_table(records)) if t), end="")
    return
  if args.table_only:
    results = pb.load_results(args.out)
    from jaxpoison.benchmarks import from_scratch
    markdown, _ = from_scratch.write_scratch_tables(args.out, results)
    print(markdown.read_text(), end="")
    return

  config = cli.load_config_file(args.config)
  from jaxpoison.benchmarks.from_scratch import FromScratchConfig
  if isinstance(config, FromScratchConfig):
    return _from_scratch(args, config)
  given = [name for name in SCRATCH_ONLY if getattr(args, name) is not None]
  if given:
    raise cli.UsageError(f"--{given[0]}: a from-scratch flag; the config {args.config} is a "
                         "transfer-learning benchmark")
  changes = {name: getattr(args, name) for name in (
      "attacks", "num_trials", "seed", "sigmas", "num_poisons", "finetune_per_class",
      "num_eval", "norm", "epsilon", "craft_steps", "trials_per_step", "pretrain_classes")
      if getattr(args, name) is not None}
  if args.pretrain_classes == ():  # --pretrain_classes "": split by images, all classes.
    changes["pretrain_classes"] = None
  if args.budget is not None:
    changes.update(budget=args.budget, num_poisons=None)
  pretrain_changes = {} if args.pretrain_epochs is None else {"epochs": args.pretrain_epochs}
  # The configs check their fields: here a ValueError or TypeError is a bad flag value.
  with cli.user_errors(ValueError, TypeError):
    if args.victim_model is not None:
      changes["victim"] = pb.model_config(args.victim_model, **pretrain_changes)
    elif pretrain_changes:
      changes["victim"] = dataclasses.replace(config.victim or pb.model_config("resnet18"),
                                              **pretrain_changes)
    if args.craft_model is not None:
      widths = {} if args.craft_widths is None else {"widths": tuple(args.craft_widths)}
      base = config.victim if config.victim is not None else pb.model_config("resnet18")
      if args.craft_model == base.model:  # The victim's recipe at another width.
        changes["crafter"] = dataclasses.replace(base, **pretrain_changes, **widths)
      else:
        changes["crafter"] = pb.model_config(args.craft_model, **pretrain_changes, **widths)
    elif args.craft_widths is not None:
      raise ValueError("--craft_widths: give --craft_model too")
    finetune_changes = {name: value for name, value in (
        ("epochs", args.finetune_epochs), ("mode", args.finetune_mode),
        ("augment", args.augment)) if value is not None}
    if finetune_changes:
      changes["finetune"] = dataclasses.replace(config.finetune, **finetune_changes)
    changes.update(_defense_changes(args, config))
    config = dataclasses.replace(config, **changes)

  dataset = jp.load_cifar10(args.data)
  start = time.perf_counter()
  if args.craft_only:
    crafted = pb.craft_all(config, dataset, args.out, pretrained=args.pretrained,
                           crafter_pretrained=args.craft_pretrained,
                           time_limit_s=args.time_limit_s)
    print(f"crafted {crafted} poison files under {args.out} "
          f"({time.perf_counter() - start:.0f} s)")
    return
  results = pb.run_benchmark(
      config, dataset, args.out, denoiser=args.denoiser, pretrained=args.pretrained,
      crafter_pretrained=args.craft_pretrained, stop_after=args.stop_after,
      time_limit_s=args.time_limit_s)
  print(f"{len(results)} finished trials under {args.out} "
        f"({time.perf_counter() - start:.0f} s this run)")
  print(pb.render_table(results), end="")


if __name__ == "__main__":
  cli.run(main)
