"""Check ``ddim``: the DDIM sampler keeps DDPM's marginals at every visit (Song et al. 2021, eqs. 7, 12, 16).

``GaussianDiffusion.ddim_sample_loop`` is run as ``sample --sampler ddim`` runs it, for the three
spacings and eta in {0, 0.5, 1}, S = 50 of T = 1000 steps (linear betas 1e-4 .. 0.02), with data
that is a point mass x_0 = c.  Its exact noise predictor is then the oracle
eps(x_t, t) = (x_t - sqrt(abar_t) c)/sqrt(1 - abar_t), so the derivation ``ddim`` makes exact
predictions about every state the loop visits (started from the exact x_{tau_S} ~ q(x_{tau_S} | c)):

- the marginal at every visited index tau: x_tau ~ N(sqrt(abar_tau) c, (1 - abar_tau)) (mean and
  variance tests; derivation ``marginal`` via ``ddim``'s 'marginal-preserved' step, for every sigma);
- every step's conditional law: x_prev - ddim_mean(x_t, c, sigma) ~ N(0, sigma^2) with sigma(eta)
  of eq. 16 (mean and variance tests; for eta = 0 an exact row: the step is deterministic);
- the last step returns x0_hat = c exactly (abar_prev = 1 after the last visit), an exact row;
- the visited indices are the spacing's definition (diffusers' ``timestep_spacing``), exact.

Whole-loop rows (exact): with S = T and eta = 1 the DDIM loop equals ``p_sample_loop`` draw for
draw (the same generator) on the Gaussian-mixture data of check ``sampler`` with its exact
denoiser; with eta = 0 two generators give the same x_0 from the same x_T (deterministic).

Diagnostics (no alpha spent): the law of the output on that mixture, KS on four projections, for
every spacing and eta at S = 50.  DDIM with S < T is a discretisation even with the exact
denoiser (the Gaussian step is exact only for x_0 known), so these report the distance to the
data instead of testing it; its size (about 0.02 at S = 50) is the lesson, not a failure.
"""

from __future__ import annotations

import math

import numpy as np

from ddpm_check import stats
from ddpm_check.errors import DDPMCheckError
from ddpm_check.montecarlo.context import CheckContext
from ddpm_check.montecarlo.results import ROLE_DIAGNOSTIC
from ddpm_check.montecarlo.variants import Variant
from ddpm_check.schedules import Schedule, ScheduleConfig

VARIANTS = (
    Variant("prev_from_alphas_cumprod_prev",
            "the step reads alphas_cumprod_prev at the next visited index (abar one step too close to the data)",
            sim="prev_from_alphas_cumprod_prev"),
    Variant("final_alpha_bar_first_entry",
            "after the last visit abar_prev = alphas_cumprod[0] instead of 1 (diffusers' set_alpha_to_one=False)",
            sim="final_alpha_bar_first_entry"),
    Variant("fixed_stride",
            "the previous index taken as t - T // S whatever the spacing visits next",
            sim="fixed_stride"),
    Variant("sigma_without_first_factor",
            "sigma_t = eta sqrt(1 - abar_t/abar_prev), without sqrt((1 - abar_prev)/(1 - abar_t))",
            sim="sigma_without_first_factor"),
)

#: the default run: linear betas 1e-4 .. 0.02 over T steps, S of them visited
DEFAULT_T = 1000
DEFAULT_STEPS = 50
ETAS = (0.0, 0.5, 1.0)
#: the point mass the marginal and step rows use (far from 0, so a wrong sqrt(abar) shows in the mean)
POINT = 3.0
#: exact rows: worst error allowed in units of roundoff of each comparison's scale
DDIM_BUDGET_ULPS = 64.0
#: the whole-loop exact rows' sample size (they are exact: a few thousand points are plenty)
LOOP_N = 1000
#: the mixture diagnostics' sample size (they spend no alpha; 20,000 resolve a KS distance of about 0.01)
DIAG_N = 20_000


def default_schedule_info() -> dict:
    info = ScheduleConfig(T=DEFAULT_T).to_dict()
    info.pop("betas")
    return {**info, "steps": DEFAULT_STEPS}


