"""Check ``posterior``: q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde_t I)   (Ho et al. eqs. 6-7).

Simulate (x_{t-1}, x_t) by iterating eq. 2 from x_0; regress x_{t-1} on x_t (the law of x_{t-1}
given x_t, x_0 is Gaussian with a mean linear in x_t) and test slope (coef2), intercept (coef1 x_0)
and residual variance (beta_tilde_t) with the exact OLS sampling laws, against the derivation and
against the schedule arrays.  Exact rows: the schedule arrays equal the lambdified derivation at
every t (this catches code bugs far below what the regressions can see).
"""

from __future__ import annotations

import math

import numpy as np

from ddpm_check import stats
from ddpm_check.errors import DDPMCheckError
from ddpm_check.montecarlo.context import MAX_REL_DELTA, CheckContext, default_schedule, fmt_x0, probe_steps
from ddpm_check.montecarlo.variants import (Variant, drop_sqrt, replace_arrays, replace_by, shifted,
                                            swap_symbol)
from ddpm_check.schedules import Schedule


def _posterior_with_one_minus_alpha(s: Schedule) -> Schedule:
    """The posterior arrays with 1 - alpha_t where 1 - alpha_bar_t belongs."""
    den = 1.0 - s.alphas
    return replace_arrays(
        s,
        posterior_mean_coef1=np.sqrt(s.alphas_cumprod_prev) * s.betas / den,
        posterior_mean_coef2=np.sqrt(s.alphas) * (1.0 - s.alphas_cumprod_prev) / den,
        posterior_variance=(1.0 - s.alphas_cumprod_prev) / den * s.betas,
    )


VARIANTS = (
    Variant("beta_for_beta_tilde",
            "beta_tilde_t replaced by beta_t (derivation and schedule array)",
            results=replace_by("posterior", ["posterior_variance"], "beta_t"),
            schedule=lambda s: replace_arrays(s, posterior_variance=s.betas)),
    Variant("alpha_for_sqrt_alpha",
            "coef2 (of x_t) with alpha_t where sqrt(alpha_t) belongs (derivation and schedule array)",
            results=drop_sqrt("posterior", ["posterior_mean_coef2"], "alpha_t"),
            schedule=lambda s: replace_arrays(s, posterior_mean_coef2=s.posterior_mean_coef2 * np.sqrt(s.alphas))),
    Variant("alpha_bar_for_sqrt_alpha_bar",
            "coef1 (of x_0) with alpha_bar_{t-1} where sqrt(alpha_bar_{t-1}) belongs",
            results=drop_sqrt("posterior", ["posterior_mean_coef1"], "alpha_bar_tm1"),
            schedule=lambda s: replace_arrays(
                s, posterior_mean_coef1=s.posterior_mean_coef1 * np.sqrt(s.alphas_cumprod_prev))),
    Variant("one_minus_alpha_for_one_minus_alpha_bar",
            "1 - alpha_t where 1 - alpha_bar_t belongs (coefficients and variance)",
            results=swap_symbol("posterior", ["posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance"],
                                "alpha_bar_t", "alpha_t"),
            schedule=_posterior_with_one_minus_alpha),
    Variant("index_off_by_one",
            "every array read at step t - 1 (the 0-based / 1-based index confusion)",
            shift_inputs=True,
            schedule=lambda s: replace_arrays(s, posterior_mean_coef1=shifted(s.posterior_mean_coef1),
                                              posterior_mean_coef2=shifted(s.posterior_mean_coef2),
                                              posterior_variance=shifted(s.posterior_variance))),
    Variant("schedule_coef1_alpha_bar_t",
            "code bug only: posterior_mean_coef1 computed with sqrt(alpha_bar_t) for sqrt(alpha_bar_{t-1})",
            schedule=lambda s: replace_arrays(s, posterior_mean_coef1=np.sqrt(s.alphas_cumprod) * s.betas
                                              / (1.0 - s.alphas_cumprod))),
)

POSTERIOR_X0 = (-3.0, 1.0, 10.0)


def run(ctx: CheckContext) -> None:
    """Regress simulated x_{t-1} on x_t given x_0; test slope, intercept and residual variance."""
    import torch

    sched = default_schedule(ctx.user_schedule)
    if sched.T < 2:
        raise DDPMCheckError(f"check posterior needs T >= 2 (beta_tilde_1 = 0: x_0 is known), got T = {sched.T}")
    code = ctx.code_schedule(sched)
    f = ctx.formulas("posterior")
    steps = probe_steps(sched, first=2)
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
                d = stats.mean_detectable_delta(se_, 1, alpha)
                limit = MAX_REL_DELTA * max(abs(ref), sd_)
                if limit > 0:
                    ctx.require(d <= limit, f"the {what} at t={t} x0={fmt_x0(x0)}", d, limit,
                                int(math.ceil(n * (d / limit) ** 2)) + 1)
    ctx.require_var_power(n - 2, "the residual variance")

    # ---- exact rows: the schedule arrays equal the lambdified derivation at every step
    idx = np.arange(sched.T)
    c1_all, c2_all, v_all = derived(idx)
    for qname, arr, ref in (("posterior_mean_coef1", code.posterior_mean_coef1, c1_all),
                            ("posterior_mean_coef2", code.posterior_mean_coef2, c2_all),
                            ("posterior_variance", code.posterior_variance, v_all)):
        ctx.add(f"{qname} = derivation", f"t=1..{sched.T}", "schedule vs derivation",
                stats.exact_test(arr, ref, np.abs(ref) + np.abs(arr), budget_ulps=8.0))

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
            fit = stats.ols_fit(pairs[t][1][j], pairs[t][0][j])  # regress x_{t-1} on x_t
            where = f"t={t} x0={fmt_x0(x0)}"
            for src in sources:
                e1, e2, ev = expect[src]
                slope, icpt, resid = stats.ols_tests(fit, e2, e1 * x0, ev, alpha)
                ctx.add("slope = coef2", where, src, slope)
                ctx.add("intercept = coef1 x0", where, src, icpt)
                ctx.add("resid var = beta_tilde", where, src, resid)


