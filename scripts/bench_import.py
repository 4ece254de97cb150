"""Import time of jaxpoison's entry points against a bare `import jax`, in the same run.

    python scripts/bench_import.py --repeats 7
    PYTHONPATH=/path/to/other/checkout python scripts/bench_import.py   # another tree

Each statement runs in a fresh interpreter (`python -c`), --repeats times, interleaved with the
reference so that load on the machine hits both alike; prints one JSON line with the median
wall time of each, its ratio to `import jax`, and how many jaxpoison and jax modules it loaded.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from jaxpoison import cli

REFERENCE = "import jax"
STATEMENTS = {
    "import jax": REFERENCE,
    "import jaxpoison": "import jaxpoison",
    "import jaxpoison.certify": "import jaxpoison.certify",
    "jaxpoison.TrainConfig": "import jaxpoison; jaxpoison.TrainConfig",
    "import jaxpoison.pipeline": "import jaxpoison.pipeline",
}
COUNT = ("; import sys; print(sum(m.split('.')[0] == 'jaxpoison' for m in sys.modules), "
         "sum(m.split('.')[0] == 'jax' for m in sys.modules))")


def time_once(statement: str) -> float:
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", statement], check=True)
  return time.perf_counter() - start


def main(argv=None) -> None:
  p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=7)
  args = p.parse_args(argv)
  with cli.user_errors(ValueError):
    if args.repeats < 1:
      raise ValueError(f"--repeats: expected >= 1, got {args.repeats}")
  times = {name: [] for name in STATEMENTS}
  for _ in range(args.repeats):
    for name, statement in STATEMENTS.items():
      times[name].append(time_once(statement))
  reference = statistics.median(times["import jax"])
  out = {"python": sys.version.split()[0], "pythonpath": os.environ.get("PYTHONPATH", ""),
         "repeats": args.repeats, "seconds": {}, "ratio_to_import_jax": {}, "modules": {}}
  for name, statement in STATEMENTS.items():
    median = statistics.median(times[name])
    out["seconds"][name] = round(median, 3)
    out["ratio_to_import_jax"][name] = round(median / reference, 2)
    counts = subprocess.run([sys.executable, "-c", statement + COUNT], check=True,
                            capture_output=True, text=True).stdout.split()
    out["modules"][name] = {"jaxpoison": int(counts[0]), "jax": int(counts[1])}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
