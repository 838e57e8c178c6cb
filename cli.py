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
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from ddpm_check.errors import DDPMCheckError, check_seed, first_line

app = typer.Typer(
    name="ddpm-check",
    help="Derive, verify and teach the math of denoising diffusion probabilistic models (DDPM).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable)


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


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=stderr)


def _esc(text: Any) -> str:
    """``text`` with rich markup escaped: user paths and messages print as given ("[x]" stays)."""
    from rich.markup import escape

    return escape(str(text))


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print one red line on stderr and return the Exit to raise."""
    _console(stderr=True).print(f"[bold red]error:[/bold red] {_esc(message)}", markup=True, highlight=False)
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


def edge(func: F) -> F:
    """Turn a DDPMCheckError raised below a command into one red line and exit code 2; so too
    what the user can act on without a traceback: the file system refusing a path, and running
    out of memory.  The library's warning that torch.compile fell back to eager mode is
    silenced: the commands say so themselves, in one line (and in --json as compile_error)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"torch\.compile ", category=UserWarning)
                return func(*args, **kwargs)
        except DDPMCheckError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:  # the file system refused: a path that cannot be made, read or written
            where = f" {exc.filename!r}" if exc.filename else ""
            why = exc.strerror or str(exc)
            if isinstance(exc, FileExistsError):
                why = "a file of that name is in the way (a folder is needed)"
            elif isinstance(exc, NotADirectoryError):
                why = "a part of the path is a file, not a folder"
            raise fail(f"cannot use{where or ' a file'}: {why}") from None
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            why = _out_of_memory(exc)
            if why is None:
                raise
            raise fail(f"out of memory ({why}); ask for less: a smaller --batch-size, -n, "
                       "--image-size or model") from None

    return wrapper  # type: ignore[return-value]


def _at_least(flag: str, value: int, minimum: int, why: str = "") -> None:
    """DDPMCheckError naming ``flag`` unless ``value >= minimum`` (the CLI's own option checks)."""
    if value < minimum:
        raise DDPMCheckError(f"{flag} must be >= {minimum}{why}, got {value}")


#: sample's and evaluate's --batch-size
_SampleBatchSize = Annotated[int, typer.Option(
    "--batch-size", help="Images sampled at once; lower it if memory runs out (the samples of a seed depend on it).")]


def print_json(obj) -> None:
    """Write ``obj`` as strict JSON on stdout (no rich markup, so tools can parse it): a
    non-finite number is the string "inf", "-inf" or "nan", as in the checks' rows."""
    from ddpm_check.jsonable import jsonable

    sys.stdout.write(json.dumps(jsonable(obj), indent=2, default=str, allow_nan=False) + "\n")


# --------------------------------------------------------------------------------------------
# derive  (symbolic derivations; never imports torch)
# --------------------------------------------------------------------------------------------
# BEGIN derive-section
_DERIVE_FORMATS = ("text", "latex", "markdown", "json")
_MIN_WIDTH = 20  # columns; narrower, an equation cannot show even one symbol group per line


@app.command()
@edge
def derive(
    name: Annotated[
        Optional[str],
        typer.Argument(
            help="marginal, posterior, mean-eps, elbo, or all. Omit it to list the derivations.",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="Output format: text, latex, markdown or json.")
    ] = "text",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    width: Annotated[
        Optional[int], typer.Option(help="Columns for text output (default: the terminal's).")
    ] = None,
) -> None:
    """Derive a DDPM formula step by step; sympy checks every step (✓).

    Example: ddpm-check derive posterior --format markdown
    """
    import derivations  # light: sympy is imported only when a derivation is built

    if as_json and fmt not in ("text", "json"):  # "text" is the default: --json alone is --format json
        raise DDPMCheckError(f"--json is --format json; it cannot go with --format {fmt}")
    fmt = "json" if as_json else fmt
    if width is not None and width < _MIN_WIDTH:
        raise DDPMCheckError(f"--width must be at least {_MIN_WIDTH} columns, got {width}")
    if fmt not in _DERIVE_FORMATS:
        raise DDPMCheckError(f"unknown format {fmt!r}; valid formats: {', '.join(_DERIVE_FORMATS)}")
    if name is None:
        _derive_list(derivations, fmt)
        return
    if name != "all" and name not in derivations.NAMES:
        valid = "/".join(derivations.NAMES + ("all",))
        raise DDPMCheckError(f"no derivation {name!r}; valid: {valid}")
    names = derivations.NAMES if name == "all" else (name,)

    from derivations import render
    from derivations.step import DerivationError

    try:
        ds = [derivations.get(n) for n in names]
    except DerivationError as exc:  # a step that does not verify is a failed check
        raise fail(str(exc), code=1) from None
    if fmt == "json":
        print_json(render.to_json(ds[0]) if len(ds) == 1 else {"derivations": [render.to_json(d) for d in ds]})
    elif fmt in ("latex", "markdown"):
        to = render.to_latex if fmt == "latex" else render.to_markdown
        sys.stdout.write("\n".join(to(d) for d in ds))
    else:
        from rich.console import Console

        console = Console(width=width, highlight=False) if width else _console()
        for i, d in enumerate(ds):
            if i:
                console.rule()
            console.print(render.to_rich(d, console.width))


def _derive_list(derivations, fmt: str) -> None:
    """One line per derivation (no sympy needed)."""
    if fmt == "json":
        print_json({"derivations": [{"name": n, "description": derivations.DESCRIPTIONS[n]} for n in derivations.NAMES]})
        return
    pad = max(len(n) for n in derivations.NAMES)
    for n in derivations.NAMES:
        sys.stdout.write(f"{n.ljust(pad)}  {derivations.DESCRIPTIONS[n]}\n")
    sys.stdout.write(f"{'all'.ljust(pad)}  every derivation above, in order\n")
# END derive-section


