"""Training a SimpleUnet noise predictor (Ho et al. 2020, Algorithm 1), with EMA and exact resume.

One step of Algorithm 1, batched:

    x_0 ~ q(x_0)                      (a batch from ddpm_check.data, drawn by the data generator)
    t ~ Uniform{0, ..., T-1}          (0-based: paper step t + 1)
    eps ~ N(0, I)
    loss = || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2   (eq. 14)

then an Adam step and an exponential moving average of the weights,

    ema <- d ema + (1 - d) theta,   d = min(ema_decay, (1 + k) / (10 + k)) at step k,

(the warm-up keeps the average meaningful in short runs); the EMA copy is what samples.
BatchNorm running statistics are copied into the EMA model, not averaged.

Devices: the weights are channels_last everywhere (the fast convolution layout of cuDNN and
oneDNN); on CUDA the forward pass runs under bf16 autocast with TF32 and cuDNN autotuning on and
the images live on the GPU; on CPU everything is float32.  Adam is fused (one kernel).
Randomness comes from two generators -- ``data`` (CPU: batch indices and flips) and ``noise``
(on the device: t and eps) -- seeded from ``seed``; their states go into every checkpoint with
the weights, the EMA weights, Adam's state and the loss history, so ``resume`` continues a run
exactly: on CPU, K steps in one go and K/2 + K/2 with a save and a load in between give
bit-for-bit equal weights.

Several processes (``torchrun --nproc_per_node N ddpm-check train ...``): DistributedDataParallel
(NCCL on GPUs, gloo on CPU) with synchronized BatchNorm (``ddpm_check.distributed``).  Every rank
draws the *same global batch* -- indices, flips, t and eps, from the same generators -- and trains
on its contiguous 1/N slice of it.  This deterministic sharding replaces a DistributedSampler:
with batch statistics synchronized and gradients averaged, N processes take the same optimiser
steps as one process with the whole batch (up to the order of floating-point sums), the generator
states in a checkpoint are the global ones, and a run can be resumed on any number of processes.
Rank 0 alone reports progress and writes checkpoints; every rank loads them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ddpm_check import checkpoint as ckpt
from ddpm_check import defaults
from ddpm_check.data import DataConfig, ImageData, load_data
from ddpm_check.diffusion import LOSS_KINDS, GaussianDiffusion, check_prediction
from ddpm_check.errors import DDPMCheckError, check_seed, first_line
from ddpm_check.schedules import Schedule, ScheduleConfig
from ddpm_check.unet import SimpleUnet, UNetConfig


#: TrainConfig.lr_schedule's values
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (saved in every checkpoint)."""

    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    ema_decay: float = 0.999
    loss: str = "l2"
    seed: int = 0
    #: what the network predicts: "eps" (Ho et al.), "x0" or "v" (ddpm_check.diffusion); checkpoints
    #: written before it existed predict eps
    prediction: str = "eps"
    #: the learning rate over the run: a linear warm-up from lr/lr_warmup to ``lr`` over the first
    #: ``lr_warmup`` steps, then "constant" (``lr``) or "cosine" (half a cosine from ``lr`` down to 0
    #: at step ``steps``)
    lr_schedule: str = "constant"
    lr_warmup: int = 0

    def __post_init__(self) -> None:
        def _int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def _real(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))

        if not _int(self.steps) or self.steps < 0:
            raise DDPMCheckError(f"steps must be an integer >= 0, got {self.steps!r}")
        if not _int(self.batch_size) or self.batch_size < 1:
            raise DDPMCheckError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        if not (_real(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            raise DDPMCheckError(f"learning rate must be a finite number > 0, got {self.lr!r}")
        if not (_real(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
            raise DDPMCheckError(f"EMA decay must be in [0, 1), got {self.ema_decay!r}")
        if self.loss not in LOSS_KINDS:
            raise DDPMCheckError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSS_KINDS)}")
        check_prediction(self.prediction)
        if self.lr_schedule not in LR_SCHEDULES:
            raise DDPMCheckError(f"unknown learning-rate schedule {self.lr_schedule!r}; choose one of "
                                 f"{', '.join(LR_SCHEDULES)}")
        if not _int(self.lr_warmup) or self.lr_warmup < 0:
            raise DDPMCheckError(f"learning-rate warm-up must be an integer >= 0 steps, got {self.lr_warmup!r}")
        if self.lr_warmup > self.steps:
            raise DDPMCheckError(f"learning-rate warm-up of {self.lr_warmup} steps is longer than the run "
                                 f"({self.steps} steps): the rate would never reach lr")
        check_seed(self.seed)
        # plain Python numbers from here on (numpy's are not JSON: the final save failed on them)
        for k, cast in (("steps", int), ("batch_size", int), ("seed", int), ("lr", float), ("ema_decay", float),
                        ("lr_warmup", int)):
            object.__setattr__(self, k, cast(getattr(self, k)))

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, k: int) -> float:
        """The learning rate of 0-based step ``k`` (the step that makes ``k + 1`` done)."""
        if k < self.lr_warmup:
            return self.lr * (k + 1) / self.lr_warmup
        if self.lr_schedule == "constant":
            return self.lr
        span = max(self.steps - self.lr_warmup, 1)
        frac = min(max(k - self.lr_warmup, 0) / span, 1.0)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * frac))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        if not isinstance(d, dict):
            raise DDPMCheckError(f"train config must be a JSON object, got {type(d).__name__}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class TrainProgress:
    """What the progress callback receives."""

    step: int  # steps done in total (including those before a resume)
    total: int
    loss: float  # mean loss since the previous report
    images_per_s: float  # this session's training throughput
    elapsed_s: float


# ---- what `ddpm-check train` runs: presets, configurations from options, run folders -----------
#: `train`'s presets.  "small" (`train --small`): the README's run, sized for ~2 minutes on a
#: 2-core laptop CPU: 8x8 digits (their native size: 16x16 costs 4x per step for no gain in the
#: metric), T = 300 as the source (sampling cost is linear in T), 1600 steps of batch 128 with the
#: learning rate decayed to 0 (a cosine after 100 warm-up steps), which a constant rate did not
#: match at 2000 steps (BENCHMARKS.md, the held-out digits score).
#: "default" (`train` alone): the constant-rate run of 6000 steps.  "full" (`train --model full`): the
#: source's SimpleUnet and training set-up (a GPU run).
PRESETS: dict[str, dict[str, Any]] = {
    # chosen by the held-out digits score within 120 s of training on 2 CPU cores (BENCHMARKS.md)
    "small": dict(data="digits", image_size=8, model="small", timesteps=defaults.T, schedule=defaults.SCHEDULE_KIND,
                  loss="l2", steps=1600, batch_size=128, lr=3e-3, ema_decay=0.995, lr_schedule="cosine",
                  lr_warmup=100),
    "default": dict(data="digits", image_size=8, model="small", timesteps=defaults.T, schedule=defaults.SCHEDULE_KIND,
                    loss="l2", steps=6000, batch_size=128, lr=1e-3, ema_decay=0.999),
    "full": dict(data="digits", image_size=64, model="full", timesteps=defaults.T, schedule=defaults.SCHEDULE_KIND,
                 loss="l2", steps=10000, batch_size=128, lr=1e-3, ema_decay=0.999),
}
#: `train --model`: the SimpleUnet sizes
MODEL_SIZES = ("small", "full")
#: what a run writes into its output folder
RUN_FILES = ("checkpoint.safetensors", "config.json", "samples.png", "reverse_process.png", "loss.png")


def configs_from_options(*, small: bool = False, data: str | None = None, flip: bool | None = None,
                         image_size: int | None = None,
                         channels: int | None = None, model: str | None = None, channels_list: str | None = None,
                         timesteps: int | None = None, schedule: str | None = None, beta_start: float | None = None,
                         beta_end: float | None = None, loss: str | None = None, steps: int | None = None,
                         batch_size: int | None = None, lr: float | None = None, ema_decay: float | None = None,
                         prediction: str | None = None, zero_snr: bool = False,
                         lr_schedule: str | None = None, lr_warmup: int | None = None,
                         seed: int = 0) -> tuple[UNetConfig, ScheduleConfig, DataConfig, TrainConfig]:
    """The configurations of a new run from `train`'s options: the preset ("small" with
    ``small``, "full" with ``model="full"``, else "default") with every option given (not None)
    in its place.  Bad values raise DDPMCheckError naming the option, before anything is built
    (sizes are held to the checkpoint limits first, so a huge T allocates nothing).
    ``zero_snr`` (the rescaled schedule, abar_T = 0) needs ``prediction="v"``: eps-prediction is
    undefined at t = T there, and Lin et al. train v."""
    if model is not None and model not in MODEL_SIZES:
        raise DDPMCheckError(f"unknown --model {model!r}; choose one of {', '.join(MODEL_SIZES)}")
    if prediction is not None:
        check_prediction(prediction, "--prediction")
    if lr_schedule is not None and lr_schedule not in LR_SCHEDULES:
        raise DDPMCheckError(f"unknown --lr-schedule {lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if lr_warmup is not None and (isinstance(lr_warmup, bool) or not isinstance(lr_warmup, int) or lr_warmup < 0):
        raise DDPMCheckError(f"--lr-warmup must be an integer >= 0 (steps), got {lr_warmup!r}")
    if zero_snr and prediction != "v":
        raise DDPMCheckError(f"--zero-snr needs --prediction v (got {prediction or 'eps'}): with abar_T = 0, "
                             "eps-prediction cannot give x_0 at t = T")
    preset = PRESETS["small" if small else ("full" if model == "full" else "default")]
    given = dict(data=data, image_size=image_size, model=model, timesteps=timesteps, schedule=schedule,
                 loss=loss, steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
                 lr_schedule=lr_schedule, lr_warmup=lr_warmup)
    cfg = {**preset, **{k: v for k, v in given.items() if v is not None}}
    if lr_warmup is None and steps is not None and preset.get("lr_warmup"):
        # the preset's warm-up is a share of the preset's run: the same share of another --steps
        cfg["lr_warmup"] = preset["lr_warmup"] * steps // preset["steps"]
    elif lr_warmup is not None and lr_warmup > cfg["steps"]:
        raise DDPMCheckError(f"--lr-warmup {lr_warmup} is longer than the run (--steps {cfg['steps']}): the "
                             f"learning rate would never reach --lr")
    # the sizes a checkpoint may have, checked before the schedule (T floats) is built
    ckpt.check_limits({"schedule": {"T": cfg["timesteps"]}, "data": {"image_size": cfg["image_size"]},
                       "train": {"batch_size": cfg["batch_size"]}}, "training configuration")
    sched_cfg = ScheduleConfig.from_options(cfg["schedule"], cfg["timesteps"], beta_start, beta_end,
                                            zero_snr=zero_snr)
    data_cfg = DataConfig.parse(cfg["data"], image_size=cfg["image_size"], channels=channels, seed=seed, flip=flip)
    if channels_list is not None:
        model_cfg = UNetConfig(image_channels=data_cfg.channels, down_channels=UNetConfig.parse_channels(channels_list))
    elif cfg["model"] == "full":
        model_cfg = UNetConfig(image_channels=data_cfg.channels)
    else:
        model_cfg = UNetConfig.small(image_channels=data_cfg.channels)
    model_cfg.check_image_size(data_cfg.image_size)
    train_cfg = TrainConfig(steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                            ema_decay=cfg["ema_decay"], loss=cfg["loss"], seed=seed,
                            prediction=prediction or "eps", lr_schedule=cfg.get("lr_schedule", "constant"),
                            lr_warmup=cfg.get("lr_warmup", 0))
    return model_cfg, sched_cfg, data_cfg, train_cfg


def check_run_name(name: str) -> str:
    """``name`` if it is a plain folder name for runs/<name>, else DDPMCheckError."""
    seps = {"/", "\\", os.sep, os.altsep or "/"}
    if not name.strip() or name in (".", "..") or any(c in name for c in seps):
        raise DDPMCheckError(f"--name must be a plain folder name (no '/', not '.' or '..'), got {name!r}; "
                             f"--out takes a path")
    return name


def check_out_dir(out_dir: Path, continuing: Path | None = None) -> None:
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
    clash = [f for f in RUN_FILES if (out_dir / f).exists()]
    if clash:
        raise DDPMCheckError(f"output folder {str(out_dir)!r} already holds {', '.join(clash)}, which this run "
                             f"would overwrite; choose another --out or move them")


#: the file a run holds locked in its output folder while it runs (it names the holder)
LOCK_NAME = ".ddpm-check.lock"


def _holder(fd: int) -> str:
    """Who holds the lock, as its lock file says ("another ddpm-check run" if it says nothing yet)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (f"ddpm-check run pid {info['pid']} on {info['host']}, started {info['started']}"
                + (f" ({info['command']})" if info.get("command") else ""))
    except (OSError, ValueError, KeyError, TypeError):
        return "another ddpm-check run"


def _lock(out_dir: Path) -> int:
    """An exclusive lock on ``out_dir`` for this process (an open file descriptor to close), or
    DDPMCheckError naming the run that holds it, or naming the folder if it cannot be written."""
    path = out_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DDPMCheckError(f"output folder {str(out_dir)!r} cannot be written ({exc.strerror or exc}); "
                             f"choose another --out") from None
    try:
        import fcntl
    except ImportError:  # no flock on this platform: the files are still checked, not locked
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(fd)
        os.close(fd)
        raise DDPMCheckError(f"output folder {str(out_dir)!r} is in use by {holder}; wait for it to finish "
                             f"or choose another --out") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv[1:])[:200]}
    try:  # also the probe that the folder can be written, before any training
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        raise DDPMCheckError(f"output folder {str(out_dir)!r} cannot be written ({exc.strerror or exc}); "
                             f"choose another --out") from None
    return fd


@contextlib.contextmanager
def run_folder(out_dir: Path, continuing: Path | None = None, writer: bool = True):
    """Hold ``out_dir`` for a run's whole life (rank 0 alone writes: ``writer``).

    The folder (and missing parents) is made; an exclusive lock is taken (``LOCK_NAME``, an
    ``flock``), so a second ``train`` into the same folder, concurrent or not yet finished, is
    refused with one line naming the holder; writing the lock file proves the folder writable
    before the model is built; :func:`check_out_dir` then refuses files of another run.  If the
    block fails with an exception (e.g. the loss became nan), the folders made here are removed
    again while they hold no file of the run; Ctrl-C leaves them (the run saved its checkpoint).
    The lock is released, and its file removed, on the way out."""
    if not writer:
        yield out_dir
        return
    made = None  # the first folder this creates
    if not out_dir.exists():
        made = out_dir.absolute()
        while not made.parent.exists():
            made = made.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    def remove_made() -> None:  # the folders made here, while no file of the run is in them
        if made is not None and made.is_dir() and not any(f.is_file() for f in made.rglob("*")):
            shutil.rmtree(made)

    try:
        fd = _lock(out_dir)
    except DDPMCheckError:
        remove_made()
        raise
    try:
        check_out_dir(out_dir, continuing)
        yield out_dir
    except Exception:
        (out_dir / LOCK_NAME).unlink(missing_ok=True)
        remove_made()
        raise
    finally:
        (out_dir / LOCK_NAME).unlink(missing_ok=True)  # still locked: a run that opened it is refused
        os.close(fd)


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; "cpu"; "cuda" (error if unavailable)."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise DDPMCheckError(f"device must be one of auto, cpu, cuda (or cuda:N), got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DDPMCheckError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
        return torch.device(device)
    raise DDPMCheckError(f"unknown device {device!r}; choose one of auto, cpu, cuda")


def _child_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one random stream, derived from the root seed and the stream's name."""
    key = [ord(c) for c in name]
    return int(np.random.SeedSequence([seed, *key]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def build_model(model_cfg: UNetConfig, seed: int) -> SimpleUnet:
    """A SimpleUnet initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_child_seed(seed, "init"))
        return SimpleUnet(model_cfg)


def autocast_model(model: Callable, device: torch.device, enabled: bool = True) -> Callable:
    """``model`` as eps_theta(x_t, t): bf16 autocast + channels_last on CUDA, float32 output."""
    if device.type != "cuda" or not enabled:
        return model

    def eps(x, t):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x.contiguous(memory_format=torch.channels_last), t).float()

    return eps


def configure_cuda() -> None:
    """Process-wide CUDA settings for speed: TF32 for the float32 matmuls and convolutions left
    outside bf16 autocast, and cuDNN autotuning (the shapes are fixed for a whole run)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def _adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam, fused (one kernel for all parameters) where this torch supports it for the device."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):  # e.g. fused Adam on CPU before torch 2.4
        return torch.optim.Adam(params, lr=lr)


class _StepBoundaryInterrupt:
    """Ctrl-C (SIGINT) during a training step takes effect when the step is done.

    A KeyboardInterrupt raised in the middle of a step would leave the generators (and possibly
    BatchNorm statistics, Adam and the weights) part-way into step k + 1 while the counter says k,
    so the checkpoint written on Ctrl-C would not be a state the run passed through, and resuming
    from it would not continue the run exactly.  Inside this context the first Ctrl-C only sets
    ``pending``; the training loop turns it into a KeyboardInterrupt at a step boundary (in a
    distributed run at a boundary all ranks agree on, see ``Trainer.run``).  A second Ctrl-C
    interrupts at once (a way out of a step that never ends), unless it comes within
    ``grace_s`` of the first: torchrun forwards the terminal's Ctrl-C to its workers, which have
    already received it from the terminal, so a distributed run sees two at once.  It changes
    nothing outside the main thread or where SIGINT does not have Python's default handler.
    """

    def __init__(self, grace_s: float = 0.0) -> None:
        self.grace_s = grace_s
        self.pending = False
        self._since = 0.0
        self._old = None

    def __enter__(self) -> "_StepBoundaryInterrupt":
        self.pending = False
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.pending and time.monotonic() - self._since >= self.grace_s:
            raise KeyboardInterrupt
        if not self.pending:
            self.pending, self._since = True, time.monotonic()

    def check(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


class Trainer:
    """Owns the model, its EMA copy, Adam, the data and both generators; steps Algorithm 1.

    Keyword options (not saved in checkpoints, they do not change the math):
        compile: run the network through ``torch.compile`` (default mode).  If compiling fails
            (no compiler, an unsupported Python), training falls back to eager mode and
            ``compile_error`` says why.  Worth it for long GPU runs; the first step pays the
            compile time.
        dtype: the parameters' dtype (float32; float64 for exact comparisons in tests).
        distributed: None (default) = use DistributedDataParallel when launched by torchrun.
    """

    def __init__(self, model_cfg: UNetConfig, schedule_cfg: ScheduleConfig, data_cfg: DataConfig,
                 train_cfg: TrainConfig, device: str | torch.device = "cpu",
                 data: ImageData | None = None, *, compile: bool = False,
                 dtype: torch.dtype = torch.float32, distributed: bool | None = None) -> None:
        from ddpm_check import distributed as ddp

        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        # the limits every checkpoint is held to on loading: a run this Trainer saves loads again
        ckpt.check_limits({"schedule": schedule_cfg.to_dict(), "model": model_cfg.to_dict(),
                           "data": data_cfg.to_dict(), "train": train_cfg.to_dict()}, "training configuration")
        if data_cfg.channels != model_cfg.image_channels:
            raise DDPMCheckError(
                f"data has {data_cfg.channels} channels but the model expects {model_cfg.image_channels}"
            )
        model_cfg.check_image_size(data_cfg.image_size)
        if dtype not in (torch.float32, torch.float64):
            raise DDPMCheckError(f"training dtype must be torch.float32 or torch.float64, got {dtype!r}")
        use_dist = ddp.launched_by_torchrun() if distributed is None else bool(distributed)
        if use_dist:
            if not ddp.launched_by_torchrun():
                raise DDPMCheckError("distributed training needs the torchrun environment (RANK, WORLD_SIZE > 1)")
            world = ddp.env_world_size()
            if train_cfg.batch_size % world:
                raise DDPMCheckError(
                    f"batch size {train_cfg.batch_size} does not split evenly over {world} processes; "
                    f"choose a multiple of {world} (the batch size is the global batch of all processes)"
                )
            if self.device.type == "cuda" and self.device.index is None:
                self.device = torch.device("cuda", ddp.env_local_rank())
            self._owns_group = not torch.distributed.is_initialized()
            self.dist = ddp.init_from_env(self.device)
        else:
            self._owns_group = False
            self.dist = ddp.DistInfo()
        self.model_cfg, self.schedule_cfg, self.data_cfg, self.train_cfg = model_cfg, schedule_cfg, data_cfg, train_cfg
        self.dtype = dtype
        self.schedule = Schedule.from_config(schedule_cfg)
        self.diffusion = GaussianDiffusion(self.schedule, device=self.device, dtype=dtype,
                                           prediction=train_cfg.prediction)
        self.data = data if data is not None else load_data(data_cfg)
        want = (data_cfg.channels, data_cfg.image_size, data_cfg.image_size)
        if tuple(self.data.images.shape[1:]) != want:  # the checkpoint would describe other images
            raise DDPMCheckError(f"the data's images are {list(self.data.images.shape[1:])} but the data config "
                                 f"says {list(want)} (channels, size, size)")

        cuda = self.device.type == "cuda"
        if cuda:
            configure_cuda()
        # channels_last: cuDNN's and oneDNN's fast convolution layout (on 2 CPU cores, the small
        # model: training 1.07x and sampling 1.11x contiguous weights; BENCHMARKS.md, cpu-options).
        self.model = build_model(model_cfg, train_cfg.seed).to(self.device, dtype=dtype,
                                                               memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).eval()  # plain BatchNorm: sampling needs no collectives
        for p in self.ema.parameters():
            p.requires_grad_(False)
        net: Callable = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ddp.convert_batchnorm(self.model, self.device)  # same state_dict keys, global-batch statistics
            # Buffers (BatchNorm running statistics) are computed from all-reduced sums, so they are
            # identical on every rank without DDP's per-step broadcast.
            import inspect

            sync = ("forward_sync_buffers" if "forward_sync_buffers" in
                    inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers")
            net = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None,
                                          gradient_as_bucket_view=True, **{sync: False})
        self._net = net
        # fused Adam: one kernel for all parameters on CUDA (on 2 CPU cores, the small model:
        # 1.02x the foreach loop, about the noise; BENCHMARKS.md, cpu-options); Adam's arithmetic.
        self.optimizer = _adam(self.model.parameters(), train_cfg.lr)
        self.data_gen = torch.Generator("cpu").manual_seed(_child_seed(train_cfg.seed, "data"))
        self.noise_gen = torch.Generator(self.device).manual_seed(_child_seed(train_cfg.seed, "noise"))
        self.step = 0
        self.loss_history: list[float] = []
        # On CUDA the images live on the GPU (a [N, C, H, W] set of a few hundred MB at most for
        # these models): a batch is a gather on the device, not a host copy that stalls the stream.
        self._images = self.data.images.to(self.device) if cuda else self.data.images
        self._amp = cuda and dtype == torch.float32
        self._eager_eps = autocast_model(net, self.device, enabled=self._amp)
        self._eps = self._eager_eps
        self.compile_error: str | None = None
        self._compile_pending = False
        if compile:
            try:
                self._eps = autocast_model(torch.compile(net), self.device, enabled=self._amp)
                self._compile_pending = True  # compiling happens at the first step
            except Exception as exc:  # torch.compile itself refuses (e.g. an unsupported Python)
                self.compile_error = first_line(exc, typed=True)
                warnings.warn(f"torch.compile is unavailable ({self.compile_error}); training in eager mode")

    @property
    def compiled(self) -> bool:
        return self._eps is not self._eager_eps

    @property
    def final_loss(self) -> float | None:
        """The mean loss of the last 50 steps (None before the first step): what a run reports."""
        recent = self.loss_history[-50:]
        return float(sum(recent) / len(recent)) if recent else None

    # ---- one step -------------------------------------------------------------------------------
    def _ema_update(self) -> None:
        k = self.step
        d = min(self.train_cfg.ema_decay, (1.0 + k) / (10.0 + k))
        with torch.no_grad():
            ema_p = [p for p in self.ema.parameters()]
            p = [p.detach() for p in self.model.parameters()]
            torch._foreach_lerp_(ema_p, p, 1.0 - d)  # ema + (1 - d)(theta - ema)
            for eb, b in zip(self.ema.buffers(), self.model.buffers()):
                eb.copy_(b)

    def global_batch(self, batch_size: int | None = None) -> torch.Tensor:
        """x_0 ~ q(x_0): ``batch_size`` images (default: the global batch) on the device.

        The same draws as ``ImageData.batch`` (indices, then flips, from the data generator, on
        the CPU), but the gather runs where the images are.
        """
        B = self.train_cfg.batch_size if batch_size is None else batch_size
        idx = torch.randint(len(self.data), (B,), generator=self.data_gen)  # [B]
        flip = torch.rand(B, generator=self.data_gen) < 0.5 if self.data.config.use_flip else None  # [B]
        if self._images.device != idx.device:
            idx = idx.pin_memory().to(self._images.device, non_blocking=True)
            flip = None if flip is None else flip.pin_memory().to(self._images.device, non_blocking=True)
        x = self._images[idx]  # [B, C, H, W]
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 127.5 - 1.0
        if flip is not None:
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.to(self.device, dtype=self.dtype, non_blocking=True)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One global batch (x_0, t, eps), then this rank's contiguous shard of each."""
        from ddpm_check.distributed import shard

        B = self.train_cfg.batch_size
        x_0 = self.global_batch(B)  # [B, C, H, W]
        t = torch.randint(0, self.diffusion.T, (B,), generator=self.noise_gen, device=self.device)  # [B]
        noise = torch.randn(x_0.shape, generator=self.noise_gen, device=self.device, dtype=self.dtype)  # eps ~ N(0, I)
        return shard(x_0, self.dist), shard(t, self.dist), shard(noise, self.dist)

    def _forward_backward(self, x_0, t, noise) -> torch.Tensor:
        loss = self.diffusion.loss(self._eps, x_0, t=t, noise=noise, kind=self.train_cfg.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP: gradients averaged over ranks = the gradient of the global batch's loss
        return loss

    def train_step(self) -> torch.Tensor:
        """One Adam step on a fresh batch; returns the (detached, on-device) loss of this rank's shard."""
        self.model.train()
        x_0, t, noise = self.draw()
        if self._compile_pending:
            saved = [b.detach().clone() for b in self.model.buffers()]
            try:
                loss = self._forward_backward(x_0, t, noise)
            except DDPMCheckError:
                raise
            except Exception as exc:  # compiling failed: the same step again, eagerly
                self.compile_error = first_line(exc, typed=True)
                warnings.warn(f"torch.compile failed ({self.compile_error}); training in eager mode")
                with torch.no_grad():
                    for b, s in zip(self.model.buffers(), saved):
                        b.copy_(s)
                self._eps = self._eager_eps
                loss = self._forward_backward(x_0, t, noise)
            self._compile_pending = False
        else:
            loss = self._forward_backward(x_0, t, noise)
        for group in self.optimizer.param_groups:  # a Python float: no device work
            group["lr"] = self.train_cfg.lr_at(self.step)
        self.optimizer.step()
        self._ema_update()
        self.step += 1
        return loss.detach()

    def run(self, until: int | None = None, progress: Callable[[TrainProgress], Any] | None = None,
            report_every: int = 10, checkpoint_path: str | Path | None = None,
            checkpoint_every: int = 0) -> None:
        """Train until ``self.step == until`` (default ``train_cfg.steps``).

        Reports through ``progress`` every ``report_every`` steps; saves to ``checkpoint_path``
        every ``checkpoint_every`` steps (0: never in between), at the end, and on Ctrl-C
        (then re-raises KeyboardInterrupt).  Ctrl-C takes effect at the end of the current step
        (distributed: at the next report, every ``report_every`` steps, on all ranks together; a
        second Ctrl-C at once), so that checkpoint continues the run exactly.  Distributed:
        the reported and recorded losses are the global batch's (the mean over ranks); only
        rank 0 reports and saves, and every rank returns after the final checkpoint is written.
        """
        from ddpm_check import distributed as ddp

        until = self.train_cfg.steps if until is None else until
        for label, v, low in (("until", until, 0), ("report_every", report_every, 1), ("checkpoint_every", checkpoint_every, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise DDPMCheckError(f"{label} must be an integer >= {low}, got {v!r}")
        if progress is not None and not callable(progress):
            raise DDPMCheckError(f"progress must be a function of TrainProgress, got {type(progress).__name__}")
        if until < self.step:
            raise DDPMCheckError(f"cannot train to step {until}: the run is already at step {self.step}")
        start_step, t0 = self.step, time.perf_counter()
        pending: list[torch.Tensor] = []
        main = self.dist.is_main
        # Ctrl-C stops the run between two steps (see _StepBoundaryInterrupt): the checkpoint it
        # leaves is exactly the state after `self.step` steps.  Distributed, the ranks must stop at
        # the same step: each rank's Ctrl-C flag travels with the losses in the all-reduce of the
        # next report (every `report_every` steps), and every rank stops there together.
        ctrl_c = _StepBoundaryInterrupt(grace_s=2.0 if self.dist.enabled else 0.0)
        stop_agreed = False

        def flush(collective: bool = True) -> float:
            nonlocal stop_agreed
            if not pending:
                return float("nan")
            vals_t = torch.stack(pending).to(torch.float64)
            pending.clear()
            if self.dist.enabled and collective:  # the global batch's loss: mean of equal shards
                flag = torch.tensor([1.0 if ctrl_c.pending else 0.0], dtype=torch.float64, device=vals_t.device)
                vals_t = torch.cat((vals_t, flag))  # + how many ranks were asked to stop
                torch.distributed.all_reduce(vals_t)
                stop_agreed = stop_agreed or bool(vals_t[-1] > 0)
                vals_t = vals_t[:-1] / self.dist.world_size
            vals = vals_t.cpu().tolist()
            self.loss_history.extend(vals)
            if not all(math.isfinite(v) for v in vals):
                raise DDPMCheckError(
                    f"the loss became {vals[-1]} at step {self.step}; lower the learning rate (now {self.train_cfg.lr})"
                )
            return float(np.mean(vals))

        def save() -> None:
            if checkpoint_path is not None and main:
                self.save(checkpoint_path)

        def stop_here() -> None:
            if not self.dist.enabled:
                ctrl_c.check()
            elif stop_agreed:
                raise KeyboardInterrupt

        with ctrl_c:  # a Ctrl-C during a save waits for it
            try:
                while self.step < until:
                    pending.append(self.train_step())
                    done = self.step == until
                    if done or self.step % report_every == 0:
                        mean_loss = flush()
                        if progress is not None and main:
                            el = time.perf_counter() - t0
                            ips = (self.step - start_step) * self.train_cfg.batch_size / max(el, 1e-9)
                            progress(TrainProgress(self.step, until, mean_loss, ips, el))
                    if checkpoint_path is not None and checkpoint_every and self.step % checkpoint_every == 0 and not done:
                        flush()
                        save()
                    stop_here()
            except KeyboardInterrupt:
                ctrl_c.pending = False
                flush(collective=False)  # a second Ctrl-C may stop ranks apart: no collective here
                save()
                raise
            flush()
            save()
            stop_here()  # a Ctrl-C during the final save: the checkpoint is complete, stop here
        ddp.barrier()

    def close(self) -> None:
        """Leave the process group if this Trainer joined it (a no-op otherwise).

        DistributedDataParallel's reducer holds the process group: the wrapper is dropped and
        collected first, so that the group (and gloo's threads) is destroyed here, while every
        rank is past the final barrier and Python is whole, not later in the interpreter's
        teardown, where a worker was seen to abort ("terminate called without an active
        exception") or hang.  Training goes on single-process afterwards if asked to."""
        import gc

        from ddpm_check import distributed as ddp

        if self._owns_group:
            if self._net is not self.model:
                self._net = self.model
                self._eager_eps = self._eps = autocast_model(self.model, self.device, enabled=self._amp)
                gc.collect()
            ddp.shutdown()
            self._owns_group = False

    # ---- checkpoints ---------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {
            "schedule": self.schedule_cfg.to_dict(),
            "model": self.model_cfg.to_dict(),
            "data": self.data_cfg.to_dict(),
            "train": self.train_cfg.to_dict(),
            "step": self.step,
            "seed": self.train_cfg.seed,
            "device_type": self.device.type,
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            t[f"model/{k}"] = v
        for k, v in self.ema.state_dict().items():
            t[f"ema/{k}"] = v
        for i, st in self.optimizer.state_dict()["state"].items():
            for name, v in st.items():
                t[f"optim/{i}/{name}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
        t["rng/data"] = self.data_gen.get_state()
        t["rng/noise"] = self.noise_gen.get_state()
        t["loss_history"] = torch.tensor(self.loss_history, dtype=torch.float64)
        return t

    def save(self, path: str | Path) -> Path:
        return ckpt.save(path, self.state_tensors(), self.config_dict())

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, source: str = "checkpoint") -> None:
        """Restore weights, EMA, Adam, generators, step and loss history."""
        try:
            self.model.load_state_dict(ckpt.prefixed(tensors, "model"), strict=True)
            self.ema.load_state_dict(ckpt.prefixed(tensors, "ema"), strict=True)
            opt_sd = self.optimizer.state_dict()
            params = list(self.model.parameters())
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, v in ckpt.prefixed(tensors, "optim").items():
                i, name = key.split("/", 1)
                p = params[int(i)]
                if v.shape == p.shape:
                    # Checkpoints store contiguous tensors; Adam's moments must have their
                    # parameter's layout (channels_last), which fused Adam assumes element for element.
                    v = torch.empty_like(p, dtype=v.dtype).copy_(v)
                state.setdefault(int(i), {})[name] = v
            opt_sd["state"] = state
            self.optimizer.load_state_dict(opt_sd)
            self.data_gen.set_state(tensors["rng/data"])
            if meta.get("device_type") == self.device.type:
                self.noise_gen.set_state(tensors["rng/noise"])
            else:  # a CUDA generator's state cannot seed a CPU one: continue on a fresh stream
                self.noise_gen.manual_seed(_child_seed(self.train_cfg.seed, f"noise-{int(meta['step'])}"))
            step = int(meta["step"])
            history = tensors["loss_history"].tolist()
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            raise DDPMCheckError(f"{source} cannot be resumed: {first_line(exc)}") from None
        if step < 0 or len(history) != step:
            raise DDPMCheckError(f"{source} is inconsistent: step {step} but {len(history)} recorded losses")
        self.step, self.loss_history = step, history

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", steps: int | None = None,
                        data: ImageData | None = None, **options: Any) -> "Trainer":
        """Rebuild a run from a checkpoint to continue it; ``steps`` (if given) is the new total.

        ``options`` are Trainer's keyword options (compile, dtype, distributed).  Every rank of a
        distributed run loads the same file; the run may continue on another number of processes.
        """
        tensors, meta, cfgs = load_checkpoint(path)
        train_cfg = cfgs["train"]
        done = int(meta.get("step", 0))
        if steps is not None and steps < done:  # before building anything (or drawing a progress bar)
            raise DDPMCheckError(f"cannot train to step {steps}: checkpoint {str(path)!r} is already at step {done}; "
                                 f"ask for a total of at least {done} steps")
        if steps is not None:
            train_cfg = TrainConfig(**{**train_cfg.to_dict(), "steps": steps})
        tr = cls(cfgs["model"], cfgs["schedule"], cfgs["data"], train_cfg, device=device, data=data, **options)
        for key in ("rng/data", "rng/noise", "loss_history"):
            if key not in tensors:
                raise DDPMCheckError(f"checkpoint {str(path)!r} lacks {key!r}: it cannot be resumed")
        tr.load_state(tensors, meta, source=f"checkpoint {str(path)!r}")
        return tr


def configs_from_meta(meta: dict, path: Any = "checkpoint") -> dict[str, Any]:
    """The four config objects of a checkpoint's JSON (validated by their constructors), after
    its sizes are checked against the limits of ``ddpm_check.checkpoint.check_limits``."""
    ckpt.check_limits(meta, f"checkpoint {str(path)!r}")
    try:
        return {
            "schedule": ScheduleConfig.from_dict(meta["schedule"]),
            "model": UNetConfig.from_dict(meta["model"]),
            "data": DataConfig.from_dict(meta["data"]),
            "train": TrainConfig.from_dict(meta["train"]),
        }
    except (KeyError, TypeError) as exc:
        raise DDPMCheckError(f"checkpoint {str(path)!r} has an incomplete configuration ({exc})") from None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, Any]]:
    """Read a checkpoint for building a model from it -> (tensors, meta, configs).

    The one way checkpoints are read to sample, evaluate or resume.  Before anything is built
    from the configuration, it is checked against the tensors actually stored: its sizes within
    the limits (``ckpt.check_limits``), the EMA (and model) weights' names and shapes those of the
    configured SimpleUnet (``ckpt.check_weights``), the data's channels and image size ones the
    model takes.  Each failure is one DDPMCheckError naming the value and the file.
    """
    tensors, meta = ckpt.load(path)
    source = f"checkpoint {str(ckpt.resolve(path))!r}"
    cfgs = configs_from_meta(meta, ckpt.resolve(path))
    model_cfg, data_cfg = cfgs["model"], cfgs["data"]
    ckpt.check_weights(tensors, model_cfg, source)
    if data_cfg.channels != model_cfg.image_channels:
        raise DDPMCheckError(
            f"{source}: data channels {data_cfg.channels} differ from the model's image_channels "
            f"{model_cfg.image_channels}"
        )
    try:
        model_cfg.check_image_size(data_cfg.image_size)
    except DDPMCheckError as exc:
        raise DDPMCheckError(f"{source}: {exc}") from None
    return tensors, meta, cfgs
