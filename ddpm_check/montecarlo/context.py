"""The context a check runs in: its seed, schedule and variant, the derived formulas it may use,
its share of the false-failure budget, the power it must have, and the rows it adds.

Also the small helpers several checks share (the default schedule, the probe steps, a normal CDF).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from ddpm_check import stats
from ddpm_check.errors import DDPMCheckError
from ddpm_check.montecarlo.results import ROLE_TEST, CheckRow
from ddpm_check.montecarlo.variants import Variant, shifted
from ddpm_check.schedules import Schedule, ScheduleConfig

# Power requirements, asserted before sampling: the detectable error delta must be at most
# this fraction of the quantity's scale (the sd for means and coefficients, the variance for
# variances) or this absolute CDF distance for KS.
MAX_REL_DELTA = 0.1
MAX_KS_DELTA = 0.1


class CheckDefect(AssertionError):
    """A check broke the testing standard (a bug in the check, not a failed test): its test rows
    spent more than its share of the false-failure budget, or it used a derivation it does not
    declare in its registry entry."""


class CheckContext:
    """What one run of one check needs and gathers.

    ``share`` is the check's part of the family-wise false-failure level (one of ``n_checks``
    equal parts, ``stats.alpha_per_check``); :meth:`set_tests`
    divides it among the statistics the check is about to compute, and the runner verifies
    afterwards that the test rows spent no more (:meth:`verify_budget`).
    """

    def __init__(self, name: str, title: str, samples: int, root_seed: int,
                 schedule: Schedule | None, variant: Variant | None, n_checks: int,
                 needs: tuple[str, ...] = (), progress: Callable[[str], Any] | None = None) -> None:
        self.name = name
        self.title = title
        self.samples = int(samples)
        self.root_seed = int(root_seed)
        self.seed = stats.seed_for(name, root_seed)
        self.user_schedule = schedule
        self.variant = variant
        self.n_checks = int(n_checks)
        self.share = stats.alpha_per_check(self.n_checks)
        self.needs = tuple(needs)
        self.progress = progress
        self.rows: list[CheckRow] = []
        self.notes: list[str] = []
        self.used: list[str] = []  # the derivations whose formulas the check asked for
        self._alpha: float | None = None
        self._declared = 0

    # ---- formulas --------------------------------------------------------------------------
    def formulas(self, deriv: str) -> dict[str, Callable[..., Any]]:
        """The results of derivation ``deriv`` lambdified (edited by the variant if any)."""
        import derivations

        if deriv not in self.needs:
            raise CheckDefect(f"check {self.name!r} uses derivation {deriv!r} but its registry entry "
                              f"declares needs={self.needs}")
        if deriv not in self.used:
            self.used.append(deriv)
        res = dict(derivations.get(deriv).results)
        if self.variant is not None and self.variant.results is not None:
            edited = self.variant.results(deriv, res)
            return {k: (derivations.numeric(deriv, k) if edited[k] is res[k]
                        else derivations.numeric_from_expr(edited[k])) for k in res}
        return {k: derivations.numeric(deriv, k) for k in res}

    def inputs(self, sched: Schedule, i: np.ndarray | int) -> dict[str, Any]:
        """Keyword arguments for a lambdified result at 0-based index i (paper t = i + 1)."""
        a = {"alpha_t": sched.alphas, "beta_t": sched.betas, "alpha_bar_t": sched.alphas_cumprod,
             "alpha_bar_tm1": sched.alphas_cumprod_prev}
        if self.variant is not None and self.variant.shift_inputs:
            a = {k: shifted(v) for k, v in a.items()}
        return {k: v[i] for k, v in a.items()}

    def code_schedule(self, sched: Schedule) -> Schedule:
        """The schedule the code under test receives (a wrong one under a code variant)."""
        if self.variant is not None and self.variant.schedule is not None:
            return self.variant.schedule(sched)
        return sched

    @property
    def sim(self) -> str | None:
        return None if self.variant is None else self.variant.sim

    def generator(self):
        return stats.torch_generator(self.seed)

    # ---- alpha allocation and power ---------------------------------------------------------
    def alpha_for(self, k: int) -> float:
        """Each test's level if the check ran ``k`` tests (Bonferroni within its share)."""
        return stats.alpha_per_test(max(int(k), 1), self.n_checks)

    def set_tests(self, k: int) -> float:
        """Declare the number of statistical tests (the rows with alpha > 0; exact rows, which
        record alpha 0, and diagnostics do not count); returns each one's alpha."""
        self._declared = int(k)
        self._alpha = self.alpha_for(k)
        return self._alpha

    @property
    def alpha(self) -> float:
        assert self._alpha is not None, "set_tests() first"
        return self._alpha

    def verify_budget(self) -> None:
        """CheckDefect unless the test rows' alphas add up to at most the check's share: a check
        that adds more tests than it declared would raise the false-failure rate silently."""
        tests = [r for r in self.rows if r.role == ROLE_TEST and r.alpha > 0]
        spent = math.fsum(r.alpha for r in tests)
        if spent > self.share * (1 + 1e-9):
            raise CheckDefect(f"check {self.name!r}: its {len(tests)} statistical test rows (set_tests declared "
                              f"{self._declared}) spend alpha {spent:.3g}, more than its share {self.share:.3g} of the "
                              f"false-failure budget; declare every statistical test with set_tests")

    def require(self, ok: bool, what: str, delta: float, limit: float, needed_n: int) -> None:
        if not ok:
            raise DDPMCheckError(
                f"check {self.name}: --samples {self.samples} is too small: the detectable error of "
                f"{what} would be {delta:.3g} > {limit:.3g}; use --samples >= {needed_n}"
            )

    def require_mean_power(self, sigma: float, n: int, what: str) -> float:
        d = stats.mean_detectable_delta(sigma, n, self.alpha)
        if sigma > 0:
            self.require(d <= MAX_REL_DELTA * sigma, what, d, MAX_REL_DELTA * sigma,
                         stats.mean_required_n(sigma, MAX_REL_DELTA * sigma, self.alpha))
        return d

    def require_var_power(self, dof: int, what: str) -> float:
        r = stats.variance_detectable_ratio(dof, self.alpha)
        self.require(r <= MAX_REL_DELTA, what + " (relative)", r, MAX_REL_DELTA,
                     stats.variance_required_dof(MAX_REL_DELTA, self.alpha) + 2)
        return r

    def require_ks_power(self, n: int, what: str) -> float:
        d = stats.ks_detectable_delta(n, self.alpha)
        self.require(d <= MAX_KS_DELTA, what, d, MAX_KS_DELTA, stats.ks_required_n(MAX_KS_DELTA, self.alpha))
        return d

    # ---- rows --------------------------------------------------------------------------------
    def add(self, quantity: str, where: str, source: str, out: stats.TestOutcome,
            role: str = ROLE_TEST, note: str = "", threshold: float | None = None,
            group: str = "") -> CheckRow:
        if threshold is not None:
            out = dataclasses.replace(out, threshold=threshold)
        row = CheckRow.of(out, check=self.name, quantity=quantity, where=where, source=source, seed=self.seed,
                          role=role, note=note, group=group)
        self.rows.append(row)
        return row

    def say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress(msg)


# ---- helpers shared by the checks -------------------------------------------------------------
def default_schedule(schedule: Schedule | None) -> Schedule:
    """``schedule``, or the source's (linear T = 300 from 1e-4 to 0.02: ScheduleConfig's defaults)."""
    return schedule if schedule is not None else Schedule.from_config(ScheduleConfig())


def probe_steps(sched: Schedule, first: int = 1) -> list[int]:
    """Paper steps to probe: first, 10, the t with alpha_bar_t closest to 1/2, and T."""
    T = sched.T
    half = int(np.argmin(np.abs(sched.alphas_cumprod - 0.5))) + 1
    steps = {first, min(10, T), half, T}
    return sorted(t for t in steps if first <= t <= T)


def normal_cdf(mean: float, var: float) -> Callable[[np.ndarray], np.ndarray]:
    """The CDF of N(mean, var) (a step function for var = 0: a point mass)."""
    from scipy.special import ndtr

    if var > 0:
        sd = math.sqrt(var)
        return lambda x: ndtr((np.asarray(x) - mean) / sd)
    return lambda x: (np.asarray(x) >= mean).astype(np.float64)


def fmt_x0(x0: float) -> str:
    return f"{x0:g}"
