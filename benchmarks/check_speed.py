"""Time `ddpm-check check all` (without the network check): the median of 3 runs.

Each run is a fresh process (`python -m cli check all --json`), so imports (torch, scipy, sympy)
and building the derivations are included, as a user sees them.  Prints one Markdown table
row for BENCHMARKS.md, plus each check's own runtime from the JSON of the median run.

    python benchmarks/check_speed.py [--runs 3] [--network]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(network: bool) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "cli", "check", "all", "--json"] + (["--network"] if network else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"`{' '.join(cmd[2:])}` exited {proc.returncode}")
    return wall, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--network", action="store_true", help="include the network check")
    args = ap.parse_args()
    runs = [one_run(args.network) for _ in range(max(args.runs, 1))]
    walls = [w for w, _ in runs]
    med = statistics.median(walls)
    _, report = min(runs, key=lambda r: abs(r[0] - med))
    per_check = ", ".join(f"{c['check']} {c['runtime_s']:.1f} s" for c in report["checks"])
    verdict = "pass" if report["passed"] else "FAIL"
    what = "check all --network" if args.network else "check all"
    cpu = f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    print("| command | median wall (s) | runs (s) | verdict | per check | machine |")
    print("|---|---|---|---|---|---|")
    print(f"| `ddpm-check {what}` | {med:.1f} | {', '.join(f'{w:.1f}' for w in walls)} | {verdict} | "
          f"{per_check} | {cpu} |")


if __name__ == "__main__":
    main()
