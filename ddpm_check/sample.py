"""Sampling from a trained model (Ho et al. 2020, Algorithm 2) and the pictures.

- :func:`load_sampler` reads a checkpoint (safetensors only, its configuration checked against its
  tensors, see ``ddpm_check.checkpoint``) and returns the EMA model in eval mode with its
  ``GaussianDiffusion``.
- :func:`sample` runs batched ancestral sampling, x_T ~ N(0, I), then for i = T-1, ..., 0
  x_{i} = (x_{i+1} - beta/sqrt(1 - alpha_bar) eps_theta) / sqrt(alpha) + sigma z   (eq. 11),
  no noise at the last step, through ``GaussianDiffusion.p_sample_loop`` (on CUDA one step is
  captured as a CUDA graph and replayed: the same draws and arithmetic, a fraction of the launches).
- :func:`reverse_process` keeps x_t at 10 evenly spaced t (the loop's ``capture``), from pure
  noise (paper t = T) to the image (t = 0), as the source's ``sample_plot_image`` plots.
- :func:`save_grid`, :func:`save_reverse_strip`, :func:`save_loss_curve` draw PNGs with
  matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ddpm_check import checkpoint as ckpt
from ddpm_check.data import DataConfig
from ddpm_check.diffusion import GaussianDiffusion
from ddpm_check.errors import DDPMCheckError, check_seed, first_line
from ddpm_check.schedules import Schedule, ScheduleConfig
from ddpm_check.train import autocast_model, configure_cuda, load_checkpoint, resolve_device
from ddpm_check.unet import SimpleUnet, UNetConfig


@dataclass
class Sampler:
    """A trained noise predictor ready to sample: the EMA model (eval mode) and its diffusion."""

    model: SimpleUnet
    diffusion: GaussianDiffusion
    model_cfg: UNetConfig
    schedule_cfg: ScheduleConfig
    data_cfg: DataConfig
    step: int
    loss_history: list[float]
    device: torch.device
    path: Path | None = None
    compile_error: str | None = None  # why the last eps_model(compile=True) fell back to eager

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's [C, H, W]."""
        s = self.data_cfg.image_size
        return (self.model_cfg.image_channels, s, s)

    def eps_model(self, compile: bool = False, probe_shape: tuple[int, ...] | None = None) -> Callable:
        """eps_theta(x_t, t) of the EMA model (bf16 autocast on CUDA).

        ``compile``: through ``torch.compile``, tried at once on a batch of ``probe_shape``
        [N, C, H, W]; if compiling fails, a warning, ``compile_error`` says why, and the eager
        model.
        """
        eager = autocast_model(self.model, self.device)
        self.compile_error = None
        if not compile:
            return eager
        import warnings

        try:
            fast = compiled_eps_model(self.model, self.device, probe_shape or (1, *self.shape))
        except Exception as exc:  # no compiler, an unsupported Python, ...
            self.compile_error = first_line(exc, typed=True)
            warnings.warn(f"torch.compile unavailable ({self.compile_error}); sampling eagerly")
            return eager
        return fast


def compiled_eps_model(model: Callable, device: torch.device, probe_shape: tuple[int, ...],
                       dtype: torch.dtype = torch.float32) -> Callable:
    """``model`` through ``torch.compile`` as ``sample --compile`` runs it (bf16 autocast on CUDA),
    compiled at once on a probe batch of ``probe_shape`` [N, ...]; whatever compiling raises
    propagates (the caller decides on the eager fallback)."""
    compiled = torch.compile(model)
    if compiled is model:  # TORCHDYNAMO_DISABLE=1 and the like: torch.compile hands the model back
        raise RuntimeError("torch.compile is disabled in this process (it returned the model unchanged)")
    fast = autocast_model(compiled, device)
    # The probe's t has the layout the sampling loops pass: one step index expanded to [N]
    # (stride 0).  A contiguous t would compile a graph the loops then cannot use (dynamo guards
    # on strides), and the first step would compile a second one.
    t = torch.zeros(1, dtype=torch.long, device=device).expand(probe_shape[0])
    with torch.no_grad():
        fast(torch.zeros(probe_shape, device=device, dtype=dtype), t)
    return fast


