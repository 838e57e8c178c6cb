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

Devices: on CUDA the forward pass runs under bf16 autocast with channels_last tensors; on CPU
everything is float32.  Randomness comes from two generators -- ``data`` (CPU: batch indices and
flips) and ``noise`` (on the device: t and eps) -- seeded from ``seed``; their states go into
every checkpoint with the weights, the EMA weights, Adam's state and the loss history, so
``resume`` continues a run exactly: on CPU, K steps in one go and K/2 + K/2 with a save and a
load in between give bit-for-bit equal weights.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ddpm_check import checkpoint as ckpt
from ddpm_check.data import DataConfig, ImageData, load_data
from ddpm_check.diffusion import LOSS_KINDS, GaussianDiffusion
from ddpm_check.errors import DDPMCheckError
from ddpm_check.schedules import Schedule, ScheduleConfig
from ddpm_check.unet import SimpleUnet, UNetConfig


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (saved in every checkpoint)."""

    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    ema_decay: float = 0.999
    loss: str = "l2"
    seed: int = 0

    def __post_init__(self) -> None:
        def _int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if not _int(self.steps) or self.steps < 0:
            raise DDPMCheckError(f"steps must be an integer >= 0, got {self.steps!r}")
        if not _int(self.batch_size) or self.batch_size < 1:
            raise DDPMCheckError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise DDPMCheckError(f"learning rate must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0):
            raise DDPMCheckError(f"EMA decay must be in [0, 1), got {self.ema_decay!r}")
        if self.loss not in LOSS_KINDS:
            raise DDPMCheckError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSS_KINDS)}")
        if not _int(self.seed) or self.seed < 0:
            raise DDPMCheckError(f"seed must be an integer >= 0, got {self.seed!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class TrainProgress:
    """What the progress callback receives."""

    step: int  # steps done in total (including those before a resume)
    total: int
    loss: float  # mean loss since the previous report
    images_per_s: float  # this session's training throughput
    elapsed_s: float


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; "cpu"; "cuda" (error if unavailable)."""
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


def autocast_model(model: torch.nn.Module, device: torch.device) -> Callable:
    """``model`` as eps_theta(x_t, t): bf16 autocast + channels_last on CUDA, float32 output."""
    if device.type != "cuda":
        return model

    def eps(x, t):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x.contiguous(memory_format=torch.channels_last), t).float()

    return eps


