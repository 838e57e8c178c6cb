"""`ddpm-check evaluate`: score a model's digits (Frechet distance in a fixed classifier's features)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddpm_check.commands.ui import (SampleBatchSize, SampleCompile, at_least, compile_fallback_line, compile_summary,
                                    console, esc, images, sampling_bar)
from ddpm_check.errors import DDPMCheckError, check_seed


def command(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint.safetensors file or a run folder (trained on digits).")],
    n: Annotated[int, typer.Option("-n", "--n", help="Number of samples to score.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the samples and of the noise ceiling.")] = 0,
    batch_size: SampleBatchSize = 500,
    compile_: SampleCompile = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
):
    from ddpm_check.metrics import evaluate_digits
    from ddpm_check.sample import check_result_fits, load_sampler, sample

    check_seed(seed, "--seed")
    at_least("-n", n, 2, " for a Frechet distance")
    at_least("--batch-size", batch_size, 1)
    sampler = load_sampler(checkpoint, device=device)
    if sampler.data_cfg.kind != "digits":
        raise DDPMCheckError(
            f"the quality metric is for models trained on the digits; {str(sampler.path)!r} was trained on "
            f"{sampler.data_cfg.kind!r}"
        )
    check_result_fits(n, sampler.shape)  # before the progress bar, which would leave a blank line
    con = console()
    if as_json:
        x = sample(sampler, n, seed=seed, batch_size=batch_size, compile=compile_)
    else:
        bar, task = sampling_bar(con, f"sampling {images(n)}")
        with bar:
            x = sample(sampler, n, seed=seed, batch_size=batch_size, compile=compile_,
                       progress=lambda k, tot: bar.update(task, completed=k, total=tot))
    compile_fallback_line(con, as_json, compile_, sampler.compile_error, "sampled")
    score = evaluate_digits(x, seed=seed).to_dict()
    score.update(checkpoint=str(sampler.path), step=sampler.step, seed=seed,
                 **compile_summary(compile_, sampler.compile_error))
    if as_json:
        return score
    con.print(f"{esc(sampler.path)} (step {sampler.step})", soft_wrap=True)
    render_score(con, score)
    return None


def render_score(con, score: dict) -> None:
    """The digits score as a table: samples beside real digits (floor) and noise (ceiling)."""
    from rich.table import Table

    from ddpm_check.metrics import HIDDEN as n_features  # below it every covariance is rank-deficient

    tab = Table(title=f"digits quality, n = {score['n']} (Frechet distance, classifier features)",
                title_justify="left")
    tab.add_column("images")
    tab.add_column("FD (lower is better)", justify="right")
    tab.add_column("mean confidence", justify="right")
    tab.add_row("samples", f"{score['fd_samples']:.3f}", f"{score['confidence']:.3f}")
    tab.add_row("real digits (floor)", f"{score['fd_floor']:.3f}", f"{score['confidence_real']:.3f}")
    tab.add_row("noise (ceiling)", f"{score['fd_ceiling']:.3f}", f"{score['confidence_noise']:.3f}")
    con.print(tab)
    if score["relative"] is None:
        con.print(f"relative: undefined, the noise ceiling is not above the real-digit floor at n = {score['n']}",
                  soft_wrap=True)
    else:
        con.print(f"relative = (FD - floor)/(ceiling - floor) = {score['relative']:.3f}  "
                  f"(0: like real digits, 1: like noise)", soft_wrap=True)
    if score["n"] < n_features:
        con.print(f"[yellow]n = {score['n']} is below the {n_features} classifier features: every FD here is "
                  f"rough (use -n 400, the default, or more)[/yellow]", soft_wrap=True)
