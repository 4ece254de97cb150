"""The package's shape: floors that never import upward, no import cycle, light lazy imports.

The floors (../shared/design.md), lowest first; a module may import from its own floor and the
floors below it, never above, and no set of modules may import each other in a circle, counting
the imports inside functions too (hoisting any of them to the top of its module must stay
possible: an import tucked into a function to dodge a cycle shows up here as the cycle).
"""

from __future__ import annotations

import ast
import importlib
import json
import pathlib
import subprocess
import sys
import types
import warnings

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxpoison"

# Module-path prefixes by floor; the longest matching prefix decides.
FLOORS = {
    0: ("jaxpoison._checks", "jaxpoison._deprecation", "jaxpoison._version", "jaxpoison.io",
        "jaxpoison.keys", "jaxpoison.data", "jaxpoison.runs", "jaxpoison.multihost"),
    1: ("jaxpoison.certify", "jaxpoison.backend", "jaxpoison.aot"),
    2: ("jaxpoison.surrogates",),
    3: ("jaxpoison.diffusion", "jaxpoison.classifier"),
    4: ("jaxpoison.attacks", "jaxpoison.defenses"),
    5: ("jaxpoison.certification", "jaxpoison.pipeline", "jaxpoison.benchmarks",
        "jaxpoison.eclipse", "jaxpoison.poison_benchmark"),
    6: ("jaxpoison.benchmarks.gpu_check", "jaxpoison.benchmarks.aot_check",
        "jaxpoison.benchmarks.dpa_speed",
        "jaxpoison.benchmarks.matching_speed", "jaxpoison.benchmarks.peers",
        "jaxpoison.benchmarks.purification_speed", "jaxpoison.cli"),
    7: ("jaxpoison",),  # the package itself: its lazy re-exports reach every floor
}
FLOOR_NAMES = {0: "ground", 1: "statistics and backend", 2: "adapters", 3: "networks",
               4: "attacks and defenses", 5: "experiments", 6: "benchmarks and command line",
               7: "the package's re-exports"}


def module_names() -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


MODULES = module_names()


def floor_of(module: str) -> int | None:
  best, floor = -1, None
  for level, prefixes in FLOORS.items():
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
        best, floor = len(prefix), level
  return floor


def resolve(name: str) -> str:
  """The module an import of `name` runs: itself, or the package of an imported attribute."""
  while name not in MODULES and "." in name:
    name = name.rsplit(".", 1)[0]
  return name


def imports_of(module: str) -> list[tuple[str, int]]:
  """(imported jaxpoison module, line) for every import in `module`, inside functions too."""
  path = MODULES[module]
  tree = ast.parse(path.read_text(), str(path))
  package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(resolve(a.name), node.lineno) for a in node.names
              if a.name.split(".")[0] == "jaxpoison"]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")[:len(package.split(".")) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
      else:
        source = node.module or ""
      if source.split(".")[0] != "jaxpoison":
        continue
      for alias in node.names:  # `from pkg import submodule` imports the submodule
        target = f"{source}.{alias.name}"
        out.append((target if target in MODULES else resolve(source), node.lineno))
  return [(target, line) for target, line in out if target != module]


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_floor():
  missing = [m for m in MODULES if floor_of(m) is None]
  assert not missing, f"modules with no floor (add them to FLOORS in {__file__}): {missing}"


