"""Monte Carlo checks of the derivations (``derivations/``) against the torch DDPM (``ddpm_check``).

Each check fills a ``_Context`` with rows; :func:`run_check` returns them as a
:class:`CheckResult`: rows of (quantity, expected, estimate, standard error, statistic,
threshold, alpha, detectable error delta, n, seed, verdict) and the runtime.  Expected values
come from the sympy results, lambdified (``derivations.numeric``): no formula under test is
retyped here.  The only formula typed in this module is the *definition* of the forward step,
q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t) (Ho et al. 2020, eq. 2), which the checks
iterate (``mean-eps`` also uses term magnitudes to scale its rounding budget).

Checks (``CHECKS``), each a real statistical test (see ``ddpm_check.stats``):

* ``marginal``  -- iterate eq. 2 t times (float64 chains from fixed x_0 in {0, 1, -3, 10}) and
  test mean (z), variance (chi2) and the whole law (KS, DKWM) of x_t against the closed form
  q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t) (eq. 4) at t = 1, 10, the t with
  alpha_bar_t ~ 0.5 and T; the same for ``GaussianDiffusion.q_sample``.  Exact rows: the
  schedule's alphas_cumprod equals the derived recursion alpha_bar_t = alpha_t alpha_bar_{t-1}.
* ``posterior`` -- simulate (x_{t-1}, x_t) by iterating eq. 2 from x_0; regress x_{t-1} on x_t
  (the law of x_{t-1} given x_t, x_0 is Gaussian with a mean linear in x_t) and test slope,
  intercept and residual variance with the exact OLS sampling laws against mu_tilde_t's
  coefficients and beta_tilde_t (eq. 7), from the derivation and from the schedule arrays.
  Exact rows: the schedule arrays equal the lambdified derivation at every t.
* ``mean-eps``  -- exact identities up to float64 rounding (a budget in units of roundoff of
  each formula's scale): the eps form of mu_tilde_t (eq. 11) equals the (x_t, x_0) form (eq. 7);
  x_0 is recovered from eps; ``p_mean_variance`` / ``q_posterior_mean_variance`` / ``p_sample``
  given the true eps return mu_tilde_t and beta_tilde_t.
* ``sampler``   -- with the exact noise predictor of a 2-D Gaussian mixture, run
  ``GaussianDiffusion.p_sample_loop`` (float64) and KS-test fixed 1-D projections of its output
  against the exact mixture CDF.  Which configurations are tests and which are diagnostics is
  decided, before sampling, by the total-variation distance between q(x_T) and the N(0, I) the
  loop starts from (a data-processing bound on the output error; see :func:`check_sampler`).
* ``network``   -- train a small SimpleUnet on Gaussian-mixture images and compare its eps-MSE
  with the Bayes floor of the exact predictor on the same (x_0, t, eps) (paired).  Only when
  named, or ``run_all(network=True)``.

Every check has known-wrong variants (``VARIANTS[name]``), built by sympy substitution on the
derived expressions or by perturbing the schedule arrays the code under test receives; the test
suite runs them and asserts rejection by a wide margin.  ``run_check(name, variant=...)``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ddpm_check import stats as S
from ddpm_check.errors import DDPMCheckError, check_seed
from ddpm_check.jsonable import jsonable
from ddpm_check.schedules import Schedule, ScheduleConfig

# ============================================================================================
# results
# ============================================================================================
ROLE_TEST = "test"
ROLE_DIAGNOSTIC = "diagnostic"


@dataclass(frozen=True)
class CheckRow:
    """One test statistic of a check.

    ``quantity`` names what is tested (e.g. ``"var x_t"``), ``where`` the probe
    (``"t=144 x0=10"``), ``source`` where the expected value or the samples come from
    (``"derivation"``, ``"schedule"``, ``"q_sample"``, ...).  ``role`` is ``"test"`` (counts
    for the verdict) or ``"diagnostic"`` (reported only).  Verdicts: "pass", "FAIL" (a test
    rejected), "finding" (a diagnostic rejected), "info" (a diagnostic within its threshold).
    """

    check: str
    quantity: str
    where: str
    source: str
    kind: str
    expected: float
    estimate: float
    se: float | None
    statistic: float
    threshold: float
    alpha: float
    delta: float
    n: int
    seed: int
    role: str = ROLE_TEST
    note: str = ""
    group: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.statistic <= self.threshold)

    @property
    def group_key(self) -> tuple:
        """Rows with the same key are summarised together (the worst one shown)."""
        return (self.check, self.role, self.quantity, self.source, self.group)

    @property
    def margin(self) -> float:
        """statistic / threshold (< 1 passes)."""
        if self.threshold > 0:
            return float(self.statistic / self.threshold)
        return 0.0 if self.statistic == 0 else math.inf

    @property
    def verdict(self) -> str:
        if self.role == ROLE_TEST:
            return "pass" if self.passed else "FAIL"
        return "info" if self.passed else "finding"

    def to_dict(self) -> dict:
        d = {k: jsonable(v) for k, v in dataclasses.asdict(self).items()}
        d["verdict"] = self.verdict
        d["margin"] = jsonable(self.margin)
        return d


@dataclass
class CheckResult:
    """The result of one check: its rows and what it ran with."""

    name: str
    title: str
    seed: int
    root_seed: int
    variant: str | None
    schedule: dict
    samples: int
    rows: list[CheckRow]
    runtime_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def tests(self) -> list[CheckRow]:
        return [r for r in self.rows if r.role == ROLE_TEST]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.tests)

    @property
    def failures(self) -> list[CheckRow]:
        return [r for r in self.tests if not r.passed]

    @property
    def worst(self) -> CheckRow | None:
        """The test row with the largest statistic / threshold."""
        tests = self.tests
        return max(tests, key=lambda r: r.margin) if tests else None

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "FAIL"

    def summary(self) -> list[tuple[CheckRow, int, int]]:
        """One entry per group of like rows: (the row with the largest statistic/threshold,
        rows in the group, rows rejected).  Groups keep the order of their first row."""
        groups: dict[tuple, list[CheckRow]] = {}
        for r in self.rows:
            groups.setdefault(r.group_key, []).append(r)
        return [(max(rs, key=lambda r: r.margin), len(rs), sum(not r.passed for r in rs))
                for rs in groups.values()]

    def to_dict(self) -> dict:
        return {
            "check": self.name,
            "title": self.title,
            "verdict": self.verdict,
            "passed": self.passed,
            "seed": self.seed,
            "root_seed": self.root_seed,
            "variant": self.variant,
            "schedule": self.schedule,
            "samples": self.samples,
            "runtime_s": round(self.runtime_s, 3),
            "alpha_check": S.alpha_per_check(),
            "n_tests": len(self.tests),
            "notes": list(self.notes),
            "rows": [r.to_dict() for r in self.rows],
        }


# ============================================================================================
# variants: known-wrong formulas or code that each check must reject
# ============================================================================================
@dataclass(frozen=True)
class Variant:
    """A deliberately wrong formula (``results``: a sympy edit of a derivation's results) or
    wrong code (``schedule``: the schedule the code under test receives; ``sim``: a change to
    the simulation), or both."""

    name: str
    description: str
    results: Callable[[str, dict], dict] | None = None
    schedule: Callable[[Schedule], Schedule] | None = None
    sim: str | None = None
    shift_inputs: bool = False  # evaluate the derived formulas at step t - 1


def _sym():
    from derivations import symbols

    return symbols


def _half_powers_to_full(expr, sym):
    """sym**(k/2) -> sym**k: "alpha where sqrt(alpha) belongs" (for every half-integer power)."""
    return expr.replace(
        lambda e: e.is_Pow and e.base == sym and e.exp.is_Rational and e.exp.q == 2,
        lambda e: sym ** (2 * e.exp),
    )


def _edit(deriv: str, keys: Sequence[str], fn: Callable) -> Callable[[str, dict], dict]:
    """A results edit applying ``fn(expr)`` to ``keys`` of derivation ``deriv`` only."""

    def edit(name: str, res: dict) -> dict:
        if name != deriv:
            return res
        out = dict(res)
        for k in keys:
            out[k] = fn(out[k])
        return out

    return edit


def _replace(schedule: Schedule, **arrays: np.ndarray) -> Schedule:
    return dataclasses.replace(schedule, **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})


def _sched_posterior_with_one_minus_alpha(s: Schedule) -> Schedule:
    """The posterior arrays with 1 - alpha_t where 1 - alpha_bar_t belongs."""
    den = 1.0 - s.alphas
    return _replace(
        s,
        posterior_mean_coef1=np.sqrt(s.alphas_cumprod_prev) * s.betas / den,
        posterior_mean_coef2=np.sqrt(s.alphas) * (1.0 - s.alphas_cumprod_prev) / den,
        posterior_variance=(1.0 - s.alphas_cumprod_prev) / den * s.betas,
    )


def _shift(a: np.ndarray) -> np.ndarray:
    """a[i - 1] at index i (index 0 keeps a[0]): an array read one step off."""
    return np.concatenate(([a[0]], a[:-1]))


def _build_variants() -> dict[str, dict[str, Variant]]:
    # The sympy edits import derivations.symbols lazily (inside the lambdas).
    V = Variant
    marginal = [
        V("one_minus_alpha_for_one_minus_alpha_bar",
          "Var x_t = 1 - alpha_t instead of 1 - alpha_bar_t",
          results=_edit("marginal", ["x_t_variance"],
                        lambda e: e.subs(_sym().alpha_bar_t, _sym().alpha_t))),
        V("alpha_bar_for_sqrt_alpha_bar",
          "E x_t = alpha_bar_t x_0 instead of sqrt(alpha_bar_t) x_0",
          results=_edit("marginal", ["x_t_mean_coef"],
                        lambda e: _half_powers_to_full(e, _sym().alpha_bar_t))),
        V("alpha_bar_off_by_one",
          "alpha_bar_{t-1} where alpha_bar_t belongs (mean and variance)",
          results=_edit("marginal", ["x_t_mean_coef", "x_t_variance"],
                        lambda e: e.subs(_sym().alpha_bar_t, _sym().alpha_bar_tm1))),
        V("source_forward_index",
          "the source's forward step x_t = sqrt(alpha_{t-1}) x_{t-1} + sqrt(1 - alpha_{t-1}) z "
          "(its index erratum) in the simulation",
          sim="forward_index_off_by_one"),
        V("q_sample_alpha_bar_for_sqrt",
          "q_sample given a schedule whose sqrt_alphas_cumprod holds alpha_bar_t (code bug)",
          schedule=lambda s: _replace(s, sqrt_alphas_cumprod=s.alphas_cumprod)),
    ]
    posterior = [
        V("beta_for_beta_tilde",
          "beta_tilde_t replaced by beta_t (derivation and schedule array)",
          results=_edit("posterior", ["posterior_variance"], lambda e: _sym().beta_t),
          schedule=lambda s: _replace(s, posterior_variance=s.betas)),
        V("alpha_for_sqrt_alpha",
          "coef2 (of x_t) with alpha_t where sqrt(alpha_t) belongs (derivation and schedule array)",
          results=_edit("posterior", ["posterior_mean_coef2"],
                        lambda e: _half_powers_to_full(e, _sym().alpha_t)),
          schedule=lambda s: _replace(s, posterior_mean_coef2=s.posterior_mean_coef2 * np.sqrt(s.alphas))),
        V("alpha_bar_for_sqrt_alpha_bar",
          "coef1 (of x_0) with alpha_bar_{t-1} where sqrt(alpha_bar_{t-1}) belongs",
          results=_edit("posterior", ["posterior_mean_coef1"],
                        lambda e: _half_powers_to_full(e, _sym().alpha_bar_tm1)),
          schedule=lambda s: _replace(s, posterior_mean_coef1=s.posterior_mean_coef1 * np.sqrt(s.alphas_cumprod_prev))),
        V("one_minus_alpha_for_one_minus_alpha_bar",
          "1 - alpha_t where 1 - alpha_bar_t belongs (coefficients and variance)",
          results=_edit("posterior", ["posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance"],
                        lambda e: e.subs(_sym().alpha_bar_t, _sym().alpha_t)),
          schedule=_sched_posterior_with_one_minus_alpha),
        V("index_off_by_one",
          "every array read at step t - 1 (the 0-based / 1-based index confusion)",
          shift_inputs=True,
          schedule=lambda s: _replace(s, posterior_mean_coef1=_shift(s.posterior_mean_coef1),
                                      posterior_mean_coef2=_shift(s.posterior_mean_coef2),
                                      posterior_variance=_shift(s.posterior_variance))),
        V("schedule_coef1_alpha_bar_t",
          "code bug only: posterior_mean_coef1 computed with sqrt(alpha_bar_t) for sqrt(alpha_bar_{t-1})",
          schedule=lambda s: _replace(s, posterior_mean_coef1=np.sqrt(s.alphas_cumprod) * s.betas
                                      / (1.0 - s.alphas_cumprod))),
    ]
    mean_eps = [
        V("alpha_for_sqrt_alpha",
          "mu_tilde_t(eps) divided by alpha_t instead of sqrt(alpha_t)",
          results=_edit("mean-eps", ["mu_tilde_t_eps"],
                        lambda e: _half_powers_to_full(e, _sym().alpha_t))),
        V("one_minus_alpha_for_one_minus_alpha_bar",
          "mu_tilde_t(eps) with sqrt(1 - alpha_t) where sqrt(1 - alpha_bar_t) belongs",
          results=_edit("mean-eps", ["mu_tilde_t_eps"],
                        lambda e: e.subs(_sym().alpha_bar_t, _sym().alpha_t))),
        V("beta_for_beta_tilde",
          "the reverse variance beta_t expected where beta_tilde_t belongs",
          results=_edit("mean-eps", ["posterior_variance"], lambda e: _sym().beta_t)),
        V("alpha_bar_off_by_one",
          "mu_tilde_t(eps) with alpha_bar_{t-1} where alpha_bar_t belongs",
          results=_edit("mean-eps", ["mu_tilde_t_eps"],
                        lambda e: e.subs(_sym().alpha_bar_t, _sym().alpha_bar_tm1))),
        V("code_eps_coef_sqrt_beta",
          "code bug only: the sampler's schedule has sqrt(1 - alpha_t) for sqrt(1 - alpha_bar_t) "
          "(eps coefficient becomes sqrt(beta_t))",
          schedule=lambda s: _replace(s, sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - s.alphas))),
    ]
    sampler = [
        V("alpha_for_sqrt_alpha",
          "the reverse step divides by alpha_t instead of sqrt(alpha_t)",
          schedule=lambda s: _replace(s, sqrt_recip_alphas=1.0 / s.alphas)),
        V("one_minus_alpha_for_one_minus_alpha_bar",
          "the eps coefficient beta_t / sqrt(1 - alpha_t) instead of beta_t / sqrt(1 - alpha_bar_t)",
          schedule=lambda s: _replace(s, sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - s.alphas))),
        V("beta_tilde_with_one_minus_alpha",
          "the reverse variance (1 - alpha_bar_{t-1}) / (1 - alpha_t) beta_t",
          schedule=lambda s: _replace(s, posterior_variance=(1.0 - s.alphas_cumprod_prev) / (1.0 - s.alphas) * s.betas)),
        V("no_noise",
          "the reverse step adds no noise (sigma_t = 0)",
          schedule=lambda s: _replace(s, posterior_variance=np.zeros_like(s.betas))),
        V("predictor_alpha_for_alpha_bar",
          "the denoiser is told alpha_t where alpha_bar_t belongs",
          sim="predictor_alphas"),
    ]
    network = [
        V("floor_alpha_for_alpha_bar",
          "the 'Bayes floor' computed with a predictor told alpha_t where alpha_bar_t belongs "
          "(a wrong floor the trained network beats)",
          sim="floor_alphas"),
        V("floor_sqrt_alpha_bar",
          "the 'Bayes floor' computed with sqrt(alpha_bar_t) where alpha_bar_t belongs "
          "(sqrt_alphas_cumprod passed for alphas_cumprod)",
          sim="floor_sqrt"),
        V("floor_data_std_doubled",
          "the 'Bayes floor' of a wrong data model (component std 0.2 instead of 0.1)",
          sim="floor_std"),
    ]
    return {
        "marginal": {v.name: v for v in marginal},
        "posterior": {v.name: v for v in posterior},
        "mean-eps": {v.name: v for v in mean_eps},
        "sampler": {v.name: v for v in sampler},
        "network": {v.name: v for v in network},
    }


_VARIANTS = _build_variants()
#: check name -> {variant name: description}
VARIANTS: dict[str, dict[str, str]] = {c: {n: v.description for n, v in d.items()} for c, d in _VARIANTS.items()}


# ============================================================================================
# context shared by the checks
# ============================================================================================
# Power requirements, asserted before sampling: the detectable error delta must be at most
# this fraction of the quantity's scale (the sd for means and coefficients, the variance for
# variances) or this absolute CDF distance for KS.
MAX_REL_DELTA = 0.1
MAX_KS_DELTA = 0.1


class _Context:
    def __init__(self, name: str, title: str, samples: int, root_seed: int,
                 schedule: Schedule | None, variant: Variant | None,
                 progress: Callable[[str], Any] | None = None) -> None:
        self.name = name
        self.title = title
        self.samples = int(samples)
        self.root_seed = int(root_seed)
        self.seed = S.seed_for(name, root_seed)
        self.user_schedule = schedule
        self.variant = variant
        self.progress = progress
        self.rows: list[CheckRow] = []
        self.notes: list[str] = []
        self._alpha: float | None = None

    # ---- formulas --------------------------------------------------------------------------
    def formulas(self, deriv: str) -> dict[str, Callable[..., Any]]:
        """The results of derivation ``deriv`` lambdified (edited by the variant if any)."""
        import derivations

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
            a = {k: _shift(v) for k, v in a.items()}
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
        return S.torch_generator(self.seed)

    # ---- alpha allocation and power ---------------------------------------------------------
    def set_tests(self, k: int) -> float:
        """Declare the number of statistical tests; returns each one's alpha."""
        self._alpha = S.alpha_per_test(max(int(k), 1))
        return self._alpha

    @property
    def alpha(self) -> float:
        assert self._alpha is not None, "set_tests() first"
        return self._alpha

    def require(self, ok: bool, what: str, delta: float, limit: float, needed_n: int) -> None:
        if not ok:
            raise DDPMCheckError(
                f"check {self.name}: --samples {self.samples} is too small: the detectable error of "
                f"{what} would be {delta:.3g} > {limit:.3g}; use --samples >= {needed_n}"
            )

    def require_mean_power(self, sigma: float, n: int, what: str) -> float:
        d = S.mean_detectable_delta(sigma, n, self.alpha)
        if sigma > 0:
            self.require(d <= MAX_REL_DELTA * sigma, what, d, MAX_REL_DELTA * sigma,
                         S.mean_required_n(sigma, MAX_REL_DELTA * sigma, self.alpha))
        return d

    def require_var_power(self, dof: int, what: str) -> float:
        r = S.variance_detectable_ratio(dof, self.alpha)
        self.require(r <= MAX_REL_DELTA, what + " (relative)", r, MAX_REL_DELTA,
                     S.variance_required_dof(MAX_REL_DELTA, self.alpha) + 2)
        return r

    def require_ks_power(self, n: int, what: str) -> float:
        d = S.ks_detectable_delta(n, self.alpha)
        self.require(d <= MAX_KS_DELTA, what, d, MAX_KS_DELTA, S.ks_required_n(MAX_KS_DELTA, self.alpha))
        return d

    # ---- rows --------------------------------------------------------------------------------
    def add(self, quantity: str, where: str, source: str, out: S.TestOutcome,
            role: str = ROLE_TEST, note: str = "", threshold: float | None = None,
            group: str = "") -> CheckRow:
        row = CheckRow(self.name, quantity, where, source, out.kind, float(out.expected),
                       float(out.estimate), None if out.se is None else float(out.se),
                       float(out.statistic), float(out.threshold if threshold is None else threshold),
                       float(out.alpha), float(out.delta), int(out.n), self.seed, role, note, group)
        self.rows.append(row)
        return row

    def say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress(msg)


def _default_schedule(schedule: Schedule | None) -> Schedule:
    from ddpm_check.schedules import make_schedule

    return schedule if schedule is not None else make_schedule("linear", T=300)


def _probe_steps(sched: Schedule, first: int = 1) -> list[int]:
    """Paper steps to probe: first, 10, the t with alpha_bar_t closest to 1/2, and T."""
    T = sched.T
    half = int(np.argmin(np.abs(sched.alphas_cumprod - 0.5))) + 1
    steps = {first, min(10, T), half, T}
    return sorted(t for t in steps if first <= t <= T)


def _normal_cdf(mean: float, var: float) -> Callable[[np.ndarray], np.ndarray]:
    from scipy.special import ndtr

    if var > 0:
        sd = math.sqrt(var)
        return lambda x: ndtr((np.asarray(x) - mean) / sd)
    return lambda x: (np.asarray(x) >= mean).astype(np.float64)  # a point mass


def _fmt_x0(x0: float) -> str:
    return f"{x0:g}"


# ============================================================================================
# 1. marginal: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t))   (eq. 4)
# ============================================================================================
MARGINAL_X0 = (0.0, 1.0, -3.0, 10.0)


def check_marginal(ctx: _Context) -> None:
    import torch

    from ddpm_check.diffusion import GaussianDiffusion

    sched = _default_schedule(ctx.user_schedule)
    f = ctx.formulas("marginal")
    steps = _probe_steps(sched)
    n = ctx.samples
    x0s = MARGINAL_X0

    # alpha_bar by the derived recursion alpha_bar_t = alpha_t alpha_bar_{t-1}, alpha_bar_0 = 1
    ab = np.empty(sched.T)
    prev = 1.0
    for i in range(sched.T):
        prev = float(f["alpha_bar_t"](alpha_t=sched.alphas[i], alpha_bar_tm1=prev))
        ab[i] = prev
    ab_prev = np.concatenate(([1.0], ab[:-1]))

    def expected(t: int, x0: float) -> tuple[float, float]:
        i = t - 1
        kw = dict(alpha_t=sched.alphas[i], beta_t=sched.betas[i], alpha_bar_t=ab[i], alpha_bar_tm1=ab_prev[i])
        return float(f["x_t_mean_coef"](**kw)) * x0, float(f["x_t_variance"](**kw))

    sources = ("iterate eq. 2", "q_sample")
    alpha = ctx.set_tests(len(sources) * len(steps) * len(x0s) * 3)
    # ---- power, before sampling
    for t in steps:
        for x0 in x0s:
            mu, var = expected(t, x0)
            ctx.require_mean_power(math.sqrt(max(var, 0.0)), n, f"E x_t (t={t})")
    ctx.require_var_power(n - 1, "Var x_t")
    ctx.require_ks_power(n, "the law of x_t (KS)")

    # ---- exact: the schedule's cumprod equals the derived recursion
    tt = np.arange(1, sched.T + 1)
    ctx.add("alphas_cumprod = recursion", f"t=1..{sched.T}", "schedule vs derivation",
            S.exact_test(ctx.code_schedule(sched).alphas_cumprod, ab, ab * tt, budget_ulps=4.0))

    # ---- simulate: iterate the forward step from each x_0, float64, independent chains
    g = ctx.generator()
    k = len(x0s)
    x = torch.tensor(x0s, dtype=torch.float64)[:, None].repeat(1, n)  # [K, n]
    sqrt_a = np.sqrt(sched.alphas)
    sqrt_b = np.sqrt(sched.betas)
    if ctx.sim == "forward_index_off_by_one":  # the source: step t uses alpha_{t-1}, alpha_0 := 1
        sqrt_a = np.concatenate(([1.0], sqrt_a[:-1]))
        sqrt_b = np.concatenate(([0.0], sqrt_b[:-1]))
    kept: dict[int, np.ndarray] = {}
    z = torch.empty(k, n, dtype=torch.float64)
    for i in range(max(steps)):
        torch.randn(k, n, generator=g, dtype=torch.float64, out=z)
        x = float(sqrt_a[i]) * x + float(sqrt_b[i]) * z  # x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z   (eq. 2)
        if i + 1 in steps:
            kept[i + 1] = x.numpy().copy()

    diffusion = GaussianDiffusion(ctx.code_schedule(sched), dtype=torch.float64)
    for t in steps:
        for j, x0 in enumerate(x0s):
            xq = diffusion.q_sample(torch.full((n,), x0, dtype=torch.float64),
                                    torch.full((n,), t - 1, dtype=torch.long), generator=g).numpy()
            for src, xs in ((sources[0], kept[t][j]), (sources[1], xq)):
                mu, var = expected(t, x0)
                where = f"t={t} x0={_fmt_x0(x0)}"
                ctx.add("mean x_t", where, src, S.mean_test(xs, mu, math.sqrt(max(var, 0.0)), alpha))
                ctx.add("var x_t", where, src, S.variance_test(xs, var, alpha))
                ctx.add("law x_t (KS)", where, src, S.ks_test(xs, _normal_cdf(mu, var), alpha))


# ============================================================================================
# 2. posterior: q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde_t)   (eqs. 6-7)
# ============================================================================================
POSTERIOR_X0 = (-3.0, 1.0, 10.0)


def check_posterior(ctx: _Context) -> None:
    import torch

    sched = _default_schedule(ctx.user_schedule)
    if sched.T < 2:
        raise DDPMCheckError(f"check posterior needs T >= 2 (beta_tilde_1 = 0: x_0 is known), got T = {sched.T}")
    code = ctx.code_schedule(sched)
    f = ctx.formulas("posterior")
    steps = _probe_steps(sched, first=2)
    n = ctx.samples
    x0s = POSTERIOR_X0

    def derived(i):
        """(coef1, coef2, beta_tilde) at 0-based index i: coef1 multiplies x_0, coef2 x_t."""
        kw = ctx.inputs(sched, i)
        return (np.asarray(f["posterior_mean_coef1"](**kw), dtype=np.float64),
                np.asarray(f["posterior_mean_coef2"](**kw), dtype=np.float64),
                np.asarray(f["posterior_variance"](**kw), dtype=np.float64))

    sources = ("derivation", "schedule")
    alpha = ctx.set_tests(len(sources) * len(steps) * len(x0s) * 3)
    # ---- power, before sampling: slope and intercept of every regression, residual variance.
    # Given x_0, x_t has variance 1 - alpha_bar_t (checked by `marginal`): Sxx ~ n (1 - alpha_bar_t).
    # delta is compared with max(|coefficient|, a natural scale: sigma / sd(x_t) for the slope,
    # sd(x_{t-1} | x_0) for the intercept).
    for t in steps:
        i = t - 1
        c1, c2, v = (float(a) for a in derived(i))
        var_xt = 1.0 - sched.alphas_cumprod[i]
        sxx = n * var_xt
        for x0 in x0s:
            mean_xt = math.sqrt(sched.alphas_cumprod[i]) * x0
            se_b = math.sqrt(max(v, 0.0) / sxx)
            se_a = math.sqrt(max(v, 0.0) * (1.0 / n + mean_xt**2 / sxx))
            sd_prev = math.sqrt(1.0 - sched.alphas_cumprod_prev[i])  # the scale of x_{t-1}
            for what, se_, ref, sd_ in (("slope", se_b, c2, math.sqrt(max(v, 0.0) / var_xt)),
                                        ("intercept", se_a, c1 * x0, sd_prev)):
                d = S.mean_detectable_delta(se_, 1, alpha)
                limit = MAX_REL_DELTA * max(abs(ref), sd_)
                if limit > 0:
                    ctx.require(d <= limit, f"the {what} at t={t} x0={_fmt_x0(x0)}", d, limit,
                                int(math.ceil(n * (d / limit) ** 2)) + 1)
    ctx.require_var_power(n - 2, "the residual variance")

    # ---- exact rows: the schedule arrays equal the lambdified derivation at every step
    idx = np.arange(sched.T)
    c1_all, c2_all, v_all = derived(idx)
    for qname, arr, ref in (("posterior_mean_coef1", code.posterior_mean_coef1, c1_all),
                            ("posterior_mean_coef2", code.posterior_mean_coef2, c2_all),
                            ("posterior_variance", code.posterior_variance, v_all)):
        ctx.add(f"{qname} = derivation", f"t=1..{sched.T}", "schedule vs derivation",
                S.exact_test(arr, ref, np.abs(ref) + np.abs(arr), budget_ulps=8.0))

    # ---- simulate (x_{t-1}, x_t) given x_0 by iterating the forward step (eq. 2)
    g = ctx.generator()
    k = len(x0s)
    x = torch.tensor(x0s, dtype=torch.float64)[:, None].repeat(1, n)
    z = torch.empty(k, n, dtype=torch.float64)
    need_prev = {t - 1 for t in steps}
    prev: dict[int, np.ndarray] = {}
    pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    sqrt_a, sqrt_b = np.sqrt(sched.alphas), np.sqrt(sched.betas)
    for i in range(max(steps)):
        if i in need_prev:
            prev[i + 1] = x.numpy().copy()  # x_{t-1} for t = i + 1
        torch.randn(k, n, generator=g, dtype=torch.float64, out=z)
        x = float(sqrt_a[i]) * x + float(sqrt_b[i]) * z  # eq. 2
        if i + 1 in steps:
            pairs[i + 1] = (prev[i + 1], x.numpy().copy())

    for t in steps:
        i = t - 1
        c1, c2, v = (float(a) for a in derived(i))
        expect = {"derivation": (c1, c2, v),
                  "schedule": (float(code.posterior_mean_coef1[i]), float(code.posterior_mean_coef2[i]),
                               float(code.posterior_variance[i]))}
        for j, x0 in enumerate(x0s):
            fit = S.ols_fit(pairs[t][1][j], pairs[t][0][j])  # regress x_{t-1} on x_t
            where = f"t={t} x0={_fmt_x0(x0)}"
            for src in sources:
                e1, e2, ev = expect[src]
                slope, icpt, resid = S.ols_tests(fit, e2, e1 * x0, ev, alpha)
                ctx.add("slope = coef2", where, src, slope)
                ctx.add("intercept = coef1 x0", where, src, icpt)
                ctx.add("resid var = beta_tilde", where, src, resid)


# ============================================================================================
# 3. mean-eps: exact identities (float64 rounding only)
# ============================================================================================
#: worst error allowed, in units of roundoff of each comparison's scale (see check_mean_eps)
MEAN_EPS_BUDGET_ULPS = 16.0


def check_mean_eps(ctx: _Context) -> None:
    """Identities that hold exactly in real arithmetic, tested on simulated (x_0, t, eps).

    Each comparison a = b is scored as max |a - b| / (u * scale), u = 2^-53, where scale =
    (sum of the absolute values of the terms on both sides) * kappa_t and kappa_t =
    t + 1/(1 - alpha_bar_t) bounds the relative rounding error of the schedule arrays
    (alpha_bar_t is a t-fold product; 1 - alpha_bar_t cancels when alpha_bar_t ~ 1).  The
    budget ``MEAN_EPS_BUDGET_ULPS`` is a few times the worst value seen with correct code on
    linear and cosine schedules, T <= 1000; any wrong formula is off by orders of magnitude.
    """
    import torch

    from ddpm_check.diffusion import GaussianDiffusion

    sched = _default_schedule(ctx.user_schedule)
    code = ctx.code_schedule(sched)
    fm = ctx.formulas("marginal")
    fp = ctx.formulas("posterior")
    fe = ctx.formulas("mean-eps")
    n = ctx.samples
    ctx.set_tests(1)  # exact tests use no alpha; recorded as 0

    rng = np.random.default_rng(ctx.seed)
    i = rng.integers(0, sched.T, size=n)
    i[: min(n, sched.T)] = np.arange(min(n, sched.T))  # every step at least once when n >= T
    x0 = np.where(rng.random(n) < 0.5, rng.choice(MARGINAL_X0, size=n), 3.0 * rng.standard_normal(n))
    eps = rng.standard_normal(n)
    kw = ctx.inputs(sched, i)
    ab = sched.alphas_cumprod[i]
    kappa = (i + 1) + 1.0 / (1.0 - ab)

    # x_t from the closed form (derived in `marginal`)
    mcoef = np.asarray(fm["x_t_mean_coef"](**kw), dtype=np.float64)
    sd = np.sqrt(np.asarray(fm["x_t_variance"](**kw), dtype=np.float64))
    x_t = mcoef * x0 + sd * eps
    mag_xt = np.abs(mcoef * x0) + np.abs(sd * eps)

    mu_eps = np.asarray(fe["mu_tilde_t_eps"](x_t=x_t, eps=eps, **kw), dtype=np.float64)
    mu_x0 = np.asarray(fp["mu_tilde_t"](x_t=x_t, x_0=x0, **kw), dtype=np.float64)
    c1 = np.asarray(fp["posterior_mean_coef1"](**kw), dtype=np.float64)
    c2 = np.asarray(fp["posterior_mean_coef2"](**kw), dtype=np.float64)
    ra = 1.0 / np.sqrt(sched.alphas[i])
    eps_c = sched.betas[i] / np.sqrt(1.0 - ab)
    # magnitudes of the terms of both forms (x_t's own rounding enters through mag_xt)
    scale_mu = (ra * (mag_xt + eps_c * np.abs(eps)) + np.abs(c2) * mag_xt + np.abs(c1 * x0)) * kappa
    ctx.add("mu_tilde eps-form = (x_t,x_0)-form", "all t", "derivation vs derivation",
            S.exact_test(mu_eps, mu_x0, scale_mu, MEAN_EPS_BUDGET_ULPS))

    x0_hat = np.asarray(fe["x_0_from_eps"](x_t=x_t, eps=eps, **kw), dtype=np.float64)
    scale_x0 = (mag_xt + np.abs(sd * eps) + np.abs(x0)) / np.sqrt(ab) * kappa
    ctx.add("x_0 from eps = x_0", "all t", "derivation",
            S.exact_test(x0_hat, x0, scale_x0, MEAN_EPS_BUDGET_ULPS))

    # ---- the code: p_mean_variance / q_posterior_mean_variance / p_sample given the true eps
    diffusion = GaussianDiffusion(code, dtype=torch.float64)
    xt_t = torch.as_tensor(x_t)
    eps_t = torch.as_tensor(eps)
    x0_t = torch.as_tensor(x0)
    t_t = torch.as_tensor(i, dtype=torch.long)

    def true_eps(x, t):  # a "model" that returns the noise actually used
        return eps_t

    out = diffusion.p_mean_variance(true_eps, xt_t, t_t)
    ctx.add("p_mean_variance mean = mu_tilde", "all t", "code vs derivation",
            S.exact_test(out["mean"].numpy(), mu_x0, scale_mu, MEAN_EPS_BUDGET_ULPS))
    var_ref = np.asarray(fe["posterior_variance"](**kw), dtype=np.float64)
    ctx.add("p_mean_variance var = beta_tilde", "all t", "code vs derivation",
            S.exact_test(out["variance"].numpy(), var_ref, (np.abs(var_ref) + sched.betas[i]) * kappa,
                         MEAN_EPS_BUDGET_ULPS))
    ctx.add("p_mean_variance pred_x0 = x_0", "all t", "code",
            S.exact_test(out["pred_x0"].numpy(), x0, scale_x0, MEAN_EPS_BUDGET_ULPS))
    qm, qv, _ = diffusion.q_posterior_mean_variance(x0_t, xt_t, t_t)
    ctx.add("q_posterior mean = mu_tilde(eps)", "all t", "code vs derivation",
            S.exact_test(qm.numpy(), mu_eps, scale_mu, MEAN_EPS_BUDGET_ULPS))
    zz = rng.standard_normal(n)
    step = diffusion.p_sample(true_eps, xt_t, t_t, noise=torch.as_tensor(zz)).numpy()
    ref = mu_eps + np.sqrt(var_ref) * zz  # x_{t-1} = mu_tilde + sqrt(beta_tilde) z; beta_tilde_1 = 0
    ctx.add("p_sample = mu_tilde + sqrt(beta_tilde) z", "all t", "code vs derivation",
            S.exact_test(step, ref, scale_mu + np.sqrt(np.abs(var_ref) + sched.betas[i]) * np.abs(zz) * kappa,
                         MEAN_EPS_BUDGET_ULPS))


# ============================================================================================
# 4. sampler: the reverse process with the exact denoiser reproduces the data
# ============================================================================================
def sampler_mixture():
    """The sampler check's data: 2 well separated components far from the origin (D = 2),
    so that the start mismatch of T = 300 (sqrt(alpha_bar_T) = 0.22 of x_0 left) shows."""
    from ddpm_check.mixture import GaussianMixture

    return GaussianMixture([0.6, 0.4], [[3.5, 3.5], [-2.0, 2.0]], [0.5, 0.5])


SAMPLER_DIRECTIONS = (np.array([1.0, 0.0]), np.array([0.0, 1.0]),
                      np.array([1.0, 1.0]) / math.sqrt(2.0), np.array([1.0, -1.0]) / math.sqrt(2.0))


def start_mismatch_tv(mixture, alpha_bar_T: float, points: int = 801) -> float:
    """TV(q(x_T), N(0, I)) for a 2-D mixture, by quadrature on a grid (error << 1e-4).

    By the data-processing inequality the sampler's output, started from N(0, I) instead of
    q(x_T), is at most this far (in total variation, hence in every projection's KS distance)
    from the output it would have from q(x_T).
    """
    from scipy.special import logsumexp

    if mixture.dim != 2:
        raise DDPMCheckError(f"start_mismatch_tv needs a 2-D mixture, got D = {mixture.dim}")
    nz = mixture.noised(alpha_bar_T)
    lim = float(np.abs(nz.means).max() + 9.0 * max(nz.stds.max(), 1.0))
    g = np.linspace(-lim, lim, points)
    h = g[1] - g[0]
    X, Y = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([X.ravel(), Y.ravel()], 1)
    logp = []
    for w, m, s in zip(nz.weights, nz.means, nz.stds):
        d2 = ((pts - m) ** 2).sum(1)
        logp.append(math.log(w) - math.log(2 * math.pi * s * s) - d2 / (2 * s * s))
    p = np.exp(logsumexp(np.stack(logp), axis=0))
    q = np.exp(-(pts**2).sum(1) / 2) / (2 * math.pi)
    return float(0.5 * np.abs(p - q).sum() * h * h)


#: the reverse step N(mu_tilde, beta_tilde) is the true reverse law only as beta_t -> 0; a sampler
#: configuration is a test only if beta_t <= FINE_BETA wherever alpha_bar_t >= FINE_ALPHA_BAR
#: (where the data still shapes q(x_{t-1} | x_t); the linear schedules from 1e-4 to 0.02 qualify)
FINE_BETA = 0.05
FINE_ALPHA_BAR = 0.05


def _fine_steps(sched: Schedule) -> bool:
    m = sched.alphas_cumprod >= FINE_ALPHA_BAR
    return bool(np.all(sched.betas[m] <= FINE_BETA))


@dataclass(frozen=True)
class SamplerConfig:
    label: str
    schedule: Schedule
    start: str  # "N(0,I)" or "q(x_T)"


def _sampler_configs(user: Schedule | None) -> list[SamplerConfig]:
    from ddpm_check.schedules import make_schedule

    if user is not None:
        lab = f"{user.config.kind} T={user.T}"
        return [SamplerConfig(lab, user, "N(0,I)"), SamplerConfig(lab, user, "q(x_T)")]
    s1000, s300, s50 = (make_schedule("linear", T=T) for T in (1000, 300, 50))
    return [
        SamplerConfig("linear T=1000", s1000, "N(0,I)"),
        SamplerConfig("linear T=300", s300, "q(x_T)"),
        SamplerConfig("linear T=50", s50, "q(x_T)"),
        SamplerConfig("linear T=300 (source)", s300, "N(0,I)"),
        SamplerConfig("linear T=50", s50, "N(0,I)"),
    ]


def check_sampler(ctx: _Context) -> None:
    """KS of projections of p_sample_loop's output against the exact mixture CDF.

    A configuration is a *test* when its start is exact (x_T drawn from q(x_T)) or when the
    start mismatch TV(q(x_T), N(0, I)) is at most half the DKWM threshold; its threshold is then
    eps_DKWM + TV (DKWM for the sampling noise, TV for the start: the data-processing bound).
    Otherwise (T = 300 or 50 with the source's beta range) the start mismatch is large and the
    configuration is a *diagnostic*: its KS distance is reported, and "finding" means the
    output differs from the data distribution measurably.  A schedule with coarse steps
    (beta_t > FINE_BETA while alpha_bar_t >= FINE_ALPHA_BAR) is a diagnostic too: the Gaussian
    reverse step is exact only as beta_t -> 0.

    Default configurations: linear beta from 1e-4 to 0.02 with T = 1000 from N(0, I) (test),
    T = 300 and T = 50 from the exact q(x_T) (tests: the loop's own discretisation error), and
    T = 300 (the source) and T = 50 from N(0, I) (diagnostics).  With a user schedule: that
    schedule from q(x_T) and from N(0, I), roles by the same rules.
    """
    import torch

    from ddpm_check.diffusion import GaussianDiffusion
    from ddpm_check.mixture import ExactEpsPredictor

    mix = sampler_mixture()
    configs = _sampler_configs(ctx.user_schedule)
    n = ctx.samples
    dirs = SAMPLER_DIRECTIONS
    # ---- before sampling: alpha, DKWM threshold, start mismatch -> role of each configuration
    tv = {c.label + c.start: (0.0 if c.start == "q(x_T)" else start_mismatch_tv(mix, c.schedule.alphas_cumprod[-1]))
          for c in configs}
    fine = {c.label + c.start: _fine_steps(c.schedule) for c in configs}

    def role_of(key: str, eps_: float) -> str:
        return ROLE_TEST if (tv[key] <= 0.5 * eps_ and fine[key]) else ROLE_DIAGNOSTIC

    # alpha depends on the number of tests and the roles on the DKWM threshold: start from the
    # most tests (the largest threshold), then fix the roles (never more tests than counted)
    eps_guess = S.dkwm_epsilon(n, S.alpha_per_test(len(configs) * len(dirs)))
    n_tests = sum(len(dirs) for k in tv if role_of(k, eps_guess) == ROLE_TEST)
    alpha = ctx.set_tests(n_tests)
    eps = S.dkwm_epsilon(n, alpha)
    roles = {k: role_of(k, eps) for k in tv}
    ctx.require_ks_power(n, "each projection's law (KS)")

    g = ctx.generator()
    for c in configs:
        key = c.label + c.start
        sched = c.schedule
        acp = sched.alphas_cumprod
        if ctx.sim == "predictor_alphas":
            model = ExactEpsPredictor(mix, sched.alphas)
        else:
            model = mix.eps_predictor(acp)
        diffusion = GaussianDiffusion(ctx.code_schedule(sched), dtype=torch.float64)
        x_T = mix.noised(float(acp[-1])).sample(n, g) if c.start == "q(x_T)" else None
        with np.errstate(all="ignore"):
            x = diffusion.p_sample_loop(model, (n, mix.dim), generator=g, x_T=x_T).numpy()
        x = np.where(np.isnan(x), np.inf, x)  # a NaN sample is as wrong as a sample at infinity
        role = roles[key]
        # a test allows for the known start mismatch; a diagnostic asks "does it differ from the data?"
        thr = eps + tv[key] if role == ROLE_TEST else eps
        note = (f"start x_T ~ {c.start}; TV(q(x_T), N(0,I)) = {tv[key]:.4f}" if c.start == "N(0,I)"
                else "start x_T ~ q(x_T) (exact)")
        if not fine[key]:
            note += f"; coarse steps (beta_t > {FINE_BETA} while alpha_bar_t >= {FINE_ALPHA_BAR}): diagnostic"
        for u, name in zip(dirs, ("e1", "e2", "(e1+e2)/sqrt2", "(e1-e2)/sqrt2")):
            with np.errstate(invalid="ignore"):
                proj = x @ u
            proj = np.where(np.isnan(proj), np.inf, proj)
            out = S.ks_test(proj, lambda v, u=u: mix.projection_cdf(u, v), alpha)
            ctx.add("law of u.x_0 (KS)", f"{c.label}, x_T~{c.start}, u={name}", "p_sample_loop", out,
                    role=role, note=note, threshold=thr, group=f"{c.label}, x_T~{c.start}")
    ctx.notes.append(
        "sampler data: 0.6 N((3.5, 3.5), 0.25 I) + 0.4 N((-2, 2), 0.25 I); the exact predictor E[eps|x_t]; "
        f"KS threshold eps_DKWM = {eps:.4f} (+ the start mismatch TV for a tested x_T ~ N(0,I))")
    ctx.notes.append("start mismatch TV(q(x_T), N(0,I)): " + "; ".join(
        f"{c.label}: {tv[c.label + c.start]:.4f} ({roles[c.label + c.start]})"
        for c in configs if c.start == "N(0,I)"))


# ============================================================================================
# 5. network: a trained SimpleUnet approaches the Bayes floor of the exact predictor
# ============================================================================================
NETWORK_DEFAULTS = dict(steps=1500, batch=128, lr=2e-3, size=8, components=4, std=0.1,
                        channels=(16, 32, 64))
NETWORK_BUCKETS = 5
NETWORK_MIN_EVAL = 1024
_NET_CACHE: dict = {}
#: the declared convergence criterion: excess eps-MSE at most this fraction of the floor
NETWORK_REL_TOL = 0.10


def check_network(ctx: _Context, steps: int | None = None) -> None:
    """Train a SimpleUnet (down channels (16, 32, 64): smaller than UNetConfig.small, for a
    2-core CPU) on image_mixture data with L_simple (eq. 14) and
    compare, on fresh (x_0, t, eps), its per-example eps-MSE with that of the exact predictor.

    Tests: (1) the network does not beat the Bayes floor: mean paired difference >= 0 (one-sided
    z; E[d] = E||eps_theta - eps*||^2 / D >= 0 exactly, so a 'floor' the network beats is wrong);
    (2) convergence: the excess over the floor is at most NETWORK_REL_TOL of the floor (upper
    confidence bound).  Diagnostics: the excess loss by t bucket.

    The variance of the paired difference depends on the trained network, so unlike the other
    checks the standard errors and the detectable delta are plug-in values from the evaluation
    sample (n = --samples, >= NETWORK_MIN_EVAL), not known before sampling.
    """
    import torch

    from ddpm_check.diffusion import GaussianDiffusion
    from ddpm_check.mixture import ExactEpsPredictor, GaussianMixture, image_mixture
    from ddpm_check.unet import SimpleUnet, UNetConfig

    cfg = dict(NETWORK_DEFAULTS)
    if steps is not None:
        cfg["steps"] = int(steps)
    sched = _default_schedule(ctx.user_schedule)
    mix = image_mixture(channels=1, size=cfg["size"], n_components=cfg["components"], std=cfg["std"], seed=0)
    n_eval = ctx.samples
    alpha = ctx.set_tests(2)
    shape = (1, cfg["size"], cfg["size"])

    if n_eval < NETWORK_MIN_EVAL:
        raise DDPMCheckError(f"check network: --samples {n_eval} is too small; use --samples >= {NETWORK_MIN_EVAL}")
    g = ctx.generator()
    unet_cfg = UNetConfig(image_channels=1, down_channels=tuple(cfg["channels"]), time_emb_dim=32)
    with torch.random.fork_rng():  # the initial weights from the check's seed; global RNG untouched
        torch.manual_seed(ctx.seed % (2**63))
        net = SimpleUnet(unet_cfg)
    # Training is deterministic given the seed, so a trained network is reused (this process
    # only) when the same check runs again, e.g. for its wrong variants, which change the floor.
    key = (ctx.seed, tuple(sorted((k, str(v)) for k, v in cfg.items())), sched.betas.tobytes())
    if key in _NET_CACHE:
        state, g_state, train_s = _NET_CACHE[key]
        net.load_state_dict(state)
        g.set_state(g_state)
    else:
        diffusion = GaussianDiffusion(sched, dtype=torch.float32)
        opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
        sched_lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg["steps"], 1))
        net.train()
        t0 = time.time()
        for step in range(cfg["steps"]):
            x0 = mix.sample(cfg["batch"], g, dtype=torch.float32).reshape(-1, *shape)
            loss = diffusion.loss(net, x0, kind="l2", generator=g)  # L_simple, eq. 14
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched_lr.step()
            if step % 100 == 0:
                ctx.say(f"network: step {step}/{cfg['steps']} loss {loss.item():.4f}")
        train_s = time.time() - t0
        _NET_CACHE.clear()  # keep one network
        _NET_CACHE[key] = ({k: v.detach().clone() for k, v in net.state_dict().items()}, g.get_state(), train_s)
    net.eval()

    # ---- paired evaluation on fresh (x_0, t, eps)
    if ctx.sim == "floor_alphas":
        floor_pred = ExactEpsPredictor(mix, sched.alphas)
    elif ctx.sim == "floor_sqrt":
        floor_pred = ExactEpsPredictor(mix, sched.sqrt_alphas_cumprod)
    elif ctx.sim == "floor_std":
        floor_pred = GaussianMixture(mix.weights, mix.means, 2.0 * mix.stds).eps_predictor(sched.alphas_cumprod)
    else:
        floor_pred = mix.eps_predictor(sched.alphas_cumprod)
    x0 = mix.sample(n_eval, g).reshape(-1, *shape)  # float64
    t = torch.randint(0, sched.T, (n_eval,), generator=g)
    e = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = GaussianDiffusion(sched, dtype=torch.float64).q_sample(x0, t, noise=e)  # eq. 4, checked by `marginal`
    with torch.no_grad():
        pred_net = torch.cat([net(x_t[k:k + 1024].float(), t[k:k + 1024]).double()
                              for k in range(0, n_eval, 1024)])
    pred_opt = floor_pred(x_t, t)
    l_net = ((e - pred_net) ** 2).reshape(n_eval, -1).mean(1).numpy()
    l_opt = ((e - pred_opt) ** 2).reshape(n_eval, -1).mean(1).numpy()
    d = l_net - l_opt
    se = float(d.std(ddof=1) / math.sqrt(n_eval))
    floor = float(l_opt.mean())
    excess = float(d.mean())
    z1 = S.z_one_sided(alpha)
    zb = S.z_one_sided(S.BETA)
    # (1) one-sided: H0 E[d] >= 0; statistic max(0, -dbar/se)
    stat1 = max(0.0, -excess / se) if se > 0 else (math.inf if excess < 0 else 0.0)
    ctx.add("net MSE >= Bayes floor (paired)", f"all t, {cfg['steps']} steps", "SimpleUnet vs exact",
            S.TestOutcome("paired-z", excess, 0.0, se, stat1, z1, alpha, (z1 + zb) * se, n_eval))
    # (2) convergence: the upper confidence bound of excess / floor within the declared tolerance
    ucb = (excess + z1 * se) / floor
    ctx.add("excess / floor (UCB) <= tol", f"all t, floor={floor:.4f}", "SimpleUnet vs exact",
            S.TestOutcome("ucb", excess / floor, 0.0, se / floor, ucb, NETWORK_REL_TOL, alpha,
                          (z1 + zb) * se / floor, n_eval))
    # diagnostics: excess by t bucket
    edges = np.linspace(0, sched.T, NETWORK_BUCKETS + 1).astype(int)
    tn = t.numpy()
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (tn >= lo) & (tn < hi)
        if m.sum() < 2:
            continue
        db = d[m]
        se_b = float(db.std(ddof=1) / math.sqrt(m.sum()))
        fl = float(l_opt[m].mean())
        ctx.add("excess eps-MSE", f"t={lo + 1}..{hi} floor={fl:.4f}", "SimpleUnet vs exact",
                S.TestOutcome("bucket", float(db.mean()), 0.0, se_b,
                              float(db.mean()) / fl if fl > 0 else math.inf,  # floor 0: eps known from x_t
                              NETWORK_REL_TOL,
                              alpha, (z1 + zb) * se_b, int(m.sum())), role=ROLE_DIAGNOSTIC,
                note="statistic = excess / floor in this bucket; finding = above the overall tolerance",
                group=f"t={lo + 1}..{hi}")
    ctx.notes.append(
        f"network: SimpleUnet {unet_cfg.down_channels}, image_mixture 1x{cfg['size']}x{cfg['size']} "
        f"K={cfg['components']} std={cfg['std']}, {cfg['steps']} Adam steps (batch {cfg['batch']}, lr {cfg['lr']}, "
        f"L2 = eq. 14) in {train_s:.1f} s; floor {floor:.4f}, excess {excess:.5f} +- {se:.5f}")


