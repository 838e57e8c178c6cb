"""Beta schedules and every array derived from them, in float64 numpy.

Index convention (the one used throughout ddpm_check, as in the source's code, guided-diffusion
and diffusers): the math uses paper steps t = 1..T; the arrays are 0-based, so

    array index i  <->  paper step t = i + 1,      alphas_cumprod_prev[0] = 1  (alpha_bar_0 = 1).

With beta_t the variance of the forward step q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
(Ho et al. 2020, eq. 2), the derived arrays are

    alphas[i]                         = alpha_t = 1 - beta_t
    alphas_cumprod[i]                 = alpha_bar_t = prod_{s <= t} alpha_s            (eq. 4)
    alphas_cumprod_prev[i]            = alpha_bar_{t-1}                 (1 at i = 0)
    sqrt_recip_alphas[i]              = 1 / sqrt(alpha_t)                               (eq. 11)
    sqrt_alphas_cumprod[i]            = sqrt(alpha_bar_t)                               (eq. 4)
    sqrt_one_minus_alphas_cumprod[i]  = sqrt(1 - alpha_bar_t)                           (eq. 4)
    posterior_variance[i]             = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t   (eq. 7)
    posterior_log_variance_clipped[i] = log beta_tilde_t, with index 0 (where beta_tilde_1 = 0)
                                        replaced by index 1, as in improved-diffusion; for T = 1
                                        there is no index 1 and log beta_1 is used instead
    posterior_mean_coef1[i]           = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)          (eq. 7)
    posterior_mean_coef2[i]           = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)   (eq. 7)

so that q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde_t I): coef1 multiplies x_0 and
coef2 multiplies x_t, in the order of Ho et al. eq. 7 and with improved-diffusion's (and
guided-diffusion's) names, so arrays port between the two under the same name.

This module imports neither torch (until ``Schedule.to_torch``) nor sympy: the arrays are computed
directly with numpy, and the tests compare them with the lambdified sympy derivations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ddpm_check import defaults
from ddpm_check.errors import DDPMCheckError

KINDS = ("linear", "cosine", "custom")
#: the kinds a user names by an option (a custom schedule is given by its betas instead)
OPTION_KINDS = ("linear", "cosine")

#: The names of the float64 arrays a Schedule holds (each of length T), in a stable order.
ARRAY_NAMES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_recip_alphas",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


# ---- validation helpers -----------------------------------------------------------------------
#: The most diffusion steps a schedule may have (Ho et al.: 1000).  Sampling costs T network
#: evaluations, and a crafted T of 10**9 would ask for 8 GB per schedule array.
MAX_T = 100_000


def _check_T(T: Any) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)):
        raise DDPMCheckError(f"T must be an integer >= 1, got {T!r}")
    if T < 1:
        raise DDPMCheckError(f"T must be an integer >= 1, got {T}")
    if T > MAX_T:
        raise DDPMCheckError(f"T must be at most {MAX_T:,}, got {T}")
    return int(T)


def _check_beta_scalar(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DDPMCheckError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not math.isfinite(v) or not (0.0 < v < 1.0):
        raise DDPMCheckError(f"{name} must be in the open interval (0, 1), got {v!r}")
    return v


def _check_betas(betas: Any, T: int | None = None) -> np.ndarray:
    """Validate a user-given beta sequence; returns a fresh float64 1-D array."""
    try:
        b = np.array(betas, dtype=np.float64)
    except (TypeError, ValueError):
        raise DDPMCheckError(f"betas must be a sequence of numbers in (0, 1), got {betas!r}") from None
    if b.ndim != 1 or b.size < 1:
        raise DDPMCheckError(f"betas must be a non-empty 1-D sequence, got shape {b.shape}")
    bad = np.flatnonzero(~np.isfinite(b) | (b <= 0.0) | (b >= 1.0))
    if bad.size:
        i = int(bad[0])
        raise DDPMCheckError(
            f"every beta must be finite and in the open interval (0, 1); betas[{i}] = {float(b[i])!r}"
        )
    tiny = np.flatnonzero(1.0 - b == 1.0)
    if tiny.size:
        i = int(tiny[0])
        raise DDPMCheckError(
            f"betas[{i}] = {float(b[i])!r} is too small: 1 - beta rounds to 1 in float64 "
            "(use beta >= 1e-15)"
        )
    if T is not None and b.size != T:
        raise DDPMCheckError(f"betas has length {b.size} but T = {T}; they must agree")
    return b


# ---- beta schedules ---------------------------------------------------------------------------
def linear_betas(T: int = defaults.T, beta_start: float = defaults.BETA_START,
                 beta_end: float = defaults.BETA_END) -> np.ndarray:
    """beta_t linear in t from beta_start (t = 1) to beta_end (t = T) (Ho et al. 2020, sec. 4).

    The source's default is T = 300, beta from 1e-4 to 0.02 (the paper uses T = 1000).
    Returns float64 [T]; T = 1 gives [beta_start].
    """
    T = _check_T(T)
    beta_start = _check_beta_scalar("beta_start", beta_start)
    beta_end = _check_beta_scalar("beta_end", beta_end)
    if beta_start > beta_end:
        raise DDPMCheckError(
            f"beta_start must be <= beta_end, got beta_start = {beta_start!r} > beta_end = {beta_end!r}"
        )
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def _cosine_alpha_bar(u: np.ndarray, s: float) -> np.ndarray:
    """f(t) = cos^2((t/T + s) / (1 + s) * pi/2) at u = t/T (Nichol & Dhariwal 2021, eq. 17)."""
    return np.cos((u + s) / (1.0 + s) * (math.pi / 2)) ** 2


def cosine_betas(T: int = defaults.T, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """The cosine schedule of Nichol & Dhariwal 2021 (eq. 17).

    alpha_bar(t) = f(t) / f(0) with f(t) = cos^2((t/T + s)/(1 + s) * pi/2), and
    beta_t = min(1 - alpha_bar(t) / alpha_bar(t-1), max_beta)  for t = 1..T
    (the clip at 0.999 avoids the singularity at t = T).  Same numbers as diffusers'
    ``betas_for_alpha_bar`` ("squaredcos_cap_v2") and improved-diffusion.  Returns float64 [T].
    """
    T = _check_T(T)
    if not (math.isfinite(s) and s >= 0):
        raise DDPMCheckError(f"cosine offset s must be finite and >= 0, got {s!r}")
    max_beta = _check_beta_scalar("max_beta", max_beta)
    t = np.arange(T, dtype=np.float64)
    ratio = _cosine_alpha_bar((t + 1) / T, s) / _cosine_alpha_bar(t / T, s)
    return np.minimum(1.0 - ratio, max_beta)


def zero_snr_betas(betas: Any) -> np.ndarray:
    """Betas rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1; derivation ``zero-snr``).

    sqrt(abar'_t) = (sqrt(abar_t) - sqrt(abar_T)) sqrt(abar_1) / (sqrt(abar_1) - sqrt(abar_T)), so that
    abar'_T = 0 and abar'_1 = abar_1; then beta'_t = 1 - abar'_t / abar'_{t-1} (abar'_0 = 1), hence
    beta'_1 = beta_1 and beta'_T = 1 exactly.  The result has beta_T = 1, which a ``Schedule``
    refuses (alpha_T = 0): it is for diagnostics and for v-prediction, never for eps-prediction
    sampling.  Needs T >= 2 (abar_1 > abar_T).
    """
    b = _check_betas(betas)
    if b.size < 2:
        raise DDPMCheckError(f"zero terminal SNR needs T >= 2 (abar_1 > abar_T), got T = {b.size}")
    sq = np.sqrt(np.cumprod(1.0 - b))
    first, last = sq[0], sq[-1]
    scaled = (sq - last) * first / (first - last)
    ab = scaled**2
    ab[-1] = 0.0
    prev = np.concatenate([[1.0], ab[:-1]])
    out = 1.0 - ab / prev
    out[0], out[-1] = b[0], 1.0  # beta'_1 = beta_1 (no rounding), beta'_T = 1
    return out


# ---- config -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleConfig:
    """Which beta schedule: kind "linear" (beta_start..beta_end), "cosine", or "custom" (betas);
    with ``zero_snr`` those betas rescaled to zero terminal SNR (``zero_snr_betas``: abar_T = 0,
    beta_T = 1; for x0- and v-prediction only, see ``ddpm_check.diffusion``).

    Validated on construction (so ``from_dict`` validates too); bad values raise DDPMCheckError.
    For kind "custom", ``betas`` is required and T must equal len(betas).
    """

    kind: str = defaults.SCHEDULE_KIND
    T: int = defaults.T
    beta_start: float = defaults.BETA_START
    beta_end: float = defaults.BETA_END
    betas: tuple[float, ...] | None = None
    zero_snr: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DDPMCheckError(f"unknown schedule kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        T = _check_T(self.T)
        object.__setattr__(self, "T", T)
        if self.kind == "linear":
            linear_betas(T, self.beta_start, self.beta_end)  # validates start/end
        if self.kind == "custom":
            if self.betas is None:
                raise DDPMCheckError("schedule kind 'custom' needs betas (a sequence of T values in (0, 1))")
            b = _check_betas(self.betas, T)
            object.__setattr__(self, "betas", tuple(float(x) for x in b))
        elif self.betas is not None:
            raise DDPMCheckError(
                f"betas are only used with kind 'custom', got kind {self.kind!r} with betas given"
            )
        if not isinstance(self.zero_snr, (bool, np.bool_)):
            raise DDPMCheckError(f"zero_snr must be true or false, got {self.zero_snr!r}")
        object.__setattr__(self, "zero_snr", bool(self.zero_snr))
        if self.zero_snr and T < 2:
            raise DDPMCheckError(f"zero terminal SNR needs T >= 2 (abar_1 > abar_T), got T = {T}")
        object.__setattr__(self, "beta_start", float(self.beta_start))
        object.__setattr__(self, "beta_end", float(self.beta_end))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (betas as a list or None)."""
        return {
            "kind": self.kind,
            "T": self.T,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "betas": None if self.betas is None else list(self.betas),
            "zero_snr": self.zero_snr,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScheduleConfig":
        if not isinstance(d, dict):
            raise DDPMCheckError(f"schedule config must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"kind", "T", "beta_start", "beta_end", "betas", "zero_snr"}
        if unknown:
            raise DDPMCheckError(f"unknown schedule config keys {sorted(unknown)}; "
                                 "allowed: kind, T, beta_start, beta_end, betas, zero_snr")
        betas = d.get("betas")
        kw = dict(d)
        if betas is not None:
            kw["betas"] = tuple(betas)
        return cls(**kw)

    @classmethod
    def from_options(cls, kind: str | None = None, T: int | None = None, beta_start: float | None = None,
                     beta_end: float | None = None, *, kind_flag: str = "--schedule",
                     zero_snr: bool = False) -> "ScheduleConfig":
        """The schedule asked for by command-line options (the one parser of train's, check's and
        schedule's options); an option left None takes the default (the source's schedule).

        Raises DDPMCheckError naming the option: an unknown kind (named by ``kind_flag``), betas
        given for the cosine schedule (it has none to set), or a value ScheduleConfig refuses.
        """
        k = defaults.SCHEDULE_KIND if kind is None else str(kind).lower()
        if k not in OPTION_KINDS:
            raise DDPMCheckError(f"unknown {kind_flag} {kind!r}; choose one of {', '.join(OPTION_KINDS)}")
        betas = {name: v for name, v in (("beta_start", beta_start), ("beta_end", beta_end)) if v is not None}
        if k != "linear" and betas:
            raise DDPMCheckError(f"--beta-start/--beta-end apply to the linear schedule only, not {k!r}")
        return cls(kind=k, T=defaults.T if T is None else T, zero_snr=zero_snr, **betas)

    def make_betas(self) -> np.ndarray:
        """The betas [T] this config names (rescaled when ``zero_snr``; then beta_T = 1)."""
        if self.kind == "linear":
            b = linear_betas(self.T, self.beta_start, self.beta_end)
        elif self.kind == "cosine":
            b = cosine_betas(self.T)
        else:
            b = np.array(self.betas, dtype=np.float64)
        return zero_snr_betas(b) if self.zero_snr else b


# ---- the schedule -----------------------------------------------------------------------------
def _recip_sqrt(a: np.ndarray) -> np.ndarray:
    """1/sqrt(a), inf where a = 0 (alpha_T of a zero-SNR schedule) without numpy's warning."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(a)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Schedule:
    """A beta schedule and all derived float64 arrays (each of shape [T], read-only).

    Index convention: array index i <-> paper step t = i + 1; alphas_cumprod_prev[0] = 1.
    See the module docstring for each array's formula.  Build with ``Schedule.from_config``,
    ``Schedule.from_betas`` or ``make_schedule``.
    """

    config: ScheduleConfig
    betas: np.ndarray
    alphas: np.ndarray = field(repr=False)
    alphas_cumprod: np.ndarray = field(repr=False)
    alphas_cumprod_prev: np.ndarray = field(repr=False)
    sqrt_recip_alphas: np.ndarray = field(repr=False)
    sqrt_alphas_cumprod: np.ndarray = field(repr=False)
    sqrt_one_minus_alphas_cumprod: np.ndarray = field(repr=False)
    posterior_variance: np.ndarray = field(repr=False)
    posterior_log_variance_clipped: np.ndarray = field(repr=False)
    posterior_mean_coef1: np.ndarray = field(repr=False)
    posterior_mean_coef2: np.ndarray = field(repr=False)

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> "Schedule":
        if not isinstance(config, ScheduleConfig):
            raise DDPMCheckError(f"expected a ScheduleConfig, got {type(config).__name__}")
        return cls._build(config, config.make_betas())

    @classmethod
    def from_betas(cls, betas: Any) -> "Schedule":
        """A "custom" schedule from user-given betas (a sequence of T values in (0, 1))."""
        b = _check_betas(betas)
        return cls.from_config(ScheduleConfig(kind="custom", T=int(b.size), betas=tuple(b.tolist())))

    @classmethod
    def _build(cls, config: ScheduleConfig, betas: np.ndarray) -> "Schedule":
        if config.zero_snr:  # beta_T = 1 exactly (zero_snr_betas); the betas before it as any schedule's
            b = np.concatenate([_check_betas(betas[:-1], config.T - 1), [1.0]]) if betas[-1] == 1.0 else \
                _check_betas(betas, config.T)
        else:
            b = _check_betas(betas, config.T)
        alphas = 1.0 - b                                                  # alpha_t
        acp = np.cumprod(alphas)                                          # alpha_bar_t     (eq. 4)
        if config.zero_snr:
            acp[-1] = 0.0  # exactly, not the rounding of a product with alpha_T = 0
        acp_prev = np.concatenate(([1.0], acp[:-1]))                      # alpha_bar_{t-1}
        one_minus_acp = 1.0 - acp
        pv = b * (1.0 - acp_prev) / one_minus_acp                         # beta_tilde_t    (eq. 7)
        # beta_tilde_1 = 0; improved-diffusion clips the log by using beta_tilde_2 at index 0.
        # With T = 1 there is no index 1; the other choice of Ho et al. (sigma^2 = beta_t) is used.
        first = pv[1] if b.size > 1 else b[0]
        plv = np.log(np.concatenate(([first], pv[1:])))
        coef1 = np.sqrt(acp_prev) * b / one_minus_acp                     # eq. 7, multiplies x_0
        coef2 = np.sqrt(alphas) * (1.0 - acp_prev) / one_minus_acp        # eq. 7, multiplies x_t
        return cls(
            config=config,
            betas=_readonly(b),
            alphas=_readonly(alphas),
            alphas_cumprod=_readonly(acp),
            alphas_cumprod_prev=_readonly(acp_prev),
            sqrt_recip_alphas=_readonly(_recip_sqrt(alphas)),
            sqrt_alphas_cumprod=_readonly(np.sqrt(acp)),
            sqrt_one_minus_alphas_cumprod=_readonly(np.sqrt(one_minus_acp)),
            posterior_variance=_readonly(pv),
            posterior_log_variance_clipped=_readonly(plv),
            posterior_mean_coef1=_readonly(coef1),
            posterior_mean_coef2=_readonly(coef2),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """All derived arrays by name (see ARRAY_NAMES)."""
        return {name: getattr(self, name) for name in ARRAY_NAMES}

    def to_torch(self, device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        """The arrays as torch tensors [T] on ``device`` (default dtype torch.float32).

        Converted from float64 once, so float32 tensors are the correctly rounded float64 values.
        """
        import torch

        if dtype is None:
            dtype = torch.float32
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise DDPMCheckError(f"to_torch needs a floating torch dtype (e.g. torch.float32), got {dtype!r}")
        return {
            name: torch.as_tensor(np.array(a), dtype=torch.float64).to(device=device, dtype=dtype)
            for name, a in self.arrays().items()
        }

    def __len__(self) -> int:
        return self.T


def make_schedule(kind: str = defaults.SCHEDULE_KIND, T: int | None = None,
                  beta_start: float = defaults.BETA_START, beta_end: float = defaults.BETA_END,
                  betas: Any = None) -> Schedule:
    """Shortcut for ``Schedule.from_config(ScheduleConfig(kind, T, beta_start, beta_end, betas))``.

    T = None means 300 (the source's default) for "linear"/"cosine" and len(betas) for "custom".
    """
    if betas is not None:
        betas = tuple(_check_betas(betas).tolist())
    if T is None:
        T = len(betas) if (kind == "custom" and betas is not None) else defaults.T
    return Schedule.from_config(
        ScheduleConfig(kind=kind, T=T, beta_start=beta_start, beta_end=beta_end, betas=betas)
    )
