"""`ddpm-check verify`: hold any DDPM implementation to the derivations (``ddpm_check.verify``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ddpm_check import defaults
from ddpm_check.commands.ui import Failed, console


def command(
    target: Annotated[str, typer.Argument(
        help="ddpm_check (ours), source (the source blog's code), diffusers:DDPMScheduler, diffusers:DDIMScheduler, "
             "path/to/file.py:NAME or package.module:NAME (your object, or a class or zero-argument factory "
             "that makes it).", show_default=False)],
    samples: Annotated[Optional[int], typer.Option("--samples", help="Values per t in the step's variance rows (default 16,384).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Root seed of the inputs and the generators given to the target.")] = None,
    schedule: Annotated[Optional[str], typer.Option("--schedule", help="Built-in targets: linear or cosine.")] = None,
    T: Annotated[Optional[int], typer.Option("--T", "-T", "--timesteps", help=f"Built-in targets: T (default {defaults.T}).")] = None,
    beta_start: Annotated[Optional[float], typer.Option("--beta-start", help="Built-in targets: beta_1 of the linear schedule.")] = None,
    beta_end: Annotated[Optional[float], typer.Option("--beta-end", help="Built-in targets: beta_T of the linear schedule.")] = None,
    full: Annotated[bool, typer.Option("--full", help="One table row per test statistic (default: the worst of each group).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every row as JSON.")] = False,
):
    """The target exposes any of: betas / alphas_cumprod (+ schedule_claim), q_sample(x_0, t, noise), step(eps, t, x_t, generator), sample(model, shape, generator), loss(model, x_0, t, noise), ddim_step(eps, t, t_prev, x_t, eta, generator); t holds 0-based indices (timestep_base = 1 for paper steps). Each one found gets exact rows (to the rounding of its precision) and statistical rows (family-wise false-failure rate <= 1e-4); a missing one is "not provided", never a pass. README: "Verify your own implementation".

    Example: ddpm-check verify examples/correct_ddpm.py:ddpm
    """
    from ddpm_check import stats
    from ddpm_check.commands.check import TABLE_WIDTH, render
    from ddpm_check.errors import check_seed
    from ddpm_check.schedules import ScheduleConfig
    from ddpm_check.verify import engine, targets

    root = stats.DEFAULT_ROOT_SEED if seed is None else check_seed(seed, "--seed")
    n = engine.DEFAULT_SAMPLES if samples is None else samples
    sched = (None if schedule is None and T is None and beta_start is None and beta_end is None
             else ScheduleConfig.from_options(schedule, T, beta_start, beta_end))
    tgt = targets.load(target, sched)
    con = console()
    if not con.is_terminal and con.width < TABLE_WIDTH:
        from rich.console import Console

        con = Console(width=TABLE_WIDTH, highlight=False, soft_wrap=False)
    if as_json:
        report = engine.verify(tgt, samples=n, seed=root)
    else:
        with console(stderr=True).status(f"verify {target} ...") as status:
            report = engine.verify(tgt, samples=n, seed=root, progress=lambda m: status.update(m))
    document = {"root_seed": root, **report.to_dict()}
    if not as_json:
        if report.results:
            render(con, report.results, full, title=f"verify {target} (pass: statistic <= threshold)")
        for r in report.results:  # what the failing rows say: the target's message or the nearest known mistake
            bad = sorted((x for x in r.tests if not x.passed), key=lambda x: -x.margin)
            for x in [x for x in bad if x.note][:3]:
                con.print(f"[red]{r.name}[/red] {x.where}: {x.note}", soft_wrap=True, highlight=False)
            if len(bad) > 3:
                con.print(f"[red]{r.name}[/red]: {len(bad)} rows rejected in all (--full lists them)", soft_wrap=True)
            for x in [x for x in r.rows if x.verdict == "finding" and x.note][:3]:
                con.print(f"[yellow]{r.name}[/yellow] {x.where}: {x.note} (a finding, not a failure)", soft_wrap=True,
                          highlight=False)
        for cap in report.not_provided:
            con.print(f"[dim]{cap}: not provided[/dim]")
        for cap, why in report.skipped.items():
            con.print(f"[yellow]{cap}: not checked ({why})[/yellow]", soft_wrap=True)
        for note in report.notes:
            con.print(note, soft_wrap=True, style="dim", markup=False)
        tests = sum(len(r.tests) for r in report.results)
        con.print(f"{tests} tests; family-wise false-failure rate <= {stats.ALPHA_FW:g} (spent "
                  f"{report.alpha_spent:.3g}); {report.runtime_s:.1f} s", soft_wrap=True)
    if not report.passed:
        bad = ", ".join(r.name for r in report.results if not r.passed)
        raise Failed(f"{target}: {bad} (root seed {root})", code=1, label="FAILED", document=document if as_json else None)
    if as_json:
        return document
    con.print(f"[green]{target}: every check of what it provides passed[/green]")
    return None
