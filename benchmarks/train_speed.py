"""Training and sampling throughput of the `train --small` set-up, beside the source's own loop.

Run by hand (not a test), on a quiet machine:

    python benchmarks/train_speed.py [--threads 2] [--device cpu|cuda] [--write]

Both sides use the same SimpleUnet (UNetConfig.small, 8x8 digits, T = 300 linear, batch 128),
the same initial weights and the same in-memory images; what differs is the loop around the
model:

- ddpm-check: ``Trainer.train_step`` (channels_last weights, fused Adam, coefficients gathered
  on the device, L2 loss, and an EMA update the source does not do) and ``sample`` (batched
  ``p_sample_loop``: 0-d coefficient views, noise refilled in place, no host sync);
- diffusers (when installed): its DDPMScheduler loop over the same EMA model and batch
  (``benchmarks/diffusers_side.py``; checked to compute the same step as ddpm-check first);
- the source: ``ddpm_check/source.py`` (per-step CPU gathers through
  ``get_index_from_list``, L1 loss, default Adam, contiguous tensors; sampling one image at a
  time with ``if t == 0``).

The two sides alternate repeat by repeat, so a change in the machine's load hits both; the
figures are medians.  ``--write`` puts the table, with the machine, date and command, into
BENCHMARKS.md (section ``train-speed-<device>``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffusers_side  # noqa: E402
from mdsection import load_average, machine, write_section  # noqa: E402
from ddpm_check.source import SourceLoop  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-steps", type=int, default=20, help="timed training steps per repeat and side")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sample-n", type=int, default=64, help="images in ddpm-check's batched sampling run")
    ap.add_argument("--source-sample-n", type=int, default=2, help="images the source samples one at a time")
    ap.add_argument("--write", action="store_true", help="write the result into BENCHMARKS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ddpm_check.data import DataConfig
    from ddpm_check.sample import sample, sampler_from_modules
    from ddpm_check.schedules import ScheduleConfig
    from ddpm_check.train import Trainer, TrainConfig, resolve_device
    from ddpm_check.unet import UNetConfig

    device = resolve_device(args.device)
    B = 128
    tr = Trainer(UNetConfig.small(1), ScheduleConfig(T=300), DataConfig(),
                 TrainConfig(steps=10**9, batch_size=B, lr=1e-3, ema_decay=0.99), device=device,
                 distributed=False)
    T = tr.diffusion.T
    src = SourceLoop(T, device)

    # The source's model: the same architecture and initial weights, contiguous, default Adam.
    src_model = type(tr.model)(tr.model_cfg).to(device)
    src_model.load_state_dict(tr.model.state_dict())
    src_opt = torch.optim.Adam(src_model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def ours_train(n: int) -> None:
        for _ in range(n):
            tr.train_step()
        _sync(device)

    def source_train(n: int) -> None:
        src_model.train()
        for _ in range(n):
            batch = tr.data.batch(B, g)  # the data loader's CPU batch
            src.train_step(src_model, src_opt, batch, B)
        _sync(device)

    def alternate(fa, fb, n: int, repeats: int, warmup: int = 2) -> tuple[float, float]:
        if warmup:
            fa(warmup)
            fb(warmup)
        ta, tb = [], []
        for _ in range(repeats):
            for f, out in ((fa, ta), (fb, tb)):
                t0 = time.perf_counter()
                f(n)
                out.append(time.perf_counter() - t0)
        return statistics.median(ta), statistics.median(tb)

    print(f"{machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads, device {device.type}; "
          f"{load_average()}", flush=True)
    rows = []
    t_ours, t_src = alternate(ours_train, source_train, args.train_steps, args.repeats)
    rows.append((f"training, batch {B} (images/s)", args.train_steps * B / t_ours, args.train_steps * B / t_src))
    print(f"training done: {rows[-1][1]:.1f} vs {rows[-1][2]:.1f} images/s", flush=True)

    sampler = sampler_from_modules(tr.ema, tr.schedule, tr.data_cfg, device)
    src_model.eval()
    shape = sampler.shape
    src_model.load_state_dict(tr.ema.state_dict())  # the same weights on both sides

    def ours_sample(n: int):
        return lambda _n: (sample(sampler, n, seed=0), _sync(device))

    def source_sample(k: int):
        def run(_n):
            for _ in range(k):
                src.sample_image(src_model, shape)
            _sync(device)
        return run

    t_ours, t_src = alternate(ours_sample(1), source_sample(1), 1, max(3, args.repeats // 2), warmup=0)
    rows.append((f"sampling 1 image, T = {T} (images/s)", 1 / t_ours, 1 / t_src))
    print(f"sampling one image done: {t_ours:.2f} s vs {t_src:.2f} s", flush=True)
    t_ours, t_src = alternate(ours_sample(args.sample_n), source_sample(args.source_sample_n), 1,
                              max(3, args.repeats // 2), warmup=0)
    rows.append((f"sampling, ddpm-check batch of {args.sample_n}, T = {T} (images/s)",
                 args.sample_n / t_ours, args.source_sample_n / t_src))
    print(f"batched sampling done: {t_ours:.2f} s for {args.sample_n} images", flush=True)

    d_rows = []
    d_version = diffusers_side.available()
    if d_version:
        sch = diffusers_side.scheduler(tr.schedule)
        eps = sampler.eps_model()  # the model exactly as ddpm-check's sample() calls it
        diff_max = diffusers_side.check_same_step(eps, sch, sampler.diffusion, (4, *shape), device)
        print(f"diffusers {d_version}: one step agrees with ddpm-check to {diff_max:.2g}", flush=True)

        def diffusers_sample(k: int):
            return lambda _n: (diffusers_side.sample(eps, sch, (k, *shape), device), _sync(device))

        for k in (1, args.sample_n):
            t_ours, t_d = alternate(ours_sample(k), diffusers_sample(k), 1, max(3, args.repeats // 2), warmup=0)
            d_rows.append((f"sampling, batch of {k}, T = {T} (images/s)", k / t_ours, k / t_d))
            print(f"vs diffusers, batch {k}: {t_ours:.2f} s vs {t_d:.2f} s", flush=True)

    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = [
        f"## Training and sampling speed, `train --small` set-up, {device.type.upper()}",
        "",
        f"- machine: {machine()}",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; {load_average()} at the end",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads, device {device.type}",
        f"- command: `{cmd}`",
        f"- model: SimpleUnet {list(tr.model_cfg.down_channels)} "
        f"({sum(p.numel() for p in tr.model.parameters()):,} params), 8x8 digits, T = {T}; "
        f"the same initial weights on both sides; medians of alternating repeats",
        "- source loop: `ddpm_check/source.py` (CPU coefficient gathers, L1, default Adam, "
        "contiguous; sampling one image at a time with `if t == 0`)",
        "",
        "| stage | ddpm-check | source loop | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, ours, other in rows:
        lines.append(f"| {name} | {ours:,.1f} | {other:,.1f} | {ours / other:.2f}x |")
    if d_rows:
        lines += ["", f"The same EMA model and batch sampled by diffusers {d_version}'s DDPMScheduler loop "
                  "(`benchmarks/diffusers_side.py`; one step checked equal to ddpm-check's first):", "",
                  "| stage | ddpm-check | diffusers | ratio |", "| --- | ---: | ---: | ---: |"]
        for name, ours, other in d_rows:
            lines.append(f"| {name} | {ours:,.1f} | {other:,.1f} | {ours / other:.2f}x |")
    else:
        lines += ["", "diffusers is not installed here, so its DDPMScheduler loop was not timed "
                  "(`pip install diffusers` adds it)."]
    text = "\n".join(lines)
    print()
    print(text)
    if args.write:
        path = write_section(f"train-speed-{device.type}", text)
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