# --------------------------------------------------------------------------------------------
# train / sample / evaluate  (the torch DDPM)
# --------------------------------------------------------------------------------------------
# BEGIN train-section
_TRAIN_PRESETS: dict[str, dict] = {
    # `train --small`: the README's run, sized for ~2 minutes on a 2-core laptop CPU.  8x8 digits
    # (their native size: 16x16 costs 4x per step for no gain in the metric), T = 300 as the
    # source (sampling cost is linear in T), 1000 steps of batch 128 with an EMA of 0.99 reach
    # the metric's floor; 1500 or 2000 steps score the same at 1.5-2x the time.
    "small": dict(data="digits", image_size=8, model="small", timesteps=300, schedule="linear",
                  loss="l2", steps=1000, batch_size=128, lr=1e-3, ema_decay=0.99),
    # `train` (no --small) with the small model: the same run, six times longer.
    "default": dict(data="digits", image_size=8, model="small", timesteps=300, schedule="linear",
                    loss="l2", steps=6000, batch_size=128, lr=1e-3, ema_decay=0.999),
    # `train --model full`: the source's SimpleUnet and training set-up (a GPU run).
    "full": dict(data="digits", image_size=64, model="full", timesteps=300, schedule="linear",
                 loss="l2", steps=10000, batch_size=128, lr=1e-3, ema_decay=0.999),
}
_MODEL_CHOICES = ("small", "full")


def _parse_channels_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.replace(" ", "").split(","))  # an empty entry is refused
    except ValueError:
        raise DDPMCheckError(f"--channels-list {text!r} is not a comma-separated list of integers, e.g. 64,128,256") from None
    if len(vals) < 2 or any(v < 1 for v in vals):
        raise DDPMCheckError(f"--channels-list {text!r} needs at least 2 positive integers, e.g. 32,64,128")
    return vals


def _train_progress_bar(console, total: int, start: int, label: str):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[ips]} img/s"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
    task = bar.add_task(label, total=total, completed=start, loss="-", ips="-")
    return bar, task


def _non_finite(x) -> int:
    """How many samples [N, ...] hold a NaN or inf anywhere."""
    import torch

    return int((~torch.isfinite(x).flatten(1).all(dim=1)).sum())


def _images(n: int) -> str:
    return f"{n:,} image" + ("" if n == 1 else "s")


def _sampling_bar(console, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # transient: it vanishes from a terminal when done; elsewhere (a pipe, a log file) it would
    # leave only an empty line behind, so it is not shown there at all
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal)
    return bar, bar.add_task(label, total=None)


def _render_score(console, score: dict) -> None:
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
    console.print(tab)
    if score["relative"] is None:
        console.print(f"relative: undefined, the noise ceiling is not above the real-digit floor at n = {score['n']}",
                      soft_wrap=True)
    else:
        console.print(f"relative = (FD - floor)/(ceiling - floor) = {score['relative']:.3f}  "
                      f"(0: like real digits, 1: like noise)", soft_wrap=True)
    if score["n"] < n_features:
        console.print(f"[yellow]n = {score['n']} is below the {n_features} classifier features: every FD here is "
                      f"rough (use -n 400, the default, or more)[/yellow]", soft_wrap=True)


def _sample_pictures(sampler, n_images: int, n_grid: int, strip_rows: int, seed: int, out,
                     console, quiet: bool, prefix: str = "", batch_size: int = 500, compile: bool = False):
    """Sample once; write samples.png (first n_grid) and reverse_process.png (first strip_rows)."""
    from ddpm_check.sample import check_result_fits, sample_with_strip, save_grid, save_reverse_strip

    check_result_fits(n_images, sampler.shape)  # before the progress bar, which would leave a blank line
    if quiet:
        x, ts, frames = sample_with_strip(sampler, n_images, seed=seed, strip_rows=strip_rows,
                                          batch_size=batch_size, compile=compile)
    else:
        bar, task = _sampling_bar(console, f"sampling {_images(n_images)}")
        with bar:
            x, ts, frames = sample_with_strip(
                sampler, n_images, seed=seed, strip_rows=strip_rows, batch_size=batch_size,
                progress=lambda k, tot: bar.update(task, completed=k, total=tot), compile=compile)
    _compile_fallback_line(console, quiet, compile, sampler.compile_error, "sampled")
    bad = _non_finite(x)
    if bad and not quiet:
        console.print(f"[yellow]{bad:,} of {_images(len(x))} contain NaN or inf: the model's output is not finite "
                      f"(diverged weights, e.g. a learning rate too high, or an extreme schedule)[/yellow]",
                      soft_wrap=True)
    grid = save_grid(x[:n_grid], out / f"{prefix}samples.png",
                     title=f"{min(n_grid, len(x))} samples, step {sampler.step}, seed {seed}")
    strip = save_reverse_strip(ts, frames, out / f"{prefix}reverse_process.png")
    return x, grid, strip


def _compile_fallback_line(console, quiet: bool, asked: bool, error: str | None, done: str) -> None:
    """One yellow line when --compile was asked for but torch.compile fell back to eager mode."""
    if asked and error and not quiet:
        console.print(f"[yellow]torch.compile unavailable ({_esc(error)}); {done} in eager mode[/yellow]",
                      soft_wrap=True)


def _compile_summary(asked: bool, error: str | None) -> dict:
    """--json's "compiled" (asked for and it worked) and "compile_error" (why not)."""
    return {"compiled": bool(asked) and error is None, "compile_error": error if asked else None}


#: what train writes into its output folder
_RUN_FILES = ("checkpoint.safetensors", "config.json", "samples.png", "reverse_process.png", "loss.png")


def _check_run_name(name: str) -> None:
    import os

    seps = {"/", "\\", os.sep, os.altsep or "/"}
    if not name.strip() or name in (".", "..") or any(c in name for c in seps):
        raise DDPMCheckError(f"--name must be a plain folder name (no '/', not '.' or '..'), got {name!r}; "
                             f"--out takes a path")


def _check_out_dir(out_dir: Path, continuing: Path | None = None) -> None:
    """Refuse an output folder holding files this run would overwrite and that are not its own:
    another run's checkpoint, or (outside the folder of the run being continued) any run file."""
    ck = out_dir / "checkpoint.safetensors"
    if continuing is not None and ck.exists() and ck.resolve() == Path(continuing).resolve():
        return  # the run's own folder: it goes on there
    if ck.exists():
        if continuing is None:
            raise DDPMCheckError(f"output folder {str(out_dir)!r} already holds a checkpoint; "
                                 f"use --resume {out_dir} or another --out")
        raise DDPMCheckError(f"output folder {str(out_dir)!r} already holds another run's checkpoint; choose "
                             f"another --out (without --out the run goes on in {str(Path(continuing).parent)!r})")
    clash = [f for f in _RUN_FILES if (out_dir / f).exists()]
    if clash:
        raise DDPMCheckError(f"output folder {str(out_dir)!r} already holds {', '.join(clash)}, which this run "
                             f"would overwrite; choose another --out or move them")


