"""What one training step and one sampling step of the full SimpleUnet cost, counted, not timed.

    python benchmarks/step_cost.py [--batch 128] [--sample-batch 256] [--size 64] [--write]

Runs the model on torch's meta device (no memory, no arithmetic, any machine, a few seconds) in
bf16 and channels_last, as ddpm-check's Trainer runs it on a GPU, and counts per step:

- FLOPs (torch.utils.flop_counter), split by the feature-map size the convolutions work at;
- memory traffic of every operator: the bytes of its tensor inputs and outputs, each counted
  once per operator call (a lower bound: a BatchNorm's statistics pass re-reads its input; a
  cache can only help the small tensors).

With a GPU's peak bf16 rate P and memory bandwidth W this gives a floor for an eager step:
FLOPs / P + (bytes outside the convolutions) / W.  The figures explain how far a measured
step is from that floor and where the rest must go.  ``--write`` puts the tables into
BENCHMARKS.md (section ``step-cost``).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_check.unet import SimpleUnet, UNetConfig  # noqa: E402

# operators that only re-describe memory (views, allocations) move no bytes
NO_TRAFFIC = {"view", "_unsafe_view", "t", "detach", "unsqueeze", "squeeze", "expand", "slice", "permute",
              "transpose", "as_strided", "alias", "empty", "empty_like", "empty_strided", "zeros_like",
              "ones_like", "lift_fresh"}
KIND = {"convolution": "convolution", "convolution_backward": "convolution",
        "native_batch_norm": "BatchNorm", "native_batch_norm_backward": "BatchNorm",
        "relu": "ReLU", "threshold_backward": "ReLU",
        "add": "add, cat, sum", "add_": "add, cat, sum", "cat": "add, cat, sum", "sum": "add, cat, sum"}


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)


class Traffic(TorchDispatchMode):
    """Bytes in and out of every operator, by operator name; ``big`` counts only the tensors
    larger than ``cache_bytes`` (those cannot stay in the GPU's last-level cache between
    operators, so their bytes must cross the memory bus)."""

    def __init__(self, cache_bytes: int) -> None:
        super().__init__()
        self.cache_bytes = cache_bytes
        self.bytes: collections.Counter = collections.Counter()
        self.big: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket).split(".")[-1]
        if name not in NO_TRAFFIC:
            sizes = [t.numel() * t.element_size() for t in _tensors((args, kwargs or {}, out))]
            self.bytes[name] += sum(sizes)
            self.big[name] += sum(n for n in sizes if n > self.cache_bytes)
        return out


def conv_flops_by_size(model: SimpleUnet, size: int, batch: int, backward: bool) -> dict[int, float]:
    """Convolution FLOPs by the input feature-map size (H = W) each convolution works at."""
    sizes: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            hooks.append(mod.register_forward_pre_hook(
                lambda m, inp, name=name: sizes.__setitem__(name, inp[0].shape[-1])))
    fc = FlopCounterMode(display=False)
    with fc:
        y = model(*_inputs(batch, size, model.config.image_channels))
        if backward:
            y.float().square().mean().backward()
    for h in hooks:
        h.remove()
    by_size: dict[int, float] = collections.Counter()
    for mod_name, counts in fc.get_flop_counts().items():
        key = mod_name.split(".", 1)[1] if "." in mod_name else None  # "SimpleUnet.downs.0.conv1"
        if key in sizes:
            by_size[sizes[key]] += sum(v for op, v in counts.items() if "convolution" in str(op))
    return dict(by_size)


def _inputs(batch: int, size: int, channels: int):
    x = torch.randn(batch, channels, size, size, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 300, (batch,))
    return x, t


def measure(batch: int, size: int, train: bool, cache_bytes: int) -> dict:
    with torch.device("meta"):
        model = SimpleUnet(UNetConfig.source()).to(torch.bfloat16).to(memory_format=torch.channels_last)
        model.train(train)
        fc = FlopCounterMode(display=False)
        tr = Traffic(cache_bytes)
        with fc, tr:
            y = model(*_inputs(batch, size, 3))
            if train:
                y.float().square().mean().backward()
        by_size = conv_flops_by_size(model, size, batch, backward=train)
    params = sum(p.numel() for p in model.parameters())
    kinds: dict[str, float] = collections.Counter()
    big: dict[str, float] = collections.Counter()
    for name, b in tr.bytes.items():
        kinds[KIND.get(name, "other")] += b
        big[KIND.get(name, "other")] += tr.big[name]
    return {"flops": fc.get_total_flops(), "bytes": dict(kinds), "big": dict(big), "conv_flops_by_size": by_size,
            "params": params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300, help="sampling steps (T)")
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 dense peak (the issue's H200 measurement)")
    ap.add_argument("--bandwidth-tbs", type=float, default=4.8, help="memory bandwidth, TB/s (H200: 4.8)")
    ap.add_argument("--cache-mb", type=float, default=50.0, help="last-level cache, MB (H200: 50)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    rows = []
    for label, batch, train in ((f"training step, batch {args.batch}", args.batch, True),
                                (f"sampling step, batch {args.sample_batch}", args.sample_batch, False)):
        m = measure(batch, args.size, train, int(args.cache_mb * 1e6))
        # the optimizer and the EMA, fp32 parameters (Trainer: fused Adam reads p, g, m, v and
        # writes p, m, v; the EMA lerp reads ema, p and writes ema; autocast's bf16 weight copies)
        # (the parameters are 250 MB in fp32: they cross the memory bus every step)
        extra = ("Adam + EMA + weight casts", m["params"] * 4 * (7 + 3) + m["params"] * 6) if train else \
            ("weight casts", m["params"] * 6)
        m["bytes"][extra[0]] = m["big"][extra[0]] = extra[1]
        rows.append((label, batch, m))

    kinds = ["convolution", "BatchNorm", "ReLU", "add, cat, sum", "other", "Adam + EMA + weight casts", "weight casts"]
    P, W = args.peak_tflops * 1e12, args.bandwidth_tbs * 1e12
    lines = [
        f"## What a step costs: full SimpleUnet, {args.size}x{args.size} RGB, bf16, channels_last (counted)",
        "",
        f"- command: `python {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}` "
        f"(torch {torch.__version__}, meta device: counted, not timed; any machine)",
        "- bytes: each operator's tensor inputs and outputs once per call (a lower bound: BatchNorm's "
        "statistics pass re-reads its input); the byte floor counts only tensors larger than the "
        f"{args.cache_mb:g} MB last-level cache; floors at {args.peak_tflops:g} TFLOP/s bf16 and "
        f"{args.bandwidth_tbs:g} TB/s",
        "",
        "| step | GFLOP | GFLOP per image | GB in and out, by operator | floor: FLOPs | floor: bytes of large tensors outside convolutions | floor per step |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    floors = []
    for label, batch, m in rows:
        gb = ", ".join(f"{k} {m['bytes'][k] / 1e9:.2f}" for k in kinds if m["bytes"].get(k))
        t_f = m["flops"] / P
        t_b = sum(v for k, v in m["big"].items() if k != "convolution") / W
        lines.append(f"| {label} | {m['flops'] / 1e9:,.0f} | {m['flops'] / 1e9 / batch:.2f} | {gb} | "
                     f"{1000 * t_f:.2f} ms | {1000 * t_b:.2f} ms | {1000 * (t_f + t_b):.2f} ms |")
        floors.append((t_f, t_b, batch))
    (tf, tb, B), (sf, sb, N) = floors
    lines += ["", f"So an eager training step cannot beat {B / (tf + tb):,.0f} images/s (FLOPs alone: {B / tf:,.0f}), "
              f"and eager sampling of {N} images x {args.steps} steps cannot beat {args.steps * (sf + sb):.2f} s "
              f"(FLOPs alone: {args.steps * sf:.2f} s), however good each kernel is: eager kernels run one "
              "after another, each taking at least its FLOPs at peak or its bytes at full bandwidth. Below "
              "that needs the memory-bound operators fused into the convolutions or into fewer passes "
              "(torch.compile)."]
    lines += ["", "Convolution FLOPs by the feature-map size they work at (share of the step's convolution FLOPs):", "",
              "| step | " + " | ".join(f"{s}x{s}" for s in sorted(rows[0][2]["conv_flops_by_size"], reverse=True)) + " |",
              "| --- " + "| ---: " * len(rows[0][2]["conv_flops_by_size"]) + "|"]
    for label, _b, m in rows:
        d = m["conv_flops_by_size"]
        tot = sum(d.values())
        lines.append(f"| {label} | " + " | ".join(f"{100 * d.get(s, 0) / tot:.0f} %" for s in sorted(d, reverse=True)) + " |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        from mdsection import write_section

        print(f"\nwrote {write_section('step-cost', text)}")


if __name__ == "__main__":
    main()
