"""`ddpm-check derive`: the symbolic derivations, step by step (never imports torch)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

import derivations  # light: sympy is imported only when a derivation is built
from ddpm_check.commands.ui import Failed, console
from ddpm_check.errors import DDPMCheckError

FORMATS = ("text", "latex", "markdown", "json")
MIN_WIDTH = 20  # columns; narrower, an equation cannot show even one symbol group per line


def command(
    name: Annotated[Optional[str], typer.Argument(
        help=f"{', '.join(derivations.NAMES)}, or all. Omit it to list the derivations.", show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="Output format: text, latex, markdown or json.")] = "text",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    width: Annotated[Optional[int], typer.Option(help="Columns for text output (default: the terminal's).")] = None,
):
    """Example: ddpm-check derive posterior --format markdown"""
    if as_json and fmt not in ("text", "json"):  # "text" is the default: --json alone is --format json
        raise DDPMCheckError(f"--json is --format json; it cannot go with --format {fmt}")
    fmt = "json" if as_json else fmt
    if width is not None and width < MIN_WIDTH:
        raise DDPMCheckError(f"--width must be at least {MIN_WIDTH} columns, got {width}")
    if fmt not in FORMATS:
        raise DDPMCheckError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if name is None:
        return listing(fmt)
    if name != "all" and name not in derivations.NAMES:
        raise DDPMCheckError(f"no derivation {name!r}; valid: {'/'.join(derivations.NAMES + ('all',))}")
    names = derivations.NAMES if name == "all" else (name,)

    from derivations import render
    from derivations.step import DerivationError

    try:
        ds = [derivations.get(n) for n in names]
    except DerivationError as exc:  # a step that does not verify is a failed check
        raise Failed(str(exc), code=1) from None
    if fmt == "json":
        return render.to_json(ds[0]) if len(ds) == 1 else {"derivations": [render.to_json(d) for d in ds]}
    if fmt in ("latex", "markdown"):
        to = render.to_latex if fmt == "latex" else render.to_markdown
        sys.stdout.write("\n".join(to(d) for d in ds))
        return None
    from rich.console import Console

    con = Console(width=width, highlight=False) if width else console()
    for i, d in enumerate(ds):
        if i:
            con.rule()
        con.print(render.to_rich(d, con.width))
    return None


def listing(fmt: str):
    """One line per registered derivation (no sympy needed); --json: the same as a document."""
    entries = derivations.DERIVATIONS
    if fmt == "json":
        return {"derivations": [{"name": n, "description": e.summary} for n, e in entries.items()]}
    pad = max(len(n) for n in entries)
    for n, e in entries.items():
        sys.stdout.write(f"{n.ljust(pad)}  {e.summary}\n")
    sys.stdout.write(f"{'all'.ljust(pad)}  every derivation above, in order\n")
    return None
