"""Test statistics, thresholds, power and sample sizes for the Monte Carlo checks.

Pure statistics (numpy + scipy; torch only lazily, for a generator).  Every Monte Carlo check
in :mod:`ddpm_check.montecarlo` is a set of statistical tests with two declared error rates
(docs/TESTING.md, section 2; the method of TensorFlow Probability's ``statistical_testing.py``):

* **false failure** (correct code fails): family-wise ``ALPHA_FW = 1e-4`` over a whole
  ``check all``.  Each of the K registered checks (``len(ddpm_check.montecarlo.CHECKS)``,
  counted, never typed) gets ``ALPHA_FW / K`` and divides it equally among its individual
  statistics (Bonferroni), see :func:`alpha_per_test`; the runner verifies that the test rows a
  check actually produced spend no more than its share;
* **false pass** (wrong code passes): ``BETA = 1e-3`` at the declared detectable error delta.

The tests, all with a *known* null distribution (the variance comes from the formula under
test, never from the data):

=====================  =========================================  =============================
test                   statistic                                  rejects when
=====================  =========================================  =============================
mean, known sigma      |z| = |xbar - mu0| / (sigma0 / sqrt(n))    |z| > z_{1-alpha/2}
variance (Gaussian)    (n-1) s^2 / sigma0^2 ~ chi2(n-1),          equal-tailed chi2 test; shown
                       shown as its normal deviate                 as |z_eq| > z_{1-alpha/2}
OLS slope, intercept   exact N(b, sigma0^2/Sxx) given the x's     |z| > z_{1-alpha/2}
OLS residual variance  RSS / sigma0^2 ~ chi2(n-2)                 as the variance test
distribution (KS)      D_n = sup |F_n - F|                        D_n > sqrt(ln(2/alpha)/(2n))
                                                                  (DKWM, any continuous F)
exact identity         max |a - b| / (u * scale), u = 2^-53       > a declared ulp budget
=====================  =========================================  =============================

Power (the smallest error each test detects with probability >= 1 - beta):

* mean: ``delta = (z_{1-alpha/2} + z_{1-beta}) sigma0 / sqrt(n)``,
  required ``n = ceil(((z_{1-alpha/2} + z_{1-beta}) sigma0 / delta)^2)``;
* variance: exact, from chi2 quantiles: the test rejects sigma^2 = r sigma0^2 with probability
  >= 1 - beta iff ``r >= c_hi / chi2_beta`` or ``r <= c_lo / chi2_{1-beta}``;
* KS: if sup|G - F| = d for the true law G, then D_n >= d - |F_n - G|(x*) and Hoeffding gives
  detection with probability >= 1 - beta once
  ``d >= sqrt(ln(2/alpha)/(2n)) + sqrt(ln(2/beta)/(2n))``; this is at most docs/TESTING.md's
  ``n = 2 max(ln(2/alpha), ln(2/beta)) / d^2``.

Seeds: :func:`seed_for` derives one seed per check from a root seed and the check's *name*
(``numpy.random.SeedSequence`` with a spawn key from SHA-256 of the name), so adding a check
does not move the others, and Python's salted ``hash()`` is never used.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats as st

from ddpm_check import defaults
from ddpm_check.errors import DDPMCheckError, check_seed

# ---- declared error rates --------------------------------------------------------------------
ALPHA_FW: float = 1e-4
"""Family-wise false-failure rate of a whole ``check all`` (``--network`` included)."""
BETA: float = 1e-3
"""False-pass rate at the declared detectable error delta."""
DEFAULT_ROOT_SEED: int = defaults.ROOT_SEED
"""The root seed (``ddpm_check.defaults.ROOT_SEED``, the arXiv number of Ho et al. 2020); ``--seed`` replaces it."""
UNIT_ROUNDOFF: float = float(np.finfo(np.float64).eps) / 2.0
"""u = 2^-53, the unit roundoff of float64."""


# ---- the result of one test ------------------------------------------------------------------
@dataclass(frozen=True)
class TestOutcome:
    """One test statistic: passed iff ``statistic <= threshold``.

    ``delta`` is the smallest error (in the units of ``expected``) the test detects with
    probability >= 1 - BETA at this ``n`` and ``alpha``; ``se`` is the standard error of
    ``estimate`` under the null (None where it has no meaning, e.g. KS or exact tests).
    """

    kind: str
    estimate: float
    expected: float
    se: float | None
    statistic: float
    threshold: float
    alpha: float
    delta: float
    n: int

    __test__ = False  # not a pytest class

    @property
    def passed(self) -> bool:
        return bool(self.statistic <= self.threshold)

    @property
    def margin(self) -> float:
        """statistic / threshold: < 1 passes, a wrong formula should give >> 1 (0 / 0 is 0)."""
        if self.threshold > 0:
            return float(self.statistic / self.threshold)
        return 0.0 if self.statistic == 0 else math.inf

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


# ---- quantiles, Bonferroni -------------------------------------------------------------------
def z_two_sided(alpha: float) -> float:
    """z_{1 - alpha/2}: the two-sided critical value of a standard normal."""
    _check_prob("alpha", alpha)
    return float(st.norm.isf(alpha / 2.0))


def z_one_sided(p: float) -> float:
    """z_{1 - p}."""
    _check_prob("p", p)
    return float(st.norm.isf(p))


def bonferroni(alpha_total: float, k: int) -> float:
    """The per-test level of k tests sharing alpha_total (union bound)."""
    _check_prob("alpha_total", alpha_total)
    if k < 1:
        raise ValueError(f"bonferroni needs k >= 1 tests, got {k}")
    return alpha_total / k


def alpha_per_check(n_checks: int, alpha_fw: float = ALPHA_FW) -> float:
    """Each of ``n_checks`` checks' share of the family-wise level (the number of registered
    checks: ``len(ddpm_check.montecarlo.CHECKS)``)."""
    return bonferroni(alpha_fw, n_checks)


def alpha_per_test(n_tests: int, n_checks: int, alpha_fw: float = ALPHA_FW) -> float:
    """The level of each of a check's ``n_tests`` statistics: ALPHA_FW / n_checks / n_tests."""
    return bonferroni(alpha_per_check(n_checks, alpha_fw), n_tests)