# ============================================================================================
# registry and entry points
# ============================================================================================
@dataclass(frozen=True)
class CheckSpec:
    name: str
    title: str
    fn: Callable[..., None]
    default_samples: int
    in_all: bool = True


CHECKS: dict[str, CheckSpec] = {
    "marginal": CheckSpec("marginal", "q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t)  (eq. 4)",
                          check_marginal, 25_000),
    "posterior": CheckSpec("posterior", "q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t)  (eqs. 6-7)",
                           check_posterior, 100_000),
    "mean-eps": CheckSpec("mean-eps", "mu_tilde_t in terms of eps; p_mean_variance with the true eps  (eq. 11)",
                          check_mean_eps, 20_000),
    "sampler": CheckSpec("sampler", "p_sample_loop with the exact denoiser samples the data  (Alg. 2)",
                         check_sampler, 4_000),
    "network": CheckSpec("network", "a trained SimpleUnet approaches the Bayes floor  (eq. 14)",
                         check_network, 8_192, in_all=False),
}
CHECK_NAMES: tuple[str, ...] = tuple(CHECKS)


class single_thread:
    """Run torch single-threaded: the checks' tensors are small (thousands of elements), where
    intra-op threads cost more than they give, and much more on a busy machine.  Restored after."""

    def __enter__(self):
        import torch

        self._n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self._n)
        return False


