"""Names kept for one release after a rename: a module's `__getattr__` that warns and answers."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any


def deprecated_names(module: str, public: str, renamed: dict[str, tuple[str, Any]]
                     ) -> Callable[[str], Any]:
  """A module `__getattr__` (PEP 562) for the names in `renamed` (old name → (new name, value)):
  each access warns "{public}.{old} is deprecated; use {new}" (DeprecationWarning) and returns
  the value; any other name is the usual AttributeError of `module`."""
  def __getattr__(name: str):
    if name in renamed:
      new, value = renamed[name]
      warnings.warn(f"{public}.{name} is deprecated; use {new}", DeprecationWarning,
                    stacklevel=2)
      return value
    raise AttributeError(f"module {module!r} has no attribute {name!r}")
  return __getattr__