# ---- power and sample size -------------------------------------------------------------------
def mean_detectable_delta(sigma: float, n: int, alpha: float, beta: float = BETA) -> float:
    """delta = (z_{1-alpha/2} + z_{1-beta}) sigma / sqrt(n) for a z-test of a mean."""
    _check_n(n)
    return (z_two_sided(alpha) + z_one_sided(beta)) * float(sigma) / math.sqrt(n)


def mean_required_n(sigma: float, delta: float, alpha: float, beta: float = BETA) -> int:
    """n = ceil(((z_{1-alpha/2} + z_{1-beta}) sigma / delta)^2)."""
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    return int(math.ceil(((z_two_sided(alpha) + z_one_sided(beta)) * float(sigma) / delta) ** 2))


def _chi2_bounds(dof: int, alpha: float) -> tuple[float, float]:
    return float(st.chi2.ppf(alpha / 2, dof)), float(st.chi2.isf(alpha / 2, dof))


def variance_detectable_ratio(dof: int, alpha: float, beta: float = BETA) -> float:
    """Smallest relative variance error |r - 1| the chi2 test detects w.p. >= 1 - beta.

    Under sigma^2 = r sigma0^2 the statistic is r X with X ~ chi2(dof): it exceeds c_hi w.p.
    >= 1 - beta iff r >= c_hi / chi2.ppf(beta), and falls below c_lo iff r <= c_lo /
    chi2.ppf(1 - beta).  The larger of the two distances from 1 is returned.
    """
    _check_n(dof)
    c_lo, c_hi = _chi2_bounds(dof, alpha)
    up = c_hi / float(st.chi2.ppf(beta, dof)) - 1.0
    down = 1.0 - c_lo / float(st.chi2.isf(beta, dof))
    return max(up, down)


