"""`ddpm-check sample`: draw images from a trained model (Ho et al. Algorithm 2), with pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpm_check.commands.ui import (SampleBatchSize, SampleCompile, Sampler, SamplerEta, SamplerSpacing, SamplerSteps,
                                    at_least, compile_fallback_line, compile_summary, console, esc, images,
                                    sampling_bar)
from ddpm_check.errors import check_seed


def command(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint.safetensors file or a run folder.")],
    n: Annotated[int, typer.Option("-n", "--n", help="Number of samples.")] = 64,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default <run folder>/sample-seed<seed>).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of x_T and of every step's noise.")] = 0,
    npy: Annotated[bool, typer.Option("--npy", help="Also write the raw samples (n x C x H x W, float32, in about [-1, 1]) as samples.npy.")] = False,
    strip_rows: Annotated[int, typer.Option(help="Chains shown in reverse_process.png.")] = 4,
    sampler_: Sampler = "ddpm",
    steps: SamplerSteps = None,
    eta: SamplerEta = None,
    spacing: SamplerSpacing = None,
    batch_size: SampleBatchSize = 500,
    compile_: SampleCompile = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
):
    import numpy as np

    from ddpm_check.ddim import from_options
    from ddpm_check.sample import describe, load_sampler

    from_options(sampler_, steps, eta, spacing)  # option errors before the checkpoint is read
    check_seed(seed, "--seed")
    at_least("-n", n, 1)
    at_least("--strip-rows", strip_rows, 1)
    at_least("--batch-size", batch_size, 1)
    sampler = load_sampler(checkpoint, device=device)
    ddim = from_options(sampler_, steps, eta, spacing, T=sampler.diffusion.T)
    out_dir = Path(out) if out is not None else sampler.path.parent / f"sample-seed{seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    con = console()
    x, grid, strip = sample_pictures(sampler, n, n, min(strip_rows, n), seed, out_dir, con, as_json,
                                     batch_size=batch_size, compile=compile_, ddim=ddim)
    summary = {"checkpoint": str(sampler.path), "step": sampler.step, "n": n, "seed": seed,
               "sampler": sampler_summary(sampler, ddim),
               "shape": list(x.shape), "samples_png": str(grid), "reverse_process_png": str(strip),
               "npy": None, **describe(x), **compile_summary(compile_, sampler.compile_error)}
    if npy:
        np.save(out_dir / "samples.npy", x.numpy())
        summary["npy"] = str(out_dir / "samples.npy")
    if as_json:
        return summary
    con.print(f"sampled {images(n)} {list(x.shape[1:])} from {esc(sampler.path)} (step {sampler.step}, seed {seed}; "
              f"{sampler_line(summary['sampler'])})", soft_wrap=True)
    for key in ("samples_png", "reverse_process_png", "npy"):
        if summary[key]:
            con.print(f"  {esc(summary[key])}", soft_wrap=True)
    return None


def sampler_summary(sampler, ddim) -> dict:
    """The sampler a run used, for --json: Algorithm 2 over T steps, or the DDIM configuration,
    with what the network predicts (eps, x0 or v) and whether the schedule is zero-SNR."""
    d = sampler.diffusion
    model = {"prediction": d.prediction, "zero_snr": bool(d.schedule.config.zero_snr)}
    if ddim is None:
        return {"sampler": "ddpm", "steps": d.T, **model}
    return {**ddim.to_dict(), **model}


def sampler_line(s: dict) -> str:
    if s["sampler"] == "ddpm":
        line = f"DDPM, all {s['steps']} steps"
    else:
        line = f"DDIM, {s['steps']} steps, eta {s['eta']:g}, {s['spacing']} spacing"
    if s.get("prediction", "eps") != "eps":
        line += f", {s['prediction']}-prediction"
    return line + (", zero-SNR schedule" if s.get("zero_snr") else "")


def sample_pictures(sampler, n_images: int, n_grid: int, strip_rows: int, seed: int, out, con, quiet: bool,
                    prefix: str = "", batch_size: int = 500, compile: bool = False, ddim=None):
    """Sample once; write samples.png (first n_grid) and reverse_process.png (first strip_rows).
    Returns (samples, grid path, strip path); says so when samples are not finite (train uses it too)."""
    from ddpm_check.sample import (check_result_fits, count_non_finite, sample_with_strip, save_grid,
                                   save_reverse_strip)

    check_result_fits(n_images, sampler.shape)  # before the progress bar, which would leave a blank line
    if quiet:
        x, ts, frames = sample_with_strip(sampler, n_images, seed=seed, strip_rows=strip_rows,
                                          batch_size=batch_size, compile=compile, ddim=ddim)
    else:
        bar, task = sampling_bar(con, f"sampling {images(n_images)}")
        with bar:
            x, ts, frames = sample_with_strip(
                sampler, n_images, seed=seed, strip_rows=strip_rows, batch_size=batch_size,
                progress=lambda k, tot: bar.update(task, completed=k, total=tot), compile=compile, ddim=ddim)
    compile_fallback_line(con, quiet, compile, sampler.compile_error, "sampled")
    bad = count_non_finite(x)
    if bad and not quiet:
        con.print(f"[yellow]{bad:,} of {images(len(x))} contain NaN or inf: the model's output is not finite "
                  f"(diverged weights, e.g. a learning rate too high, or an extreme schedule)[/yellow]",
                  soft_wrap=True)
    grid = save_grid(x[:n_grid], out / f"{prefix}samples.png",
                     title=f"{min(n_grid, len(x))} samples, step {sampler.step}, seed {seed}")
    strip = save_reverse_strip(ts, frames, out / f"{prefix}reverse_process.png")
    return x, grid, strip
