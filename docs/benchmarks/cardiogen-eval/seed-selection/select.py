"""Apply the run-selection rule of ``PROTOCOL.md`` to validation-split reports.

Each argument is ``LABEL=metrics.json``, the file ``cardio gen eval --split val --out DIR``
wrote for one candidate run. Prints, per candidate, the checks it fails and the 1-NNA tie-break
(|1-NNA ED - 50| + |1-NNA ES - 50|, points), then the chosen run: fewest failed checks, then the
smallest tie-break.

    .venv/bin/python docs/benchmarks/cardiogen-eval/seed-selection/select.py seed0=DIR0/metrics.json seed1=...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def score(metrics: dict) -> tuple[list[str], int, float]:
    """Names of the failed checks, the number of checks with a target, and the 1-NNA tie-break."""
    if metrics["settings"].get("split") != "val":
        raise SystemExit(f"not a validation-split report (split {metrics['settings'].get('split')!r})")
    with_target = [c for c in metrics["checks"] if c["passes"] is not None]
    failed = [c["figure"] for c in with_target if not c["passes"]]
    tie_break = sum(abs(metrics["generative"][phase]["one_nna_percent"] - 50.0) for phase in ("ED", "ES"))
    return failed, len(with_target), tie_break


def main(arguments: list[str]) -> int:
    if not arguments or any("=" not in a for a in arguments):
        raise SystemExit(__doc__)
    rows = []
    for argument in arguments:
        label, path = argument.split("=", 1)
        failed, checks, tie_break = score(json.loads(Path(path).read_text()))
        rows.append((len(failed), tie_break, label, failed, checks))
        print(f"{label:8s} failed {len(failed)} of {checks} checks; 1-NNA tie-break {tie_break:5.2f} points; "
              f"fails: {', '.join(failed) or 'none'}")
    chosen = min(rows)
    print(f"chosen: {chosen[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