def variance_required_dof(rel_delta: float, alpha: float, beta: float = BETA) -> int:
    """Smallest dof whose chi2 variance test detects a relative error ``rel_delta``."""
    if not rel_delta > 0:
        raise ValueError(f"rel_delta must be > 0, got {rel_delta}")
    lo, hi = 1, 2
    while variance_detectable_ratio(hi, alpha, beta) > rel_delta:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if variance_detectable_ratio(mid, alpha, beta) > rel_delta:
            lo = mid
        else:
            hi = mid
    return hi


def dkwm_epsilon(n: int, alpha: float) -> float:
    """The DKWM bound: P(sup|F_n - F| > eps) <= 2 exp(-2 n eps^2) = alpha."""
    _check_n(n)
    _check_prob("alpha", alpha)
    return math.sqrt(math.log(2.0 / alpha) / (2.0 * n))


def ks_detectable_delta(n: int, alpha: float, beta: float = BETA) -> float:
    """Smallest sup-distance d between true and hypothesised CDF detected w.p. >= 1 - beta."""
    return dkwm_epsilon(n, alpha) + dkwm_epsilon(n, beta)


def ks_required_n(d: float, alpha: float, beta: float = BETA) -> int:
    """n such that ks_detectable_delta(n, alpha, beta) <= d."""
    if not 0 < d < 1:
        raise ValueError(f"d must be in (0, 1), got {d}")
    c = math.sqrt(math.log(2.0 / alpha) / 2.0) + math.sqrt(math.log(2.0 / beta) / 2.0)
    return int(math.ceil((c / d) ** 2))


# ---- the tests -------------------------------------------------------------------------------
def z_test(estimate: float, expected: float, se: float, alpha: float, n: int,
           beta: float = BETA, kind: str = "z") -> TestOutcome:
    """Two-sided z-test of an estimate with a known (null) standard error ``se``."""
    _check_prob("alpha", alpha)
    estimate, expected, se = float(estimate), float(expected), float(se)
    diff = abs(estimate - expected)
    if se > 0:
        stat = diff / se
    else:  # a degenerate null: any difference is infinitely significant
        stat = 0.0 if diff == 0 else math.inf
    delta = (z_two_sided(alpha) + z_one_sided(beta)) * se
    return TestOutcome(kind, estimate, expected, se, float(stat), z_two_sided(alpha), alpha,
                       float(delta), int(n))