def sampler_from_modules(ema: SimpleUnet, schedule: Schedule, data_cfg: DataConfig, device: torch.device,
                         step: int = 0, loss_history: list[float] | None = None, prediction: str = "eps") -> Sampler:
    """A Sampler of a network that predicts ``prediction`` ("eps", "x0" or "v") on ``schedule``."""
    return Sampler(ema.eval(), GaussianDiffusion(schedule, device=device, prediction=prediction), ema.config,
                   schedule.config, data_cfg, step, list(loss_history or []), device)


def load_sampler(path: str | Path, device: str = "auto") -> Sampler:
    """The EMA model of a checkpoint (file or run folder) on ``device``, in eval mode."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        configure_cuda()  # TF32 and cuDNN autotuning: sampling repeats one shape T times
    tensors, meta, cfgs = load_checkpoint(path)  # the configuration checked against the tensors
    model = SimpleUnet(cfgs["model"])
    try:
        model.load_state_dict(ckpt.prefixed(tensors, "ema"), strict=True)
    except RuntimeError as exc:
        raise DDPMCheckError(
            f"checkpoint {str(path)!r}: EMA weights do not match the model configuration ({first_line(exc)})"
        ) from None
    model = model.to(dev, memory_format=torch.channels_last).eval()  # the fast conv layout, CPU too
    sched = Schedule.from_config(cfgs["schedule"])
    hist = tensors["loss_history"].tolist() if "loss_history" in tensors else []
    try:
        s = sampler_from_modules(model, sched, cfgs["data"], dev, int(meta.get("step", 0)), hist,
                                 prediction=cfgs["train"].prediction)
    except DDPMCheckError as exc:  # eps-prediction on a zero-SNR schedule
        raise DDPMCheckError(f"checkpoint {str(path)!r}: {exc}") from None
    s.path = ckpt.resolve(path)
    return s


def count_non_finite(x: torch.Tensor) -> int:
    """How many samples [N, ...] hold a NaN or inf anywhere."""
    return int((~torch.isfinite(x).flatten(1).all(dim=1)).sum())


def describe(x: torch.Tensor) -> dict[str, float | int]:
    """What `sample` reports of samples [N, ...] in about [-1, 1]: their mean and std, the
    fraction of values outside [-1, 1] (a NaN counts as outside) and the samples not finite."""
    return {"mean": float(x.mean()), "std": float(x.std()),
            "fraction_outside_unit": float((~(x.abs() <= 1)).float().mean()),
            "non_finite_samples": count_non_finite(x)}


def available_memory() -> int | None:
    """Bytes of memory the system can still give this process (Linux MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_result_fits(n: int, shape: tuple[int, ...]) -> None:
    """Raise DDPMCheckError if n float32 samples of ``shape`` cannot fit in the memory available
    now: asked for before hours of sampling, not at the end."""
    need = 4 * n * math.prod(shape)
    avail = available_memory()
    if avail is not None and need > avail:
        raise DDPMCheckError(
            f"{n:,} samples of shape {list(shape)} need {need / 2**30:,.1f} GiB for the result; "
            f"{avail / 2**30:,.1f} GiB of memory is available: ask for fewer samples (-n)"
        )


def _check_n(n: Any, what: str = "number of samples") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DDPMCheckError(f"{what} must be an integer >= 1, got {n!r}")
    return int(n)


def _run_loop(sampler: Sampler, model, shape, generator, progress, capture=None, ddim=None, graph: bool = True):
    """One batch through the chosen sampler: Algorithm 2 (``p_sample_loop``, T steps) or, with
    ``ddim`` (a ``ddpm_check.ddim.DDIMConfig``), ``ddim_sample_loop`` (S steps)."""
    if ddim is None:
        return sampler.diffusion.p_sample_loop(model, shape, generator=generator, progress=progress,
                                               capture=capture, graph=graph)
    return sampler.diffusion.ddim_sample_loop(model, shape, ddim, generator=generator, progress=progress,
                                              capture=capture)


def loop_steps(sampler: Sampler, ddim=None) -> int:
    """The number of model calls per batch: T, or S for a DDIM run (checked against T)."""
    if ddim is None:
        return sampler.diffusion.T
    from ddpm_check.ddim import timesteps

    return len(timesteps(sampler.diffusion.T, ddim.steps, ddim.spacing))


@torch.no_grad()
def sample(sampler: Sampler, n: int, seed: int = 0, batch_size: int = 500,
           progress: Callable[[int, int], Any] | None = None, compile: bool = False, ddim=None) -> torch.Tensor:
    """n samples x_0 ~ p_theta, float32 [n, C, H, W] on the CPU (not clipped).

    Batches of ``batch_size`` share one generator (seeded by ``seed``) in order, so the result
    depends on ``batch_size``.  ``progress(done, total)`` counts reverse steps over all batches.
    ``compile``: run the model through torch.compile (worth it for many images on a GPU; falls
    back to eager mode where compiling fails).  ``ddim``: a ``DDIMConfig`` to sample with DDIM
    (S of the T steps, Song et al. 2021) instead of Algorithm 2.
    """
    n = _check_n(n)
    batch_size = _check_n(batch_size, "sampling batch size")
    check_result_fits(n, sampler.shape)
    steps = loop_steps(sampler, ddim)
    dev = sampler.device
    g = torch.Generator(dev).manual_seed(check_seed(seed))
    eps = sampler.eps_model(compile, probe_shape=(min(n, batch_size), *sampler.shape))
    n_batches = math.ceil(n / batch_size)
    out = []
    for b in range(n_batches):
        m = min(batch_size, n - b * batch_size)
        cb = None if progress is None else (lambda k, _T, b=b: progress(b * steps + k, n_batches * steps))
        x = _run_loop(sampler, eps, (m, *sampler.shape), g, cb, ddim=ddim)
        out.append(x.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def sample_with_strip(sampler: Sampler, n: int, seed: int = 0, strip_rows: int = 4, n_cols: int = 10,
                      batch_size: int = 500, progress: Callable[[int, int], Any] | None = None,
                      compile: bool = False, ddim=None) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Like :func:`sample`, and also the reverse-process frames of the first ``strip_rows`` chains.

    One pass serves both pictures: the strip's rows are samples 0..strip_rows-1 themselves.
    Returns (x_0 [n, C, H, W], ts, frames [strip_rows, len(ts), C, H, W]); ts are paper steps
    (a DDIM run shows steps it visits).
    """
    n = _check_n(n)
    batch_size = _check_n(batch_size, "sampling batch size")
    strip_rows = min(_check_n(strip_rows, "number of strip rows"), n)
    check_result_fits(n, sampler.shape)
    steps = loop_steps(sampler, ddim)
    ts = strip_steps(sampler.diffusion.T, n_cols, ddim)
    capture = [t - 1 for t in ts if t >= 1]
    g = torch.Generator(sampler.device).manual_seed(check_seed(seed))
    eps = sampler.eps_model(compile, probe_shape=(min(n, batch_size), *sampler.shape))
    n_batches = math.ceil(n / batch_size)
    out, frames = [], None
    for b in range(n_batches):
        m = min(batch_size, n - b * batch_size)
        cb = None if progress is None else (lambda k, _T, b=b: progress(b * steps + k, n_batches * steps))
        if b == 0:
            x, captured = _run_loop(sampler, eps, (m, *sampler.shape), g, cb, capture=capture, ddim=ddim)
            cols = [captured[t - 1][:strip_rows] if t >= 1 else x[:strip_rows] for t in ts]
            frames = torch.stack([c.float().cpu() for c in cols], dim=1)  # [rows, cols, C, H, W]
        else:
            x = _run_loop(sampler, eps, (m, *sampler.shape), g, cb, ddim=ddim)
        out.append(x.float().cpu())
    return torch.cat(out), ts, frames


def strip_steps(T: int, n_cols: int = 10, ddim=None) -> list[int]:
    """Paper steps t shown by the strip: n_cols evenly spaced from T (noise) down to 0 (image);
    for a DDIM run, n_cols - 1 of the steps it visits (from its first) and 0."""
    if n_cols < 2:
        raise DDPMCheckError(f"the reverse-process strip needs at least 2 columns, got {n_cols}")
    if ddim is not None:
        from ddpm_check.ddim import timesteps

        visits = timesteps(T, ddim.steps, ddim.spacing) + 1  # paper steps, descending
        pick = np.round(np.linspace(0, len(visits) - 1, min(n_cols - 1, len(visits)))).astype(int)
        return sorted({int(visits[k]) for k in pick} | {0}, reverse=True)
    ts = np.round(np.linspace(T, 0, n_cols)).astype(int).tolist()
    return sorted(set(ts), reverse=True)


@torch.no_grad()
def reverse_process(sampler: Sampler, n_rows: int = 4, seed: int = 0, n_cols: int = 10
                    ) -> tuple[list[int], torch.Tensor]:
    """x_t along one reverse chain per row at evenly spaced paper t (T ... 0).

    Returns (ts, frames) with frames float32 [n_rows, len(ts), C, H, W]; column j is x_{ts[j]},
    i.e. the loop's input at 0-based index ts[j] - 1 (x_T is pure noise) and x_0 for t = 0.
    """
    n_rows = _check_n(n_rows, "number of strip rows")
    T = sampler.diffusion.T
    ts = strip_steps(T, n_cols)
    capture = [t - 1 for t in ts if t >= 1]
    g = torch.Generator(sampler.device).manual_seed(check_seed(seed))
    x0, captured = sampler.diffusion.p_sample_loop(sampler.eps_model(), (n_rows, *sampler.shape),
                                                   generator=g, capture=capture)
    cols = [captured[t - 1] if t >= 1 else x0 for t in ts]
    return ts, torch.stack([c.float().cpu() for c in cols], dim=1)


# ---- pictures ---------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def to_display(x: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [-1, 1] -> [H, W] or [H, W, 3] in [0, 1] for imshow."""
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def _png(path: str | Path) -> Path:
    """``path`` as a Path, or DDPMCheckError unless it names a .png file (matplotlib would add
    the suffix to another name, or write beside a folder, and the returned path would be wrong)."""
    p = Path(path)
    if p.suffix.lower() != ".png" or p.is_dir():
        raise DDPMCheckError(f"a picture file name must end in .png, got {str(path)!r}")
    return p


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, title: str | None = None) -> Path:
    """A grid of images [N, C, H, W] in [-1, 1] as one PNG (values clipped for display)."""
    path = _png(path)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] < 1 or images.shape[1] not in (1, 3):
        got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DDPMCheckError(f"save_grid needs images [N >= 1, 1 or 3, H, W], got {got}")
    if nrow is not None and (isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1):
        raise DDPMCheckError(f"nrow must be an integer >= 1, got {nrow!r}")
    plt = _plt()
    n = images.shape[0]
    ncol = nrow or max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrows, ncol, figsize=(ncol * 0.9, nrows * 0.9 + (0.4 if title else 0)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(to_display(images[k]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0.01, right=0.99, bottom=0.01,
                        top=(0.99 - 0.4 / (nrows * 0.9 + 0.4)) if title else 0.99)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_reverse_strip(ts: list[int], frames: torch.Tensor, path: str | Path) -> Path:
    """Rows = chains, columns = x_t at the paper steps ``ts`` (noise on the left, image on the right)."""
    path = _png(path)
    plt = _plt()
    rows, cols = frames.shape[:2]
    tile, gap, head = 0.9, 0.06, 0.55  # inches: tile side, gap between tiles, room for the titles
    width = cols * tile + (cols - 1) * gap + 0.2
    height = rows * tile + (rows - 1) * gap + head + 0.1
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.1 / width, right=1 - 0.1 / width, bottom=0.1 / height, top=1 - head / height,
                        wspace=gap / tile, hspace=gap / tile)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(to_display(frames[r, c]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t = {ts[c]}", fontsize=8, pad=3)
    fig.suptitle("reverse process: x_T (noise) -> x_0 (sample)", fontsize=9, y=1 - 0.08 / height, va="top")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_loss_curve(losses: list[float], path: str | Path, label: str = "loss") -> Path:
    """The per-step training loss (faint) and its moving average over ~2 % of the run."""
    path = _png(path)
    plt = _plt()
    y = np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if y.size:
        x = np.arange(1, y.size + 1)
        ax.plot(x, y, lw=0.5, alpha=0.35, color="tab:blue", label="per step")
        w = max(1, y.size // 50)
        if w > 1:
            sm = np.convolve(y, np.ones(w) / w, mode="valid")
            ax.plot(x[w - 1:], sm, lw=1.5, color="tab:blue", label=f"mean of {w}")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.set_title("training loss", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
