"""Repeat a 2-process torchrun training run and count how many end badly (issue 12, item 5).

A worker was once seen to abort at teardown ("terminate called without an active exception",
SIGABRT) and, once, to hang after the final barrier, on a busy 2-core machine.  This script
runs the command from that report ``--runs`` times, optionally with a CPU hog beside it (one
busy process per core, as a loaded machine), and for each run records the exit status, the wall
time, whether it hung (killed after ``--timeout`` seconds), whether stderr holds an abort, and
whether rank 0's JSON summary and pictures came out.  It prints one line per run and a summary,
and exits 1 if any run ended badly.

    python benchmarks/torchrun_teardown.py --runs 50 --hog
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _hog(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def one_run(out: Path, steps: int, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "cli.py"), "train", "--small", "--steps", str(steps), "--eval-n", "0",
           "--n-samples", "8", "--out", str(out), "--json"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    hung = False
    try:
        so, se = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = True
        os.killpg(p.pid, signal.SIGKILL)
        so, se = p.communicate()
    try:
        summary_ok = json.loads(so).get("step") == steps
    except (ValueError, AttributeError):
        summary_ok = False
    aborted = "terminate called" in se or "SIGABRT" in se or "Signal 6" in se
    pictures = all((out / f).exists() for f in ("samples.png", "reverse_process.png", "loss.png"))
    ok = not hung and p.returncode == 0 and summary_ok and pictures and not aborted
    return {"ok": ok, "rc": None if hung else p.returncode, "hung": hung, "aborted": aborted,
            "summary": summary_ok, "pictures": pictures, "seconds": time.perf_counter() - t0,
            "stderr_tail": "" if ok else se[-1500:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a run counts as hung")
    ap.add_argument("--hog", action="store_true", help="keep every core busy beside the runs")
    ap.add_argument("--json", type=Path, help="also write every run's record here")
    a = ap.parse_args()

    stop = mp.Event()
    hogs = [mp.Process(target=_hog, args=(stop,), daemon=True) for _ in range(os.cpu_count() or 1)] if a.hog else []
    for h in hogs:
        h.start()
    records = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(a.runs):
                out = Path(tmp) / f"run{i}"
                r = one_run(out, a.steps, a.timeout)
                shutil.rmtree(out, ignore_errors=True)
                records.append(r)
                print(f"run {i + 1:3d}/{a.runs}: {'ok ' if r['ok'] else 'BAD'} rc={r['rc']} hung={r['hung']} "
                      f"aborted={r['aborted']} summary={r['summary']} pictures={r['pictures']} {r['seconds']:.1f} s",
                      flush=True)
                if not r["ok"]:
                    print(r["stderr_tail"], flush=True)
    finally:
        stop.set()
        for h in hogs:
            h.join(timeout=5)
    bad = [r for r in records if not r["ok"]]
    secs = sorted(r["seconds"] for r in records)
    print(f"\n{len(records) - len(bad)} of {len(records)} runs ended cleanly "
          f"({sum(r['hung'] for r in records)} hung, {sum(r['aborted'] for r in records)} aborted); "
          f"{'with' if a.hog else 'without'} a CPU hog on {os.cpu_count()} cores; "
          f"median {secs[len(secs) // 2]:.1f} s per run")
    if a.json:
        a.json.write_text(json.dumps(records, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
