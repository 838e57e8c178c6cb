"""ddpm-check: the command-line interface (Typer + rich).

This file parses options, calls the library and renders its results.  No math lives here.
Imports of torch and sympy are lazy (inside the commands), so ``ddpm-check --help`` imports
neither and ``ddpm-check derive`` never imports torch.

Errors: bad user input raises ``DDPMCheckError`` in the library; :func:`edge` turns it into
one red line on stderr and exit code 2.  A failed check exits 1.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

import typer

from ddpm_check.errors import DDPMCheckError

app = typer.Typer(
    name="ddpm-check",
    help="Derive, verify and teach the math of denoising diffusion probabilistic models (DDPM).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print one red line on stderr and return the Exit to raise."""
    _console(stderr=True).print(f"[bold red]error:[/bold red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


def edge(func: F) -> F:
    """Turn a DDPMCheckError raised below a command into one red line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DDPMCheckError as exc:
            raise fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj) -> None:
    """Write ``obj`` as JSON on stdout (no rich markup, so tools can parse it)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------------------------
# derive  (symbolic derivations; never imports torch)
# --------------------------------------------------------------------------------------------
# BEGIN derive-section
# END derive-section


# --------------------------------------------------------------------------------------------
# train / sample / evaluate  (the torch DDPM)
# --------------------------------------------------------------------------------------------
# BEGIN train-section
# END train-section


# --------------------------------------------------------------------------------------------
# check  (Monte Carlo verification of the derivations against the torch DDPM)
# --------------------------------------------------------------------------------------------
# BEGIN check-section
# END check-section


# --------------------------------------------------------------------------------------------
# schedule / audit
# --------------------------------------------------------------------------------------------
# BEGIN schedule-section
# END schedule-section


if __name__ == "__main__":  # pragma: no cover
    app()