def mean_test(samples: np.ndarray, mu0: float, sigma0: float, alpha: float,
              beta: float = BETA) -> TestOutcome:
    """z = (xbar - mu0) / (sigma0 / sqrt(n)) for iid samples of known sd sigma0."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    n = x.size
    _check_n(n)
    return z_test(float(x.mean()), mu0, float(sigma0) / math.sqrt(n), alpha, n, beta,
                  kind="mean")


def _normal_deviate_of_chi2(q: float, dof: int) -> float:
    """|z| with two-sided tail 2 min(F(q), 1 - F(q)) equal to that of q under chi2(dof)."""
    p = min(float(st.chi2.cdf(q, dof)), float(st.chi2.sf(q, dof)))
    if p > 1e-300:
        return float(st.norm.isf(p))
    # the tail underflows: Wilson-Hilferty (accurate for the large dof used here)
    k = float(dof)
    return abs(((q / k) ** (1.0 / 3.0) - (1.0 - 2.0 / (9.0 * k))) / math.sqrt(2.0 / (9.0 * k)))


def chi2_variance_test(sum_sq: float, dof: int, sigma0_sq: float, alpha: float,
                       beta: float = BETA, kind: str = "variance") -> TestOutcome:
    """Equal-tailed test of sum_sq / sigma0^2 ~ chi2(dof).

    ``sum_sq`` is sum (x - xbar)^2 (dof = n - 1) or an OLS residual sum of squares
    (dof = n - 2).  The statistic is shown as the equivalent |normal deviate| so that, like
    every other row, it passes iff statistic <= z_{1-alpha/2}.  ``estimate`` = sum_sq / dof,
    ``se`` = sigma0^2 sqrt(2/dof), ``delta`` = the detectable absolute variance error.
    """
    _check_n(dof)
    sum_sq, sigma0_sq = float(sum_sq), float(sigma0_sq)
    est = sum_sq / dof
    if sigma0_sq > 0:
        stat = _normal_deviate_of_chi2(sum_sq / sigma0_sq, dof)
    else:
        stat = 0.0 if sum_sq == 0 else math.inf
    delta = variance_detectable_ratio(dof, alpha, beta) * sigma0_sq
    return TestOutcome(kind, est, sigma0_sq, sigma0_sq * math.sqrt(2.0 / dof), float(stat),
                       z_two_sided(alpha), alpha, float(delta), int(dof) + 1)


def variance_test(samples: np.ndarray, sigma0_sq: float, alpha: float,
                  beta: float = BETA) -> TestOutcome:
    """(n - 1) s^2 / sigma0^2 ~ chi2(n - 1) for iid Gaussian samples."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    _check_n(x.size - 1)
    ss = float(((x - x.mean()) ** 2).sum())
    out = chi2_variance_test(ss, x.size - 1, sigma0_sq, alpha, beta)
    return out


def ks_statistic(samples: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]) -> float:
    """D_n = sup_x |F_n(x) - F(x)| for a continuous F (exact, from the order statistics)."""
    x = np.sort(np.asarray(samples, dtype=np.float64).reshape(-1))
    n = x.size
    _check_n(n)
    f = np.asarray(cdf(x), dtype=np.float64)
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(max(np.max(i / n - f), np.max(f - (i - 1) / n)))


def ks_test(samples: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray], alpha: float,
            beta: float = BETA) -> TestOutcome:
    """One-sample KS against an exact CDF with the DKWM threshold sqrt(ln(2/alpha)/(2n))."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    n = x.size
    d = ks_statistic(x, cdf)
    return TestOutcome("ks", d, 0.0, None, d, dkwm_epsilon(n, alpha), alpha,
                       ks_detectable_delta(n, alpha, beta), int(n))


@dataclass(frozen=True)
class OLSFit:
    """Least squares y = a + b x: estimates and the sufficient statistics."""

    n: int
    slope: float
    intercept: float
    rss: float
    x_mean: float
    sxx: float


def ols_fit(x: np.ndarray, y: np.ndarray) -> OLSFit:
    """Fit y = a + b x by least squares (centred, float64)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape} and {y.shape}")
    _check_n(x.size - 2)
    xm, ym = float(x.mean()), float(y.mean())
    dx = x - xm
    sxx = float(dx @ dx)
    b = float(dx @ (y - ym)) / sxx
    a = ym - b * xm
    r = y - a - b * x
    return OLSFit(int(x.size), b, a, float(r @ r), xm, sxx)


def ols_tests(fit: OLSFit, slope0: float, intercept0: float, sigma0_sq: float,
              alpha: float, beta: float = BETA) -> tuple[TestOutcome, TestOutcome, TestOutcome]:
    """Exact tests of y | x ~ N(intercept0 + slope0 x, sigma0^2), conditional on the x's.

    Given the regressors, b_hat ~ N(b, sigma^2 / Sxx), a_hat ~ N(a, sigma^2 (1/n + xbar^2/Sxx))
    and RSS / sigma^2 ~ chi2(n - 2), with sigma^2 the *hypothesised* residual variance.
    Returns (slope, intercept, residual variance) outcomes.
    """
    s2 = float(sigma0_sq)
    se_b = math.sqrt(max(s2, 0.0) / fit.sxx)
    se_a = math.sqrt(max(s2, 0.0) * (1.0 / fit.n + fit.x_mean**2 / fit.sxx))
    slope = z_test(fit.slope, slope0, se_b, alpha, fit.n, beta, kind="ols-slope")
    icpt = z_test(fit.intercept, intercept0, se_a, alpha, fit.n, beta, kind="ols-intercept")
    resid = chi2_variance_test(fit.rss, fit.n - 2, s2, alpha, beta, kind="ols-residual-var")
    resid = TestOutcome(resid.kind, resid.estimate, resid.expected, resid.se, resid.statistic,
                        resid.threshold, resid.alpha, resid.delta, fit.n)
    return slope, icpt, resid


