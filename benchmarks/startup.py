"""Start-up time of the CLI: `ddpm-check --help` and `ddpm-check derive posterior`.

Each command runs in a fresh subprocess several times; the median wall time is reported in a
Markdown table with the targets (2-core machine: --help <= 0.5 s, derive posterior <= 1.5 s).
The figures go to BENCHMARKS.md; no test asserts them.

    python benchmarks/startup.py            # 7 runs each, the installed `ddpm-check`
    python benchmarks/startup.py --runs 15
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = (
    ("ddpm-check --help", ["--help"], 0.5),
    ("ddpm-check derive posterior", ["derive", "posterior"], 1.5),
)


def entry() -> list[str]:
    """The console script next to this interpreter, else `python -c 'from cli import app; app()'`."""
    script = Path(sys.executable).with_name("ddpm-check")
    if script.exists():
        return [str(script)]
    found = shutil.which("ddpm-check")
    if found:
        return [found]
    return [sys.executable, "-c", "from cli import app; app(prog_name='ddpm-check')"]


def time_once(cmd: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (disk cache, .pyc)")
    args = parser.parse_args()

    base = entry()
    rows = []
    for label, argv, target in CASES:
        cmd = base + argv
        for _ in range(args.warmup):
            time_once(cmd)
        times = [time_once(cmd) for _ in range(args.runs)]
        med = statistics.median(times)
        rows.append((label, med, min(times), max(times), target))

    print(f"Start-up, median of {args.runs} runs (fresh process each); "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {platform.machine()}\n")
    print("| command | median (s) | min (s) | max (s) | target (s) | |")
    print("|---|---:|---:|---:|---:|---|")
    for label, med, lo, hi, target in rows:
        ok = "ok" if med <= target else "over"
        print(f"| `{label}` | {med:.3f} | {lo:.3f} | {hi:.3f} | {target:.1f} | {ok} |")


if __name__ == "__main__":
    main()
