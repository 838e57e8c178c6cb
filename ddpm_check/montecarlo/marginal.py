"""Check ``marginal``: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)   (Ho et al. eq. 4).

Iterate the definition of the forward step, q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t)
(eq. 2, the only formula typed here), in float64 chains from fixed x_0 in {0, 1, -3, 10}, and
test the mean (z), variance (chi2) and the whole law (KS, DKWM) of x_t against the closed form
at t = 1, 10, the t with alpha_bar_t ~ 0.5 and T; the same for ``GaussianDiffusion.q_sample``.
Exact row: the schedule's alphas_cumprod equals the derived recursion alpha_bar_t = alpha_t
alpha_bar_{t-1}.
"""

from __future__ import annotations

import math

import numpy as np

from ddpm_check import stats
from ddpm_check.montecarlo.context import CheckContext, default_schedule, fmt_x0, normal_cdf, probe_steps
from ddpm_check.montecarlo.variants import Variant, drop_sqrt, replace_arrays, swap_symbol

VARIANTS = (
    Variant("one_minus_alpha_for_one_minus_alpha_bar",
            "Var x_t = 1 - alpha_t instead of 1 - alpha_bar_t",
            results=swap_symbol("marginal", ["x_t_variance"], "alpha_bar_t", "alpha_t")),
    Variant("alpha_bar_for_sqrt_alpha_bar",
            "E x_t = alpha_bar_t x_0 instead of sqrt(alpha_bar_t) x_0",
            results=drop_sqrt("marginal", ["x_t_mean_coef"], "alpha_bar_t")),
    Variant("alpha_bar_off_by_one",
            "alpha_bar_{t-1} where alpha_bar_t belongs (mean and variance)",
            results=swap_symbol("marginal", ["x_t_mean_coef", "x_t_variance"], "alpha_bar_t", "alpha_bar_tm1")),
    Variant("source_forward_index",
            "the source's forward step x_t = sqrt(alpha_{t-1}) x_{t-1} + sqrt(1 - alpha_{t-1}) z "
            "(its index erratum) in the simulation",
            sim="forward_index_off_by_one"),
    Variant("q_sample_alpha_bar_for_sqrt",
            "q_sample given a schedule whose sqrt_alphas_cumprod holds alpha_bar_t (code bug)",
            schedule=lambda s: replace_arrays(s, sqrt_alphas_cumprod=s.alphas_cumprod)),
)

MARGINAL_X0 = (0.0, 1.0, -3.0, 10.0)


def run(ctx: CheckContext) -> None:
    """Iterate eq. 2 and sample q_sample; test mean, variance and law of x_t against eq. 4."""
    import torch

    from ddpm_check.diffusion import GaussianDiffusion

    sched = default_schedule(ctx.user_schedule)
    f = ctx.formulas("marginal")
    steps = probe_steps(sched)
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
            stats.exact_test(ctx.code_schedule(sched).alphas_cumprod, ab, ab * tt, budget_ulps=4.0))

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
                where = f"t={t} x0={fmt_x0(x0)}"
                ctx.add("mean x_t", where, src, stats.mean_test(xs, mu, math.sqrt(max(var, 0.0)), alpha))
                ctx.add("var x_t", where, src, stats.variance_test(xs, var, alpha))
                ctx.add("law x_t (KS)", where, src, stats.ks_test(xs, normal_cdf(mu, var), alpha))