#: --compile of sample and evaluate
_SampleCompile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the network (faster for many images, mainly on a GPU; compiling takes seconds to a minute first; falls back to eager if unavailable).")]


@app.command("train")
@edge
def train_command(
    small: Annotated[bool, typer.Option("--small", help="The quick CPU preset the README runs: digits 8x8, small SimpleUnet, T=300, 1000 steps (about 80 s on 2 idle cores).")] = False,
    data: Annotated[Optional[str], typer.Option(help="Training data: 'digits' (scikit-learn, bundled), 'mixture' (Gaussian mixture with exact denoiser) or a folder of PNG/JPEG images.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Image side in pixels; a multiple of 2**depth (digits: 8, 16, 32, ...). Preset: 8 (small), 64 (full).")] = None,
    channels: Annotated[Optional[int], typer.Option(help="Image channels: 1 (grey) or 3 (RGB); the digits are 1.")] = None,
    model: Annotated[Optional[str], typer.Option(help="SimpleUnet size: 'small' (32,64,128) or 'full' (the source's 64..1024, 62M params at 3 channels).")] = None,
    channels_list: Annotated[Optional[str], typer.Option(help="Custom SimpleUnet down channels, e.g. 64,128,256,512,1024 (overrides --model).")] = None,
    timesteps: Annotated[Optional[int], typer.Option("--timesteps", "-T", "--T", help="Number of diffusion steps T (preset 300, as the source).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="Beta schedule: linear (1e-4 .. 0.02, the source) or cosine.")] = None,
    beta_start: Annotated[Optional[float], typer.Option(help="First beta of the linear schedule (default 1e-4).", show_default=False)] = None,
    beta_end: Annotated[Optional[float], typer.Option(help="Last beta of the linear schedule (default 0.02).", show_default=False)] = None,
    loss: Annotated[Optional[str], typer.Option(help="Loss on eps: l2 (Ho et al. eq. 14, default) or l1 (the source's code).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Total optimiser steps (with --resume: the new total).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(help="EMA decay of the weights used for sampling, in [0, 1).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (CUDA: bf16 autocast, channels_last).")] = "auto",
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the network (faster long GPU runs; the first step compiles; falls back to eager if unavailable).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, the data order, t and the noise.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default runs/<name or timestamp>).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name: the output folder is runs/<name>.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue from a checkpoint file or run folder (model, data and optimiser settings come from it).")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Save the checkpoint every this many steps (0: only at the end and on Ctrl-C).")] = 500,
    n_samples: Annotated[int, typer.Option("--n-samples", help="Images in samples.png.")] = 64,
    eval_n: Annotated[int, typer.Option("--eval-n", help="Samples for the digits quality metric (0: skip; samples.png then uses --n-samples).")] = 400,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary (no progress bars).")] = False,
) -> None:
    """Train a SimpleUnet DDPM (Ho et al. Algorithm 1), then sample, draw and score it.

    Several GPUs or CPU processes (DistributedDataParallel; --batch-size is the global batch; rank 0 writes and prints):

    torchrun --nproc_per_node N --no-python ddpm-check train ...
    """
    import time as _time
    from datetime import datetime

    import torch

    from ddpm_check.data import DataConfig
    from ddpm_check.sample import sampler_from_modules, save_loss_curve
    from ddpm_check.schedules import ScheduleConfig
    from ddpm_check.train import Trainer, TrainConfig, resolve_device
    from ddpm_check.unet import UNetConfig

    t_start = _time.perf_counter()
    console = _console()
    _at_least("--n-samples", n_samples, 1, " (the images in samples.png)")
    for label, val in (("--checkpoint-every", checkpoint_every), ("--eval-n", eval_n)):
        _at_least(label, val, 0)
    if eval_n == 1:
        raise DDPMCheckError("--eval-n must be 0 (no score) or at least 2 (a Frechet distance needs 2 samples), got 1")
    if steps is not None:
        _at_least("--steps", steps, 0)
    if name is not None:
        if out is not None:
            raise DDPMCheckError("--name and --out both choose the output folder; give one of them")
        if resume is not None:
            raise DDPMCheckError("--name does not apply with --resume: the run goes on in its own folder "
                                 "(--out to write it elsewhere)")
        _check_run_name(name)
    # with --resume the checkpoint's settings hold: options that would change them are reported
    settings = {"--small": small or None, "--data": data, "--image-size": image_size, "--channels": channels,
                "--model": model, "--channels-list": channels_list, "-T": timesteps, "--schedule": schedule,
                "--beta-start": beta_start, "--beta-end": beta_end, "--loss": loss, "--batch-size": batch_size,
                "--lr": lr, "--ema-decay": ema_decay, "--seed": seed or None}
    ignored = [k for k, v in settings.items() if v is not None] if resume is not None else []
    dev = resolve_device(device)

    if resume is not None:
        from ddpm_check import checkpoint as _ckpt

        ck_file = _ckpt.resolve(resume)
        out_dir = Path(out) if out is not None else ck_file.parent
        _check_out_dir(out_dir, continuing=ck_file)
        trainer = Trainer.from_checkpoint(ck_file, device=dev, steps=steps, compile=compile_)
    else:
        if model is not None and model not in _MODEL_CHOICES:
            raise DDPMCheckError(f"unknown --model {model!r}; choose one of {', '.join(_MODEL_CHOICES)}")
        preset = dict(_TRAIN_PRESETS["small" if small else ("full" if model == "full" else "default")])
        explicit = dict(data=data, image_size=image_size, model=model, timesteps=timesteps, schedule=schedule,
                        loss=loss, steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay)
        cfg = {**preset, **{k: v for k, v in explicit.items() if v is not None}}
        from ddpm_check import checkpoint as _ckpt

        # the sizes a checkpoint may have, checked before the schedule (T floats) is built
        _ckpt.check_limits({"schedule": {"T": cfg["timesteps"]}, "data": {"image_size": cfg["image_size"]},
                            "train": {"batch_size": cfg["batch_size"]}}, "training configuration")
        if cfg["schedule"] not in ("linear", "cosine"):
            raise DDPMCheckError(f"unknown --schedule {cfg['schedule']!r}; choose one of linear, cosine")
        data_cfg = DataConfig.parse(cfg["data"], image_size=cfg["image_size"], channels=channels, seed=seed)
        if channels_list is not None:
            model_cfg = UNetConfig(image_channels=data_cfg.channels, down_channels=_parse_channels_list(channels_list))
        elif cfg["model"] == "full":
            model_cfg = UNetConfig(image_channels=data_cfg.channels)
        else:
            model_cfg = UNetConfig.small(image_channels=data_cfg.channels)
        model_cfg.check_image_size(data_cfg.image_size)
        if cfg["schedule"] != "linear" and (beta_start is not None or beta_end is not None):
            raise DDPMCheckError(f"--beta-start/--beta-end apply to the linear schedule only, not {cfg['schedule']!r}")
        betas = {k: v for k, v in (("beta_start", beta_start), ("beta_end", beta_end)) if v is not None}
        sched_cfg = ScheduleConfig(kind=cfg["schedule"], T=cfg["timesteps"], **betas)  # else its defaults
        train_cfg = TrainConfig(steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                                ema_decay=cfg["ema_decay"], loss=cfg["loss"], seed=seed)
        if out is not None:
            out_dir = Path(out)
        else:
            out_dir = Path("runs") / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))
        _check_out_dir(out_dir)
        trainer = Trainer(model_cfg, sched_cfg, data_cfg, train_cfg, device=dev, compile=compile_)

    # Under torchrun every rank trains; rank 0 alone writes files and prints.
    main_rank = trainer.dist.is_main
    made = None  # the first folder this run creates: removed again if training fails before writing into it
    if main_rank and not out_dir.exists():
        made = out_dir.absolute()
        while not made.parent.exists():
            made = made.parent
    if main_rank:
        out_dir.mkdir(parents=True, exist_ok=True)
    ck_path = out_dir / "checkpoint.safetensors"
    n_params = sum(p.numel() for p in trainer.model.parameters())
    total = trainer.train_cfg.steps
    quiet = as_json or not main_rank
    if ignored and not quiet:
        console.print(f"[yellow]ignored with --resume, the checkpoint's settings hold: {', '.join(ignored)}[/yellow]",
                      soft_wrap=True)
    if not quiet:
        d = trainer.data_cfg
        console.print(
            f"training SimpleUnet {list(trainer.model_cfg.down_channels)} ({n_params:,} params) on "
            f"{d.kind}{' ' + _esc(d.path) if d.path else ''} {d.channels}x{d.image_size}x{d.image_size} "
            f"({len(trainer.data)} images), T={trainer.schedule.T} {trainer.schedule_cfg.kind}, "
            f"{trainer.train_cfg.loss}, batch {trainer.train_cfg.batch_size}, lr {trainer.train_cfg.lr}, "
            f"EMA {trainer.train_cfg.ema_decay}, device {trainer.device.type}"
            + (f", {trainer.dist.world_size} processes (DDP)" if trainer.dist.enabled else "")
            + (", torch.compile" if compile_ else "")
            + (f", resuming at step {trainer.step}" if resume is not None else ""),
            soft_wrap=True,
        )
    t_train = _time.perf_counter()
    start_step = trainer.step
    last_ips = [float("nan")]
    try:
        if quiet:
            trainer.run(until=total, checkpoint_path=ck_path, checkpoint_every=checkpoint_every,
                        progress=lambda p: last_ips.__setitem__(0, p.images_per_s))
        else:
            bar, task = _train_progress_bar(console, total, trainer.step, "training")

            def on_progress(p):
                last_ips[0] = p.images_per_s
                bar.update(task, completed=p.step, loss=f"{p.loss:.4f}", ips=f"{p.images_per_s:,.0f}")

            with bar:
                trainer.run(until=total, progress=on_progress, checkpoint_path=ck_path,
                            checkpoint_every=checkpoint_every)
    except KeyboardInterrupt:
        trainer.close()
        if not main_rank:
            raise typer.Exit(130)
        raise fail(f"interrupted at step {trainer.step}; checkpoint saved, continue with --resume {out_dir}", code=130)
    except Exception:  # e.g. the loss became nan: leave no empty output folders behind
        if made is not None and made.is_dir() and not any(f.is_file() for f in made.rglob("*")):
            import shutil

            shutil.rmtree(made)
        raise
    train_s = _time.perf_counter() - t_train
    trainer.close()  # leave the process group: sampling and scoring below are rank 0's alone
    if not main_rank:
        return
    _compile_fallback_line(console, as_json, compile_, trainer.compile_error, "trained")

    sampler = sampler_from_modules(trainer.ema, trainer.schedule, trainer.data_cfg, trainer.device,
                                   trainer.step, trainer.loss_history)
    is_digits = trainer.data_cfg.kind == "digits"
    n_draw = max(n_samples, eval_n if is_digits else 0, 1)
    x, grid, strip = _sample_pictures(sampler, n_draw, max(n_samples, 1), min(4, n_draw), seed, out_dir, console, as_json)
    loss_png = save_loss_curve(trainer.loss_history, out_dir / "loss.png", label=f"{trainer.train_cfg.loss} loss on eps")
    score = None
    bad = _non_finite(x)
    if is_digits and eval_n >= 2 and not _non_finite(x[:eval_n]):  # NaN samples: said above, not scored
        from ddpm_check.metrics import evaluate_digits

        score = evaluate_digits(x[:eval_n], seed=seed).to_dict()
    summary = {
        "out": str(out_dir),
        "checkpoint": str(ck_path),
        "config": str(out_dir / "config.json"),
        "samples_png": str(grid),
        "reverse_process_png": str(strip),
        "loss_png": str(loss_png),
        "step": trainer.step,
        "steps_this_run": trainer.step - start_step,
        "final_loss": (float(sum(trainer.loss_history[-50:]) / len(trainer.loss_history[-50:]))
                       if trainer.loss_history else None),
        "parameters": n_params,
        "device": trainer.device.type,
        "processes": trainer.dist.world_size,
        **_compile_summary(compile_, trainer.compile_error),
        "train_seconds": round(train_s, 2),
        "images_per_second": None if last_ips[0] != last_ips[0] else round(last_ips[0], 1),
        "total_seconds": round(_time.perf_counter() - t_start, 2),
        "metric": score,
        "non_finite_samples": bad,
        "ignored_options": ignored,
    }
    if as_json:
        print_json(summary)
        return
    console.print(f"trained {summary['steps_this_run']} steps in {train_s:.1f} s "
                  f"({summary['images_per_second'] or 0:,.0f} img/s); final loss {summary['final_loss'] or float('nan'):.4f}")
    if score is not None:
        _render_score(console, score)
    elif not is_digits:
        console.print("(the quality metric is defined for the digits only)")
    elif eval_n >= 2:
        console.print("(the quality metric was not computed: the samples are not finite)")
    console.print(f"wrote to {_esc(out_dir)}/:", soft_wrap=True)
    for key in ("checkpoint", "config", "samples_png", "reverse_process_png", "loss_png"):
        console.print(f"  {_esc(summary[key])}", soft_wrap=True)
    console.print(f"total {summary['total_seconds']:.1f} s")


