"""How the digits score falls with fewer DDIM steps, against full ancestral sampling (issue 15).

For each checkpoint (trained on the digits' train split, e.g. by `train --small`): draw n samples
(seed 0) with Algorithm 2 over all T steps, and with DDIM at S = 10, 25, 50, 100, 300 steps with eta = 0, 0.5
and 1 (trailing spacing, the default) plus S = 50, eta = 1 with the leading and linspace spacings; time the
sampling alone and score every set against the held-out split (`ddpm_check.metrics`).  Prints one
line per run, writes every record to --out (JSON) and, for the first checkpoint, a picture of the
same x_T taken to an image by each S (eta = 0 is deterministic, so each row starts from the same
noise).

    python benchmarks/ddim_quality.py runs/s0 runs/s1 runs/s2 --out benchmarks/results/ddim_quality.json

``--seeds 0 1 2`` repeats every run with other sampling seeds (the samples' own draw-to-draw
noise, which the real-digit spread does not include); ``--only LABEL ...`` runs just those
configurations (e.g. ``ddpm "ddim eta=0 S=50" "ddim eta=1 S=50"``); ``--no-picture`` skips the picture.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

STEPS = (10, 25, 50, 100, 300)
ETAS = (0.0, 0.5, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ddim_quality.json"))
    ap.add_argument("--picture", type=Path, default=Path("docs/ddim_steps.png"))
    ap.add_argument("--no-picture", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="+", default=None)
    a = ap.parse_args()

    import numpy as np
    import torch

    from ddpm_check.ddim import DDIMConfig
    from ddpm_check.metrics import evaluate_digits
    from ddpm_check.sample import load_sampler, sample, to_display

    runs = []
    for path in a.checkpoints:
        s = load_sampler(path, device="cpu")
        T = s.diffusion.T
        configs = [("ddpm", None)]
        for eta in ETAS:
            configs += [(f"ddim eta={eta:g} S={k}", DDIMConfig(k, eta, "trailing")) for k in STEPS if k <= T]
        configs += [(f"ddim eta=1 S=50 {sp}", DDIMConfig(50, 1.0, sp)) for sp in ("leading", "linspace") if T >= 50]
        if a.only:
            unknown = set(a.only) - {label for label, _ in configs}
            if unknown:
                raise SystemExit(f"unknown --only labels {sorted(unknown)}; known: {[lb for lb, _ in configs]}")
            configs = [(label, ddim) for label, ddim in configs if label in a.only]
        for label, ddim, seed in [(lb, dd, sd) for lb, dd in configs for sd in a.seeds]:
            t0 = time.perf_counter()
            x = sample(s, a.n, seed=seed, ddim=ddim)
            secs = time.perf_counter() - t0
            score = evaluate_digits(x, seed=0).to_dict()
            r = score["rows"]
            rec = {"checkpoint": str(path), "label": label, "seed": seed,
                   "prediction": s.diffusion.prediction, "zero_snr": bool(s.diffusion.schedule.config.zero_snr),
                   "sampler": ddim.to_dict() if ddim else {"sampler": "ddpm", "steps": T},
                   "sampling_seconds": round(secs, 2), "n": a.n, "fd": r["samples"]["fd"],
                   "fd_pixels": r["samples"]["fd_pixels"], "confidence": r["samples"]["confidence"],
                   "real_fd_range": r["real"]["fd_range"], "real_fd_pixels_range": r["real"]["fd_pixels_range"],
                   "class_gaussians_fd": r["class_gaussians"]["fd"], "class_gaussians_fd_pixels": r["class_gaussians"]["fd_pixels"]}
            runs.append(rec)
            print(f"{path} {label:20s} seed {seed} {secs:6.2f} s  FD feat {rec['fd']:.3f} pix {rec['fd_pixels']:.3f} "
                  f"conf {rec['confidence']:.3f}", flush=True)
        if path == a.checkpoints[0] and not a.no_picture:
            import matplotlib

            matplotlib.use("Agg", force=True)
            import matplotlib.pyplot as plt

            rows = [(f"DDIM S={k}", DDIMConfig(k, 0.0, "trailing")) for k in STEPS if k <= T]
            rows.append((f"DDPM {T}", None))
            fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.25 * len(rows)))
            for ax, (label, ddim) in zip(axes, rows):
                x = sample(s, 10, seed=1, ddim=ddim)
                strip = np.concatenate([to_display(xi) for xi in x], axis=1)  # [H, 10 W]
                ax.imshow(strip, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_ylabel(label, rotation=0, ha="right", va="center")
                ax.set_xticks([])
                ax.set_yticks([])
            fig.suptitle("the same x_T (one column each) taken to an image by DDIM (eta = 0) with S steps, "
                         "and by DDPM's T ancestral steps")
            fig.tight_layout()
            a.picture.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(a.picture, dpi=80)
            plt.close(fig)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(),
                                 "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
                                 "command": "python benchmarks/ddim_quality.py " + " ".join(sys.argv[1:]),
                                 "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