def _as_schedule(schedule: Schedule | ScheduleConfig | None) -> Schedule | None:
    """The schedule to check; DDPMCheckError for one whose alpha_bar_t underflows to 0, where x_t
    keeps nothing of x_0 and the formulas under test divide by alpha_bar_t (the checks would
    report a failure of the formulas instead; down to alpha_bar_T ~ 1e-105 they still pass)."""
    if schedule is None:
        return None
    if isinstance(schedule, ScheduleConfig):
        schedule = Schedule.from_config(schedule)
    if not isinstance(schedule, Schedule):
        raise DDPMCheckError(f"schedule must be a Schedule or ScheduleConfig, got {type(schedule).__name__}")
    zero = np.flatnonzero(np.asarray(schedule.alphas_cumprod) <= 0.0)
    if zero.size:
        c = schedule.config
        desc = (f"{c.kind}, T = {c.T}" + (f", betas {c.beta_start:g} to {c.beta_end:g}" if c.kind == "linear" else ""))
        raise DDPMCheckError(
            f"alpha_bar_t underflows to 0 from t = {int(zero[0]) + 1} on ({desc}): x_t keeps nothing of x_0 "
            f"there and the formulas under test divide by alpha_bar_t; choose smaller betas or a smaller T"
        )
    return schedule


