"""`ddpm-check train`: train a SimpleUnet DDPM (Ho et al. Algorithm 1), then sample, draw and score it.

The presets, the configurations built from the options and the run-folder rules are the
library's (:mod:`ddpm_check.train`); this module parses, reports progress and renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ddpm_check import defaults
from ddpm_check.commands.evaluate import render_score
from ddpm_check.commands.sample import sample_pictures
from ddpm_check.commands.ui import Failed, at_least, compile_fallback_line, compile_summary, console, esc
from ddpm_check.errors import DDPMCheckError


def command(
    small: Annotated[bool, typer.Option("--small", help="The quick CPU preset the README runs: digits 8x8, small SimpleUnet, T=300, 1600 steps, lr 3e-3 with 100 warm-up steps and a cosine decay, EMA 0.995 (under 2 min of training on 2 cores; BENCHMARKS.md).")] = False,
    data: Annotated[Optional[str], typer.Option(help="Training data: 'digits' (the scikit-learn digits' train split, 1,201 images; the other 596 are held out for the score), 'digits-all' (all 1,797; no score then), 'mixture' (Gaussian mixture with exact denoiser) or a folder of PNG/JPEG images.")] = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Random left-right flips of a folder's images (default on; not for digits or the mixture).", show_default=False)] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Image side in pixels; a multiple of 2**depth (digits: 8, 16, 32, ...). Preset: 8 (small), 64 (full).")] = None,
    channels: Annotated[Optional[int], typer.Option(help="Image channels: 1 (grey) or 3 (RGB); the digits are 1.")] = None,
    model: Annotated[Optional[str], typer.Option(help="SimpleUnet size: 'small' (32,64,128) or 'full' (the source's 64..1024, 62M params at 3 channels).")] = None,
    channels_list: Annotated[Optional[str], typer.Option(help="Custom SimpleUnet down channels, e.g. 64,128,256,512,1024 (overrides --model).")] = None,
    timesteps: Annotated[Optional[int], typer.Option("--timesteps", "-T", "--T", help=f"Number of diffusion steps T (preset {defaults.T}, as the source).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help=f"Beta schedule: linear ({defaults.BETA_START:g} .. {defaults.BETA_END:g}, the source) or cosine.")] = None,
    beta_start: Annotated[Optional[float], typer.Option(help=f"First beta of the linear schedule (default {defaults.BETA_START:g}).", show_default=False)] = None,
    beta_end: Annotated[Optional[float], typer.Option(help=f"Last beta of the linear schedule (default {defaults.BETA_END:g}).", show_default=False)] = None,
    loss: Annotated[Optional[str], typer.Option(help="Loss on the prediction: l2 (Ho et al. eq. 14, default) or l1 (the source's code).")] = None,
    prediction: Annotated[Optional[str], typer.Option(help="What the network predicts: eps (Ho et al., default), x0, or v = sqrt(abar) eps - sqrt(1 - abar) x_0 (derive parametrizations).", show_default=False)] = None,
    zero_snr: Annotated[bool, typer.Option("--zero-snr", help="Rescale the schedule to zero terminal SNR (abar_T = 0, Lin et al.; schedule --zero-snr shows it); needs --prediction v.")] = False,
    steps: Annotated[Optional[int], typer.Option(help="Total optimiser steps (with --resume: the new total).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(help="EMA decay of the weights used for sampling, in [0, 1).")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help="Learning rate over the run: constant, or cosine (a linear warm-up over --lr-warmup steps, then half a cosine down to 0 at the last step; with --resume and a larger --steps it runs to the new total).", show_default=False)] = None,
    lr_warmup: Annotated[Optional[int], typer.Option(help="Steps of linear learning-rate warm-up, up to --lr (either schedule).", show_default=False)] = None,
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
):
    """Several GPUs or CPU processes (DistributedDataParallel; --batch-size is the global batch; rank 0 writes and prints):

    torchrun --nproc_per_node N --no-python ddpm-check train ...
    """
    import time
    from datetime import datetime

    from ddpm_check import checkpoint as ckpt
    from ddpm_check import train as T
    from ddpm_check.distributed import env_rank

    t_start = time.perf_counter()
    con = console()
    at_least("--n-samples", n_samples, 1, " (the images in samples.png)")
    for label, val in (("--checkpoint-every", checkpoint_every), ("--eval-n", eval_n)):
        at_least(label, val, 0)
    if eval_n == 1:
        raise DDPMCheckError("--eval-n must be 0 (no score) or at least 2 (a Frechet distance needs 2 samples), got 1")
    if steps is not None:
        at_least("--steps", steps, 0)
    if name is not None:
        if out is not None:
            raise DDPMCheckError("--name and --out both choose the output folder; give one of them")
        if resume is not None:
            raise DDPMCheckError("--name does not apply with --resume: the run goes on in its own folder "
                                 "(--out to write it elsewhere)")
        T.check_run_name(name)
    # with --resume the checkpoint's settings hold: options that would change them are reported
    settings = {"--small": small or None, "--data": data, "--flip/--no-flip": flip, "--image-size": image_size, "--channels": channels,
                "--model": model, "--channels-list": channels_list, "-T": timesteps, "--schedule": schedule,
                "--beta-start": beta_start, "--beta-end": beta_end, "--loss": loss, "--prediction": prediction,
                "--zero-snr": zero_snr or None, "--batch-size": batch_size,
                "--lr": lr, "--ema-decay": ema_decay, "--lr-schedule": lr_schedule, "--lr-warmup": lr_warmup,
                "--seed": seed or None}
    ignored = [k for k, v in settings.items() if v is not None] if resume is not None else []
    dev = T.resolve_device(device)

    if resume is not None:
        ck_file = ckpt.resolve(resume)
        out_dir = Path(out) if out is not None else ck_file.parent
    else:
        ck_file = None
        configs = T.configs_from_options(
            small=small, data=data, flip=flip, image_size=image_size, channels=channels, model=model,
            channels_list=channels_list, timesteps=timesteps, schedule=schedule, beta_start=beta_start,
            beta_end=beta_end, loss=loss, steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
            prediction=prediction, zero_snr=zero_snr, lr_schedule=lr_schedule, lr_warmup=lr_warmup, seed=seed)
        out_dir = Path(out) if out is not None else Path("runs") / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    # the folder is this run's until it ends: made, locked against a second run, proven writable and
    # free of another run's files before the model is built (rank 0 alone writes under torchrun)
    with T.run_folder(out_dir, continuing=ck_file, writer=env_rank() == 0):
        if ck_file is not None:
            trainer = T.Trainer.from_checkpoint(ck_file, device=dev, steps=steps, compile=compile_)
        else:
            trainer = T.Trainer(*configs, device=dev, compile=compile_)
        return _train(trainer, out_dir, con, t_start=t_start, resumed=ck_file is not None, ignored=ignored,
                      as_json=as_json, compile_=compile_, checkpoint_every=checkpoint_every, n_samples=n_samples,
                      eval_n=eval_n, seed=seed)


def _lr_words(cfg) -> str:
    """How the learning rate moves, after its value in the start line ("" when constant)."""
    words = ([cfg.lr_schedule] if cfg.lr_schedule != "constant" else []) + (
        [f"warm-up {cfg.lr_warmup}"] if cfg.lr_warmup else [])
    return f" ({', '.join(words)})" if words else ""


def _train(trainer, out_dir: Path, con, *, t_start: float, resumed: bool, ignored: list[str], as_json: bool,
           compile_: bool, checkpoint_every: int, n_samples: int, eval_n: int, seed: int):
    """Train ``trainer`` to its total, then (rank 0) sample, draw, score and report."""
    import time

    from ddpm_check.sample import count_non_finite, sampler_from_modules, save_loss_curve

    # Under torchrun every rank trains; rank 0 alone writes files and prints.
    main_rank = trainer.dist.is_main
    ck_path = out_dir / "checkpoint.safetensors"
    n_params = sum(p.numel() for p in trainer.model.parameters())
    total = trainer.train_cfg.steps
    quiet = as_json or not main_rank
    if ignored and not quiet:
        con.print(f"[yellow]ignored with --resume, the checkpoint's settings hold: {', '.join(ignored)}[/yellow]",
                  soft_wrap=True)
    if not quiet:
        d = trainer.data_cfg
        con.print(
            f"training SimpleUnet {list(trainer.model_cfg.down_channels)} ({n_params:,} params) on "
            f"{d.kind}{' ' + esc(d.path) if d.path else ''} {d.channels}x{d.image_size}x{d.image_size} "
            f"({len(trainer.data)} images), T={trainer.schedule.T} {trainer.schedule_cfg.kind}"
            f"{' zero-SNR' if trainer.schedule_cfg.zero_snr else ''}, {trainer.train_cfg.loss} on "
            f"{trainer.train_cfg.prediction}, batch {trainer.train_cfg.batch_size}, lr {trainer.train_cfg.lr}"
            f"{_lr_words(trainer.train_cfg)}, "
            f"EMA {trainer.train_cfg.ema_decay}, device {trainer.device.type}"
            + (f", {trainer.dist.world_size} processes (DDP)" if trainer.dist.enabled else "")
            + (", torch.compile" if compile_ else "")
            + (f", resuming at step {trainer.step}" if resumed else ""),
            soft_wrap=True,
        )
    t_train = time.perf_counter()
    start_step = trainer.step
    last_ips = [float("nan")]
    try:
        if quiet:
            trainer.run(until=total, checkpoint_path=ck_path, checkpoint_every=checkpoint_every,
                        progress=lambda p: last_ips.__setitem__(0, p.images_per_s))
        else:
            bar, task = _progress_bar(con, total, trainer.step, "training")

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
        raise Failed(f"interrupted at step {trainer.step}; checkpoint saved, continue with --resume {out_dir}",
                     code=130) from None
    train_s = time.perf_counter() - t_train
    trainer.close()  # leave the process group: sampling and scoring below are rank 0's alone
    if not main_rank:
        return None
    compile_fallback_line(con, as_json, compile_, trainer.compile_error, "trained")

    sampler = sampler_from_modules(trainer.ema, trainer.schedule, trainer.data_cfg, trainer.device,
                                   trainer.step, trainer.loss_history, prediction=trainer.train_cfg.prediction)
    from ddpm_check.metrics import score_refusal

    refusal = score_refusal(trainer.data_cfg) if eval_n >= 2 else None
    scored = eval_n >= 2 and refusal is None
    n_draw = max(n_samples, eval_n if scored else 0, 1)
    x, grid, strip = sample_pictures(sampler, n_draw, max(n_samples, 1), min(4, n_draw), seed, out_dir, con, as_json)
    loss_png = save_loss_curve(trainer.loss_history, out_dir / "loss.png", label=f"{trainer.train_cfg.loss} loss on {trainer.train_cfg.prediction}")
    score = None
    if scored and not count_non_finite(x[:eval_n]):  # NaN samples: said above, not scored
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
        "final_loss": trainer.final_loss,
        "parameters": n_params,
        "device": trainer.device.type,
        "processes": trainer.dist.world_size,
        **compile_summary(compile_, trainer.compile_error),
        "train_seconds": round(train_s, 2),
        "images_per_second": None if last_ips[0] != last_ips[0] else round(last_ips[0], 1),
        "total_seconds": round(time.perf_counter() - t_start, 2),
        "metric": score,
        "metric_skipped": refusal,
        "non_finite_samples": count_non_finite(x),
        "ignored_options": ignored,
    }
    if as_json:
        return summary
    con.print(f"trained {summary['steps_this_run']} steps in {train_s:.1f} s "
              f"({summary['images_per_second'] or 0:,.0f} img/s); final loss {summary['final_loss'] or float('nan'):.4f}")
    if score is not None:
        render_score(con, score)
    elif refusal is not None:
        con.print(f"({esc(refusal)})", soft_wrap=True)
    elif eval_n >= 2:
        con.print("(the quality metric was not computed: the samples are not finite)")
    con.print(f"wrote to {esc(out_dir)}/:", soft_wrap=True)
    for key in ("checkpoint", "config", "samples_png", "reverse_process_png", "loss_png"):
        con.print(f"  {esc(summary[key])}", soft_wrap=True)
    con.print(f"total {summary['total_seconds']:.1f} s")
    return None


def _progress_bar(con, total: int, start: int, label: str):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[ips]} img/s"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=con, transient=False)
    task = bar.add_task(label, total=total, completed=start, loss="-", ips="-")
    return bar, task
