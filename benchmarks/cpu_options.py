"""What each of the Trainer's speed options buys on the CPU, in the `train --small` set-up.

    python benchmarks/cpu_options.py            # print the table
    python benchmarks/cpu_options.py --write    # and put it into BENCHMARKS.md (section cpu-options)

The options the Trainer turns on by itself on a CPU are channels_last weights (oneDNN's fast
convolution layout) and fused Adam; `train --compile` adds torch.compile.  Each variant takes
one away (or adds compile) on the same SimpleUnet [32, 64, 128], 8x8 digits, T = 300, batch 128,
same seed; the variants alternate repeat by repeat and the figures are medians.  Sampling (64
images x 300 steps of the EMA model) is timed with channels_last and with contiguous weights;
`benchmarks/sample_compile.py` covers sampling with torch.compile.

Every variant must compute the same training run: its first loss must equal the shipped
variant's within 1e-5 (rounding differences then grow, as in any training run, and are reported),
or the script stops.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from mdsection import load_average, machine, publish  # noqa: E402

VARIANTS = {
    "shipped": "as `train` runs it: channels_last weights, fused Adam",
    "contiguous": "contiguous (NCHW) weights instead of channels_last",
    "foreach_adam": "Adam's multi-tensor (foreach) loop instead of fused Adam",
    "neither": "contiguous weights and foreach Adam",
    "compiled": "as shipped + torch.compile (`train --compile`)",
}


def make(variant: str):
    from ddpm_check.data import DataConfig
    from ddpm_check.schedules import ScheduleConfig
    from ddpm_check.train import Trainer, TrainConfig
    from ddpm_check.unet import UNetConfig

    tr = Trainer(UNetConfig.small(1), ScheduleConfig(T=300), DataConfig(kind="digits", image_size=8),
                 TrainConfig(steps=10**9, batch_size=128), device="cpu", distributed=False,
                 compile=variant == "compiled")
    if variant in ("contiguous", "neither"):
        # Module.to keeps the Parameter objects (their data is replaced), so the optimizer still holds them
        tr.model.to(memory_format=torch.contiguous_format)
        tr.ema.to(memory_format=torch.contiguous_format)
    if variant in ("foreach_adam", "neither"):
        tr.optimizer = torch.optim.Adam(tr.model.parameters(), lr=tr.train_cfg.lr, foreach=True)
    return tr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per repeat and variant")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--sample-n", type=int, default=64)
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = ap.parse_args()

    trainers = {}
    first_step = {}
    for v in VARIANTS:
        trainers[v] = make(v)
        t = time.perf_counter()
        trainers[v].run(until=5)  # warm-up (compiling, for the compiled variant)
        first_step[v] = time.perf_counter() - t
        if trainers[v].compile_error:
            raise SystemExit(f"torch.compile unavailable here: {trainers[v].compile_error}")
    ips: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.repeats):
        for v, tr in trainers.items():
            t = time.perf_counter()
            tr.run(until=tr.step + args.steps, report_every=10)
            ips[v].append(args.steps * 128 / (time.perf_counter() - t))
        print(f"repeat {r + 1}: " + ", ".join(f"{v} {ips[v][-1]:,.0f}" for v in VARIANTS), flush=True)
    ref = torch.tensor(trainers["shipped"].loss_history)
    loss_diff = {v: float((torch.tensor(tr.loss_history) - ref).abs().max()) for v, tr in trainers.items()}
    # the first loss (before any update) must agree closely; rounding differences then grow, as in
    # any training run (Adam's first steps move every weight by about lr whatever the gradient's size)
    early = {v: abs(tr.loss_history[0] - float(ref[0])) for v, tr in trainers.items()}
    if max(early.values()) > 1e-5 or max(loss_diff.values()) > 0.05:
        raise SystemExit(f"the variants did not train the same run: loss differences {early} (first step), "
                         f"{loss_diff} (whole run)")

    from ddpm_check.sample import sampler_from_modules

    import copy

    tr = trainers["shipped"]  # one set of EMA weights, in both layouts
    ema_nchw = copy.deepcopy(tr.ema).to(memory_format=torch.contiguous_format)
    samplers = {"shipped": sampler_from_modules(tr.ema, tr.schedule, tr.data_cfg, tr.device, tr.step),
                "contiguous": sampler_from_modules(ema_nchw, tr.schedule, tr.data_cfg, tr.device, tr.step)}
    sample_s: dict[str, list[float]] = {v: [] for v in samplers}
    outs = {}
    with torch.no_grad():
        for _ in range(3):
            for v, s in samplers.items():
                g = torch.Generator().manual_seed(0)
                t = time.perf_counter()
                outs[v] = s.diffusion.p_sample_loop(s.eps_model(), (args.sample_n, *s.shape), generator=g)
                sample_s[v].append(time.perf_counter() - t)
    med = {v: statistics.median(x) for v, x in ips.items()}
    smed = {v: statistics.median(x) for v, x in sample_s.items()}
    base = med["shipped"]
    rows = [f"| {VARIANTS[v]} | {med[v]:,.0f} | {med[v] / base:.2f} | {early[v]:.0e} / {loss_diff[v]:.0e} |"
            for v in VARIANTS]
    text = "\n".join([
        "## What each speed option buys on the CPU (`train --small` set-up)",
        "",
        f"- machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {load_average()} at the end",
        f"- command: `python benchmarks/cpu_options.py --write`",
        f"- SimpleUnet [32, 64, 128], 8x8 digits, T = 300, batch 128; {args.steps} timed steps x "
        f"{args.repeats} alternating repeats after 5 warm-up steps (median)",
        "",
        "| training variant | images/s | vs shipped | loss difference from shipped: first step / largest over the run |",
        "| --- | ---: | ---: | ---: |",
        *rows,
        "",
        f"torch.compile: the 5 warm-up steps took {first_step['compiled']:.1f} s, compiling included "
        f"(torch's compile caches as this machine had them), against {first_step['shipped']:.1f} s eager.",
        "",
        f"| sampling {args.sample_n} images x 300 steps (EMA model) | seconds |",
        "| --- | ---: |",
        f"| channels_last weights (shipped) | {smed['shipped']:.2f} |",
        f"| contiguous weights | {smed['contiguous']:.2f} |",
        "",
        f"The same EMA weights in both layouts; the samples agree to "
        f"{float((outs['shipped'] - outs['contiguous']).abs().max()):.1e}.",
    ])
    publish("cpu-options", text, args.write)


if __name__ == "__main__":
    main()
