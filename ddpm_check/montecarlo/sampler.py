"""Check ``sampler``: the reverse process with the exact denoiser reproduces the data   (Ho et al. Alg. 2).

With the exact noise predictor E[eps | x_t] of a 2-D Gaussian mixture, run
``GaussianDiffusion.p_sample_loop`` (float64) and KS-test fixed 1-D projections of its output
against the exact mixture CDF.  Which configurations are tests and which are diagnostics is
decided, before sampling, by the total-variation distance between q(x_T) and the N(0, I) the
loop starts from (a data-processing bound on the output error; see :func:`run`).  One default
configuration is the source's T = 300 rescaled to zero terminal SNR (Lin et al. 2024: alpha_bar_T
= 0, so q(x_T) = N(0, I) exactly) and sampled with v-prediction and the exact E[v | x_t]: there
the start mismatch is 0 by construction, and its rows test that it is gone.
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
    Variant("v_wrong_sign",
            "v-prediction's x0_hat = sqrt(alpha_bar_t) x_t + sqrt(1 - alpha_bar_t) v (the sign of v flipped)",
            sim="v_wrong_sign"),
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
    prediction: str = "eps"  # what the exact denoiser predicts ("v" on a zero-terminal-SNR schedule)

    @property
    def group(self) -> str:
        """The name of the configuration's row group (and the key of its role)."""
        return config_group(self.label, self.start)


def config_group(label: str, start: str) -> str:
    return f"{label}, x_T~{start}"


def _zero_snr(sched: Schedule) -> bool:
    """alpha_bar_T = 0 exactly: q(x_T) = N(0, I), and eps-prediction is undefined at t = T."""
    return bool(sched.alphas_cumprod[-1] == 0.0)


#: the default configurations' numbers of steps (linear betas from ScheduleConfig's defaults)
DEFAULT_T = (1000, 300, 50)
#: the default configurations the audit's claim zero-snr-start cites: the source (T = 300,
#: eps-prediction, from N(0, I)), the same schedule rescaled to zero terminal SNR with
#: v-prediction from N(0, I) (= q(x_T) there), and T = 300 from the exact q(x_T)
SOURCE_LABEL = "linear T=300 (source)"
ZERO_SNR_LABEL = "linear T=300 zero-SNR (v)"
EXACT_START_LABEL = "linear T=300"
SOURCE_GROUP = config_group(SOURCE_LABEL, "N(0,I)")
ZERO_SNR_GROUP = config_group(ZERO_SNR_LABEL, "N(0,I)")
EXACT_START_GROUP = config_group(EXACT_START_LABEL, "q(x_T)")


def default_schedule_info() -> dict:
    """What the check runs on without a user schedule (for its result's ``schedule``)."""
    info = ScheduleConfig().to_dict()
    info.pop("betas")
    return {**info, "T": list(DEFAULT_T)}


def _sampler_configs(user: Schedule | None) -> list[SamplerConfig]:
    if user is not None:
        lab = f"{user.config.kind} T={user.T}"
        if _zero_snr(user):  # N(0, I) is q(x_T) itself; eps-prediction is undefined at t = T
            return [SamplerConfig(lab + " zero-SNR (v)", user, "N(0,I)", "v")]
        return [SamplerConfig(lab, user, "N(0,I)"), SamplerConfig(lab, user, "q(x_T)")]
    s1000, s300, s50 = (Schedule.from_config(ScheduleConfig(T=T)) for T in DEFAULT_T)
    s300z = Schedule.from_config(ScheduleConfig(T=300, zero_snr=True))
    return [
        SamplerConfig("linear T=1000", s1000, "N(0,I)"),
        SamplerConfig(EXACT_START_LABEL, s300, "q(x_T)"),
        SamplerConfig("linear T=50", s50, "q(x_T)"),
        SamplerConfig(SOURCE_LABEL, s300, "N(0,I)"),
        SamplerConfig("linear T=50", s50, "N(0,I)"),
        # last, so that the configurations above keep their draws from the check's generator
        SamplerConfig(ZERO_SNR_LABEL, s300z, "N(0,I)", "v"),
    ]


