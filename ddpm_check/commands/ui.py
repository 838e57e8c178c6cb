"""What the command modules share for talking to a person: consoles, escaping, option checks,
progress bars, number formatting, and :class:`Failed` to end a command with a message and an
exit code.  Imports only typer's and rich's light parts at module level (``--help`` stays light).
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from ddpm_check.errors import DDPMCheckError


class Failed(Exception):
    """End a command with one red ``label: message`` line on stderr and exit ``code`` (the CLI's
    edge prints it, after the command's --json ``document`` if it has one): a derivation step
    that does not verify (1), a failed check (1), Ctrl-C during training (130).  Bad input is a
    DDPMCheckError instead (exit 2)."""

    def __init__(self, message: str, code: int, label: str = "error", document: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.label = label
        self.document = document


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=stderr)


def esc(text: Any) -> str:
    """``text`` with rich markup escaped: user paths and messages print as given ("[x]" stays)."""
    from rich.markup import escape

    return escape(str(text))


def at_least(flag: str, value: int, minimum: int, why: str = "") -> None:
    """DDPMCheckError naming ``flag`` unless ``value >= minimum`` (the commands' own option checks)."""
    if value < minimum:
        raise DDPMCheckError(f"{flag} must be >= {minimum}{why}, got {value}")


def images(n: int) -> str:
    """"1 image", "1,000 images"."""
    return f"{n:,} image" + ("" if n == 1 else "s")


def sampling_bar(con, label: str):
    """A transient progress bar for sampling: (bar, task).  It vanishes from a terminal when done;
    elsewhere (a pipe, a log file) it would leave only an empty line behind, so it is not shown."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=con, transient=True, disable=not con.is_terminal)
    return bar, bar.add_task(label, total=None)


def compile_fallback_line(con, quiet: bool, asked: bool, error: str | None, done: str) -> None:
    """One yellow line when --compile was asked for but torch.compile fell back to eager mode."""
    if asked and error and not quiet:
        con.print(f"[yellow]torch.compile unavailable ({esc(error)}); {done} in eager mode[/yellow]", soft_wrap=True)


def compile_summary(asked: bool, error: str | None) -> dict:
    """--json's "compiled" (asked for and it worked) and "compile_error" (why not)."""
    return {"compiled": bool(asked) and error is None, "compile_error": error if asked else None}


#: --batch-size of sample and evaluate
SampleBatchSize = Annotated[int, typer.Option(
    "--batch-size", help="Images sampled at once; lower it if memory runs out (the samples of a seed depend on it).")]
#: the sampler options of sample and evaluate (checked by ddpm_check.ddim.from_options)
Sampler = Annotated[str, typer.Option(
    "--sampler", help="ddpm: Algorithm 2, all T steps | ddim: DDIM (Song et al. 2021), --steps of the T steps.")]
SamplerSteps = Annotated[Optional[int], typer.Option(
    "--steps", help="DDIM: steps to run (default 50, or T if smaller); fewer is faster and coarser.")]
SamplerEta = Annotated[Optional[float], typer.Option(
    "--eta", help="DDIM: noise scale in [0, 1]; 0 deterministic (default), 1 DDPM's variance on the visited steps.")]
SamplerSpacing = Annotated[Optional[str], typer.Option(
    "--spacing", help="DDIM: which steps: trailing (default: starts at T) | leading | linspace (diffusers' names).")]
#: --compile of sample and evaluate
SampleCompile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the network (faster for many images, mainly on a GPU; compiling takes seconds "
                      "to a minute first; falls back to eager if unavailable).")]
