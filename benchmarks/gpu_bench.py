"""GPU speed and quality of ddpm-check beside the source's loop, in one run with a time budget.

    PYTHONPATH=. python3 benchmarks/gpu_bench.py                     # CUDA, the full set-up
    python benchmarks/gpu_bench.py --device cpu --tiny               # a < 60 s dry run on a CPU
    python benchmarks/gpu_bench.py --merge OUT/gpu_bench.md          # put a result into BENCHMARKS.md

Set-up (the issue's): the source's full SimpleUnet (62.4M parameters), 64x64 RGB, batch 128,
T = 300, random images (a pool of N(0, 1) draws clipped to [-1, 1]).  Sections, cheapest first,
each guarded (an error or a budget overrun in one leaves the others) and each written to
$OUT/gpu_bench.json as soon as it ends:

  env       torch, GPU, default TF32 flags
  train     images/s: the source loop (ddpm_check/source.py) in strict fp32 and with
            torch's defaults; ddpm-check's Trainer (bf16 autocast, channels_last, TF32, cuDNN
            autotuning, fused Adam, images on the GPU, EMA) through Trainer.run
  quality   the full SimpleUnet trained briefly on the digits (32x32) by the Trainer; eps-MSE of
            the EMA on a fixed batch (fixed x_0, t, eps) in fp32 and bf16; 400 samples in fp32
            (eager) and bf16 (CUDA graph), the same seed, scored by the digits metric
  sample    256 images x 300 steps: fp32 eager, bf16 eager, bf16 with the step replayed as a
            CUDA graph (p_sample_loop(graph=True), checked against eager), the source's
            one-image loop (timed on a few steps, extrapolated), diffusers' DDPMScheduler loop in
            bf16 if diffusers is installed
  ladder    where the Trainer's time goes (the issue's gap): the source's loop again, rung by
            rung as the issue measured it (TF32, + channels_last, + bf16 autocast, + cuDNN
            autotune), each on a fresh model
  ablate    the Trainer with one thing taken away at a time (the EMA update, cuDNN autotune,
            bf16 autocast, Trainer.run's loss read-back), beside the Trainer as it is
  profile   torch.profiler over a few steps of the Trainer, of the best source rung and of one
            bf16 sampling step: wall vs GPU-busy time per step, kernel time by kind
            (convolution/GEMM, BatchNorm, elementwise, copies and casts, optimizer, EMA) and the
            top kernels
  compile   in a child process with a timeout (what is left of the budget): Trainer(compile=True)
            training images/s and compile time; sampling with torch.compile(model) inside the
            CUDA graph

Timing: torch.cuda.synchronize() around perf_counter; warm-up steps first.  Output: progress
lines, Markdown tables (printed and written to $OUT/gpu_bench.md, and the ladder and profile to
$OUT/gpu_gap.md; OUT defaults to ./bench_out) and the JSON.  ``--only ladder,profile`` runs just
those sections (env always runs; the main tables then go to gpu_bench_partial.md, which
``--merge`` refuses, so a partial run never blanks the full one's rows); ``--merge`` takes
gpu_bench.md and gpu_gap.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

T0 = time.perf_counter()
TAG = ""


def log(msg: str) -> None:
    print(f"[{TAG}{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# set-up
# ------------------------------------------------------------------------------------------------
def make_setup(args):
    from ddpm_check.unet import UNetConfig

    if args.tiny:
        return dict(model=UNetConfig(3, (16, 32, 64), 16), size=16, batch=16, T=30, sample_n=8,
                    pool=64, warm=2, timed=5, src_timed=3, q_model=UNetConfig(1, (16, 32, 64), 16),
                    q_size=16, q_steps=30, q_seconds=10.0, q_n=64, src_sample_steps=5)
    return dict(model=UNetConfig.source(), size=64, batch=128, T=300, sample_n=256, pool=2048,
                warm=5, timed=50, src_timed=20, q_model=UNetConfig(1, UNetConfig.source().down_channels),
                q_size=32, q_steps=1500, q_seconds=12.0, q_n=400, src_sample_steps=30)


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


DEFAULT_FLAGS: tuple = ()  # torch's (matmul TF32, cuDNN TF32, cuDNN benchmark), read at start-up


def flags() -> tuple:
    import torch

    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)


def set_flags(f: tuple) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = f


class precision:
    """with precision("strict" | "defaults" | "fast"): TF32 off / torch's defaults / what the Trainer sets."""

    def __init__(self, mode: str):
        self.mode = mode

    def __enter__(self):
        self.saved = flags()
        set_flags({"strict": (False, False, DEFAULT_FLAGS[2]), "defaults": DEFAULT_FLAGS,
                   "fast": (True, True, True)}[self.mode])
        return self

    def __exit__(self, *exc):
        set_flags(self.saved)