def run_check(name: str, *, samples: int | None = None, seed: int = S.DEFAULT_ROOT_SEED,
              schedule: Schedule | ScheduleConfig | None = None, variant: str | None = None,
              progress: Callable[[str], Any] | None = None, **options: Any) -> CheckResult:
    """Run the check ``name`` and return its result (it never raises for a failed test).

    Args:
        samples: chains / samples per probe (default: the check's own, ``CHECKS[name]``).
        seed: the root seed; the check's seed is ``stats.seed_for(name, seed)``.
        schedule: the beta schedule to check (default: linear T = 300 from 1e-4 to 0.02, the
            source's; the sampler check's default is its own set of configurations).
        variant: a known-wrong variant from ``VARIANTS[name]`` (the check should fail).
        options: check-specific (network: ``steps``).
    Raises:
        DDPMCheckError: unknown name or variant, samples < 1, a sample size too small for the
            declared power, a bad schedule.
    """
    if name not in CHECKS:
        raise DDPMCheckError(f"unknown check {name!r}; valid names: {', '.join(CHECK_NAMES)}, all")
    spec = CHECKS[name]
    if samples is None:
        samples = spec.default_samples
    samples = S.check_samples(samples)
    check_seed(seed)
    var = None
    if variant is not None:
        if variant not in _VARIANTS[name]:
            raise DDPMCheckError(f"unknown variant {variant!r} of check {name!r}; valid: "
                                 f"{', '.join(_VARIANTS[name]) or 'none'}")
        var = _VARIANTS[name][variant]
    unknown = set(options) - ({"steps"} if name == "network" else set())
    if unknown:
        raise DDPMCheckError(f"check {name!r} takes no option {', '.join(sorted(unknown))}"
                             + (" (only the network check takes steps)" if "steps" in unknown else ""))
    steps = options.get("steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))
                              or not 1 <= steps <= 1_000_000):
        raise DDPMCheckError(f"network check steps must be an integer from 1 to 1,000,000, got {steps!r}")
    sched = _as_schedule(schedule)
    ctx = _Context(name, spec.title, int(samples), int(seed), sched, var, progress)
    t0 = time.perf_counter()
    if name == "network":
        spec.fn(ctx, steps=options.get("steps"))
    else:
        with single_thread():
            spec.fn(ctx)
    runtime = time.perf_counter() - t0
    if sched is not None:
        sched_info = sched.config.to_dict()
        if sched_info.get("betas") is not None:
            sched_info["betas"] = f"<{sched.T} values>"
    elif name == "sampler":
        sched_info = {"kind": "linear", "T": [1000, 300, 50], "beta_start": 1e-4, "beta_end": 0.02}
    else:
        sched_info = {"kind": "linear", "T": 300, "beta_start": 1e-4, "beta_end": 0.02, "betas": None}
    return CheckResult(name, spec.title, ctx.seed, int(seed), variant, sched_info, int(samples),
                       ctx.rows, runtime, ctx.notes)


