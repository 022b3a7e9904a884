"""Run the benchmarks named on the command line (all by default) and print their figures."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

BENCHMARKS = ["cache", "controlplane", "dev_up", "first_token", "gpu_agent", "karpenter", "loader", "reconcile",
              "residency"]
RESULTS = Path(__file__).with_name("results")


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    console = Console()
    table = Table(title="sovereign benchmarks")
    for column in ("benchmark", "measure", "median", "min", "max", "runs"):
        table.add_column(column)
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        results = importlib.import_module(f"bench.{name}").run()
        (RESULTS / f"{name}.json").write_text(json.dumps([r.as_dict() for r in results], indent=2))
        for r in results:
            table.add_row(name, r.measure, r.fmt(r.median), r.fmt(min(r.samples)),
                          r.fmt(max(r.samples)), str(len(r.samples)))
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
