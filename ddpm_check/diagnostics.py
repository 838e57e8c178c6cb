"""Schedule diagnostics: how much of x_0 survives to x_T, and what the prior term L_T costs.

For a beta schedule (``ddpm_check.schedules``; paper steps t = 1..T, array index i = t - 1):

* alpha_bar_T and sqrt(alpha_bar_T): x_T = sqrt(alpha_bar_T) x_0 + sqrt(1 - alpha_bar_T) eps
  (Ho et al. 2020, eq. 4), so sqrt(alpha_bar_T) is the fraction of x_0 still in x_T;
* the terminal signal-to-noise ratio SNR(T) = alpha_bar_T / (1 - alpha_bar_T) (Kingma et al. 2021);
* the prior term of the bound (Ho et al. eq. 5), per dimension,

      L_T = KL(q(x_T | x_0) || N(0, 1)) = KL(N(sqrt(ab) x_0, 1 - ab) || N(0, 1))
          = 1/2 (ab x_0^2 + (1 - ab) - 1 - ln(1 - ab)),        ab = alpha_bar_T,

  in nats and bits, for the worst case |x_0| = 1 of data in [-1, 1] and averaged over
  x_0 ~ U[-1, 1] (E[x_0^2] = 1/3; L_T is affine in x_0^2, so the average is L_T at x_0^2 = 1/3).
  Ho et al. chose their schedule so that L_T ~ 1e-5 bits per dimension (sec. 4);
* the step where alpha_bar_t first falls to 1/2 or below, the largest beta_t, the range of alpha_t;
* curves for a plot: alpha_bar_t, log SNR(t) and beta_tilde_t / beta_t against t / T.

The Gaussian KL is not retyped here: it is the ``kl_gaussian`` result of the symbolic "elbo"
derivation, lambdified (``derivations.numeric``), per the design's one-source-of-truth rule.
Comparing schedules is a matter of parsing specs such as ``linear:300:1e-4:0.02`` or
``cosine:1000`` (:func:`parse_specs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ddpm_check.errors import DDPMCheckError
from ddpm_check.schedules import OPTION_KINDS, Schedule, ScheduleConfig, zero_snr_betas

#: L_T of Ho et al. 2020's own schedule (linear 1e-4..0.02, T = 1000), "≈ 1e-5 bits per dimension" (sec. 4)
HO_L_T_BITS: float = 1e-5
#: E[x_0^2] for x_0 ~ U[-1, 1]
UNIFORM_X0_SQ: float = 1.0 / 3.0
LN2: float = math.log(2.0)
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
SPEC_HELP = (
    "KIND:T[:BETA_START:BETA_END], e.g. linear:300:1e-4:0.02 (the source), linear:1000 "
    "(betas default to 1e-4 and 0.02) or cosine:1000 (no betas)"
)


# ---- the prior term -------------------------------------------------------------------------
def kl_prior(alpha_bar: Any, x0_sq: Any = 1.0) -> Any:
    """L_T = KL(N(sqrt(ab) x_0, 1 - ab) || N(0, 1)) per dimension, in nats (Ho et al. eq. 5).

    Args:
        alpha_bar: alpha_bar_T in (0, 1) (a float or a numpy array).
        x0_sq: x_0^2 (1 for the worst case of data in [-1, 1]; 1/3 for the average over
            x_0 ~ U[-1, 1]: L_T is affine in x_0^2, so averaging x_0^2 averages L_T).
    Returns:
        nats, broadcast over the inputs.  Evaluated from the "elbo" derivation's
        ``kl_gaussian`` with mu_1 = sqrt(ab x0_sq), sigma_1 = sqrt(1 - ab), mu_2 = 0, sigma_2 = 1.
    """
    import derivations

    ab = np.asarray(alpha_bar, dtype=np.float64)
    x2 = np.asarray(x0_sq, dtype=np.float64)
    if np.any(~np.isfinite(ab)) or np.any((ab < 0) | (ab >= 1)):
        raise DDPMCheckError(f"alpha_bar must be in [0, 1), got {alpha_bar!r}")
    if np.any(~np.isfinite(x2)) or np.any(x2 < 0):
        raise DDPMCheckError(f"x0_sq must be finite and >= 0, got {x0_sq!r}")
    kl = derivations.numeric("elbo", "kl_gaussian")
    out = kl(mu_1=np.sqrt(ab * x2), sigma_1=np.sqrt(1.0 - ab), mu_2=0.0, sigma_2=1.0)
    # For tiny alpha_bar the KL is O(ab^2) and the lambdified sum of O(1) terms rounds to a
    # few ulps either side of 0; the exact value is >= 0.
    return np.maximum(np.asarray(out, dtype=np.float64), 0.0) if np.ndim(out) else max(float(out), 0.0)


# ---- specs ----------------------------------------------------------------------------------
def _parse_number(text: str, what: str, spec: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise DDPMCheckError(f"schedule spec {spec!r}: {what} {text!r} is not a {'whole ' if kind is int else ''}number; "
                             f"expected {SPEC_HELP}") from None


def parse_spec(spec: str) -> ScheduleConfig:
    """``"linear:300:1e-4:0.02"``, ``"linear:1000"`` or ``"cosine:1000"`` -> a validated ScheduleConfig."""
    text = spec.strip()
    parts = [p.strip() for p in text.split(":")]
    if not text or len(parts) < 2:
        raise DDPMCheckError(f"schedule spec {spec!r} is malformed; expected {SPEC_HELP}")
    kind = parts[0].lower()
    if kind not in OPTION_KINDS:
        raise DDPMCheckError(f"schedule spec {spec!r}: unknown kind {parts[0]!r}; choose one of {', '.join(OPTION_KINDS)}")
    T = _parse_number(parts[1], "T", spec, int)
    if kind == "cosine":
        if len(parts) != 2:
            raise DDPMCheckError(f"schedule spec {spec!r}: the cosine schedule takes no betas; write cosine:T")
        kw: dict[str, Any] = {"kind": "cosine", "T": T}
    else:
        if len(parts) not in (2, 4):
            raise DDPMCheckError(f"schedule spec {spec!r}: give both BETA_START and BETA_END or neither; expected {SPEC_HELP}")
        kw = {"kind": "linear", "T": T}  # without betas: ScheduleConfig's defaults (the source's)
        if len(parts) == 4:
            kw.update(beta_start=_parse_number(parts[2], "BETA_START", spec),
                      beta_end=_parse_number(parts[3], "BETA_END", spec))
    try:
        return ScheduleConfig(**kw)
    except DDPMCheckError as exc:
        raise DDPMCheckError(f"schedule spec {spec!r}: {exc}") from None


def parse_specs(specs: Iterable[str]) -> list[ScheduleConfig]:
    """Each item may hold several comma-separated specs; returns the configs in order."""
    out: list[ScheduleConfig] = []
    for item in specs:
        pieces = [p for p in str(item).split(",")]
        if any(not p.strip() for p in pieces):
            raise DDPMCheckError(f"schedule spec list {item!r} has an empty entry; expected {SPEC_HELP}, comma-separated")
        out.extend(parse_spec(p) for p in pieces)
    if not out:
        raise DDPMCheckError(f"no schedule given; expected {SPEC_HELP}")
    return out


def label(config: ScheduleConfig) -> str:
    """A short name: ``linear T=300 (1e-4..0.02)`` or ``cosine T=1000``, ``, zero-SNR`` added for
    a rescaled one."""
    z = ", zero-SNR" if config.zero_snr else ""
    if config.kind == "linear":
        return f"linear T={config.T} ({config.beta_start:g}..{config.beta_end:g}){z}"
    return f"{config.kind} T={config.T}{z}"


def spec_string(config: ScheduleConfig) -> str:
    """The spec that :func:`parse_spec` turns back into ``config`` (linear and cosine)."""
    if config.kind == "linear":
        return f"linear:{config.T}:{config.beta_start:g}:{config.beta_end:g}"
    return f"{config.kind}:{config.T}"


# ---- diagnostics ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleDiagnostics:
    """The numbers ``ddpm-check schedule`` prints for one schedule (per dimension).

    Steps are paper steps t = 1..T.  ``t_half`` is the first t with alpha_bar_t <= 1/2 (None if
    alpha_bar_T > 1/2).  ``L_T_*``: the prior KL in nats and bits, for |x_0| = 1 (worst case of
    data in [-1, 1]) and averaged over x_0 ~ U[-1, 1].
    """

    label: str
    spec: str
    kind: str
    T: int
    beta_start: float | None
    beta_end: float | None
    beta_first: float
    beta_max: float
    t_beta_max: int
    alpha_min: float
    alpha_max: float
    alpha_bar_T: float
    sqrt_alpha_bar_T: float
    snr_T: float
    log_snr_T: float
    L_T_worst_nats: float
    L_T_worst_bits: float
    L_T_uniform_nats: float
    L_T_uniform_bits: float
    t_half: int | None
    t_half_frac: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def diagnose(schedule: Schedule | ScheduleConfig) -> ScheduleDiagnostics:
    """Compute :class:`ScheduleDiagnostics` for a Schedule (or a ScheduleConfig)."""
    s = Schedule.from_config(schedule) if isinstance(schedule, ScheduleConfig) else schedule
    if not isinstance(s, Schedule):
        raise DDPMCheckError(f"expected a Schedule or ScheduleConfig, got {type(schedule).__name__}")
    cfg = s.config
    custom = cfg.kind == "custom"
    return _diagnose_betas(s.betas, label(cfg) if not custom else f"custom T={s.T}",
                           spec_string(cfg) if not custom else "custom", cfg.kind,
                           cfg.beta_start if cfg.kind == "linear" else None,
                           cfg.beta_end if cfg.kind == "linear" else None)


def diagnose_zero_snr(schedule: Schedule | ScheduleConfig) -> ScheduleDiagnostics:
    """The diagnostics of ``schedule`` rescaled to zero terminal SNR (``schedules.zero_snr_betas``):
    abar_T = 0, so x_T keeps nothing of x_0 and the prior term L_T is 0; beta_T = 1."""
    d = diagnose(schedule)
    s = Schedule.from_config(schedule) if isinstance(schedule, ScheduleConfig) else schedule
    return _diagnose_betas(zero_snr_betas(s.betas), f"{d.label} zero-SNR", f"{d.spec}:zero-snr", d.kind,
                           None, None)


def _diagnose_betas(betas: np.ndarray, label_: str, spec: str, kind: str, beta_start: float | None,
                    beta_end: float | None) -> ScheduleDiagnostics:
    b = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - b
    ab = np.cumprod(alphas)
    ab_T = float(ab[-1])
    worst = float(kl_prior(ab_T, 1.0))
    unif = float(kl_prior(ab_T, UNIFORM_X0_SQ))
    below = np.flatnonzero(ab <= 0.5)
    t_half = int(below[0]) + 1 if below.size else None
    i_max = int(np.argmax(b))
    T = int(b.size)
    return ScheduleDiagnostics(
        label=label_,
        spec=spec,
        kind=kind,
        T=T,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_first=float(b[0]),
        beta_max=float(b[i_max]),
        t_beta_max=i_max + 1,
        alpha_min=float(alphas.min()),
        alpha_max=float(alphas.max()),
        alpha_bar_T=ab_T,
        sqrt_alpha_bar_T=math.sqrt(ab_T),
        snr_T=ab_T / (1.0 - ab_T),
        log_snr_T=math.log(ab_T) - math.log1p(-ab_T) if ab_T > 0 else -math.inf,
        L_T_worst_nats=worst,
        L_T_worst_bits=worst / LN2,
        L_T_uniform_nats=unif,
        L_T_uniform_bits=unif / LN2,
        t_half=t_half,
        t_half_frac=None if t_half is None else t_half / T,
    )


def curves(schedule: Schedule | np.ndarray) -> dict[str, np.ndarray]:
    """Arrays over paper steps t = 1..T of a Schedule (or of its betas): ``t_frac`` = t/T,
    ``alpha_bar``, ``log_snr`` = ln(ab/(1-ab)) (-inf where ab = 0), ``beta_tilde_ratio`` =
    beta_tilde_t / beta_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) (0 at t = 1)."""
    b = schedule.betas if isinstance(schedule, Schedule) else np.asarray(schedule, dtype=np.float64)
    T = b.size
    t = np.arange(1, T + 1, dtype=np.float64)
    ab = np.cumprod(1.0 - b)
    prev = np.concatenate([[1.0], ab[:-1]])
    with np.errstate(divide="ignore"):
        log_snr = np.log(ab) - np.log1p(-ab)
    return {
        "t_frac": t / T,
        "alpha_bar": ab,
        "log_snr": log_snr,
        "beta_tilde_ratio": (1.0 - prev) / (1.0 - ab),
    }


def check_plot_path(path: Path) -> Path:
    """Validate a plot destination (suffix .png/.pdf/.svg, not a folder); returns it as a Path."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise DDPMCheckError(f"plot path {str(p)!r} is a folder; give a file name such as {str(p / 'schedule.png')!r}")
    if p.suffix.lower() not in PLOT_SUFFIXES:
        raise DDPMCheckError(f"plot path {str(p)!r} must end in one of {', '.join(PLOT_SUFFIXES)}")
    return p


