"""ddpm-check: the command-line interface (Typer + rich).

This file holds the Typer app, the edge where errors become one red line and an exit code, and
the JSON printer.  The commands live in ``ddpm_check/commands/``, one module each, registered
from ``ddpm_check.commands.COMMANDS``; they parse, call the library and render.  No math lives
here, and imports stay light: ``ddpm-check --help`` imports neither torch nor sympy (nor numpy),
and ``ddpm-check derive`` never imports torch.

Exit codes: 0 done; 1 a failed check or a derivation step that does not verify; 2 bad input
(``DDPMCheckError``, a path the file system refuses, running out of memory); 130 Ctrl-C.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import warnings
from typing import Annotated, Callable

import click
import typer
import typer.core
from typer.core import TyperGroup

from ddpm_check.commands import COMMANDS
from ddpm_check.commands.ui import Failed, console, esc
from ddpm_check.errors import DDPMCheckError, first_line

def _given_value(argv: list[str], opts: list[str]) -> str | None:
    """The text given on the command line to one of ``opts`` (``--x V`` or ``--x=V``), if any."""
    for k, word in enumerate(argv):
        for opt in opts:
            if word == opt and k + 1 < len(argv):
                return argv[k + 1]
            if word.startswith(opt + "="):
                return word[len(opt) + 1:]
    return None


#: the click that Typer parses with (Typer 0.29 carries its own copy as typer._click)
_cx = getattr(typer.core, "_click", click).exceptions
_Abort = getattr(typer.core, "Abort", click.exceptions.Abort)


class _OneLineUsageErrors(TyperGroup):
    """Typer's group, but a usage error (an option's value that does not parse, an unknown option,
    a missing one) is one red line naming the value, as every other bad input is, exit 2, and with
    --json also ``{"error": ..., "exit_code": 2}`` on stdout; not a boxed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except _cx.NoArgsIsHelpError as exc:  # no arguments: the help (rich prints it as the error is made)
            if str(exc).strip():
                print(str(exc))
            raise SystemExit(exc.exit_code) from None
        except _cx.UsageError as exc:
            message = exc.format_message().rstrip(".")
            if isinstance(exc, _cx.BadParameter) and exc.param is not None:
                given = _given_value(argv, list(exc.param.opts) + list(exc.param.secondary_opts))
                if given is not None and repr(given) not in message:
                    message += f" (got {given!r})"
            if exc.ctx is not None:
                message += f"; see '{exc.ctx.command_path} --help'"
            if "--json" in argv or _given_value(argv, ["--format", "-f"]) == "json":
                print_json({"error": message, "exit_code": exc.exit_code})
            raise SystemExit(fail(message, exc.exit_code).exit_code) from None
        except _cx.ClickException as exc:
            exc.show()
            raise SystemExit(exc.exit_code) from None
        except _Abort:
            console(stderr=True).print("Aborted!", highlight=False)
            raise SystemExit(1) from None
        raise SystemExit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="ddpm-check",
    help="Derive, verify and teach the math of denoising diffusion probabilistic models (DDPM).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("ddpm-check")
    except PackageNotFoundError:  # run from a source tree that was never installed
        v = "unknown (not installed)"
    print(f"ddpm-check {v}")
    raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False,
) -> None:
    """Derive, verify and teach the math of denoising diffusion probabilistic models (DDPM)."""


def print_json(obj) -> None:
    """Write ``obj`` as strict JSON on stdout (no rich markup, so tools can parse it): a
    non-finite number is the string "inf", "-inf" or "nan", as in the checks' rows."""
    from ddpm_check.jsonable import jsonable

    sys.stdout.write(json.dumps(jsonable(obj), indent=2, default=str, allow_nan=False) + "\n")


def fail(message: str, code: int = 2, label: str = "error") -> typer.Exit:
    """Print one red ``label: message`` line on stderr and return the Exit to raise."""
    console(stderr=True).print(f"[bold red]{label}:[/bold red] {esc(message)}", markup=True, highlight=False)
    return typer.Exit(code)


_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _out_of_memory(exc: BaseException) -> str | None:
    """The first line of an allocator's out-of-memory error (CPU or CUDA), else None."""
    if isinstance(exc, MemoryError):
        return "MemoryError"
    text = str(exc)
    if isinstance(exc, RuntimeError) and any(m in text.lower() for m in _OOM_MARKERS):
        first = first_line(exc)
        return first if len(first) <= 160 else first[:157] + "..."
    return None


def failure_of(exc: BaseException) -> tuple[str, int, str] | None:
    """(message, exit code, label) for what a user can act on without a traceback, else None (a
    bug: the traceback shows).  A command's own :class:`Failed` keeps its code; bad input
    (DDPMCheckError), a path the file system refuses and running out of memory exit 2."""
    if isinstance(exc, Failed):
        return str(exc), exc.code, exc.label
    if isinstance(exc, DDPMCheckError):
        return str(exc), 2, "error"
    if isinstance(exc, OSError):  # the file system refused: a path that cannot be made, read or written
        where = f" {exc.filename!r}" if exc.filename else ""
        why = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError):
            why = "a file of that name is in the way (a folder is needed)"
        elif isinstance(exc, NotADirectoryError):
            why = "a part of the path is a file, not a folder"
        return f"cannot use{where or ' a file'}: {why}", 2, "error"
    why = _out_of_memory(exc)  # torch.OutOfMemoryError is a RuntimeError
    if why is not None:
        return f"out of memory ({why}); ask for less: a smaller --batch-size, -n, --image-size or model", 2, "error"
    return None


def edge(func: Callable) -> Callable:
    """A command as the CLI runs it: the --json document it returns is printed; an exception a
    user can act on becomes one red line on stderr and its exit code (:func:`failure_of`; Ctrl-C:
    "interrupted", 130), after the document a failing command still has, or, with --json, after
    ``{"error": ..., "exit_code": ...}`` on stdout so that scripts can parse the failure too.
    The library's warning that torch.compile fell back to eager mode is silenced: the commands
    say so themselves, in one line (and in --json as compile_error)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        wants_json = bool(kwargs.get("as_json")) or kwargs.get("fmt") == "json"
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"torch\.compile ", category=UserWarning)
                document = func(*args, **kwargs)
        except KeyboardInterrupt:  # Ctrl-C where the command has nothing of its own to say
            failure = ("interrupted", 130, "error")
            document = None
        except Exception as exc:
            failure = failure_of(exc)
            if failure is None:
                raise
            document = exc.document if isinstance(exc, Failed) else None
        else:
            if document is not None:
                print_json(document)
            return
        if document is None and wants_json:  # scripts parse stdout: the failure, as JSON
            document = {"error": failure[0], "exit_code": failure[1]}
        if document is not None:
            print_json(document)
        raise fail(*failure)

    return wrapper


for _entry in COMMANDS.values():
    _command = _entry.load().command
    _details = inspect.cleandoc(_command.__doc__ or "")
    app.command(_entry.name, help=_entry.summary + (f"\n\n{_details}" if _details else ""))(edge(_command))


if __name__ == "__main__":  # pragma: no cover
    app()
