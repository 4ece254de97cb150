"""Atomic file writes: a reader (or a resumed run) sees either the old file or the new one.

A crash (kill -9, a preempted node) in the middle of a write leaves at most a stray
temporary file beside the target, never a truncated result.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def _fsync_dir(directory: Path) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:  # Some filesystems do not allow opening directories.
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
  """Calls `write(file)` on a temporary file beside `path`, then renames it onto `path`."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  _fsync_dir(path.parent)
  return path


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
  """Calls `write(directory)` on a temporary directory beside `path`, then swaps it in.

  A crash leaves either the old directory or the new one at `path` (the old one is moved aside
  and deleted only after the new one is in place), plus at most a stray hidden temporary.
  """
  path = Path(path).absolute()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
  try:
    write(tmp)
    old = None
    if path.exists():
      old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
      os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  _fsync_dir(path.parent)
  return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
  return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
  return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
  return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays) -> Path:
  """np.savez to `path` atomically (the name is kept exactly; no '.npz' is appended)."""
  buffer = io.BytesIO()
  np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
  return atomic_write_bytes(path, buffer.getvalue())


def _json_default(obj):
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, Path):
    return str(obj)
  raise TypeError(f"cannot write {type(obj).__name__} as JSON")