class Bench:
    def __init__(self, args, out: Path, json_name: str = "gpu_bench.json"):
        import torch

        self.args, self.out = args, out
        self.dev = torch.device(args.device)
        self.cfg = make_setup(args)
        self.results: dict = {"sections": {}}
        self.json_path = out / json_name
        self.deadline = T0 + args.budget
        self.state: dict = {}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        os.replace(tmp, self.json_path)

    def section(self, name: str, need_s: float, fn) -> None:
        if self.left() < need_s:
            log(f"{name}: skipped, {self.left():.0f} s left < {need_s:.0f} s needed")
            self.results["sections"][name] = {"skipped": f"budget: {self.left():.0f} s left"}
            self.save()
            return
        log(f"{name}: start ({self.left():.0f} s left)")
        t = time.perf_counter()
        res: dict = {"started_at_s": round(time.perf_counter() - T0, 1)}
        self.results["sections"][name] = res
        self.save()  # a section killed at the deadline still shows that it started
        try:
            fn(res)
        except Exception as exc:  # one section's failure must not lose the others
            res["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            res["traceback"] = traceback.format_exc()[-3000:]
            log(f"{name}: ERROR {res['error']}")
        res["section_seconds"] = round(time.perf_counter() - t, 2)
        self.save()
        log(f"{name}: done in {res['section_seconds']} s")
        import gc

        import torch

        gc.collect()
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()

    # ---- helpers --------------------------------------------------------------------------------
    def pool(self, channels: int = 3):
        """Random images N(0, 1) clipped to [-1, 1], [pool, C, S, S] on the CPU."""
        import torch

        g = torch.Generator().manual_seed(0)
        s = self.cfg["size"]
        return torch.randn(self.cfg["pool"], channels, s, s, generator=g).clamp_(-1, 1)

    def trainer(self, compile: bool = False, data=None, model=None, size=None, steps=10**9, ema=0.999):
        from ddpm_check.data import DataConfig, ImageData
        from ddpm_check.schedules import ScheduleConfig
        from ddpm_check.train import Trainer, TrainConfig

        model = model or self.cfg["model"]
        size = size or self.cfg["size"]
        if data is None:
            dcfg = DataConfig(kind="mixture", channels=model.image_channels, image_size=size, n=self.cfg["pool"])
            data = ImageData(self.pool(model.image_channels), dcfg)
        else:
            dcfg = data.config
        return Trainer(model, ScheduleConfig(T=self.cfg["T"]), dcfg,
                       TrainConfig(steps=steps, batch_size=self.cfg["batch"], lr=1e-3, ema_decay=ema),
                       device=self.dev, data=data, compile=compile, distributed=False)

    def time_trainer(self, tr, res: dict, prefix: str = "") -> None:
        """Warm-up, then ``timed`` steps through Trainer.run (its loss read-back every 10 steps)."""
        B = self.cfg["batch"]
        t = time.perf_counter()
        tr.run(until=tr.step + 1)
        sync(self.dev)
        res[prefix + "first_step_s"] = round(time.perf_counter() - t, 3)  # compile / autotune
        tr.run(until=tr.step + self.cfg["warm"])
        sync(self.dev)
        n = self.cfg["timed"]
        t = time.perf_counter()
        tr.run(until=tr.step + n, report_every=10)
        sync(self.dev)
        dt = time.perf_counter() - t
        res[prefix + "images_per_s"] = round(n * B / dt, 1)
        res[prefix + "ms_per_step"] = round(1000 * dt / n, 3)
        res[prefix + "final_loss"] = tr.loss_history[-1]


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------
def sec_env(b: Bench, res: dict) -> None:
    import torch

    res.update(torch=torch.__version__, python=platform.python_version(), device=str(b.dev),
               date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), host=platform.node(),
               cpu_count=os.cpu_count(), tiny=b.args.tiny, budget_s=b.args.budget)
    if b.dev.type == "cuda":
        p = torch.cuda.get_device_properties(b.dev)
        res.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   default_matmul_tf32=DEFAULT_FLAGS[0], default_cudnn_tf32=DEFAULT_FLAGS[1],
                   default_cudnn_benchmark=DEFAULT_FLAGS[2])
    try:
        import triton

        res["triton"] = triton.__version__
    except Exception:
        res["triton"] = None
    try:
        import diffusers

        res["diffusers"] = diffusers.__version__
    except Exception:
        res["diffusers"] = None
    from ddpm_check.unet import count_parameters, SimpleUnet

    with torch.device("meta"):  # counts without initialising 62M weights
        res["params"] = count_parameters(SimpleUnet(b.cfg["model"]))
    res["setup"] = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in b.cfg.items()}


def _time_steps(b: Bench, step, n: int, warm: int = 3) -> tuple[float, Any]:
    """Seconds per step of ``step()`` after ``warm`` untimed calls (synchronised), and its last value."""
    out = None
    for _ in range(warm):
        step()
    sync(b.dev)
    t = time.perf_counter()
    for _ in range(n):
        out = step()
    sync(b.dev)
    return (time.perf_counter() - t) / max(n, 1), out


