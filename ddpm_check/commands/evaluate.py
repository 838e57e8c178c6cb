"""`ddpm-check evaluate`: score a model's digits (Frechet distance in a fixed classifier's features)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddpm_check.commands.ui import (SampleBatchSize, SampleCompile, Sampler, SamplerEta, SamplerSpacing, SamplerSteps,
                                    at_least, compile_fallback_line, compile_summary, console, esc, images,
                                    sampling_bar)
from ddpm_check.errors import DDPMCheckError, check_seed


def command(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint.safetensors file or a run folder (trained on digits).")],
    n: Annotated[int, typer.Option("-n", "--n", help="Number of samples to score.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the samples and of the noise ceiling.")] = 0,
    sampler_: Sampler = "ddpm",
    steps: SamplerSteps = None,
    eta: SamplerEta = None,
    spacing: SamplerSpacing = None,
    batch_size: SampleBatchSize = 500,
    compile_: SampleCompile = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
):
    import time

    from ddpm_check.commands.sample import sampler_line, sampler_summary
    from ddpm_check.ddim import from_options
    from ddpm_check.metrics import evaluate_digits, score_refusal
    from ddpm_check.sample import check_result_fits, load_sampler, sample

    from_options(sampler_, steps, eta, spacing)  # option errors before the checkpoint is read
    check_seed(seed, "--seed")
    at_least("-n", n, 2, " for a Frechet distance")
    at_least("--batch-size", batch_size, 1)
    sampler = load_sampler(checkpoint, device=device)
    refusal = score_refusal(sampler.data_cfg)
    if refusal is not None:  # no number that compares the model with images it trained on
        raise DDPMCheckError(f"{str(sampler.path)!r}: {refusal}")
    ddim = from_options(sampler_, steps, eta, spacing, T=sampler.diffusion.T)
    check_result_fits(n, sampler.shape)  # before the progress bar, which would leave a blank line
    con = console()
    t0 = time.perf_counter()
    if as_json:
        x = sample(sampler, n, seed=seed, batch_size=batch_size, compile=compile_, ddim=ddim)
    else:
        bar, task = sampling_bar(con, f"sampling {images(n)}")
        with bar:
            x = sample(sampler, n, seed=seed, batch_size=batch_size, compile=compile_, ddim=ddim,
                       progress=lambda k, tot: bar.update(task, completed=k, total=tot))
    seconds = time.perf_counter() - t0
    compile_fallback_line(con, as_json, compile_, sampler.compile_error, "sampled")
    score = evaluate_digits(x, seed=seed).to_dict()
    score.update(checkpoint=str(sampler.path), step=sampler.step, seed=seed, sampler=sampler_summary(sampler, ddim),
                 sampling_seconds=round(seconds, 2), **compile_summary(compile_, sampler.compile_error))
    if as_json:
        return score
    con.print(f"{esc(sampler.path)} (step {sampler.step}; {sampler_line(score['sampler'])}, "
              f"{seconds:.1f} s to sample)", soft_wrap=True)
    render_score(con, score)
    return None


def _subsets(k: int) -> str:
    return "1 subset" if k == 1 else f"{k} disjoint subsets"


def render_score(con, score: dict) -> None:
    """The digits score as a table: the samples between real held-in digits, two Gaussian baselines
    and noise, each against the held-out split, with the spreads and verdicts beside them."""
    from rich.table import Table

    from ddpm_check.metrics import BASELINES, ROW_LABELS, entropy_max_bits

    def half(rng):
        return "" if rng is None else f"±{(rng[1] - rng[0]) / 2:.3f}"

    con.print(f"digits quality: n = {score['n']} images per row, each set against the "
              f"{score['held_out_size']} held-out digits (never trained on)", soft_wrap=True)
    tab = Table()
    for col in ("images", "FD feat", "±", "FD pix", "±", "conf.", "bits"):
        tab.add_column(col, justify="left" if col == "images" else "right", no_wrap=col == "images")
    for key, r in score["rows"].items():
        tab.add_row(ROW_LABELS[key], f"{r['fd']:.3f}", half(r["fd_range"]), f"{r['fd_pixels']:.3f}",
                    half(r["fd_pixels_range"]), f"{r['confidence']:.3f}", f"{r['class_entropy_bits']:.2f}")
    con.print(tab)
    con.print(f"FD feat / pix: Frechet distance in the classifier's features / in pixels, lower is better; train digits: "
              f"{_subsets(score['rows']['real']['draws'])} of the {score['train_size']:,} the model trained on, the baselines and noise: 3 draws each; "
              f"±: half the range over them; conf.: the classifier's mean confidence; bits: entropy of the predicted digits (10 equal classes: "
              f"{entropy_max_bits():.2f})", soft_wrap=True)
    for b in BASELINES:
        parts = []
        for d, label in (("fd", "features"), ("fd_pixels", "pixels")):
            v = score["versus"][b][d]
            spread = "no spread" if v["spread"] is None else f"spread {v['spread']:.3f}"
            if v["verdict"] in ("better", "worse"):
                parts.append(f"{label} {v['verdict']} by {abs(v['margin']):.3f} ({spread})")
            elif v["spread"] is None:
                parts.append(f"{label} {v['margin']:+.3f} (no verdict: one real subset, no spread)")
            else:
                parts.append(f"{label} {v['verdict']} ({v['margin']:+.3f}, {spread})")
        con.print(f"samples vs {ROW_LABELS[b]}: " + "; ".join(parts), soft_wrap=True)
    con.print(f"memorised: {score['memorised']:.1%} of samples are nearer a training digit than 90% of held-out "
              f"digits are (held-out digits: {score['memorised_real']:.1%}; a copy of the training set: 100%)",
              soft_wrap=True)
    if score["relative"] is None:
        con.print(f"relative: undefined, the noise ceiling is not above the real-digit floor at n = {score['n']}",
                  soft_wrap=True)
    else:
        con.print(f"relative = (FD - floor)/(ceiling - floor) = {score['relative']:.3f}  "
                  f"(0: like real digits, 1: like noise; features)", soft_wrap=True)
    for note in score["notes"]:
        con.print(f"[yellow]{esc(note)}[/yellow]", soft_wrap=True)
