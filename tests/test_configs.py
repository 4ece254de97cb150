"""Every config in configs/ loads, says how to run it and what to expect, and every
`python scripts/...` command in its docstring parses with that script's flags."""

import ast
import re
import shlex
from pathlib import Path

import pytest

from jaxpoison import cli

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.py"))


def _docstring(path: Path) -> str:
  return ast.get_docstring(ast.parse(path.read_text())) or ""


def _commands(path: Path) -> list[tuple[str, list[str]]]:
  text = _docstring(path).replace("\\\n", " ")
  return [(m.group(1), shlex.split(m.group(2)))
          for m in re.finditer(r"python (scripts/\w+\.py)([^&|#;\n]*)", text)]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_documents_its_run(path):
  config = cli.load_config_file(path)
  assert config is not None
  doc = _docstring(path)
  assert _commands(path), f"{path.name}: its docstring shows no `python scripts/...` command"
  assert re.search(r"[Ee]xpect", doc), f"{path.name}: its docstring says nothing to expect"


COMMANDS = [(path, script, args) for path in CONFIGS for script, args in _commands(path)]


@pytest.mark.parametrize("path,script,args", COMMANDS,
                         ids=[f"{p.stem}:{' '.join(a)[:40]}" for p, _, a in COMMANDS])
def test_config_command_parses(path, script, args, assert_command_parses):
  assert_command_parses(script, args)
