"""What `sample --compile` buys on this machine: eager vs torch.compile sampling, same model and seed.

    python benchmarks/sample_compile.py            # print the table
    python benchmarks/sample_compile.py --write    # and put it into BENCHMARKS.md (section sample-compile)

The `train --small` model (SimpleUnet [32, 64, 128], 8x8, T = 300, random weights: the time does
not depend on them), n images in one batch.  Compiling is timed in a fresh process with
torch.compile's caches off (what a first `sample --compile` pays) and again with the caches
warm (what later runs pay); the sampling loops are timed after that, alternating eager and
compiled, median of the repeats.  The compiled samples are checked against the eager ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from mdsection import load_average, machine, publish  # noqa: E402


def _sampler():
    import torch

    from ddpm_check.data import DataConfig
    from ddpm_check.sample import sampler_from_modules
    from ddpm_check.schedules import Schedule, ScheduleConfig
    from ddpm_check.unet import SimpleUnet, UNetConfig

    torch.manual_seed(0)
    model = SimpleUnet(UNetConfig.small(1)).to(memory_format=torch.channels_last).eval()
    return sampler_from_modules(model, Schedule.from_config(ScheduleConfig(T=300)),
                                DataConfig(kind="digits", image_size=8), torch.device("cpu"))


def compile_seconds(n: int) -> float:
    """torch.compile of the sampler's network plus its first call, in this process."""
    s = _sampler()
    t = time.perf_counter()
    s.eps_model(compile=True, probe_shape=(n, *s.shape))
    if s.compile_error:
        raise SystemExit(f"torch.compile unavailable here: {s.compile_error}")
    return time.perf_counter() - t


def child(n: int, cold: bool) -> float:
    env = dict(os.environ, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1" if cold else "0")
    out = subprocess.run([sys.executable, __file__, "--child", str(n)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["compile_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=64, help="images in the batch (default 64)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps({"compile_s": compile_seconds(args.child)}))
        return

    import torch

    n = args.n
    cold = child(n, cold=True)
    child(n, cold=False)  # fills the caches, should this machine have none yet
    warm = child(n, cold=False)
    print(f"compile + first call: cold caches {cold:.1f} s, warm caches {warm:.1f} s", flush=True)
    s = _sampler()
    eps = {"eager": s.eps_model(compile=False), "compiled": s.eps_model(compile=True, probe_shape=(n, *s.shape))}
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    results = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, f in eps.items():
                g = torch.Generator().manual_seed(0)
                t = time.perf_counter()
                results[name] = s.diffusion.p_sample_loop(f, (n, *s.shape), generator=g)
                times[name].append(time.perf_counter() - t)
                print(f"  {name}: {times[name][-1]:.2f} s", flush=True)
    diff = float((results["eager"] - results["compiled"]).abs().max())
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["eager"] / med["compiled"]
    break_even = cold / (med["eager"] - med["compiled"]) if med["eager"] > med["compiled"] else float("inf")
    text = "\n".join([
        "## `sample --compile` on the CPU",
        "",
        f"- machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {load_average()} at the end",
        f"- command: `python benchmarks/sample_compile.py{' -n ' + str(n) if n != 64 else ''} --write`",
        f"- `train --small`'s SimpleUnet [32, 64, 128], 8x8, T = 300, {n} images in one batch; "
        f"median of {args.repeats} alternating runs of the sampling loop",
        "",
        "| | seconds |",
        "| --- | ---: |",
        f"| compile + first call, caches off (a first `sample --compile`) | {cold:.1f} |",
        f"| compile + first call, caches warm (later runs) | {warm:.1f} |",
        f"| sampling loop, eager | {med['eager']:.2f} |",
        f"| sampling loop, compiled | {med['compiled']:.2f} |",
        "",
        f"Compiled is {ratio:.2f}x as fast once compiled (largest difference from the eager samples {diff:.1e}); "
        + (f"with cold caches it pays for itself after about {break_even:.0f} such batches "
           f"({break_even * n:,.0f} images), with warm caches after about "
           f"{warm / (med['eager'] - med['compiled']):.0f}." if med["eager"] > med["compiled"]
           else "at this batch size it does not pay."),
    ])
    publish("sample-compile", text, args.write)


if __name__ == "__main__":
    main()
