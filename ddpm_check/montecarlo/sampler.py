"""Check ``sampler``: the reverse process with the exact denoiser reproduces the data   (Ho et al. Alg. 2).

With the exact noise predictor E[eps | x_t] of a 2-D Gaussian mixture, run
``GaussianDiffusion.p_sample_loop`` (float64) and KS-test fixed 1-D projections of its output
against the exact mixture CDF.  Which configurations are tests and which are diagnostics is
decided, before sampling, by the total-variation distance between q(x_T) and the N(0, I) the
loop starts from (a data-processing bound on the output error; see :func:`run`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ddpm_check import stats
from ddpm_check.errors import DDPMCheckError
from ddpm_check.montecarlo.context import CheckContext
from ddpm_check.montecarlo.results import ROLE_DIAGNOSTIC, ROLE_TEST
from ddpm_check.montecarlo.variants import Variant, replace_arrays
from ddpm_check.schedules import Schedule, ScheduleConfig

VARIANTS = (
    Variant("alpha_for_sqrt_alpha",
            "the reverse step divides by alpha_t instead of sqrt(alpha_t)",
            schedule=lambda s: replace_arrays(s, sqrt_recip_alphas=1.0 / s.alphas)),
    Variant("one_minus_alpha_for_one_minus_alpha_bar",
            "the eps coefficient beta_t / sqrt(1 - alpha_t) instead of beta_t / sqrt(1 - alpha_bar_t)",
            schedule=lambda s: replace_arrays(s, sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - s.alphas))),
    Variant("beta_tilde_with_one_minus_alpha",
            "the reverse variance (1 - alpha_bar_{t-1}) / (1 - alpha_t) beta_t",
            schedule=lambda s: replace_arrays(
                s, posterior_variance=(1.0 - s.alphas_cumprod_prev) / (1.0 - s.alphas) * s.betas)),
    Variant("no_noise",
            "the reverse step adds no noise (sigma_t = 0)",
            schedule=lambda s: replace_arrays(s, posterior_variance=np.zeros_like(s.betas))),
    Variant("predictor_alpha_for_alpha_bar",
            "the denoiser is told alpha_t where alpha_bar_t belongs",
            sim="predictor_alphas"),
)


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


#: the default configurations' numbers of steps (linear betas from ScheduleConfig's defaults)
DEFAULT_T = (1000, 300, 50)


def default_schedule_info() -> dict:
    """What the check runs on without a user schedule (for its result's ``schedule``)."""
    info = ScheduleConfig().to_dict()
    info.pop("betas")
    return {**info, "T": list(DEFAULT_T)}


def _sampler_configs(user: Schedule | None) -> list[SamplerConfig]:
    if user is not None:
        lab = f"{user.config.kind} T={user.T}"
        return [SamplerConfig(lab, user, "N(0,I)"), SamplerConfig(lab, user, "q(x_T)")]
    s1000, s300, s50 = (Schedule.from_config(ScheduleConfig(T=T)) for T in DEFAULT_T)
    return [
        SamplerConfig("linear T=1000", s1000, "N(0,I)"),
        SamplerConfig("linear T=300", s300, "q(x_T)"),
        SamplerConfig("linear T=50", s50, "q(x_T)"),
        SamplerConfig("linear T=300 (source)", s300, "N(0,I)"),
        SamplerConfig("linear T=50", s50, "N(0,I)"),
    ]


def run(ctx: CheckContext) -> None:
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
    eps_guess = stats.dkwm_epsilon(n, ctx.alpha_for(len(configs) * len(dirs)))
    n_tests = sum(len(dirs) for k in tv if role_of(k, eps_guess) == ROLE_TEST)
    alpha = ctx.set_tests(n_tests)
    eps = stats.dkwm_epsilon(n, alpha)
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
            out = stats.ks_test(proj, lambda v, u=u: mix.projection_cdf(u, v), alpha)
            ctx.add("law of u.x_0 (KS)", f"{c.label}, x_T~{c.start}, u={name}", "p_sample_loop", out,
                    role=role, note=note, threshold=thr, group=f"{c.label}, x_T~{c.start}")
    ctx.notes.append(
        "sampler data: 0.6 N((3.5, 3.5), 0.25 I) + 0.4 N((-2, 2), 0.25 I); the exact predictor E[eps|x_t]; "
        f"KS threshold eps_DKWM = {eps:.4f} (+ the start mismatch TV for a tested x_T ~ N(0,I))")
    ctx.notes.append("start mismatch TV(q(x_T), N(0,I)): " + "; ".join(
        f"{c.label}: {tv[c.label + c.start]:.4f} ({roles[c.label + c.start]})"
        for c in configs if c.start == "N(0,I)"))


