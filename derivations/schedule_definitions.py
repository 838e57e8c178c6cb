"""The beta schedules' definitions as sympy expressions, for holding stored arrays to them.

Not a step-by-step derivation (``ddpm-check derive`` does not list it): the two definitions a
target may claim, written once symbolically and lambdified, so that ``ddpm-check verify`` compares
a target's arrays with the definition and not with another implementation of it.

* linear (Ho et al. 2020, sec. 4): beta_t = beta_start + (beta_end - beta_start) (t - 1)/(T - 1),
  t = 1..T (beta_1 = beta_start, beta_T = beta_end, equal spacing; T = 1 gives beta_start);
* cosine (Nichol & Dhariwal 2021, eq. 17): alpha_bar_t = f(t)/f(0), f(t) = cos^2(((t/T) + s)/(1 + s) pi/2),
  beta_t = min(1 - alpha_bar_t/alpha_bar_{t-1}, 0.999).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import sympy as sp

t, T, s, beta_start, beta_end = sp.symbols("t T s beta_start beta_end", positive=True)

#: beta_t of the linear schedule
LINEAR_BETA = beta_start + (beta_end - beta_start) * (t - 1) / (T - 1)
#: f(t) of the cosine schedule, cos^2 of its angle, and alpha_bar_t = f(t)/f(0)
COSINE_ANGLE = ((t / T) + s) / (1 + s) * sp.pi / 2
COSINE_F = sp.cos(COSINE_ANGLE) ** 2
COSINE_ALPHA_BAR = COSINE_F / COSINE_F.subs(t, 0)
#: how a relative rounding u of the angle x shows in f: |x f'(x)/f(x)| = 2 |x tan x|
_x = sp.Symbol("x", positive=True)
COSINE_F_CONDITION = sp.simplify(sp.Abs(_x * sp.diff(sp.cos(_x) ** 2, _x) / sp.cos(_x) ** 2)).subs(_x, COSINE_ANGLE)
#: the cosine schedule's cap on beta_t (Nichol & Dhariwal: "to prevent singularities near t = T")
COSINE_MAX_BETA = sp.Rational(999, 1000)


@lru_cache(maxsize=None)
def _lambdified(which: str) -> Callable:
    if which == "linear":
        return sp.lambdify((t, T, beta_start, beta_end), LINEAR_BETA, modules="numpy")
    if which == "cosine condition":
        return sp.lambdify((t, T, s), COSINE_F_CONDITION, modules="numpy")
    return sp.lambdify((t, T, s), COSINE_ALPHA_BAR, modules="numpy")


def linear_betas(T_: int, start: float, end: float) -> np.ndarray:
    """beta_t for t = 1..T from the linear definition (float64 [T])."""
    if T_ == 1:
        return np.array([float(start)])
    ts = np.arange(1, T_ + 1, dtype=np.float64)
    return np.asarray(_lambdified("linear")(ts, float(T_), float(start), float(end)), dtype=np.float64)


def cosine_beta_condition(T_: int, s_: float = 0.008) -> np.ndarray:
    """The condition number of each cosine beta_t = 1 - f(t)/f(t-1) in the ratio's terms (float64
    [T], >= 1): a computed cos^2(x) carries a relative error of COSINE_F_CONDITION u, large as x
    nears pi/2 (t near T), and the ratio adds those of f(t) and f(t-1).  Capped at 1e12 (where
    x = pi/2, beta_t is the 0.999 cap, exact in any implementation)."""
    ts = np.arange(0, T_ + 1, dtype=np.float64)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        amp = np.asarray(_lambdified("cosine condition")(ts, float(T_), float(s_)), dtype=np.float64)
        amp = np.nan_to_num(amp, nan=1e12, posinf=1e12)
    return np.minimum(1.0 + amp[1:] + amp[:-1], 1e12)


def cosine_betas(T_: int, s_: float = 0.008) -> np.ndarray:
    """beta_t for t = 1..T from the cosine definition, capped at 0.999 (float64 [T])."""
    ts = np.arange(0, T_ + 1, dtype=np.float64)
    ab = np.asarray(_lambdified("cosine")(ts, float(T_), float(s_)), dtype=np.float64)
    return np.minimum(1.0 - ab[1:] / ab[:-1], float(COSINE_MAX_BETA))
