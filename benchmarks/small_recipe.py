"""Search the `train --small` recipe by the honest digits score (issue 14).

Each candidate is `train --small` with some options changed (`name:key=value,key=value`, keys
as :func:`ddpm_check.train.configs_from_options` takes them: steps, lr, ema_decay, channels_list,
schedule, timesteps, batch_size).  For each candidate and seed: train (timed, the number the
120 s budget is about), draw 400 samples (seed 0), score them against the held-out split.
Prints one line per run and appends a JSON record per run to ``--out``.

    python benchmarks/small_recipe.py --seeds 0 base: long:steps=3000,ema_decay=0.995
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def parse(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    kw = {}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition("=")
        if k in ("steps", "batch_size", "timesteps", "lr_warmup"):
            kw[k] = int(v)
        elif k in ("lr", "ema_decay", "beta_start", "beta_end"):
            kw[k] = float(v)
        else:
            kw[k] = v.replace("/", ",")  # channels_list=32/64/128
    return name, kw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidates", nargs="+")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/small_recipe.jsonl"))
    a = ap.parse_args()

    import torch

    from ddpm_check.metrics import evaluate_digits
    from ddpm_check.sample import sample, sampler_from_modules
    from ddpm_check.train import Trainer, configs_from_options

    a.out.parent.mkdir(parents=True, exist_ok=True)
    for spec in a.candidates:
        name, kw = parse(spec)
        for seed in (int(s) for s in a.seeds.split(",")):
            configs = configs_from_options(small=True, seed=seed, **kw)
            tr = Trainer(*configs, device="cpu")
            t0 = time.perf_counter()
            tr.run()
            train_s = time.perf_counter() - t0
            s = sampler_from_modules(tr.ema, tr.schedule, tr.data_cfg, tr.device, tr.step, tr.loss_history)
            t1 = time.perf_counter()
            x = sample(s, a.n, seed=0)
            sample_s = time.perf_counter() - t1
            score = evaluate_digits(x, seed=0).to_dict()
            rec = {"name": name, "options": kw, "seed": seed, "steps": tr.step, "train_seconds": round(train_s, 1),
                   "sample_seconds": round(sample_s, 1), "threads": torch.get_num_threads(),
                   "cpus": os.cpu_count(), "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
                   "score": score}
            with open(a.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            r = score["rows"]
            v = score["versus"]["class_gaussians"]
            print(f"{name:12s} seed {seed} steps {tr.step:5d} train {train_s:6.1f} s | FD feat {r['samples']['fd']:.3f} "
                  f"pix {r['samples']['fd_pixels']:.3f} conf {r['samples']['confidence']:.3f} "
                  f"ent {r['samples']['class_entropy_bits']:.2f} mem {score['memorised']:.3f} | vs class-G: "
                  f"{v['fd']['verdict']} ({v['fd']['margin']:+.3f}) / {v['fd_pixels']['verdict']} "
                  f"({v['fd_pixels']['margin']:+.3f})", flush=True)


if __name__ == "__main__":
    main()