@app.command("sample")
@edge
def sample_command(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint.safetensors file or a run folder.")],
    n: Annotated[int, typer.Option("-n", "--n", help="Number of samples.")] = 64,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default <run folder>/sample-seed<seed>).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of x_T and of every step's noise.")] = 0,
    npy: Annotated[bool, typer.Option("--npy", help="Also write the raw samples (n x C x H x W, float32, in about [-1, 1]) as samples.npy.")] = False,
    strip_rows: Annotated[int, typer.Option(help="Chains shown in reverse_process.png.")] = 4,
    batch_size: _SampleBatchSize = 500,
    compile_: _SampleCompile = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Sample a trained model (Ho et al. Algorithm 2): a grid and the reverse-process strip."""
    import numpy as np

    from ddpm_check.sample import load_sampler

    check_seed(seed, "--seed")
    _at_least("-n", n, 1)
    _at_least("--strip-rows", strip_rows, 1)
    _at_least("--batch-size", batch_size, 1)
    sampler = load_sampler(checkpoint, device=device)
    out_dir = Path(out) if out is not None else sampler.path.parent / f"sample-seed{seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    console = _console()
    x, grid, strip = _sample_pictures(sampler, n, n, min(strip_rows, n), seed, out_dir, console, as_json,
                                      batch_size=batch_size, compile=compile_)
    summary = {"checkpoint": str(sampler.path), "step": sampler.step, "n": n, "seed": seed,
               "shape": list(x.shape), "samples_png": str(grid), "reverse_process_png": str(strip),
               "npy": None, "mean": float(x.mean()), "std": float(x.std()),
               "fraction_outside_unit": float((~(x.abs() <= 1)).float().mean()),  # NaN counts as outside
               "non_finite_samples": _non_finite(x),
               **_compile_summary(compile_, sampler.compile_error)}
    if npy:
        np.save(out_dir / "samples.npy", x.numpy())
        summary["npy"] = str(out_dir / "samples.npy")
    if as_json:
        print_json(summary)
        return
    console.print(f"sampled {_images(n)} {list(x.shape[1:])} from {_esc(sampler.path)} (step {sampler.step}, seed {seed})",
                  soft_wrap=True)
    for key in ("samples_png", "reverse_process_png", "npy"):
        if summary[key]:
            console.print(f"  {_esc(summary[key])}", soft_wrap=True)


@app.command("evaluate")
@edge
def evaluate_command(
    checkpoint: Annotated[Path, typer.Option(help="A checkpoint.safetensors file or a run folder (trained on digits).")],
    n: Annotated[int, typer.Option("-n", "--n", help="Number of samples to score.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the samples and of the noise ceiling.")] = 0,
    batch_size: _SampleBatchSize = 500,
    compile_: _SampleCompile = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Score generated digits: Frechet distance in a fixed classifier's features, beside real and noise."""
    from ddpm_check.metrics import evaluate_digits
    from ddpm_check.sample import check_result_fits, load_sampler, sample

    check_seed(seed, "--seed")
    _at_least("-n", n, 2, " for a Frechet distance")
    _at_least("--batch-size", batch_size, 1)
    sampler = load_sampler(checkpoint, device=device)
    if sampler.data_cfg.kind != "digits":
        raise DDPMCheckError(
            f"the quality metric is for models trained on the digits; {str(sampler.path)!r} was trained on "
            f"{sampler.data_cfg.kind!r}"
        )
    check_result_fits(n, sampler.shape)  # before the progress bar, which would leave a blank line
    console = _console()
    if as_json:
        x = sample(sampler, n, seed=seed, batch_size=batch_size, compile=compile_)
    else:
        bar, task = _sampling_bar(console, f"sampling {_images(n)}")
        with bar:
            x = sample(sampler, n, seed=seed, batch_size=batch_size, compile=compile_,
                       progress=lambda k, tot: bar.update(task, completed=k, total=tot))
    _compile_fallback_line(console, as_json, compile_, sampler.compile_error, "sampled")
    score = evaluate_digits(x, seed=seed).to_dict()
    score.update(checkpoint=str(sampler.path), step=sampler.step, seed=seed,
                 **_compile_summary(compile_, sampler.compile_error))
    if as_json:
        print_json(score)
        return
    console.print(f"{_esc(sampler.path)} (step {sampler.step})", soft_wrap=True)
    _render_score(console, score)
