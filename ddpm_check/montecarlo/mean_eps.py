"""Check ``mean-eps``: exact identities of the eps form (Ho et al. eq. 11), float64 rounding only.

The eps form of mu_tilde_t (eq. 11) equals the (x_t, x_0) form (eq. 7); x_0 is recovered from
eps; ``p_mean_variance`` / ``q_posterior_mean_variance`` / ``p_sample`` given the true eps
return mu_tilde_t and beta_tilde_t.  Each comparison is scored in units of float64 roundoff of
its own scale, against a declared budget (see :func:`run`).
"""

from __future__ import annotations

import numpy as np

from ddpm_check import stats
from ddpm_check.montecarlo.context import CheckContext, default_schedule
from ddpm_check.montecarlo.marginal import MARGINAL_X0
from ddpm_check.montecarlo.variants import Variant, drop_sqrt, replace_arrays, replace_by, swap_symbol

VARIANTS = (
    Variant("alpha_for_sqrt_alpha",
            "mu_tilde_t(eps) divided by alpha_t instead of sqrt(alpha_t)",
            results=drop_sqrt("mean-eps", ["mu_tilde_t_eps"], "alpha_t")),
    Variant("one_minus_alpha_for_one_minus_alpha_bar",
            "mu_tilde_t(eps) with sqrt(1 - alpha_t) where sqrt(1 - alpha_bar_t) belongs",
            results=swap_symbol("mean-eps", ["mu_tilde_t_eps"], "alpha_bar_t", "alpha_t")),
    Variant("beta_for_beta_tilde",
            "the reverse variance beta_t expected where beta_tilde_t belongs",
            results=replace_by("mean-eps", ["posterior_variance"], "beta_t")),
    Variant("alpha_bar_off_by_one",
            "mu_tilde_t(eps) with alpha_bar_{t-1} where alpha_bar_t belongs",
            results=swap_symbol("mean-eps", ["mu_tilde_t_eps"], "alpha_bar_t", "alpha_bar_tm1")),
    Variant("code_eps_coef_sqrt_beta",
            "code bug only: the sampler's schedule has sqrt(1 - alpha_t) for sqrt(1 - alpha_bar_t) "
            "(eps coefficient becomes sqrt(beta_t))",
            schedule=lambda s: replace_arrays(s, sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - s.alphas))),
)

#: worst error allowed, in units of roundoff of each comparison's scale (see run)
MEAN_EPS_BUDGET_ULPS = 16.0


def run(ctx: CheckContext) -> None:
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

    sched = default_schedule(ctx.user_schedule)
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
            stats.exact_test(mu_eps, mu_x0, scale_mu, MEAN_EPS_BUDGET_ULPS))

    x0_hat = np.asarray(fe["x_0_from_eps"](x_t=x_t, eps=eps, **kw), dtype=np.float64)
    scale_x0 = (mag_xt + np.abs(sd * eps) + np.abs(x0)) / np.sqrt(ab) * kappa
    ctx.add("x_0 from eps = x_0", "all t", "derivation",
            stats.exact_test(x0_hat, x0, scale_x0, MEAN_EPS_BUDGET_ULPS))

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
            stats.exact_test(out["mean"].numpy(), mu_x0, scale_mu, MEAN_EPS_BUDGET_ULPS))
    var_ref = np.asarray(fe["posterior_variance"](**kw), dtype=np.float64)
    ctx.add("p_mean_variance var = beta_tilde", "all t", "code vs derivation",
            stats.exact_test(out["variance"].numpy(), var_ref, (np.abs(var_ref) + sched.betas[i]) * kappa,
                         MEAN_EPS_BUDGET_ULPS))
    ctx.add("p_mean_variance pred_x0 = x_0", "all t", "code",
            stats.exact_test(out["pred_x0"].numpy(), x0, scale_x0, MEAN_EPS_BUDGET_ULPS))
    qm, qv, _ = diffusion.q_posterior_mean_variance(x0_t, xt_t, t_t)
    ctx.add("q_posterior mean = mu_tilde(eps)", "all t", "code vs derivation",
            stats.exact_test(qm.numpy(), mu_eps, scale_mu, MEAN_EPS_BUDGET_ULPS))
    zz = rng.standard_normal(n)
    step = diffusion.p_sample(true_eps, xt_t, t_t, noise=torch.as_tensor(zz)).numpy()
    ref = mu_eps + np.sqrt(var_ref) * zz  # x_{t-1} = mu_tilde + sqrt(beta_tilde) z; beta_tilde_1 = 0
    ctx.add("p_sample = mu_tilde + sqrt(beta_tilde) z", "all t", "code vs derivation",
            stats.exact_test(step, ref, scale_mu + np.sqrt(np.abs(var_ref) + sched.betas[i]) * np.abs(zz) * kappa,
                         MEAN_EPS_BUDGET_ULPS))