def _source_setup(b: Bench, channels_last: bool = False, bf16: bool = False):
    """The source's model and Adam on a fresh, seeded SimpleUnet, and one source training step as
    a function.  channels_last / bf16 add the issue's rungs around the same loop: the weights and
    the input in channels_last, the forward pass under bf16 autocast (output cast to float32)."""
    import torch

    from ddpm_check.source import SourceLoop
    from ddpm_check.unet import SimpleUnet

    B = b.cfg["batch"]
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = SimpleUnet(b.cfg["model"]).to(b.dev, memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    src = SourceLoop(b.cfg["T"], b.dev)
    pool = b.pool()
    g = torch.Generator().manual_seed(1)

    def net(x, t):
        x = x.contiguous(memory_format=fmt)
        if not bf16:
            return model(x, t)
        with torch.autocast(b.dev.type, dtype=torch.bfloat16):
            return model(x, t).float()

    def step():
        return src.train_step(net, opt, pool[torch.randint(len(pool), (B,), generator=g)], B)

    return step


def sec_train_source(b: Bench, res: dict) -> None:
    """The source loop: fp32 NCHW model, default Adam, CPU batches and CPU coefficient gathers."""
    B = b.cfg["batch"]
    variants = ["strict"]
    if b.dev.type == "cuda" and any(DEFAULT_FLAGS[:2]):
        variants.append("defaults")  # cuDNN's TF32 convolutions are on by default in torch
    step = _source_setup(b)
    for mode in variants:
        name = {"strict": "strict_fp32", "defaults": "torch_defaults"}[mode]
        with precision(mode):
            dt, loss = _time_steps(b, step, b.cfg["src_timed"])
            res[name] = {"images_per_s": round(B / dt, 1), "ms_per_step": round(1000 * dt, 2),
                         "loss": float(loss.detach()), "flags(matmul_tf32, cudnn_tf32, cudnn_benchmark)": flags()}
        log(f"  source loop {name}: {res[name]['images_per_s']:,} images/s")


def sec_train_ours(b: Bench, res: dict) -> None:
    tr = b.trainer()
    res["amp_bf16"] = tr._amp
    res["optimizer_fused"] = bool(tr.optimizer.defaults.get("fused"))
    b.time_trainer(tr, res)
    log(f"  ddpm-check Trainer eager: {res['images_per_s']:,} images/s")
    b.state["ema"] = tr.ema  # weights to sample with
    b.state["schedule"] = tr.schedule


def sec_quality(b: Bench, res: dict) -> None:
    """Full SimpleUnet on the digits; fp32 vs bf16 eps-MSE and sample quality on the same seed."""
    import torch

    from ddpm_check.data import DataConfig, load_data
    from ddpm_check.diffusion import GaussianDiffusion
    from ddpm_check.metrics import evaluate_digits
    from ddpm_check.train import autocast_model

    size = b.cfg["q_size"]
    data = load_data(DataConfig(kind="digits", image_size=size))
    tr = b.trainer(data=data, model=b.cfg["q_model"], size=size, ema=0.995)
    t = time.perf_counter()
    step_cap = b.cfg["q_steps"]
    while tr.step < step_cap and time.perf_counter() - t < b.cfg["q_seconds"]:
        tr.run(until=min(step_cap, tr.step + 50))
    sync(b.dev)
    res.update(train_steps=tr.step, train_seconds=round(time.perf_counter() - t, 2),
               final_loss=float(sum(tr.loss_history[-50:]) / len(tr.loss_history[-50:])),
               image_size=size, batch=b.cfg["batch"], ema_decay=0.995)
    log(f"  trained {tr.step} steps on the digits in {res['train_seconds']} s, loss {res['final_loss']:.4f}")
    ema = tr.ema.eval()
    diff = GaussianDiffusion(tr.schedule, device=b.dev)
    eps16 = autocast_model(ema, b.dev)

    def eps32(x, t):  # strict fp32: TF32 off for this call (the Trainer turned it on)
        with precision("strict"):
            return ema(x, t)

    # eps-MSE on a fixed batch: the same x_0, t, eps for both precisions
    g = torch.Generator().manual_seed(7)
    x0 = data.all()[torch.randint(len(data), (512,), generator=g)].to(b.dev)
    tt = torch.randint(0, diff.T, (512,), generator=g).to(b.dev)
    noise = torch.randn(x0.shape, generator=g).to(b.dev)
    with torch.no_grad():
        x_t = diff.q_sample(x0, tt, noise=noise)
        p32, p16 = eps32(x_t, tt).float(), eps16(x_t, tt).float()
        mse32 = float((p32 - noise).square().mean())
        mse16 = float((p16 - noise).square().mean())
        pred_rel = float((p16 - p32).square().mean() / p32.square().mean())
    res["eps_mse"] = {"fp32": mse32, "bf16": mse16, "relative_difference": abs(mse16 - mse32) / mse32,
                      "prediction_rel_mse": pred_rel, "n": 512}
    log(f"  eps-MSE fp32 {mse32:.5f}, bf16 {mse16:.5f} (relative difference {res['eps_mse']['relative_difference']:.2e})")
    # samples: fp32 eager vs bf16 with the CUDA-graph step, the same seed
    n = b.cfg["q_n"]
    scores = {}
    for name, model, graph in (("fp32_eager", eps32, False), ("bf16_graph", eps16, True)):
        gen = torch.Generator(b.dev).manual_seed(0)
        t = time.perf_counter()
        x = diff.p_sample_loop(model, (n, 1, size, size), generator=gen, graph=graph)
        sync(b.dev)
        dt = time.perf_counter() - t
        s = evaluate_digits(x.float().cpu(), seed=0)
        scores[name] = {"fd": s.fd_samples, "relative": s.relative, "confidence": s.confidence,
                        "fd_floor": s.fd_floor, "fd_ceiling": s.fd_ceiling, "sample_seconds": round(dt, 3)}
        scores[name + "_x"] = x
        log(f"  digits metric {name}: FD {s.fd_samples:.3f} (floor {s.fd_floor:.3f}, ceiling {s.fd_ceiling:.3f}), "
            f"relative {num(s.relative, '{:.3f}')}")
    xa, xb = scores.pop("fp32_eager_x"), scores.pop("bf16_graph_x")
    scores["sample_rms_difference"] = float((xa - xb).square().mean().sqrt())
    res["digits"] = scores


def _sample_model(b: Bench):
    import torch

    from ddpm_check.diffusion import GaussianDiffusion
    from ddpm_check.schedules import Schedule, ScheduleConfig
    from ddpm_check.unet import SimpleUnet

    ema = b.state.get("ema")
    if ema is None:  # the training section failed: fresh weights sample just as fast
        torch.manual_seed(0)
        ema = SimpleUnet(b.cfg["model"]).to(b.dev, memory_format=torch.channels_last)
    sched = b.state.get("schedule") or Schedule.from_config(ScheduleConfig(T=b.cfg["T"]))
    return ema.eval(), GaussianDiffusion(sched, device=b.dev)


def sec_sample(b: Bench, res: dict) -> None:
    import torch

    from ddpm_check.train import autocast_model
    from ddpm_check.unet import SimpleUnet
    from ddpm_check.source import SourceLoop

    ema, diff = _sample_model(b)
    n, s = b.cfg["sample_n"], b.cfg["size"]
    shape = (n, 3, s, s)
    outs = {}

    def run(name, model, graph, mode="fast"):
        with precision(mode):
            run_(name, model, graph)
            res[name]["flags(matmul_tf32, cudnn_tf32, cudnn_benchmark)"] = flags()

    def run_(name, model, graph):
        gen = torch.Generator(b.dev).manual_seed(0)
        # warm-up: a 3-step loop on the same batch size (cuDNN autotuning, allocator)
        warm = type(diff)(type(diff.schedule).from_betas(diff.schedule.betas[:3]), device=b.dev)
        warm.p_sample_loop(model, shape, generator=torch.Generator(b.dev).manual_seed(1), graph=graph)
        sync(b.dev)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = time.perf_counter()
            x = diff.p_sample_loop(model, shape, generator=gen, graph=graph)
            sync(b.dev)
            dt = time.perf_counter() - t
        res[name] = {"seconds": round(dt, 3), "images_per_s": round(n / dt, 1),
                     "warnings": [str(w.message)[:300] for w in caught]}
        outs[name] = x
        log(f"  sampling {name}: {dt:.3f} s for {n} images x {diff.T} steps")

    eps16 = autocast_model(ema, b.dev)
    run("fp32_eager", ema, False, mode="defaults")  # the source's precision: torch's defaults
    run("bf16_eager", eps16, False)
    run("bf16_cuda_graph", eps16, True)
    if "bf16_cuda_graph" in outs and "bf16_eager" in outs:
        d = (outs["bf16_cuda_graph"] - outs["bf16_eager"]).abs()
        res["graph_vs_eager"] = {"bitwise_equal": bool(torch.equal(outs["bf16_cuda_graph"], outs["bf16_eager"])),
                                 "max_abs_diff": float(d.max())}
    outs.clear()

    # the source's loop: one image at a time, timed on a few steps and extrapolated
    src = SourceLoop(diff.T, b.dev)
    src_model = SimpleUnet(b.cfg["model"]).to(b.dev).eval()
    src_model.load_state_dict(ema.state_dict())
    with precision("defaults"):  # as the source runs
        k = b.cfg["src_sample_steps"]
        src.sample_image(src_model, shape[1:], steps=3)
        sync(b.dev)
        t = time.perf_counter()
        src.sample_image(src_model, shape[1:], steps=k)
        sync(b.dev)
        per_step = (time.perf_counter() - t) / k
    total = per_step * diff.T * n
    res["source_one_image_fp32"] = {"ms_per_step_per_image": round(1000 * per_step, 3),
                                    "seconds_extrapolated": round(total, 1), "images_per_s": round(n / total, 2),
                                    "timed_steps": k}
    log(f"  source loop: {1000 * per_step:.2f} ms per step and image -> {total:.0f} s for {n} images (extrapolated)")

    import diffusers_side

    if not diffusers_side.available():
        res["diffusers_bf16"] = {"skipped": "diffusers not installed"}
        return
    sch = diffusers_side.scheduler(diff.schedule)
    with precision("fast"):
        agree = diffusers_side.check_same_step(eps16, sch, diff, (8, *shape[1:]), b.dev, tol=1e-3)  # the same model output on both sides
        diffusers_side.sample(eps16, sch, shape, b.dev, steps=3)
        sync(b.dev)
        t = time.perf_counter()
        diffusers_side.sample(eps16, sch, shape, b.dev)
        sync(b.dev)
        dt = time.perf_counter() - t
    res["diffusers_bf16"] = {"seconds": round(dt, 3), "images_per_s": round(n / dt, 1),
                             "version": diffusers_side.available(), "one_step_max_abs_diff": agree}
    log(f"  diffusers DDPMScheduler loop bf16: {dt:.3f} s")

# ---- the gap: the ladder on the source loop, the Trainer taken apart, a profile ----------
LADDER = (  # (name, (matmul TF32, cuDNN TF32, cuDNN autotune), channels_last, bf16)
    ("tf32", (True, True, False), False, False),
    ("tf32_channels_last", (True, True, False), True, False),
    ("tf32_channels_last_bf16", (True, True, False), True, True),
    ("tf32_channels_last_bf16_autotune", (True, True, True), True, True),
)


def sec_ladder(b: Bench, res: dict) -> None:
    """The source's loop with the issue's rungs added one at a time, each on a fresh model."""
    B = b.cfg["batch"]
    for name, fl, cl, bf16 in LADDER:
        saved = flags()
        set_flags(fl)
        try:
            step = _source_setup(b, channels_last=cl, bf16=bf16)
            dt, loss = _time_steps(b, step, b.cfg["src_timed"], warm=5)
        finally:
            set_flags(saved)
        res[name] = {"images_per_s": round(B / dt, 1), "ms_per_step": round(1000 * dt, 2), "loss": float(loss.detach())}
        log(f"  source loop {name}: {res[name]['images_per_s']:,} images/s")


ABLATIONS = ("as_is", "no_ema", "no_autotune", "no_bf16", "train_step_loop")


def _ablated_trainer(b: Bench, name: str):
    """A fresh Trainer with one speed measure taken away (``name`` in ABLATIONS)."""
    import torch

    tr = b.trainer()
    if name == "no_ema":
        tr._ema_update = lambda: None
    elif name == "no_autotune":
        torch.backends.cudnn.benchmark = False  # the Trainer turned it on; restored by the caller
    elif name == "no_bf16":  # TF32 float32 in channels_last, the Trainer's layout
        net = tr._net
        tr._eps = lambda x, t: net(x.contiguous(memory_format=torch.channels_last), t)
    return tr


def sec_ablate(b: Bench, res: dict) -> None:
    """The Trainer as it is, and with one measure taken away at a time, in the same process."""
    B = b.cfg["batch"]
    for name in ABLATIONS:
        saved = flags()
        try:
            tr = _ablated_trainer(b, name)
            r: dict = {}
            if name == "train_step_loop":  # train_step() alone: no loss read-back every 10 steps
                dt, _ = _time_steps(b, tr.train_step, b.cfg["timed"], warm=b.cfg["warm"] + 1)
                r.update(images_per_s=round(B / dt, 1), ms_per_step=round(1000 * dt, 3))
            else:
                b.time_trainer(tr, r)
        finally:
            set_flags(saved)
        res[name] = {k: r[k] for k in ("images_per_s", "ms_per_step", "first_step_s") if k in r}
        log(f"  Trainer {name}: {res[name]['images_per_s']:,} images/s")
        del tr


# kernel (or, on a CPU, operator) names -> kinds; the first pattern that matches wins
KINDS = (
    ("batchnorm", r"batch_?norm|bn_fw|bn_bw|bn_|welford"),
    ("lerp (EMA; Adam in the source)", r"lerp"),
    ("optimizer", r"adam|optim|multi_tensor|foreach"),
    ("copy / cast", r"memcpy|memset|copy|cast|to_copy|convert"),
    ("convolution / GEMM", r"conv|gemm|xmma|cutlass|cudnn|implicit|wgrad|dgrad|fprop|sm\d\d_|nhwc|nchw|mkldnn|addmm|\bmm\b"),
    ("reduction", r"reduce|sum|mean"),
    ("elementwise", r"elementwise|vectorized|unrolled|relu|threshold|add|mul|where|flip|index|gather"),
)


def _kind(name: str) -> str:
    import re

    low = name.lower()
    for kind, pat in KINDS:
        if re.search(pat, low):
            return kind
    return "other"


def _profile(b: Bench, fn, n: int) -> dict:
    """torch.profiler over ``n`` calls of ``fn`` (after one untimed call): per call, the wall time
    (profiler overhead included), the busy time of the GPU kernels (of the CPU operators' self
    time on a CPU) by kind, and the top 12 kernels."""
    import collections

    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = b.dev.type == "cuda"
    fn()
    sync(b.dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync(b.dev)
        wall = time.perf_counter() - t
    us: dict = collections.Counter()
    calls: dict = collections.Counter()
    busy_of = "GPU kernels" if cuda else "CPU operators (self time)"
    if cuda:
        for e in prof.events():
            if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA:
                us[e.name] += e.time_range.elapsed_us()
                calls[e.name] += 1
        if not us:  # a torch that lists no kernel events: the operators' own device time instead
            busy_of = "GPU time of operators (self)"
            for e in prof.key_averages():
                v = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
                if v > 0:
                    us[e.key] += v
                    calls[e.key] += e.count
    else:
        for e in prof.key_averages():
            if e.key.startswith("aten::") and e.self_cpu_time_total > 0:
                us[e.key] += e.self_cpu_time_total
                calls[e.key] += e.count
    kinds: dict = collections.Counter()
    for name, v in us.items():
        kinds[_kind(name)] += v
    busy = sum(us.values())
    return {
        "calls": n,
        "wall_ms": round(1000 * wall / n, 3),
        "busy_ms": round(busy / 1000 / n, 3),
        "busy_of": busy_of,
        "kinds_ms": {k: round(v / 1000 / n, 3) for k, v in kinds.most_common()},
        "top": [[name[:110], round(v / 1000 / n, 3), round(calls[name] / n, 1)] for name, v in us.most_common(12)],
    }


def sec_profile(b: Bench, res: dict) -> None:
    import torch

    from ddpm_check.train import autocast_model

    k = 5 if not b.args.tiny else 2
    tr = b.trainer()
    _time_steps(b, tr.train_step, 0, warm=b.cfg["warm"])  # autotune, allocator
    res["trainer_step"] = _profile(b, tr.train_step, k)
    log(f"  Trainer step: wall {res['trainer_step']['wall_ms']} ms, busy {res['trainer_step']['busy_ms']} ms")
    del tr
    name, fl, cl, bf16 = LADDER[-1]
    saved = flags()
    set_flags(fl)
    try:
        step = _source_setup(b, channels_last=cl, bf16=bf16)
        _time_steps(b, step, 0, warm=b.cfg["warm"])
        res["source_" + name] = _profile(b, step, k)
    finally:
        set_flags(saved)
    log(f"  source {name} step: wall {res['source_' + name]['wall_ms']} ms, busy {res['source_' + name]['busy_ms']} ms")
    ema, diff = _sample_model(b)
    n, s = b.cfg["sample_n"], b.cfg["size"]
    eps16 = autocast_model(ema, b.dev)
    x = torch.randn((n, 3, s, s), generator=torch.Generator(b.dev).manual_seed(0), device=b.dev)
    t = torch.full((n,), diff.T // 2, device=b.dev, dtype=torch.long)
    gen = torch.Generator(b.dev).manual_seed(1)
    with precision("fast"), torch.no_grad():
        res["sample_step_bf16"] = _profile(b, lambda: diff.p_sample(eps16, x, t, generator=gen), 3 * k)
    log(f"  sampling step bf16, batch {n}: wall {res['sample_step_bf16']['wall_ms']} ms, "
        f"busy {res['sample_step_bf16']['busy_ms']} ms")


# ---- the compile child ----------------------------------------------------------------------------
def child_compile(b: Bench) -> None:
    """Runs in its own process (killed at the deadline): torch.compile for training and sampling."""

    def train(res):
        tr = b.trainer(compile=True)
        b.time_trainer(tr, res)
        res["compile_error"] = tr.compile_error
        res["compiled"] = tr.compiled
        if tr.compiled and b.left() > 15:  # where the compiled step's time goes (see the profile section)
            res["profile"] = _profile(b, tr.train_step, 5 if not b.args.tiny else 2)
        log(f"  Trainer(compile=True): {res['images_per_s']:,} images/s, first step {res['first_step_s']} s"
            + (f", FELL BACK: {tr.compile_error}" if tr.compile_error else ""))
        b.state["ema"], b.state["schedule"] = tr.ema, tr.schedule

    def sample(res):
        import torch

        from ddpm_check.train import autocast_model

        from ddpm_check.data import DataConfig
        from ddpm_check.sample import sampler_from_modules

        ema, diff = _sample_model(b)
        n, s = b.cfg["sample_n"], b.cfg["size"]
        shape = (n, 3, s, s)
        sampler = sampler_from_modules(ema, diff.schedule, DataConfig(kind="mixture", channels=3, image_size=s), b.dev)
        warm = type(diff)(type(diff.schedule).from_betas(diff.schedule.betas[:3]), device=b.dev)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = time.perf_counter()
            eps = sampler.eps_model(compile=True, probe_shape=shape)  # the library's path: compiles here
            warm.p_sample_loop(eps, shape, generator=torch.Generator(b.dev).manual_seed(1), graph=True)
            sync(b.dev)
            res["compile_and_warmup_s"] = round(time.perf_counter() - t, 2)
            gen = torch.Generator(b.dev).manual_seed(0)
            t = time.perf_counter()
            x = diff.p_sample_loop(eps, shape, generator=gen, graph=True)
            sync(b.dev)
            dt = time.perf_counter() - t
        res["warnings"] = [str(w.message)[:300] for w in caught
                           if "graph" in str(w.message).lower() or "compile" in str(w.message).lower()]
        res.update(seconds=round(dt, 3), images_per_s=round(n / dt, 1))
        # one model call, compiled vs eager bf16, on the same input: fused kernels round differently
        tt = torch.full((n,), diff.T // 2, device=b.dev, dtype=torch.long)
        xin = torch.randn(shape, generator=torch.Generator(b.dev).manual_seed(2), device=b.dev)
        with torch.no_grad():
            e1, e0 = eps(xin, tt), autocast_model(ema, b.dev)(xin, tt)
        res["eps_rel_mse_vs_eager_bf16"] = float((e1 - e0).square().mean() / e0.square().mean())
        res["sample_finite"] = bool(torch.isfinite(x).all())
        log(f"  sampling bf16 + torch.compile + CUDA graph: {dt:.3f} s (compile {res['compile_and_warmup_s']} s)")

    b.section("train_compiled", 20, train)
    b.section("sample_compiled", 10, sample)


def run_child(b: Bench, res: dict) -> None:
    part = b.out / "gpu_bench_compile.json"
    if part.exists():
        part.unlink()
    timeout = max(5.0, b.left() - 3.0)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--device", b.args.device,
           "--budget", str(timeout), "--out", str(b.out)] + (["--tiny"] if b.args.tiny else [])
    res["timeout_s"] = round(timeout, 1)
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        res["returncode"] = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and its compile workers
        proc.wait()
        res["returncode"] = "killed at the deadline"
        log(f"  compile child killed after {timeout:.0f} s")
    if part.exists():
        child = json.loads(part.read_text())
        for name, sec in child.get("sections", {}).items():
            b.results["sections"][name] = sec
    for name in ("train_compiled", "sample_compiled"):
        sec = b.results["sections"].setdefault(name, {"skipped": f"compile child: {res['returncode']}"})
        if "started_at_s" in sec and "section_seconds" not in sec:
            sec["skipped"] = f"compile child {res['returncode']} during this section"


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------
def _getter(S: dict):
    def get(sec, *keys):
        d = S.get(sec, {})
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d
    return get


def num(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)


def _header(env: dict, command: str, title: str) -> list[str]:
    st = env.get("setup", {})
    title = (f"{title}, {st.get('size')}x{st.get('size')} RGB, batch {st.get('batch')}, T = {st.get('T')}"
             + (" (TINY DRY RUN: a small model, not the issue's set-up)" if env.get("tiny") else ""))
    return [
        title,
        "",
        f"- machine: {env.get('gpu', env.get('device'))} ({env.get('gpu_memory_gib', '?')} GiB), {env.get('cpu_count')} CPUs; "
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, triton {env.get('triton')}, "
        f"Python {env.get('python')}",
        f"- date: {env.get('date')}; command: `{command}`",
        f"- SimpleUnet {env.get('params', 0):,} parameters; random images; torch defaults: matmul TF32 "
        f"{env.get('default_matmul_tf32')}, cuDNN TF32 {env.get('default_cudnn_tf32')}",
    ]


def markdown(results: dict, command: str) -> str:
    S = results["sections"]
    env = S.get("env", {})
    get = _getter(S)
    src32 = get("train_source", "strict_fp32", "images_per_s")
    lines = [
        *_header(env, command, "## GPU: full SimpleUnet"),
        "",
        "| training | images/s | vs source fp32 |",
        "| --- | ---: | ---: |",
    ]
    rows = [("source loop, strict fp32", src32),
            ("source loop, torch defaults", get("train_source", "torch_defaults", "images_per_s")),
            ("ddpm-check Trainer (bf16 autocast, channels_last, TF32, cuDNN autotune, fused Adam, EMA)",
             get("train_ours", "images_per_s")),
            ("ddpm-check Trainer + torch.compile" + (" (FELL BACK to eager)" if get("train_compiled", "compile_error") else ""),
             get("train_compiled", "images_per_s"))]
    for name, v in rows:
        ratio = f"{v / src32:.1f}x" if v and src32 else "-"
        lines.append(f"| {name} | {num(v)} | {ratio} |")
    fs = get("train_compiled", "first_step_s")
    if fs is not None:
        lines.append(f"\ntorch.compile: first step (compiling) {fs} s.")
    n = get("env", "setup", "sample_n")
    lines += ["", f"| sampling {n} images x {get('env', 'setup', 'T')} steps | seconds | images/s |", "| --- | ---: | ---: |"]
    for key, name in (("fp32_eager", "ddpm-check fp32 eager (torch's default TF32 flags, as the source)"),
                      ("bf16_eager", "ddpm-check bf16 eager"),
                      ("bf16_cuda_graph", "ddpm-check bf16, CUDA graph (`p_sample_loop(graph=True)`, the default on CUDA)"),
                      ("diffusers_bf16", "diffusers DDPMScheduler loop, bf16")):
        d = S.get("sample", {}).get(key, {})
        lines.append(f"| {name} | {num(d.get('seconds'), '{:.2f}')} | {num(d.get('images_per_s'), '{:,.1f}')} |")
    sc = S.get("sample_compiled", {})
    lines.append(f"| ddpm-check bf16, torch.compile + CUDA graph | {num(sc.get('seconds'), '{:.2f}')} | "
                 f"{num(sc.get('images_per_s'), '{:,.1f}')} |")
    so = get("sample", "source_one_image_fp32")
    if so:
        lines.append(f"| source loop, one image at a time, fp32 (extrapolated from {so['timed_steps']} steps) | "
                     f"{so['seconds_extrapolated']:,.0f} | {so['images_per_s']:.2f} |")
    gv = get("sample", "graph_vs_eager")
    if gv:
        lines.append(f"\nCUDA graph vs eager, same seed: bitwise equal {gv['bitwise_equal']}, max |diff| {gv['max_abs_diff']:.2e}.")
    q = S.get("quality", {})
    if "eps_mse" in q:
        e = q["eps_mse"]
        lines += ["", f"Quality (full SimpleUnet trained {q['train_steps']} steps on {q['image_size']}x{q['image_size']} "
                      f"digits in {q['train_seconds']} s, EMA weights):", "",
                  "| | fp32 | bf16 |", "| --- | ---: | ---: |",
                  f"| eps-MSE, fixed batch of {e['n']} (x_0, t, eps) | {e['fp32']:.5f} | {e['bf16']:.5f} |"]
        d = q.get("digits", {})
        if "fp32_eager" in d:
            a, c = d["fp32_eager"], d["bf16_graph"]
            lines.append(f"| digits FD, {get('env', 'setup', 'q_n')} samples, seed 0 (floor {a['fd_floor']:.3f}, "
                         f"ceiling {a['fd_ceiling']:.3f}) | {a['fd']:.3f} | {c['fd']:.3f} |")
            lines.append(f"| relative (FD - floor)/(ceiling - floor) | {num(a['relative'], '{:.3f}')} | "
                         f"{num(c['relative'], '{:.3f}')} |")
        lines.append(f"\neps-MSE relative difference {e['relative_difference']:.2e}; bf16 vs fp32 predictions: "
                     f"relative MSE {e['prediction_rel_mse']:.2e}.")
    errs = [f"- {k}: {v.get('error') or v.get('skipped')}" for k, v in S.items()
            if isinstance(v, dict) and (v.get("error") or v.get("skipped"))]
    for k, v in S.get("sample", {}).items():
        if isinstance(v, dict) and v.get("warnings"):
            errs.append(f"- sample/{k} warned: {v['warnings'][0]}")
    if S.get("sample_compiled", {}).get("warnings"):
        errs.append(f"- sample_compiled warned: {S['sample_compiled']['warnings'][0]}")
    for k, v in S.get("sample", {}).items():
        if isinstance(v, dict) and v.get("skipped"):
            errs.append(f"- sample/{k}: {v['skipped']}")
    if errs:
        lines += ["", "Not measured:", *errs]
    return "\n".join(lines)


GAP_KINDS = ("convolution / GEMM", "batchnorm", "elementwise", "copy / cast", "reduction", "optimizer",
             "lerp (EMA; Adam in the source)", "other")


def markdown_gap(results: dict, command: str) -> str:
    """The ladder, the ablations and the profile as Markdown (the gpu-gap section of BENCHMARKS.md)."""
    S = results["sections"]
    env = S.get("env", {})
    get = _getter(S)
    lines = [*_header(env, command, "## GPU: where a training step's time goes"), ""]
    lad = S.get("ladder", {})
    if any(name in lad for name, *_ in LADDER):
        lines += ["| the source's loop, the issue's rungs (each on a fresh model) | images/s | ms per step |",
                  "| --- | ---: | ---: |"]
        labels = {"tf32": "TF32 matmul and convolutions", "tf32_channels_last": "+ channels_last",
                  "tf32_channels_last_bf16": "+ bf16 autocast", "tf32_channels_last_bf16_autotune": "+ cuDNN autotune"}
        for name, *_ in LADDER:
            d = lad.get(name, {})
            lines.append(f"| {labels[name]} | {num(d.get('images_per_s'))} | {num(d.get('ms_per_step'), '{:.2f}')} |")
        lines.append("")
    ab = S.get("ablate", {})
    if any(name in ab for name in ABLATIONS):
        ref = get("ablate", "as_is", "images_per_s")
        lines += ["| ddpm-check's Trainer | images/s | ms per step | vs as it is |", "| --- | ---: | ---: | ---: |"]
        labels = {"as_is": "as it is (`Trainer.run`)", "no_ema": "without the EMA update",
                  "no_autotune": "without cuDNN autotune", "no_bf16": "without bf16 autocast (TF32 float32)",
                  "train_step_loop": "`train_step()` alone (no loss read-back every 10 steps)"}
        for name in ABLATIONS:
            v = get("ablate", name, "images_per_s")
            ratio = f"{v / ref:.2f}x" if v and ref else "-"
            lines.append(f"| {labels[name]} | {num(v)} | {num(get('ablate', name, 'ms_per_step'), '{:.2f}')} | {ratio} |")
        lines.append("")
    prof = dict(S.get("profile", {}))
    if isinstance(S.get("train_compiled", {}).get("profile"), dict):
        prof["trainer_step_compiled"] = S["train_compiled"]["profile"]
    runs = [(k, v) for k, v in prof.items() if isinstance(v, dict) and "busy_ms" in v]
    if runs:
        busy_of = runs[0][1]["busy_of"]
        lines += [f"Profile (torch.profiler; ms per step; busy = {busy_of}, by kind):", "",
                  "| step | wall | busy | " + " | ".join(GAP_KINDS) + " |",
                  "| --- " + "| ---: " * (2 + len(GAP_KINDS)) + "|"]
        labels = {"trainer_step": "Trainer training step", "sample_step_bf16": "sampling step, bf16 eager",
                  "trainer_step_compiled": "Trainer training step, torch.compile"}
        labels.update({k: k.replace("source_", "source loop, ").replace("_", " ") for k, _ in runs if k not in labels})
        for key, v in runs:
            lines.append(f"| {labels[key]} | {v['wall_ms']:.2f} | {v['busy_ms']:.2f} | "
                         + " | ".join(num(v["kinds_ms"].get(k), "{:.2f}") for k in GAP_KINDS) + " |")
        for key, v in runs:
            lines += ["", f"Top kernels, {labels[key]}:", "", "| kernel | ms per step | calls per step |",
                      "| --- | ---: | ---: |"]
            for name, ms, calls in v["top"][:8]:
                lines.append(f"| `{name[:90]}` | {ms:.3f} | {calls:g} |")
    errs = [f"- {k}: {S[k].get('error') or S[k].get('skipped')}" for k in ("ladder", "ablate", "profile")
            if isinstance(S.get(k), dict) and (S[k].get("error") or S[k].get("skipped"))]
    if errs:
        lines += ["", "Not measured:", *errs]
    return "\n".join(lines)


#: name -> (seconds a section needs to start, function); run in this order
SECTIONS = {
    "train_source": (15, sec_train_source),
    "train_ours": (10, sec_train_ours),
    "ladder": (15, sec_ladder),
    "ablate": (20, sec_ablate),
    "profile": (15, sec_profile),
    "sample": (25, sec_sample),
    "quality": (35, sec_quality),
    "compile": (30, run_child),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model: a quick dry run (CPU)")
    ap.add_argument("--budget", type=float, default=190.0, help="total wall seconds, compile included")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile child")
    ap.add_argument("--only", metavar="SECTIONS", default=None,
                    help=f"comma-separated sections to run (env always runs): {', '.join(SECTIONS)}")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--merge", metavar="MD", nargs="+",
                    help="write gpu_bench.md and/or gpu_gap.md into BENCHMARKS.md and exit")
    args = ap.parse_args()

    if args.merge:
        from mdsection import write_section

        for md in args.merge:
            if "partial" in Path(md).name:
                sys.exit(f"{md} is from a run of some sections only (--only): its tables would replace "
                         "the full run's in BENCHMARKS.md with dashes; copy the rows you need by hand")
            name = "gpu-gap" if Path(md).name.startswith("gpu_gap") else "gpu-bench"
            print(f"wrote {name} into {write_section(name, Path(md).read_text())}")
        return
    only = None if args.only is None else {x.strip() for x in args.only.split(",") if x.strip()}
    if only is not None and not only <= set(SECTIONS):
        ap.error(f"unknown section(s) {sorted(only - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    global DEFAULT_FLAGS
    DEFAULT_FLAGS = flags()  # before any Trainer changes them
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available; use --device cpu --tiny for a dry run")
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    if args.child:
        global TAG
        TAG = "compile child "
    log(f"torch {torch.__version__} imported")

    if args.child:
        b = Bench(args, out, json_name="gpu_bench_compile.json")
        child_compile(b)
        return

    b = Bench(args, out)
    b.section("env", 0, lambda r: sec_env(b, r))
    for name, (need, fn) in SECTIONS.items():
        if (only is None or name in only) and not (name == "compile" and args.no_compile):
            b.section("compile_child" if name == "compile" else name, need, lambda r, fn=fn: fn(b, r))
    b.results["total_seconds"] = round(time.perf_counter() - T0, 1)
    b.save()
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    written = [out / "gpu_bench.json"]
    S = b.results["sections"]
    main_md = "gpu_bench.md" if only is None else "gpu_bench_partial.md"  # --merge refuses a partial one
    for fname, render, keys in ((main_md, markdown, ("train_ours", "sample", "quality")),
                                ("gpu_gap.md", markdown_gap, ("ladder", "ablate", "profile", "train_compiled"))):
        if any(k in S for k in keys):
            md = render(b.results, command)
            (out / fname).write_text(md + "\n")
            written.append(out / fname)
            print()
            print(md)
    print(f"\n[{b.results['total_seconds']} s] wrote {', '.join(map(str, written))}", flush=True)


if __name__ == "__main__":
    main()