def plot(schedules: Sequence[Schedule], path: Path, extra: Sequence[tuple[str, np.ndarray]] = ()) -> Path:
    """Write alpha_bar_t, log SNR(t) and beta_tilde_t / beta_t against t/T (matplotlib, Agg) to ``path``;
    ``extra``: (name, betas) curves drawn dashed beside them (the zero-SNR rescales)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    p = check_plot_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    items = [(label(s.config) if s.config.kind != "custom" else f"custom T={s.T}", s, "-") for s in schedules]
    items += [(name, betas, "--") for name, betas in extra]
    for name, sched, style in items:
        c = curves(sched)
        axes[0].plot(c["t_frac"], c["alpha_bar"], style, label=name)
        axes[1].plot(c["t_frac"], c["log_snr"], style, label=name)
        axes[2].plot(c["t_frac"], c["beta_tilde_ratio"], style, label=name)
    axes[0].axhline(0.5, color="grey", lw=0.6, ls=":")
    axes[0].set_title(r"$\bar\alpha_t$  (signal variance kept in $x_t$)")
    axes[1].set_title(r"log SNR$(t) = \ln(\bar\alpha_t / (1-\bar\alpha_t))$")
    axes[2].set_title(r"$\tilde\beta_t / \beta_t = (1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$")
    for ax in axes:
        ax.set_xlabel("t / T")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(p, dpi=110)
    except OSError as exc:
        raise DDPMCheckError(f"cannot write plot {str(p)!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return p


__all__ = [
    "HO_L_T_BITS", "UNIFORM_X0_SQ", "SPEC_HELP", "ScheduleDiagnostics", "kl_prior", "parse_spec",
    "parse_specs", "label", "spec_string", "diagnose", "diagnose_zero_snr", "curves", "plot", "check_plot_path",
]