def exact_test(actual: np.ndarray, expected: np.ndarray, scale: np.ndarray,
               budget_ulps: float, unit: float = UNIT_ROUNDOFF) -> TestOutcome:
    """An exact identity up to rounding: max |actual - expected| / (u * scale).

    ``scale`` (broadcast against the values) is the magnitude rounding errors scale with:
    the sum of the absolute values of the terms times a condition number.  The test passes
    iff the worst error is within ``budget_ulps`` units of roundoff u (``unit``: float64's by
    default; ``ddpm-check verify`` passes a target's lower precision) of that scale.  No alpha:
    a correct implementation never fails.  ``estimate`` is the worst absolute error (inf if any
    error is not finite).
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64), np.broadcast_shapes(a.shape, e.shape))
    err = np.abs(a - e)
    if not np.all(np.isfinite(err)):
        stat = math.inf
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(err == 0, 0.0, err / (unit * s))
        stat = float(np.max(ratio)) if ratio.size else 0.0
    worst = float(np.max(np.where(np.isfinite(err), err, np.inf))) if err.size else 0.0
    return TestOutcome("exact", worst, 0.0, None, stat, float(budget_ulps), 0.0,
                       float(budget_ulps * unit * float(np.max(s))) if s.size else 0.0,
                       int(a.size))


# ---- seeds -----------------------------------------------------------------------------------
def _name_words(name: str) -> tuple[int, ...]:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return tuple(int.from_bytes(digest[i:i + 4], "little") for i in range(0, 32, 4))


def seed_sequence_for(name: str, root_seed: int = DEFAULT_ROOT_SEED) -> np.random.SeedSequence:
    """SeedSequence(root_seed) spawned by the check's name (SHA-256 words as the spawn key)."""
    return np.random.SeedSequence(entropy=check_seed(root_seed, "root seed"), spawn_key=_name_words(name))


#: The most Monte Carlo samples a check or the audit takes: memory and time grow with it (check
#: posterior: about 0.7 GB and 22 s at 10**6 samples on 2 cores, so some 7 GB at the cap).
MAX_SAMPLES = 10_000_000


def check_samples(samples: Any, minimum: int = 1, name: str = "samples") -> int:
    """``samples`` as an int, or DDPMCheckError unless it is an integer in minimum .. MAX_SAMPLES."""
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or not minimum <= samples <= MAX_SAMPLES:
        raise DDPMCheckError(f"{name} must be an integer from {minimum} to {MAX_SAMPLES:,}, got {samples!r}")
    return int(samples)


def seed_for(name: str, root_seed: int = DEFAULT_ROOT_SEED) -> int:
    """A 63-bit seed for the check ``name``; independent of every other name's seed."""
    state = seed_sequence_for(name, root_seed).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) | (int(state[1]) << 32)) & ((1 << 63) - 1))


def torch_generator(seed: int):
    """A CPU torch.Generator seeded with ``seed`` (torch imported lazily)."""
    import torch

    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


# ---- helpers ---------------------------------------------------------------------------------
def _check_prob(name: str, p: float) -> None:
    if not (0.0 < float(p) < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {p}")


def _check_n(n: int) -> None:
    if int(n) < 1:
        raise ValueError(f"need at least one sample (degree of freedom), got {n}")


def all_passed(outcomes: Sequence[TestOutcome]) -> bool:
    return all(o.passed for o in outcomes)
