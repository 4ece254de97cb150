"""The one run-folder layer: a results folder claimed for a settings dict, resumably filled.

Every long experiment (the certification pipeline, the attack benchmarks) writes into a folder
that

* is **claimed** for the settings its results depend on (fingerprints of the data, the weights
  and the configs): the first run writes them to a settings file, a rerun with the same
  settings resumes, a rerun with others is refused with a message naming every differing
  setting, and nothing in the folder is touched;
* holds one **atomic record per finished unit** (a chunk of votes, a trial): a crash loses at
  most the unit in flight, and `listing` says which units are done so a rerun computes only
  the missing ones;
* reports **progress** with a rate and an ETA (`Progress`).

Settings under a `mutable` key (e.g. the certification's "environment": platform, JAX version,
resolved dtypes) may change on a resume when the caller allows it; the settings file then takes
the new values and keeps the old ones in `<key>_history`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxpoison import io

log = logging.getLogger("jaxpoison.runs")


class RunMismatch(ValueError):
  """A folder holds results of a run with other settings (or is not a run folder at all)."""


# --- fingerprints ------------------------------------------------------------------------------

def fingerprint_arrays(arrays: Iterable, *, length: int | None = None) -> str:
  """SHA-256 over every array's dtype, shape and bytes, in order (hex; the first `length`
  characters when given)."""
  digest = hashlib.sha256()
  for array in arrays:
    array = np.ascontiguousarray(np.asarray(array))
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
  text = digest.hexdigest()
  return text if length is None else text[:length]


def fingerprint_pytree(tree, *, length: int | None = None) -> str:
  """`fingerprint_arrays` over a pytree's array leaves (e.g. a model's parameters)."""
  leaves = [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape")]
  return fingerprint_arrays(leaves, length=length)


def digest_bytes(array) -> str:
  """SHA-256 (hex) of an array's raw bytes, C order, no dtype or shape (e.g. one uint8 image,
  as the poison files record their bases and target)."""
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def dataset_fingerprint(dataset) -> dict[str, Any]:
  """What a results folder records of its dataset: name, split shapes and `fingerprint_arrays`
  over the images and labels of both splits."""
  return {
      "name": str(getattr(dataset, "name", "unknown")),
      "train_shape": [int(n) for n in dataset.x_train.shape],
      "test_shape": [int(n) for n in dataset.x_test.shape],
      "sha256": fingerprint_arrays([dataset.x_train, dataset.y_train, dataset.x_test,
                                    dataset.y_test]),
  }


def jsonable(obj) -> Any:
  """`obj` as the JSON a settings file holds (tuples become lists, numpy scalars numbers)."""
  return json.loads(json.dumps(obj, default=io._json_default))


def _json_default_lenient(obj):
  try:
    return io._json_default(obj)
  except TypeError:
    return str(obj)


def config_json(config, *, tagged: bool = False) -> Any:
  """A config dataclass as the JSON its run folders record: the one config-to-JSON of the package.

  Untagged (the certification's and ECLIPSE's settings): `dataclasses.asdict` through JSON,
  tuples as lists, numpy scalars as numbers, anything else JSON cannot hold as its `str`.
  Tagged (the transfer and from-scratch harnesses' settings): each dataclass, nested ones too,
  as {"type": its class name, field: value, ...}, anything else as its `repr`. Both are formats
  existing results folders hold, compared field by field on resume: neither may change.
  """
  if not tagged:
    return json.loads(json.dumps(dataclasses.asdict(config), default=_json_default_lenient))
  if dataclasses.is_dataclass(config):
    return {"type": type(config).__name__,
            **{f.name: config_json(getattr(config, f.name), tagged=True)
               for f in dataclasses.fields(config)}}
  if isinstance(config, tuple):
    return [config_json(v, tagged=True) for v in config]
  if isinstance(config, (str, bool, int, float)) or config is None:
    return config
  return repr(config)


# --- the settings and their differences ---------------------------------------------------------

_ADDED_SETTINGS: dict[str, Any] = {}


def register_added_settings(added: dict[str, Any]) -> None:
  """Declares settings that a config gained after run folders were written without them, each
  with the value that reproduces what the earlier version did.

  The module that defines the config calls this when it is imported (e.g. the classifier's
  `TrainConfig.ADDED_FIELDS`, the UNet's patch_size). A run can only hold such a setting after
  building it from that config, so the registration is always in place when `claim` compares.
  Registering a name twice with another value is a programming error.
  """
  for name, value in jsonable(added).items():
    if name in _ADDED_SETTINGS and _ADDED_SETTINGS[name] != value:
      raise ValueError(f"added setting {name!r} registered as {_ADDED_SETTINGS[name]!r} and "
                       f"again as {value!r}")
    _ADDED_SETTINGS[name] = value


def added_settings() -> dict[str, Any]:
  """Every registered added setting (`register_added_settings`) with its earlier value: a folder
  without the key was written before it existed."""
  return dict(_ADDED_SETTINGS)


def differences(folder, given, prefix: str = "") -> list[str]:
  """One line per setting that differs between the folder's settings and the given ones:
  "a.b: folder has X, this run has Y" (a key on one side only shows as None on the other). A
  key the folder lacks is no difference when it is one of `added_settings()` and this run
  gives the value that reproduces the folder's (written before the setting existed)."""
  if isinstance(folder, dict) and isinstance(given, dict):
    out = []
    added = None
    for key in sorted(set(folder) | set(given), key=str):
      if key not in folder:
        added = added_settings() if added is None else added
        if key in added and given[key] == added[key]:
          continue
      out += differences(folder.get(key), given.get(key), f"{prefix}{key}.")
    return out
  if folder == given:
    return []
  return [f"{prefix[:-1] or 'settings'}: folder has {short_json(folder)}, this run has "
          f"{short_json(given)}"]


def short_json(value) -> str:
  """`value` as JSON, cut to 100 characters (for messages)."""
  text = json.dumps(value, sort_keys=True, ensure_ascii=False)
  return text if len(text) <= 100 else text[:97] + "..."


@dataclasses.dataclass(frozen=True)
class RunFolder:
  """A claimed results folder (see the module docstring); create it with `claim`."""
  path: Path
  settings_file: str

  @property
  def settings(self) -> dict:
    return json.loads((self.path / self.settings_file).read_text())

  def unit_path(self, *parts: str) -> Path:
    return self.path.joinpath(*parts)

  def write_json(self, relative: str | os.PathLike, obj) -> Path:
    """Writes one unit's record atomically (a reader sees the old file or the new, never half)."""
    return io.atomic_write_json(self.path / relative, obj)

  def write_npz(self, relative: str | os.PathLike, **arrays) -> Path:
    return io.atomic_save_npz(self.path / relative, **arrays)

  def write_text(self, relative: str | os.PathLike, text: str) -> Path:
    return io.atomic_write_text(self.path / relative, text)

  def listing(self, directory: str | os.PathLike, pattern: str | re.Pattern) -> list[re.Match]:
    """The finished units in `directory` (relative to the folder): a match of `pattern` for
    every file name that matches it in full, sorted by name; temporary files of a write in
    flight never match."""
    return list_units(self.path / directory, pattern)


def list_units(directory: str | os.PathLike, pattern: str | re.Pattern) -> list[re.Match]:
  """`RunFolder.listing` for any directory (empty when it does not exist)."""
  pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
  directory = Path(directory)
  if not directory.is_dir():
    return []
  matches = (pattern.fullmatch(path.name) for path in sorted(directory.iterdir())
             if path.is_file())
  return [m for m in matches if m is not None]


def claim(path: str | os.PathLike, settings: dict, *, settings_file: str = "settings.json",
          what: str = "a results folder", mutable: Sequence[str] = (),
          allow_mutable_change: bool = False, allow_mutable_hint: str = "",
          require_empty: bool = True, version_key: str | None = None,
          error: type[Exception] = RunMismatch) -> RunFolder:
  """Claims `path` for `settings`: writes them into a new folder, or checks an existing one.

  Args:
    path: the folder (created with its parents).
    settings: a JSON-able dict of everything the results depend on.
    settings_file: its file name inside the folder.
    what: for messages: what the folder is ("not {what}", with require_empty) and whose
      format version it records ("format version N of {what}", with version_key).
    mutable: top-level keys whose values may change on a resume (`allow_mutable_change`); the
      file then takes the new values and keeps the old ones under "<key>_history".
    allow_mutable_hint: how the user allows that (named in the refusal).
    require_empty: refuse a non-empty folder without a settings file (False where a harness
      writes reusable pieces, e.g. pretrained weights, before its settings are known).
    version_key: a top-level key holding the format version of what the folder records; a
      folder of another version is refused with a message naming both versions (rather than
      in the list of differences: the rest of its settings mean something else).
    error: the exception type raised (a subclass of RunMismatch keeps callers' except clauses).

  Raises:
    `error`: naming every differing setting; nothing in the folder is touched.
  """
  out = Path(path)
  file = out / settings_file
  settings = jsonable(settings)
  if file.exists():
    try:
      existing = json.loads(file.read_text())
    except json.JSONDecodeError as e:
      raise error(f"{file}: unreadable ({e}); remove it or use another folder") from e
    if version_key is not None and version_key in settings:
      version = existing.get(version_key) if isinstance(existing, dict) else None
      if version is not None and version != settings[version_key]:
        raise error(f"{out} was written by format version {version} of {what}, this version "
                    f"writes {settings[version_key]} (its records mean something else); start "
                    "a new folder")
    histories = {key: existing.pop(f"{key}_history", []) for key in mutable}
    diffs = differences(existing, settings)
    changeable = tuple(f"{key}." for key in mutable)
    fixed = [d for d in diffs if not d.startswith(changeable)]
    if fixed or (diffs and not allow_mutable_change):
      hint = f" {allow_mutable_hint}" if allow_mutable_hint and not fixed else ""
      raise error(
          f"{out} holds results of a run with different settings; refusing to mix or overwrite "
          f"them. Use another folder, or the same settings.{hint} Differences:\n  "
          + "\n  ".join(diffs))
    if diffs:
      log.warning("resuming %s with changed %s (allowed; recorded in %s): %s", out,
                  ", ".join(mutable), settings_file, "; ".join(diffs))
      updated = dict(settings)
      for key in mutable:
        if existing.get(key) != settings.get(key):
          histories[key] = histories[key] + [existing.get(key)]
        if histories[key]:
          updated[f"{key}_history"] = histories[key]
      io.atomic_write_json(file, updated)
    return RunFolder(out, settings_file)
  if require_empty and out.exists() and any(out.iterdir()):
    raise error(f"{out} is not empty and has no {settings_file}: not {what}; refusing to write "
                "into it")
  io.atomic_write_json(file, settings)
  return RunFolder(out, settings_file)


# --- progress ----------------------------------------------------------------------------------

class Progress:
  """Units done of a total, the rate of this run and the ETA of the rest: the progress report of
  every long loop in the package.

  `update(n)` after each finished unit returns (and logs, when `log` is given) one line, e.g.
  "12/100 trials; 35.2 trials/h; ETA 2.50 h". The rate counts only units computed in this run,
  so a resumed run's ETA is not flattered by the units it found done. `bar=True` also draws a
  tqdm bar (on stderr; `tqdm.auto`, a widget in notebooks) for a person watching; the lines
  are for logs. Use it as a context manager, or call `close()`, to end the bar.
  """

  def __init__(self, total: int, *, done: int = 0, unit: str = "units",
               log: Callable[[str], None] | None = None, clock: Callable[[], float] = None,
               bar: bool = False, desc: str | None = None, bar_unit: str | None = None):
    self.total, self.done, self.unit, self.log = int(total), int(done), unit, log
    self._clock = clock or time.perf_counter
    self._start = self._clock()
    self.computed = 0
    self._bar = None
    if bar:
      # Imported only when a bar is drawn: tqdm.auto is not light, and most callers only log.
      from tqdm.auto import tqdm
      # tqdm's rate reads "s/<unit>" or "<unit>/s": a singular unit (bar_unit) reads best.
      self._bar = tqdm(total=self.total, initial=self.done, unit=bar_unit or unit, desc=desc,
                       dynamic_ncols=True)

  @property
  def rate_per_hour(self) -> float:
    elapsed = self._clock() - self._start
    return self.computed / elapsed * 3600 if elapsed > 0 else float("inf")

  @property
  def eta_hours(self) -> float:
    remaining = max(self.total - self.done, 0)
    if remaining == 0:
      return 0.0
    rate = self.rate_per_hour
    return remaining / rate if 0 < rate < float("inf") else float("inf")

  def update(self, count: int = 1, message: str = "") -> str:
    self.done += count
    self.computed += count
    line = (f"{message}{'; ' if message else ''}{self.done}/{self.total} {self.unit}; "
            f"{self.rate_per_hour:,.1f} {self.unit}/h; ETA {self.eta_hours:.2f} h")
    if self.log is not None:
      self.log(line)
    if self._bar is not None:
      self._bar.update(count)
      self._bar.set_postfix_str(f"{self.rate_per_hour:,.0f} {self.unit}/h")
    return line

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
