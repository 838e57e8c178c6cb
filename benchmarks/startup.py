"""Start-up time of the CLI: `ddpm-check --help` and `ddpm-check derive posterior`.

Each command runs in a fresh subprocess several times; the median wall time is reported in a
Markdown table with the targets (2-core machine: --help <= 0.5 s, derive posterior <= 1.5 s).
The figures go to BENCHMARKS.md; no test asserts them.

    python benchmarks/startup.py            # 7 runs each, the installed `ddpm-check`
    python benchmarks/startup.py --runs 15
    python benchmarks/startup.py --against /tmp/old   # beside another checkout, runs interleaved

With ``--against DIR`` both trees run as ``python -c 'from cli import app; app()'`` from their
own folder (so each imports its own ``cli``, ``ddpm_check`` and ``derivations``), alternating
run by run so that the machine's load falls on both alike; the table adds the ratio.
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
    ("ddpm-check check (the listing)", ["check"], 1.5),
)
#: a checkout's CLI run from its own folder (its modules before any installed ones)
FROM_TREE = [sys.executable, "-c", "from cli import app; app(prog_name='ddpm-check')"]


def entry() -> list[str]:
    """The console script next to this interpreter, else `python -c 'from cli import app; app()'`."""
    script = Path(sys.executable).with_name("ddpm-check")
    if script.exists():
        return [str(script)]
    found = shutil.which("ddpm-check")
    if found:
        return [found]
    return [sys.executable, "-c", "from cli import app; app(prog_name='ddpm-check')"]


def time_once(cmd: list[str], cwd: Path = ROOT) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (disk cache, .pyc)")
    parser.add_argument("--against", type=Path, default=None, help="another checkout to time beside this one")
    args = parser.parse_args()

    print(f"Start-up, median of {args.runs} runs (fresh process each); "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {platform.machine()}\n")
    if args.against is not None:
        trees = {"this": ROOT, "other": args.against.resolve()}
        print(f"| command | this (s) | {args.against} (s) | this / other | target (s) |")
        print("|---|---:|---:|---:|---:|")
        for label, argv, target in CASES:
            for cwd in trees.values():
                for _ in range(args.warmup):
                    time_once(FROM_TREE + argv, cwd)
            times: dict[str, list[float]] = {k: [] for k in trees}
            for _ in range(args.runs):  # alternate, so that load falls on both alike
                for k, cwd in trees.items():
                    times[k].append(time_once(FROM_TREE + argv, cwd))
            this, other = (statistics.median(times[k]) for k in trees)
            print(f"| `{label}` | {this:.3f} | {other:.3f} | {this / other:.2f} | {target:.1f} |")
        return

    base = entry()
    rows = []
    for label, argv, target in CASES:
        cmd = base + argv
        for _ in range(args.warmup):
            time_once(cmd)
        times = [time_once(cmd) for _ in range(args.runs)]
        med = statistics.median(times)
        rows.append((label, med, min(times), max(times), target))

    print("| command | median (s) | min (s) | max (s) | target (s) | |")
    print("|---|---:|---:|---:|---:|---|")
    for label, med, lo, hi, target in rows:
        ok = "ok" if med <= target else "over"
        print(f"| `{label}` | {med:.3f} | {lo:.3f} | {hi:.3f} | {target:.1f} | {ok} |")


if __name__ == "__main__":
    main()