# END train-section


# --------------------------------------------------------------------------------------------
# check  (Monte Carlo verification of the derivations against the torch DDPM)
# --------------------------------------------------------------------------------------------
# BEGIN check-section
_CHECK_SCHEDULES = ("linear", "cosine")
_CHECK_WIDTH = 150


def _check_schedule(schedule: Optional[str], T: Optional[int], beta_start: Optional[float],
                    beta_end: Optional[float]):
    """The ScheduleConfig asked for with --schedule/--T/--beta-start/--beta-end, or None."""
    if schedule is None and T is None and beta_start is None and beta_end is None:
        return None
    from ddpm_check.schedules import ScheduleConfig

    kind = schedule or "linear"
    if kind not in _CHECK_SCHEDULES:
        raise DDPMCheckError(f"unknown --schedule {kind!r}; valid: {', '.join(_CHECK_SCHEDULES)}")
    if kind != "linear" and (beta_start is not None or beta_end is not None):
        raise DDPMCheckError(f"--beta-start/--beta-end apply to the linear schedule only, not {kind!r}")
    kw: dict = {"kind": kind, "T": 300 if T is None else T}
    if beta_start is not None:
        kw["beta_start"] = beta_start
    if beta_end is not None:
        kw["beta_end"] = beta_end
    return ScheduleConfig(**kw)


