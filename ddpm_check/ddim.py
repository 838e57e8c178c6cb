"""DDIM sampling plans: which timesteps a sampler visits and each visit's coefficients (float64 numpy).

A DDIM sampler (Song et al. 2021) runs S of the T trained steps.  It visits 0-based indices
tau_S > ... > tau_1 (index i <-> paper step t = i + 1, as everywhere in ddpm_check) and at each
visit draws from the member of the DDIM family (derivation ``ddim``)

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z,      (Song eq. 12)
    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t),
    sigma  = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev),          (Song eq. 16)

where abar_t = alphas_cumprod[tau_k] and abar_prev = alphas_cumprod[tau_{k-1}] of the *next visited*
index, and abar_prev = 1 (alpha_bar_0, nothing noised yet) after the last visit, so the last step
returns x0_hat (diffusers' ``set_alpha_to_one=True``).

Spacings (diffusers' ``timestep_spacing`` names; the visited indices, descending):

- ``leading``:  k * (T // S) for k = S-1, ..., 0          (Song et al.'s "uniform"; ends at index 0)
- ``linspace``: round(linspace(0, T - 1, S)), reversed     (starts at T - 1 and ends at 0)
- ``trailing``: round(T - k T / S) - 1 for k = 0, ..., S-1 (starts at T - 1; Lin et al. 2024 §3.3)

With S = T every spacing visits every index and eta = 1 is exactly DDPM's ancestral step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpm_check.errors import DDPMCheckError

SPACINGS = ("leading", "linspace", "trailing")
#: the samplers ``sample --sampler`` offers
SAMPLERS = ("ddpm", "ddim")


def timesteps(T: int, steps: int, spacing: str = "leading") -> np.ndarray:
    """The 0-based indices a DDIM sampler visits, descending, int64 [steps].

    ``steps`` must be in 1..T; every spacing gives ``steps`` distinct indices in 0..T-1.
    """
    if spacing not in SPACINGS:
        raise DDPMCheckError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise DDPMCheckError(f"the number of sampling steps must be an integer in 1..{T} (T = {T}), got {steps!r}")
    S = int(steps)
    if spacing == "leading":
        idx = np.arange(S, dtype=np.int64) * (T // S)
    elif spacing == "linspace":
        idx = np.round(np.linspace(0, T - 1, S)).astype(np.int64)
    else:  # trailing
        idx = np.round(T - np.arange(S) * (T / S)).astype(np.int64)[::-1] - 1
    idx = np.sort(idx)[::-1].copy()
    assert len(np.unique(idx)) == S and idx.min() >= 0 and idx.max() <= T - 1, (spacing, T, S)
    return idx


@dataclass(frozen=True)
class DDIMConfig:
    """A DDIM sampler: ``steps`` of the T trained steps, ``eta`` (0 deterministic, 1 DDPM's
    variance), ``spacing`` (see the module docstring)."""

    steps: int
    eta: float = 0.0
    spacing: str = "leading"

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 1:
            raise DDPMCheckError(f"the number of sampling steps must be an integer >= 1, got {self.steps!r}")
        eta = self.eta
        if isinstance(eta, bool) or not isinstance(eta, (int, float, np.floating)) or not np.isfinite(eta) \
                or not 0.0 <= float(eta) <= 1.0:
            raise DDPMCheckError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM's variance), "
                                 f"got {eta!r}")
        if self.spacing not in SPACINGS:
            raise DDPMCheckError(f"unknown spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")

    def to_dict(self) -> dict:
        return {"sampler": "ddim", "steps": int(self.steps), "eta": float(self.eta), "spacing": self.spacing}


@dataclass(frozen=True)
class DDIMPlan:
    """The visits of one DDIM run, each array [S] in visiting order (float64):

    ``timesteps`` (0-based, descending), ``alpha_bar`` = alphas_cumprod[timesteps],
    ``alpha_bar_prev`` (the next visit's alpha_bar, 1 after the last), ``sigma`` (Song eq. 16)
    and ``direction_coef`` = sqrt(1 - alpha_bar_prev - sigma^2)."""

    config: DDIMConfig
    timesteps: np.ndarray
    alpha_bar: np.ndarray
    alpha_bar_prev: np.ndarray
    sigma: np.ndarray
    direction_coef: np.ndarray


def plan(alphas_cumprod: np.ndarray, config: DDIMConfig) -> DDIMPlan:
    """The coefficients of every visit of ``config`` on a schedule's ``alphas_cumprod`` [T]."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    ts = timesteps(len(ac), config.steps, config.spacing)
    return plan_from(config, ts, ac[ts], np.concatenate([ac[ts[1:]], [1.0]]))


def plan_from(config: DDIMConfig, ts: np.ndarray, alpha_bar: np.ndarray, alpha_bar_prev: np.ndarray,
              sigma: np.ndarray | None = None) -> DDIMPlan:
    """A plan from its visits' alpha_bar and alpha_bar_prev; sigma by Song eq. 16 unless given.
    (The checks build deliberately wrong plans with it.)"""
    ab = np.asarray(alpha_bar, dtype=np.float64)
    ab_prev = np.asarray(alpha_bar_prev, dtype=np.float64)
    if sigma is None:
        sigma = config.eta * np.sqrt((1.0 - ab_prev) / (1.0 - ab)) * np.sqrt(1.0 - ab / ab_prev)
    sigma = np.asarray(sigma, dtype=np.float64)
    direction = np.sqrt(np.clip(1.0 - ab_prev - sigma**2, 0.0, None))  # >= 0 for eta <= 1
    return DDIMPlan(config, np.asarray(ts, dtype=np.int64), ab, ab_prev, sigma, direction)


#: ``sample --steps`` when not given: Song et al.'s usual 50 (all T when T is smaller)
DEFAULT_STEPS = 50


def from_options(sampler: str = "ddpm", steps: int | None = None, eta: float | None = None,
                 spacing: str | None = None, T: int | None = None) -> DDIMConfig | None:
    """The sampler that ``sample``/``evaluate`` options name: None for Algorithm 2 (``ddpm``),
    else a DDIMConfig (steps default min(50, T), eta 0, spacing trailing).  DDIM's options with
    ``--sampler ddpm`` are refused (they would be silently ignored), as are steps above T."""
    if sampler not in SAMPLERS:
        raise DDPMCheckError(f"unknown --sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler == "ddpm":
        given = [name for name, v in (("--steps", steps), ("--eta", eta), ("--spacing", spacing)) if v is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise DDPMCheckError(f"{', '.join(given)} {verb} only to --sampler ddim (ddpm runs all T steps with "
                                 f"beta_tilde's noise)")
        return None
    if steps is None:
        steps = DEFAULT_STEPS if T is None else min(DEFAULT_STEPS, T)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise DDPMCheckError(f"--steps must be an integer >= 1, got {steps!r}")
    if T is not None and steps > T:
        raise DDPMCheckError(f"--steps {steps} is more than the model's T = {T} trained steps")
    if eta is not None and (not np.isfinite(eta) or not 0.0 <= eta <= 1.0):
        raise DDPMCheckError(f"--eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM's variance), got {eta!r}")
    if spacing is not None and spacing not in SPACINGS:
        raise DDPMCheckError(f"unknown --spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return DDIMConfig(int(steps), 0.0 if eta is None else float(eta), spacing or "trailing")