def expected_visits(T: int, S: int, spacing: str) -> list[int]:
    """The indices a spacing visits, descending, as diffusers defines ``timestep_spacing``
    (typed here from that definition, independently of ``ddpm_check.ddim.timesteps``)."""
    if spacing == "leading":
        return [k * (T // S) for k in reversed(range(S))]
    if spacing == "linspace":
        return [int(round(v)) for v in np.linspace(0, T - 1, S)][::-1]
    return [int(round(T - k * T / S)) - 1 for k in range(S)]


def _plan(ctx: CheckContext, code: Schedule, config):
    """The plan the code under test runs: the library's, or a deliberately wrong one."""
    from ddpm_check.ddim import plan, plan_from

    p = plan(code.alphas_cumprod, config)
    ac, ts = code.alphas_cumprod, p.timesteps
    if ctx.sim == "prev_from_alphas_cumprod_prev":
        prev = np.concatenate([code.alphas_cumprod_prev[ts[1:]], [1.0]])
        return plan_from(config, ts, p.alpha_bar, prev)
    if ctx.sim == "final_alpha_bar_first_entry":
        return plan_from(config, ts, p.alpha_bar, np.concatenate([p.alpha_bar_prev[:-1], [ac[0]]]))
    if ctx.sim == "fixed_stride":
        j = ts - code.T // config.steps
        return plan_from(config, ts, p.alpha_bar, np.where(j >= 0, ac[np.clip(j, 0, None)], 1.0))
    if ctx.sim == "sigma_without_first_factor":
        return plan_from(config, ts, p.alpha_bar, p.alpha_bar_prev,
                         sigma=config.eta * np.sqrt(1.0 - p.alpha_bar / p.alpha_bar_prev))
    return p


def run(ctx: CheckContext) -> None:
    """Run the DDIM loop on a point mass and on the mixture; add the rows described above."""
    import torch

    from ddpm_check.ddim import SPACINGS, DDIMConfig
    from ddpm_check.diffusion import GaussianDiffusion
    from ddpm_check.montecarlo.sampler import SAMPLER_DIRECTIONS, sampler_mixture

    sched = ctx.user_schedule if ctx.user_schedule is not None else Schedule.from_config(ScheduleConfig(T=DEFAULT_T))
    T = sched.T
    if T < 2:
        raise DDPMCheckError(f"check ddim needs T >= 2 (a step between two visits), got T = {T}")
    S = min(DEFAULT_STEPS, T)
    code = ctx.code_schedule(sched)
    fm = ctx.formulas("marginal")
    fd = ctx.formulas("ddim")
    n = ctx.samples
    ac = sched.alphas_cumprod
    c = POINT

    # ---- alpha and power, before sampling: per config, (S - 1) marginals x (mean, var), and for
    # eta > 0 (S - 1) steps x (mean, var); eta = 0 steps are exact rows
    per_eta = {eta: 2 * (S - 1) + (2 * (S - 1) if eta > 0 else 0) for eta in ETAS}
    alpha = ctx.set_tests(len(SPACINGS) * sum(per_eta.values()))
    ctx.require_mean_power(1.0, n, "each visit's mean (in units of its sd)")
    ctx.require_var_power(n - 1, "each visit's variance")

    diffusion = GaussianDiffusion(code, dtype=torch.float64)
    ac_t = torch.tensor(np.array(ac), dtype=torch.float64)

    def oracle(x, t):  # the exact E[eps | x_t] for data x_0 = c: the noise itself
        a = ac_t[t].reshape(-1, *([1] * (x.ndim - 1)))
        return (x - a.sqrt() * c) / (1.0 - a).sqrt()

    g = ctx.generator()
    for spacing in SPACINGS:
        visits = expected_visits(T, S, spacing)
        for eta in ETAS:
            config = DDIMConfig(S, eta, spacing)
            label = f"{spacing}, eta={eta:g}, S={S} of T={T}"
            p = _plan(ctx, code, config)
            ctx.add("visited indices = spacing", label, "ddim plan",
                    stats.exact_test(np.asarray(p.timesteps, dtype=np.float64), np.asarray(visits, dtype=np.float64),
                                     np.maximum(np.asarray(visits, dtype=np.float64), 1.0), 0.5), group=label)
            first = visits[0]
            x_T = torch.as_tensor(math.sqrt(ac[first]) * c + math.sqrt(1.0 - ac[first])
                                  * np.asarray(torch.randn((n, 1), generator=g, dtype=torch.float64)))
            try:
                x0, cap = diffusion.ddim_sample_loop(oracle, (n, 1), p, generator=g, capture=visits, x_T=x_T)
            except DDPMCheckError as exc:  # the loop refused to visit the spacing's indices
                ctx.add("the loop visits the spacing's indices", label, "ddim_sample_loop",
                        stats.exact_test(np.array([1.0]), np.array([0.0]), np.array([1.0]), 0.5),
                        note=str(exc), group=label)
                continue
            states = [cap[i].numpy().reshape(-1) for i in visits] + [x0.numpy().reshape(-1)]
            for k in range(S):
                i = visits[k]
                ab = float(ac[i])
                ab_prev = float(ac[visits[k + 1]]) if k + 1 < S else 1.0
                x_t, x_prev = states[k], states[k + 1]
                sigma = float(fd["sigma_eta"](eta=eta, alpha_bar_t=ab, alpha_bar_tm1=ab_prev))
                mean = np.asarray(fd["ddim_mean"](x_t=x_t, x_0=c, sigma_t=sigma, alpha_bar_t=ab, alpha_bar_tm1=ab_prev),
                                  dtype=np.float64)
                r = x_prev - mean
                where = f"{label}: index {i} -> {visits[k + 1] if k + 1 < S else 'x_0'}"
                if k + 1 == S:  # the last step: abar_prev = 1, sigma = 0, the output is c itself
                    scale = (np.abs(x_t) + c) / math.sqrt(ab) * (1.0 + 1.0 / (1.0 - ab))
                    ctx.add("last step returns x0_hat = x_0", where, "ddim_sample_loop vs derivation",
                            stats.exact_test(x_prev, np.full_like(x_prev, c), scale, DDIM_BUDGET_ULPS), group=label)
                    continue
                if sigma == 0.0:
                    scale = (np.abs(x_t) + c + np.abs(x_prev)) / math.sqrt(ab * (1.0 - ab)) * (1 + i)
                    ctx.add("step x_prev = ddim_mean (eta = 0)", where, "ddim_sample_loop vs derivation",
                            stats.exact_test(x_prev, mean, scale, DDIM_BUDGET_ULPS), group=label)
                else:
                    ctx.add("step residual mean = 0", where, "ddim_sample_loop vs derivation",
                            stats.mean_test(r, 0.0, sigma, alpha), group=label)
                    ctx.add("step residual var = sigma(eta)^2", where, "ddim_sample_loop vs derivation",
                            stats.variance_test(r, sigma**2, alpha), group=label)
                j = visits[k + 1]
                kw = {"alpha_bar_t": ac[j]}
                m = float(fm["x_t_mean_coef"](**kw)) * c
                v = float(fm["x_t_variance"](**kw))
                at = f"{label}: index {j}"
                ctx.add("marginal mean = sqrt(abar) x_0", at, "ddim_sample_loop vs derivation",
                        stats.mean_test(x_prev, m, math.sqrt(v), alpha), group=label)
                ctx.add("marginal var = 1 - abar", at, "ddim_sample_loop vs derivation",
                        stats.variance_test(x_prev, v, alpha), group=label)

    # ---- whole-loop exact rows on the sampler check's mixture, with its exact denoiser
    mix = sampler_mixture()
    model = mix.eps_predictor(ac)
    m = min(LOOP_N, n)
    g1, g2 = stats.torch_generator(ctx.seed + 1), stats.torch_generator(ctx.seed + 1)
    ddpm = diffusion.p_sample_loop(model, (m, mix.dim), generator=g1).numpy()
    full = diffusion.ddim_sample_loop(model, (m, mix.dim), _plan(ctx, code, DDIMConfig(T, 1.0, "leading")),
                                      generator=g2).numpy()
    scale = (np.abs(ddpm) + 1.0) * T / math.sqrt(ac[-1])
    ctx.add("S = T, eta = 1 equals p_sample_loop", f"T={T}, the same generator", "ddim_sample_loop vs p_sample_loop",
            stats.exact_test(full, ddpm, scale, DDIM_BUDGET_ULPS), group="whole loop")
    x_T = torch.randn((m, mix.dim), generator=stats.torch_generator(ctx.seed + 2), dtype=torch.float64)
    det = DDIMConfig(S, 0.0, "leading")
    a = diffusion.ddim_sample_loop(model, (m, mix.dim), _plan(ctx, code, det), x_T=x_T,
                                   generator=stats.torch_generator(ctx.seed + 3)).numpy()
    b = diffusion.ddim_sample_loop(model, (m, mix.dim), _plan(ctx, code, det), x_T=x_T,
                                   generator=stats.torch_generator(ctx.seed + 4)).numpy()
    ctx.add("eta = 0: the same x_T gives the same x_0", f"S={S} of T={T}, two generators", "ddim_sample_loop",
            stats.exact_test(a, b, np.abs(b) + 1.0, 0.5), group="whole loop")

    # ---- diagnostics: the output law on the mixture (a discretisation for S < T)
    nd = min(DIAG_N, n)
    eps_ks = stats.dkwm_epsilon(nd, alpha)
    for spacing in SPACINGS:
        for eta in ETAS:
            config = DDIMConfig(S, eta, spacing)
            with np.errstate(all="ignore"):
                x = diffusion.ddim_sample_loop(model, (nd, mix.dim), _plan(ctx, code, config), generator=g).numpy()
            x = np.where(np.isnan(x), np.inf, x)
            worst = max(SAMPLER_DIRECTIONS, key=lambda u: stats.ks_statistic(x @ u, lambda v, u=u: mix.projection_cdf(u, v)))
            out = stats.ks_test(x @ worst, lambda v, u=worst: mix.projection_cdf(u, v), alpha)
            ctx.add("law of u.x_0 (KS), worst of 4 projections", f"{spacing}, eta={eta:g}, S={S} of T={T}",
                    "ddim_sample_loop", out, role=ROLE_DIAGNOSTIC, threshold=eps_ks, group="mixture (diagnostic)",
                    note="x_T ~ N(0, I); DDIM with S < T is a discretisation even with the exact denoiser")
    ctx.notes.append(
        f"point-mass rows: x_0 = {c:g}, the oracle eps = (x_t - sqrt(abar) x_0)/sqrt(1 - abar), x at the first "
        f"visit drawn from q exactly; every visited index is tested (marginal mean and variance; the step's "
        f"residual for eta > 0, exact for eta = 0)")
    ctx.notes.append(
        "mixture rows (diagnostics): the data of check 'sampler'; their KS distance is DDIM's discretisation "
        "error at S steps, reported, not tested")
