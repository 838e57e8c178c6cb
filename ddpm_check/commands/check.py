"""`ddpm-check check`: the Monte Carlo checks of the registry (``ddpm_check.montecarlo.CHECKS``),
rendered as a table of statistical tests, or as JSON."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ddpm_check import defaults
from ddpm_check.commands.ui import Failed, at_least, console
from ddpm_check.errors import DDPMCheckError
from ddpm_check.montecarlo import CHECK_NAMES, CHECKS

#: the table's width when the output is not a terminal (piped: room for every column)
TABLE_WIDTH = 150


def command(
    name: Annotated[Optional[str], typer.Argument(
        help=f"{', '.join(CHECK_NAMES)}, or all. Omit it to list the checks.", show_default=False)] = None,
    samples: Annotated[Optional[int], typer.Option(
        "--samples", help="Chains / samples per probe (default: each check's own).")] = None,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", help="Root seed; each check's seed derives from it and the check's name.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON (every row).")] = False,
    schedule: Annotated[Optional[str], typer.Option("--schedule", help="Check another schedule: linear or cosine.")] = None,
    T: Annotated[Optional[int], typer.Option(
        "--T", "-T", "--timesteps", help=f"Number of steps T of that schedule (default {defaults.T}).")] = None,
    beta_start: Annotated[Optional[float], typer.Option("--beta-start", help="Linear schedule: beta_1.")] = None,
    beta_end: Annotated[Optional[float], typer.Option("--beta-end", help="Linear schedule: beta_T.")] = None,
    network: Annotated[bool, typer.Option(
        "--network", help="With `all`: also run the checks that train a network (minutes).")] = False,
    steps: Annotated[Optional[int], typer.Option("--steps", help="network: training steps (default 1500).")] = None,
    variant: Annotated[Optional[str], typer.Option(
        "--variant", help="Run a known-wrong variant of one check (it should FAIL); see `check`.")] = None,
    full: Annotated[bool, typer.Option("--full", help="One table row per test statistic (default: the worst of each group).")] = False,
):
    """Each row is a statistical test with a known null distribution. Family-wise false-failure rate of `check all` <= 1e-4 (Bonferroni over the registered checks and their rows); each check prints the smallest error it detects with probability >= 0.999 (detectable δ).

    Example: ddpm-check check posterior --seed 7
    """
    if name is None:
        given = [flag for flag, v in (("--variant", variant), ("--steps", steps), ("--samples", samples),
                                      ("--seed", seed), ("--schedule", schedule), ("-T", T),
                                      ("--beta-start", beta_start), ("--beta-end", beta_end)) if v is not None]
        if given:  # options without a check to run: say so rather than list the checks and exit 0
            raise DDPMCheckError(f"{', '.join(given)} needs a check name: ddpm-check check NAME ... "
                                 f"(ddpm-check check lists them)")
        listing()
        return None
    from ddpm_check import montecarlo as mc
    from ddpm_check import stats
    from ddpm_check.schedules import ScheduleConfig

    names = mc.resolve_names(name, network=network)
    if variant is not None and len(names) != 1:
        raise DDPMCheckError("--variant needs one check name, not 'all'")
    options = {}
    if steps is not None:
        at_least("--steps", steps, 1)
        takers = mc.option_owners("steps")
        if not set(takers) & set(names):
            raise DDPMCheckError(f"--steps applies to the {', '.join(takers)} check only "
                                 f"(check {takers[0]}, or check all --network)")
        options["steps"] = steps
    sched = (None if schedule is None and T is None and beta_start is None and beta_end is None
             else ScheduleConfig.from_options(schedule, T, beta_start, beta_end))
    root = stats.DEFAULT_ROOT_SEED if seed is None else seed

    con = console()
    if not con.is_terminal and con.width < TABLE_WIDTH:  # piped: room for the table
        from rich.console import Console

        con = Console(width=TABLE_WIDTH, highlight=False, soft_wrap=False)
    err = console(stderr=True)
    results = []
    for n in names:
        if as_json:
            results.append(mc.run_check(n, samples=samples, seed=root, schedule=sched, variant=variant,
                                        **mc.options_for(n, options)))
        else:
            with err.status(f"check {n} ...") as status:
                results.append(mc.run_check(n, samples=samples, seed=root, schedule=sched, variant=variant,
                                            progress=lambda msg: status.update(msg), **mc.options_for(n, options)))
    ok = all(r.passed for r in results)
    document = None
    if as_json:
        document = {"passed": ok, "root_seed": root, "alpha_fw": stats.ALPHA_FW, "beta": stats.BETA,
                    "alpha_spent": sum(r.alpha_spent for r in results), "checks": [r.to_dict() for r in results]}
    else:
        render(con, results, full)
        if variant is not None and ok:
            con.print(f"[yellow]variant {variant} was not rejected with this schedule and seed: the mistake it "
                      f"injects may change nothing this check can see here (the test suite rejects it on the "
                      f"default schedule)[/yellow]", soft_wrap=True)
    if not ok:
        bad = ", ".join(r.name for r in results if not r.passed)
        again = f"--seed {root}" + (f" --variant {variant}" if variant is not None else "")
        raise Failed(f"{bad} (root seed {root}; rerun with {again})", code=1, label="FAILED", document=document)
    return document


def listing() -> None:
    """One line per registered check, with its wrong variants (the modules are imported: numpy)."""
    pad = max(len(n) for n in CHECKS)
    for n, entry in CHECKS.items():
        extra = "" if entry.in_all else "  (only when named, or `check all --network`)"
        sys.stdout.write(f"{n.ljust(pad)}  {entry.summary}{extra}\n")
        sys.stdout.write(f"{''.ljust(pad)}  wrong variants: {', '.join(entry.variants)}\n")
    slow = [n for n, e in CHECKS.items() if not e.in_all]
    sys.stdout.write(f"{'all'.ljust(pad)}  every check above" + (f" except {', '.join(slow)}" if slow else "") + "\n")


def fmt_num(v, digits: int = 4) -> str:
    """A table cell: 4 significant digits, scientific outside [1e-3, 1e5), "—" for None."""
    if v is None:
        return "—"
    v = float(v)
    if v != v:
        return "nan"
    if v in (float("inf"), float("-inf")):
        return "∞" if v > 0 else "-∞"
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e5:
        return f"{v:.{digits}g}"
    return f"{v:.{digits - 1}e}"


VERDICT_STYLE = {"pass": "green", "FAIL": "bold red", "finding": "yellow", "info": "dim"}


def table(results, full: bool, title: str = "Monte Carlo checks (pass: statistic <= threshold)"):
    """The checks' rows as one rich table (a section per check; grouped rows unless ``full``)."""
    from rich.markup import escape
    from rich.table import Table

    caption = None if full else ("a grouped row shows the worst of its group: (N) = N rows, all within the threshold; "
                                 "k/N = k of N rows rejected.  --full: every row.")
    tab = Table(title=title, title_justify="left",
                caption=caption, caption_justify="left", show_lines=False, pad_edge=False)
    for col, just in (("check", "left"), ("quantity", "left"), ("expected", "right"),
                      ("estimate", "right"), ("SE", "right"), ("statistic", "right"),
                      ("threshold", "right"), ("detectable δ", "right"), ("n", "right"),
                      ("verdict", "left")):
        tab.add_column(col, justify=just, overflow="fold", no_wrap=(col != "quantity"))
    for res in results:
        entries = [(r, 1, int(not r.passed)) for r in res.rows] if full else res.summary()
        for k, (row, count, bad) in enumerate(entries):
            what = f"{row.quantity}  {row.where}  ({row.source})"
            verdict = row.verdict if count == 1 else (
                f"{row.verdict} {bad}/{count}" if bad else f"{row.verdict} ({count})")
            style = VERDICT_STYLE[row.verdict]
            tab.add_row(res.name if k == 0 else "", escape(what), fmt_num(row.expected), fmt_num(row.estimate),
                        fmt_num(row.se, 3), fmt_num(row.statistic), fmt_num(row.threshold),
                        fmt_num(row.delta, 3), str(row.n), f"[{style}]{verdict}[/{style}]")
        if res is not results[-1]:
            tab.add_section()
    return tab


def render(con, results, full: bool, title: str | None = None) -> None:
    """The table, then one line per check (verdict, tests, alpha, seed, time) and its notes."""
    con.print(table(results, full) if title is None else table(results, full, title))
    for r in results:
        style = "green" if r.passed else "bold red"
        tests = r.tests
        alpha = min((x.alpha for x in tests if x.alpha > 0), default=0.0)
        line = (f"[{style}]{r.name}: {r.verdict}[/{style}]  {len(tests)} tests"
                + (f", alpha {alpha:.2g} each" if alpha else "")
                + f", seed {r.seed}, {r.runtime_s:.1f} s" + (f", variant {r.variant}" if r.variant else ""))
        con.print(line, soft_wrap=True)
        for note in r.notes:
            con.print("  " + note, soft_wrap=True, markup=False, style="dim")
    findings = [x for r in results for x in r.rows if x.verdict == "finding"]
    if findings:
        con.print(f"[yellow]{len(findings)} diagnostic row(s) are findings[/yellow] (reported, not failures).",
                  soft_wrap=True)
