"""Every command in README.md is exercised: the install and test commands by `.ci/run` (which
runs them as written), the CPU quick start end to end by `.ci/run` on the CIFAR-10 copy, and
here every `python scripts/...` command's flags against its script's parser, so a renamed or
removed flag cannot leave the README behind.
"""

import re
import shlex
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def readme_commands() -> list[tuple[str, list[str]]]:
  """(script path, arguments) of each `python scripts/X.py ...` command in the README, from
  code blocks (with backslash continuations) and from inline code (which may wrap a line)."""
  text = README.replace("\\\n", " ")
  found = []
  blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
  lines = [line for block in blocks for line in block.splitlines()]
  lines += [m.replace("\n", " ") for m in re.findall(r"`(python scripts/[^`]*)`", text)]
  for line in lines:
    for match in re.finditer(r"python (scripts/\w+\.py)([^&|#;]*)", line):
      found.append((match.group(1), shlex.split(match.group(2))))
  return found


COMMANDS = readme_commands()


def test_readme_has_the_commands_it_promises():
  scripts = {script for script, _ in COMMANDS}
  assert {"scripts/certify.py", "scripts/train_classifier.py", "scripts/train_denoiser.py",
          "scripts/convert_checkpoint.py", "scripts/poison_benchmark.py"} <= scripts
  assert any("configs/certify_cpu_quick.py" in args for _, args in COMMANDS)
  assert "python -m pytest -q" in README
  ci = (REPO / ".ci" / "run").read_text()
  install = re.search(r"```bash\n(pip install torch[^\n]*)", README).group(1)
  # .ci/run runs the README's install (without the main job, which needs the internet and a
  # GPU's worth of time), its test command and its CPU quick start.
  assert install.split(" && python ")[0] in ci
  assert "python -m pytest -q" in ci
  quick = re.search(r"\n(python scripts/certify\.py --config configs/certify_cpu_quick\.py[^\n]*)",
                    README).group(1)
  assert quick in ci


@pytest.mark.parametrize("script,args", COMMANDS,
                         ids=[f"{s}:{' '.join(a)[:40]}" for s, a in COMMANDS])
def test_readme_command_parses(script, args, assert_command_parses):
  assert_command_parses(script, args)