def _fmt_num(v, digits: int = 4) -> str:
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


_VERDICT_STYLE = {"pass": "green", "FAIL": "bold red", "finding": "yellow", "info": "dim"}


def _check_table(results, full: bool):
    from rich.markup import escape
    from rich.table import Table

    caption = None if full else ("a grouped row shows the worst of its group: (N) = N rows, all within the threshold; "
                                 "k/N = k of N rows rejected.  --full: every row.")
    tab = Table(title="Monte Carlo checks (pass: statistic <= threshold)", title_justify="left",
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
            style = _VERDICT_STYLE[row.verdict]
            tab.add_row(res.name if k == 0 else "", escape(what), _fmt_num(row.expected), _fmt_num(row.estimate),
                        _fmt_num(row.se, 3), _fmt_num(row.statistic), _fmt_num(row.threshold),
                        _fmt_num(row.delta, 3), str(row.n), f"[{style}]{verdict}[/{style}]")
        if res is not results[-1]:
            tab.add_section()
    return tab


def _check_list() -> None:
    from ddpm_check.montecarlo import CHECKS, VARIANTS

    pad = max(len(n) for n in CHECKS)
    for n, spec in CHECKS.items():
        extra = "" if spec.in_all else "  (only when named, or `check all --network`)"
        sys.stdout.write(f"{n.ljust(pad)}  {spec.title}{extra}\n")
        sys.stdout.write(f"{''.ljust(pad)}  wrong variants: {', '.join(VARIANTS[n])}\n")
    sys.stdout.write(f"{'all'.ljust(pad)}  every check above except network\n")


_CHECK_HELP = """Verify the derived formulas by Monte Carlo against the torch DDPM; exit 1 if a check fails.

Each row is a statistical test with a known null distribution. Family-wise false-failure rate of `check all` <= 1e-4 (Bonferroni); each check prints the smallest error it detects with probability >= 0.999 (detectable δ).

Example: ddpm-check check posterior --seed 7
"""


@app.command(help=_CHECK_HELP)
@edge
def check(
    name: Annotated[
        Optional[str],
        typer.Argument(help="marginal, posterior, mean-eps, sampler, network, or all. Omit it to list the checks.",
                       show_default=False),
    ] = None,
    samples: Annotated[
        Optional[int], typer.Option("--samples", help="Chains / samples per probe (default: each check's own).")
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option("--seed", help="Root seed; each check's seed derives from it and the check's name.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON (every row).")] = False,
    schedule: Annotated[
        Optional[str], typer.Option("--schedule", help="Check another schedule: linear or cosine.")
    ] = None,
    T: Annotated[Optional[int], typer.Option("--T", "-T", "--timesteps", help="Number of steps T of that schedule (default 300).")] = None,
    beta_start: Annotated[Optional[float], typer.Option("--beta-start", help="Linear schedule: beta_1.")] = None,
    beta_end: Annotated[Optional[float], typer.Option("--beta-end", help="Linear schedule: beta_T.")] = None,
    network: Annotated[
        bool, typer.Option("--network", help="With `all`: also train and check a small SimpleUnet (minutes).")
    ] = False,
    steps: Annotated[Optional[int], typer.Option("--steps", help="network: training steps (default 1500).")] = None,
    variant: Annotated[
        Optional[str],
        typer.Option("--variant", help="Run a known-wrong variant of one check (it should FAIL); see `check`."),
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="One table row per test statistic (default: the worst of each group).")] = False,
) -> None:
    # the help text is _CHECK_HELP: typer's rich mode keeps a docstring's line breaks
    if name is None:
        given = [flag for flag, v in (("--variant", variant), ("--steps", steps), ("--samples", samples),
                                      ("--seed", seed), ("--schedule", schedule), ("-T", T),
                                      ("--beta-start", beta_start), ("--beta-end", beta_end)) if v is not None]
        if given:  # options without a check to run: say so rather than list the checks and exit 0
            raise DDPMCheckError(f"{', '.join(given)} needs a check name: ddpm-check check NAME ... "
                                 f"(ddpm-check check lists them)")
        _check_list()
        return
    from ddpm_check import montecarlo as mc
    from ddpm_check import stats as st

    names = mc.resolve_names(name, network=network)
    if variant is not None and len(names) != 1:
        raise DDPMCheckError("--variant needs one check name, not 'all'")
    if steps is not None:
        _at_least("--steps", steps, 1)
        if "network" not in names:
            raise DDPMCheckError("--steps applies to the network check only (check network, or check all --network)")
    sched = _check_schedule(schedule, T, beta_start, beta_end)
    root = st.DEFAULT_ROOT_SEED if seed is None else seed

    def options(n: str) -> dict:  # only the network check takes options (run_check refuses them elsewhere)
        return {"steps": steps} if steps is not None and n == "network" else {}

    console = _console()
    if not console.is_terminal and console.width < _CHECK_WIDTH:  # piped: room for the table
        from rich.console import Console

        console = Console(width=_CHECK_WIDTH, highlight=False, soft_wrap=False)
    err = _console(stderr=True)
    results = []
    for n in names:
        if as_json:
            results.append(mc.run_check(n, samples=samples, seed=root, schedule=sched, variant=variant,
                                        **options(n)))
        else:
            with err.status(f"check {n} ...") as status:
                results.append(mc.run_check(n, samples=samples, seed=root, schedule=sched, variant=variant,
                                            progress=lambda msg: status.update(msg),
                                            **options(n)))
    ok = all(r.passed for r in results)
    if as_json:
        print_json({"passed": ok, "root_seed": root, "alpha_fw": st.ALPHA_FW, "beta": st.BETA,
                    "checks": [r.to_dict() for r in results]})
    else:
        console.print(_check_table(results, full))
        for r in results:
            style = "green" if r.passed else "bold red"
            tests = r.tests
            alpha = min((x.alpha for x in tests if x.alpha > 0), default=0.0)
            line = (f"[{style}]{r.name}: {r.verdict}[/{style}]  {len(tests)} tests"
                    + (f", alpha {alpha:.2g} each" if alpha else "")
                    + f", seed {r.seed}, {r.runtime_s:.1f} s" + (f", variant {r.variant}" if r.variant else ""))
            console.print(line, soft_wrap=True)
            for note in r.notes:
                console.print("  " + note, soft_wrap=True, markup=False, style="dim")
        findings = [x for r in results for x in r.rows if x.verdict == "finding"]
        if findings:
            console.print(f"[yellow]{len(findings)} diagnostic row(s) are findings[/yellow] (reported, not failures).",
                          soft_wrap=True)
    if not ok:
        bad = ", ".join(r.name for r in results if not r.passed)
        err.print(f"[bold red]FAILED:[/bold red] {bad} (root seed {root}; rerun with --seed {root})",
                  soft_wrap=True, highlight=False)
        raise typer.Exit(1)