def test_no_module_imports_from_a_floor_above_its_own():
  upward = []
  for module, targets in GRAPH.items():
    for target, line in targets:
      if floor_of(target) > floor_of(module):
        upward.append(
            f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {module} "
            f"({FLOOR_NAMES[floor_of(module)]}) imports {target} "
            f"({FLOOR_NAMES[floor_of(target)]})")
  assert not upward, "imports from a higher floor:\n" + "\n".join(sorted(set(upward)))


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for target in graph.get(node, ()):
      if state.get(target) == "open":
        return stack[stack.index(target):] + [target]
      if target not in state:
        cycle = visit(target)
        if cycle:
          return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_no_import_cycle():
  # A package's __init__ re-exports lazily (no import statement), so `from jaxpoison.attacks
  # import constraints` is an edge to the submodule and the package's own floor never matters.
  graph = {m: sorted({t for t, _ in targets}) for m, targets in GRAPH.items()}
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_find_an_upward_import_and_a_cycle():
  # The walker itself, on a graph it must refuse: an import that dodges a cycle from inside a
  # function still closes it.
  assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None
  assert floor_of("jaxpoison.classifier.api") == 3 < floor_of("jaxpoison.attacks.core") == 4
  assert floor_of("jaxpoison.benchmarks.gpu_check") == 6 > floor_of("jaxpoison.benchmarks") == 5


def run_python(code: str) -> str:
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  return done.stdout


@pytest.mark.parametrize("module", ["jaxpoison.certify", "jaxpoison.benchmarks.tables"])
def test_importing_the_statistics_imports_no_jax(module):
  loaded = json.loads(run_python(
      f"import json, sys; import {module}; "
      "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
      "('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'tensorflow_datasets'))))"))
  assert loaded == []


def test_importing_the_package_imports_none_of_its_modules():
  loaded = json.loads(run_python(
      "import json, sys; import jaxpoison; "
      "print(json.dumps(sorted(m for m in sys.modules if m.startswith('jaxpoison'))))"))
  assert loaded == ["jaxpoison", "jaxpoison._version"]


PACKAGES = ["jaxpoison", "jaxpoison.attacks", "jaxpoison.attacks.unlearnable", "jaxpoison.benchmarks",
            "jaxpoison.certification", "jaxpoison.classifier", "jaxpoison.defenses",
            "jaxpoison.diffusion", "jaxpoison.poison_benchmark"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_lazy_export_resolves(package):
  module = importlib.import_module(package)
  assert module.__all__, package
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # the deprecated aliases (below)
    for name in module.__all__:
      assert getattr(module, name) is not None, f"{package}.{name}"
  assert set(module.__all__) <= set(dir(module))
  with pytest.raises(AttributeError):
    getattr(module, "no_such_name")


def test_functions_named_like_their_modules_stay_functions():
  # attacks.poison_frogs, .witches_brew and .sleeper_agent are functions in modules of the same
  # name; importing a module must not replace the package's function with it.
  code = ("import jaxpoison.attacks.witches_brew, jaxpoison.attacks.poison_frogs, "
          "jaxpoison.attacks.sleeper_agent\n"
          "from jaxpoison import attacks\n"
          "print([callable(attacks.witches_brew) and not isinstance(attacks.witches_brew, "
          "type(attacks)) for _ in [0]][0], callable(attacks.poison_frogs), "
          "callable(attacks.sleeper_agent))")
  assert run_python(code).split() == ["True", "True", "True"]
  from jaxpoison import attacks
  assert not isinstance(attacks.poison_frogs, types.ModuleType)


def test_version_comes_from_the_installed_distribution():
  import jaxpoison
  from importlib import metadata
  assert jaxpoison.__version__ == metadata.version("jaxpoison")


def test_deprecated_names_warn_and_are_the_new_ones():
  code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
          "from jaxpoison.benchmarks import transfer\n"
          "try:\n  transfer.BenchmarkConfig\nexcept DeprecationWarning as e:\n  print(e)")
  assert run_python(code).strip() == ("jaxpoison.benchmarks.BenchmarkConfig is deprecated; use "
                                      "TransferConfig")
  from jaxpoison.benchmarks import transfer
  with pytest.warns(DeprecationWarning, match="use TransferConfig"):
    assert transfer.BenchmarkConfig is transfer.TransferConfig
  from jaxpoison.attacks import configs
  with pytest.warns(DeprecationWarning, match="use BENCHMARK_CIFAR10_STD"):
    assert configs.CIFAR10_STD == configs.BENCHMARK_CIFAR10_STD == (0.2023, 0.1994, 0.2010)