def run_all(*, network: bool = False, samples: int | None = None, seed: int = S.DEFAULT_ROOT_SEED,
            schedule: Schedule | ScheduleConfig | None = None,
            progress: Callable[[str], Any] | None = None, **options: Any) -> list[CheckResult]:
    """Run every check (the network check only with ``network=True``)."""
    names = [n for n, s in CHECKS.items() if s.in_all or network]
    if options and not network:
        raise DDPMCheckError(f"options {', '.join(sorted(options))} are the network check's: pass network=True")
    return [run_check(n, samples=samples, seed=seed, schedule=schedule, progress=progress,
                      **(options if n == "network" else {}))
            for n in names]


def resolve_names(name: str, network: bool = False) -> list[str]:
    """``"all"`` -> the checks in ``check all``; a check name -> [name]; else DDPMCheckError."""
    if name == "all":
        return [n for n, s in CHECKS.items() if s.in_all or network]
    if name not in CHECKS:
        raise DDPMCheckError(f"unknown check {name!r}; valid names: {', '.join(CHECK_NAMES)}, all")
    return [name]


__all__ = [
    "CHECKS", "CHECK_NAMES", "VARIANTS", "CheckRow", "CheckResult", "Variant", "run_check", "run_all",
    "resolve_names", "sampler_mixture", "start_mismatch_tv", "MEAN_EPS_BUDGET_ULPS", "NETWORK_REL_TOL",
]