def _start_tv(mix, c: SamplerConfig) -> float:
    """TV(law of the start, q(x_T)): 0 for the exact start and for N(0, I) at zero terminal SNR."""
    if c.start == "q(x_T)" or _zero_snr(c.schedule):
        return 0.0
    return start_mismatch_tv(mix, c.schedule.alphas_cumprod[-1])


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
    T = 300 and T = 50 from the exact q(x_T) (tests: the loop's own discretisation error),
    T = 300 rescaled to zero terminal SNR (``ScheduleConfig(zero_snr=True)``) with v-prediction
    from N(0, I), which is q(x_T) exactly there (test, TV = 0: the source's start mismatch removed),
    and T = 300 (the source) and T = 50 from N(0, I) (diagnostics).  Every configuration but the
    zero-SNR one uses eps-prediction.  With a user schedule: that schedule from q(x_T) and from
    N(0, I), roles by the same rules (no zero-SNR configuration is added); a zero-SNR user schedule
    runs once, with v-prediction from N(0, I) = q(x_T).
    """
    import torch

    from ddpm_check.diffusion import GaussianDiffusion
    from ddpm_check.mixture import ExactEpsPredictor

    mix = sampler_mixture()
    configs = _sampler_configs(ctx.user_schedule)
    n = ctx.samples
    dirs = SAMPLER_DIRECTIONS
    # ---- before sampling: alpha, DKWM threshold, start mismatch -> role of each configuration
    tv = {c.group: _start_tv(mix, c) for c in configs}
    fine = {c.group: _fine_steps(c.schedule) for c in configs}

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
        key = c.group
        sched = c.schedule
        acp = sched.alphas_cumprod
        if ctx.sim == "predictor_alphas":
            model = ExactEpsPredictor(mix, sched.alphas, c.prediction)
        else:
            model = mix.predictor(acp, c.prediction)
        if ctx.sim == "v_wrong_sign" and c.prediction == "v":
            # the code's x0_hat = sqrt(abar) x_t - sqrt(1 - abar) v read with v's sign flipped
            model = (lambda m: lambda x_t, t: -m(x_t, t))(model)
        diffusion = GaussianDiffusion(ctx.code_schedule(sched), dtype=torch.float64, prediction=c.prediction)
        x_T = mix.noised(float(acp[-1])).sample(n, g) if c.start == "q(x_T)" else None
        with np.errstate(all="ignore"):
            x = diffusion.p_sample_loop(model, (n, mix.dim), generator=g, x_T=x_T).numpy()
        x = np.where(np.isnan(x), np.inf, x)  # a NaN sample is as wrong as a sample at infinity
        role = roles[key]
        # a test allows for the known start mismatch; a diagnostic asks "does it differ from the data?"
        thr = eps + tv[key] if role == ROLE_TEST else eps
        if c.start == "q(x_T)":
            note = "start x_T ~ q(x_T) (exact)"
        elif _zero_snr(sched):
            note = "start x_T ~ N(0,I) = q(x_T) (zero terminal SNR, alpha_bar_T = 0): TV 0"
        else:
            note = f"start x_T ~ {c.start}; TV(q(x_T), N(0,I)) = {tv[key]:.4f}"
        if c.prediction != "eps":
            note += f"; {c.prediction}-prediction, the exact E[{c.prediction}|x_t]"
        if not fine[key]:
            note += f"; coarse steps (beta_t > {FINE_BETA} while alpha_bar_t >= {FINE_ALPHA_BAR}): diagnostic"
        for u, name in zip(dirs, ("e1", "e2", "(e1+e2)/sqrt2", "(e1-e2)/sqrt2")):
            with np.errstate(invalid="ignore"):
                proj = x @ u
            proj = np.where(np.isnan(proj), np.inf, proj)
            out = stats.ks_test(proj, lambda v, u=u: mix.projection_cdf(u, v), alpha)
            ctx.add("law of u.x_0 (KS)", f"{key}, u={name}", "p_sample_loop", out,
                    role=role, note=note, threshold=thr, group=key)
    ctx.notes.append(
        "sampler data: 0.6 N((3.5, 3.5), 0.25 I) + 0.4 N((-2, 2), 0.25 I); the exact predictor E[eps|x_t] "
        "(E[v|x_t] on a zero-SNR schedule); "
        f"KS threshold eps_DKWM = {eps:.4f} (+ the start mismatch TV for a tested x_T ~ N(0,I))")
    ctx.notes.append("start mismatch TV(q(x_T), N(0,I)): " + "; ".join(
        f"{c.label}: {tv[c.group]:.4f} ({roles[c.group]})" for c in configs if c.start == "N(0,I)"))


