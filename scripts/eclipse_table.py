"""ECLIPSE's Table 1 from finished runs of scripts/eclipse.py, the paper's cells beside each.

  python scripts/eclipse_table.py --runs runs/eclipse_cpu_lsp runs/eclipse_cpu_ar \
      runs/eclipse_cpu_urp runs/eclipse_cpu_none

One run folder per poison (poison "none" gives the clean column). A row per defense (w/o,
ECLIPSE = A+B+C, A = purification only, B+C = compensation only, ISS-J, ISS-G, AT), a column per
poison; each cell is the measured test accuracy (mean over victims) and, in parentheses, the
paper's ResNet-18 cell (Tables 1, 3 and 4); "—" where that defense was not run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxpoison import cli  # noqa: E402 (after the path set-up)


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", nargs="+", required=True, help="finished ECLIPSE run folders")
  args = parser.parse_args(argv)
  from jaxpoison import eclipse
  summaries = []
  for run in args.runs:
    path = Path(run) / "summary.json"
    if not path.is_file():
      raise cli.UsageError(f"--runs: {run} has no summary.json (an unfinished or other run)")
    summaries.append(json.loads(path.read_text()))
  with cli.user_errors(ValueError):
    print(eclipse.render_table(summaries))


if __name__ == "__main__":
  cli.run(main)
