"""`ddpm-check audit`: the source derivation claim by claim, each with a verdict computed now."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ddpm_check import defaults
from ddpm_check.commands.ui import console

STYLE = {"holds": "bold green", "erratum": "bold red", "caveat": "bold yellow"}

#: what `audit` audits, as the user knows it (the blog post the project starts from)
AUDITED = "the blog post \"Diffusion Model Study\" (2023-03-07)"


def command(
    samples: Annotated[int, typer.Option(help="Monte Carlo size of the audit's own simulations (the toolkit's checks it cites use their own sizes).")] = 20_000,
    seed: Annotated[int, typer.Option(help="Root seed (every simulation's seed is derived from it).")] = defaults.ROOT_SEED,
    only: Annotated[Optional[str], typer.Option(help="Comma-separated claim ids to audit (default: all). Ids: "
                                                    "forward-step-index, alpha-to-zero, gaussian-merge, closed-form, "
                                                    "alpha-bar-recursion, posterior, sampling-step, training-loss, "
                                                    "if-t-equals-0, embedding-order, positional-formula, terminal-prior, zero-snr-start, "
                                                    "sample-plot-index.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the claims, verdicts and evidence as JSON.")] = False,
):
    """The evidence is computed now by the toolkit's derivations, checks and schedule code. Exit 0 whatever the verdicts."""
    import time

    from ddpm_check import audit as A
    from ddpm_check.errors import check_seed
    from ddpm_check.stats import check_samples

    check_samples(samples, minimum=100, name="--samples")  # bad input fails before any work
    check_seed(seed, "--seed")
    ids = A.resolve_ids([only] if only else None)
    t0 = time.perf_counter()
    if as_json:
        claims = A.run_audit(samples=samples, seed=seed, only=ids)
    else:
        err = console(stderr=True)
        with err.status("auditing ...") as status:
            claims = A.run_audit(samples=samples, seed=seed, only=ids,
                                 progress=lambda cid: status.update(f"auditing {cid} ..."))
    elapsed = time.perf_counter() - t0
    counts = A.summary(claims)
    if as_json:
        return {"source": AUDITED, "samples": samples, "seed": seed,
                "summary": counts, "seconds": round(elapsed, 2), "claims": [c.to_dict() for c in claims]}
    render(claims, counts, elapsed)
    return None


def render(claims, counts, elapsed: float) -> None:
    """Each claim with its evidence, then a summary table and the counts."""
    from rich.markup import escape
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    con = console()
    for k, c in enumerate(claims, 1):
        style = STYLE[c.verdict]
        con.print(f"[bold][{k}] {escape(c.id)}[/bold]  [{style}]{c.verdict.upper()}[/{style}]  {escape(c.title)}")
        con.print(Padding(Text("source: " + c.source, style="italic"), (0, 0, 0, 4), expand=False))
        for line in c.lines:
            con.print(Padding(Text("- " + line), (0, 0, 0, 4), expand=False))
        con.print(Padding(Text("=> " + c.explanation), (0, 0, 0, 4), expand=False))
        con.print()
    con.print(f"audit of {escape(AUDITED)}", soft_wrap=True)  # above the table: its width would wrap it
    tab = Table()
    tab.add_column("#", justify="right")
    tab.add_column("claim")
    tab.add_column("verdict")
    tab.add_column("s", justify="right")
    for k, c in enumerate(claims, 1):
        style = STYLE[c.verdict]
        tab.add_row(str(k), escape(c.id), f"[{style}]{c.verdict}[/{style}]", f"{c.seconds:.1f}")
    con.print(tab)

    def n_of(k: int, one: str, many: str) -> str:
        return f"{k} {one if k == 1 else many}"

    con.print(f"{n_of(len(claims), 'claim', 'claims')}: {n_of(counts['holds'], 'holds', 'hold')}, "
              f"{n_of(counts['erratum'], 'erratum', 'errata')}, {n_of(counts['caveat'], 'caveat', 'caveats')} "
              f"({elapsed:.1f} s)")