class Trainer:
    """Owns the model, its EMA copy, Adam, the data and both generators; steps Algorithm 1."""

    def __init__(self, model_cfg: UNetConfig, schedule_cfg: ScheduleConfig, data_cfg: DataConfig,
                 train_cfg: TrainConfig, device: str | torch.device = "cpu",
                 data: ImageData | None = None) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if data_cfg.channels != model_cfg.image_channels:
            raise DDPMCheckError(
                f"data has {data_cfg.channels} channels but the model expects {model_cfg.image_channels}"
            )
        model_cfg.check_image_size(data_cfg.image_size)
        self.model_cfg, self.schedule_cfg, self.data_cfg, self.train_cfg = model_cfg, schedule_cfg, data_cfg, train_cfg
        self.schedule = Schedule.from_config(schedule_cfg)
        self.diffusion = GaussianDiffusion(self.schedule, device=self.device, dtype=torch.float32)
        self.data = data if data is not None else load_data(data_cfg)

        cuda = self.device.type == "cuda"
        fmt = torch.channels_last if cuda else torch.contiguous_format
        self.model = build_model(model_cfg, train_cfg.seed).to(self.device, memory_format=fmt)
        self.ema = copy.deepcopy(self.model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train_cfg.lr)
        self.data_gen = torch.Generator("cpu").manual_seed(_child_seed(train_cfg.seed, "data"))
        self.noise_gen = torch.Generator(self.device).manual_seed(_child_seed(train_cfg.seed, "noise"))
        self.step = 0
        self.loss_history: list[float] = []
        self._eps = autocast_model(self.model, self.device)

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

    def train_step(self) -> torch.Tensor:
        """One Adam step on a fresh batch; returns the (detached, on-device) loss."""
        self.model.train()
        B = self.train_cfg.batch_size
        x_0 = self.data.batch(B, self.data_gen).to(self.device, non_blocking=True)  # [B, C, H, W]
        t = torch.randint(0, self.diffusion.T, (B,), generator=self.noise_gen, device=self.device)  # [B]
        noise = torch.randn(x_0.shape, generator=self.noise_gen, device=self.device)  # eps ~ N(0, I)
        loss = self.diffusion.loss(self._eps, x_0, t=t, noise=noise, kind=self.train_cfg.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
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
        (then re-raises KeyboardInterrupt).
        """
        until = self.train_cfg.steps if until is None else until
        if until < self.step:
            raise DDPMCheckError(f"cannot train to step {until}: the run is already at step {self.step}")
        start_step, t0 = self.step, time.perf_counter()
        pending: list[torch.Tensor] = []

        def flush() -> float:
            if not pending:
                return float("nan")
            vals = torch.stack(pending).float().cpu().tolist()
            pending.clear()
            self.loss_history.extend(vals)
            if not all(math.isfinite(v) for v in vals):
                raise DDPMCheckError(
                    f"the loss became {vals[-1]} at step {self.step}; lower the learning rate (now {self.train_cfg.lr})"
                )
            return float(np.mean(vals))

        try:
            while self.step < until:
                pending.append(self.train_step())
                done = self.step == until
                if done or self.step % report_every == 0:
                    mean_loss = flush()
                    if progress is not None:
                        el = time.perf_counter() - t0
                        ips = (self.step - start_step) * self.train_cfg.batch_size / max(el, 1e-9)
                        progress(TrainProgress(self.step, until, mean_loss, ips, el))
                if checkpoint_path is not None and checkpoint_every and self.step % checkpoint_every == 0 and not done:
                    flush()
                    self.save(checkpoint_path)
        except KeyboardInterrupt:
            flush()
            if checkpoint_path is not None:
                self.save(checkpoint_path)
            raise
        flush()
        if checkpoint_path is not None:
            self.save(checkpoint_path)

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
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, v in ckpt.prefixed(tensors, "optim").items():
                i, name = key.split("/", 1)
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
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DDPMCheckError(f"{source} cannot be resumed: {first}") from None
        if step < 0 or len(history) != step:
            raise DDPMCheckError(f"{source} is inconsistent: step {step} but {len(history)} recorded losses")
        self.step, self.loss_history = step, history

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", steps: int | None = None,
                        data: ImageData | None = None) -> "Trainer":
        """Rebuild a run from a checkpoint to continue it; ``steps`` (if given) is the new total."""
        tensors, meta = ckpt.load(path)
        cfgs = configs_from_meta(meta, path)
        train_cfg = cfgs["train"]
        if steps is not None:
            train_cfg = TrainConfig(**{**train_cfg.to_dict(), "steps": steps})
        tr = cls(cfgs["model"], cfgs["schedule"], cfgs["data"], train_cfg, device=device, data=data)
        for key in ("rng/data", "rng/noise", "loss_history"):
            if key not in tensors:
                raise DDPMCheckError(f"checkpoint {str(path)!r} lacks {key!r}: it cannot be resumed")
        tr.load_state(tensors, meta, source=f"checkpoint {str(path)!r}")
        return tr


def configs_from_meta(meta: dict, path: Any = "checkpoint") -> dict[str, Any]:
    """The four config objects of a checkpoint's JSON (validated by their constructors)."""
    try:
        return {
            "schedule": ScheduleConfig.from_dict(meta["schedule"]),
            "model": UNetConfig.from_dict(meta["model"]),
            "data": DataConfig.from_dict(meta["data"]),
            "train": TrainConfig.from_dict(meta["train"]),
        }
    except (KeyError, TypeError) as exc:
        raise DDPMCheckError(f"checkpoint {str(path)!r} has an incomplete configuration ({exc})") from None