# END check-section


# --------------------------------------------------------------------------------------------
# schedule / audit
# --------------------------------------------------------------------------------------------
# BEGIN schedule-section
_SCHEDULE_HELP = """Diagnose beta schedules: how much of x_0 is left in x_T, and what the prior term costs.

For each schedule: alpha_bar_T and sqrt(alpha_bar_T), the terminal SNR, the prior term L_T = KL(q(x_T|x_0) || N(0, 1)) per dimension in nats and bits (for |x_0| = 1, the worst case of data in [-1, 1], and averaged over x_0 ~ U[-1, 1]), the t where alpha_bar_t falls to 1/2 and the largest beta_t. A plot shows alpha_bar_t, log SNR and beta_tilde_t/beta_t against t/T.

One schedule: --kind, --T, --beta-start, --beta-end (default: the source's linear T=300, beta 1e-4..0.02).

Several, to compare: --spec KIND:T[:BETA_START:BETA_END], repeated or comma-separated, instead of --kind etc. Example: ddpm-check schedule --spec linear:300:1e-4:0.02 --spec linear:1000,cosine:1000
"""


@app.command("schedule", help=_SCHEDULE_HELP)
@edge
def schedule_command(
    T: Annotated[Optional[int], typer.Option("--T", "-T", "--timesteps", help="Number of diffusion steps (default 300).", show_default=False)] = None,
    kind: Annotated[Optional[str], typer.Option(help="linear or cosine (default linear).", show_default=False)] = None,
    beta_start: Annotated[Optional[float], typer.Option(help="First beta of a linear schedule (default 1e-4).", show_default=False)] = None,
    beta_end: Annotated[Optional[float], typer.Option(help="Last beta of a linear schedule (default 0.02).", show_default=False)] = None,
    spec: Annotated[Optional[list[str]], typer.Option(
        "--spec", help="Schedules to compare, KIND:T[:BETA_START:BETA_END]: linear:300:1e-4:0.02, linear:1000 "
                       "(betas 1e-4..0.02), cosine:1000. Repeat it or separate with commas.",
        show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Where to write the plot (.png, .pdf or .svg; default schedule.png in --out).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the default plot file (default: the current folder).", show_default=False)] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not write a plot.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    from ddpm_check import diagnostics as D
    from ddpm_check.schedules import Schedule, ScheduleConfig

    single = {"--kind": kind, "--T": T, "--beta-start": beta_start, "--beta-end": beta_end}
    if spec:
        given = [k for k, v in single.items() if v is not None]
        if given:
            raise DDPMCheckError(f"{', '.join(given)} cannot be combined with --spec; put every schedule in a "
                                 f"--spec ({D.SPEC_HELP})")
        configs = D.parse_specs(spec)
    else:
        k = (kind or "linear").lower()
        if k not in D.SPEC_KINDS:
            raise DDPMCheckError(f"unknown --kind {kind!r}; choose one of {', '.join(D.SPEC_KINDS)}")
        if k == "cosine" and (beta_start is not None or beta_end is not None):
            raise DDPMCheckError("--beta-start/--beta-end apply to --kind linear only; the cosine schedule has no betas to set")
        configs = [ScheduleConfig(kind=k, T=300 if T is None else T,
                                  beta_start=1e-4 if beta_start is None else beta_start,
                                  beta_end=0.02 if beta_end is None else beta_end)]
    if plot is not None and no_plot:
        raise DDPMCheckError("--plot and --no-plot contradict each other; give one")
    plot_path = None if no_plot else D.check_plot_path(plot if plot is not None else (out or Path(".")) / "schedule.png")
    schedules = [Schedule.from_config(c) for c in configs]
    diags = [D.diagnose(s) for s in schedules]
    if plot_path is not None:
        plot_path = D.plot(schedules, plot_path)
    if as_json:
        print_json({"schedules": [d.to_dict() for d in diags], "plot": None if plot_path is None else str(plot_path),
                    "L_T": "KL(q(x_T|x_0) || N(0,1)) per dimension; worst: |x_0| = 1; uniform: x_0 ~ U[-1,1] (E x_0^2 = 1/3)",
                    "ho_L_T_bits": D.HO_L_T_BITS})
        return
    _render_schedules(diags, plot_path)


def _render_schedules(diags, plot_path) -> None:
    from rich.table import Table

    from ddpm_check import diagnostics as D

    console = _console()
    tab = Table(title="beta schedules (per dimension; paper steps t = 1..T)", title_justify="left")
    tab.add_column("quantity", no_wrap=True)
    for d in diags:
        tab.add_column(d.label, justify="right")

    def row(name, fn):
        tab.add_row(name, *[fn(d) for d in diags])

    row("β_1 … β_T", lambda d: f"{d.beta_first:.3g} … {float(d.beta_end if d.beta_end is not None else d.beta_max):.3g}"
        if d.kind == "linear" else f"{d.beta_first:.3g} … {d.beta_max:.3g}")
    row("max β_t (at t)", lambda d: f"{d.beta_max:.4g} (t={d.t_beta_max})")
    row("α_t range", lambda d: f"{d.alpha_min:.4g} … {d.alpha_max:.6g}")
    row("ᾱ_T", lambda d: f"{d.alpha_bar_T:.4g}")
    row("√ᾱ_T (x_0 left in x_T)", lambda d: f"{d.sqrt_alpha_bar_T:.4g}")
    row("SNR(T) = ᾱ_T/(1-ᾱ_T)", lambda d: f"{d.snr_T:.3g}")
    row("log SNR(T)", lambda d: f"{d.log_snr_T:.2f}")
    row("L_T |x_0|=1   nats", lambda d: f"{d.L_T_worst_nats:.3g}")
    row("L_T |x_0|=1   bits", lambda d: f"{d.L_T_worst_bits:.3g}")
    row("L_T x_0~U     nats", lambda d: f"{d.L_T_uniform_nats:.3g}")
    row("L_T x_0~U     bits", lambda d: f"{d.L_T_uniform_bits:.3g}")
    row("L_T x_0~U / 1e-5 bits", lambda d: f"{d.L_T_uniform_bits / D.HO_L_T_BITS:.3g}x")
    row("ᾱ_t ≤ 0.5 from t (t/T)", lambda d: "never" if d.t_half is None else f"{d.t_half} ({d.t_half_frac:.2f})")
    console.print(tab)
    console.print("L_T = KL(q(x_T|x_0) || N(0,1)) = ½(ᾱ_T x_0² + (1 - ᾱ_T) - 1 - ln(1 - ᾱ_T)) per dimension; "
                  "|x_0|=1: the worst case of data in [-1, 1]; x_0~U: averaged over x_0 uniform on [-1, 1] "
                  "(E x_0² = 1/3). Ho et al. 2020 chose their schedule (linear, T = 1000) for L_T ≈ 1e-5 bits/dim.")
    if plot_path is not None:
        console.print(f"plot (alpha_bar_t, log SNR, beta_tilde_t/beta_t vs t/T) written to {_esc(plot_path)}")


_AUDIT_STYLE = {"holds": "bold green", "erratum": "bold red", "caveat": "bold yellow"}


#: what `audit` audits, as the user knows it (the blog post the project starts from)
_AUDITED = "the blog post \"Diffusion Model Study\" (2023-03-07)"


@app.command("audit")
@edge
def audit_command(
    samples: Annotated[int, typer.Option(help="Monte Carlo size of the audit's own simulations (the toolkit's checks it cites use their own sizes).")] = 20_000,
    seed: Annotated[int, typer.Option(help="Root seed (every simulation's seed is derived from it).")] = 200611239,
    only: Annotated[Optional[str], typer.Option(help="Comma-separated claim ids to audit (default: all). Ids: "
                                                    "forward-step-index, alpha-to-zero, gaussian-merge, closed-form, "
                                                    "alpha-bar-recursion, posterior, sampling-step, training-loss, "
                                                    "if-t-equals-0, embedding-order, positional-formula, terminal-prior, "
                                                    "sample-plot-index.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the claims, verdicts and evidence as JSON.")] = False,
) -> None:
    """Audit the source derivation: each claim with a verdict (holds / erratum / caveat).

    The evidence is computed now by the toolkit's derivations, checks and schedule code. Exit 0 whatever the verdicts.
    """
    import time as _time

    from ddpm_check import audit as A

    from ddpm_check.stats import check_samples

    check_samples(samples, minimum=100, name="--samples")  # bad input fails before any work
    check_seed(seed, "--seed")
    ids = A.resolve_ids([only] if only else None)
    t0 = _time.perf_counter()
    if as_json:
        claims = A.run_audit(samples=samples, seed=seed, only=ids)
    else:
        err = _console(stderr=True)
        with err.status("auditing ...") as status:
            claims = A.run_audit(samples=samples, seed=seed, only=ids,
                                 progress=lambda cid: status.update(f"auditing {cid} ..."))
    elapsed = _time.perf_counter() - t0
    counts = A.summary(claims)
    if as_json:
        print_json({"source": _AUDITED, "samples": samples, "seed": seed,
                    "summary": counts, "seconds": round(elapsed, 2), "claims": [c.to_dict() for c in claims]})
        return
    _render_audit(claims, counts, elapsed)


def _render_audit(claims, counts, elapsed: float) -> None:
    from rich.markup import escape
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    console = _console()
    for k, c in enumerate(claims, 1):
        style = _AUDIT_STYLE[c.verdict]
        console.print(f"[bold][{k}] {escape(c.id)}[/bold]  [{style}]{c.verdict.upper()}[/{style}]  {escape(c.title)}")
        console.print(Padding(Text("source: " + c.source, style="italic"), (0, 0, 0, 4), expand=False))
        for line in c.lines:
            console.print(Padding(Text("- " + line), (0, 0, 0, 4), expand=False))
        console.print(Padding(Text("=> " + c.explanation), (0, 0, 0, 4), expand=False))
        console.print()
    console.print(f"audit of {escape(_AUDITED)}", soft_wrap=True)  # above the table: its width would wrap it
    tab = Table()
    tab.add_column("#", justify="right")
    tab.add_column("claim")
    tab.add_column("verdict")
    tab.add_column("s", justify="right")
    for k, c in enumerate(claims, 1):
        style = _AUDIT_STYLE[c.verdict]
        tab.add_row(str(k), escape(c.id), f"[{style}]{c.verdict}[/{style}]", f"{c.seconds:.1f}")
    console.print(tab)

    def n_of(k: int, one: str, many: str) -> str:
        return f"{k} {one if k == 1 else many}"

    console.print(f"{n_of(len(claims), 'claim', 'claims')}: {n_of(counts['holds'], 'holds', 'hold')}, "
                  f"{n_of(counts['erratum'], 'erratum', 'errata')}, {n_of(counts['caveat'], 'caveat', 'caveats')} "
                  f"({elapsed:.1f} s)")
# END schedule-section


if __name__ == "__main__":  # pragma: no cover
    app()
