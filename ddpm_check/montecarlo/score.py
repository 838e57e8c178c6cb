"""Check ``score``: the score is -E[eps | x_t]/sqrt(1 - alpha_bar_t), and Tweedie's formula
E[x_0 | x_t] = (x_t + (1 - alpha_bar_t) score)/sqrt(alpha_bar_t)   (Efron 2011; Ho et al. 2020, Sec. 3.2).

Data: the 2-D Gaussian mixture of :func:`score_mixture`, x_0 ~ sum_k w_k N(m_k, s_k^2 I), with
components of different spreads, so that the score is not linear in x_t.  Forward marginal (Ho et
al. eq. 4): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eps ~ N(0, I), hence

    q(x_t) = sum_k w_k N(x_t; sqrt(alpha_bar_t) m_k, v_k I),   v_k = alpha_bar_t s_k^2 + 1 - alpha_bar_t,

and, with the responsibilities r_k(x_t) proportional to w_k N(x_t; sqrt(alpha_bar_t) m_k, v_k I),
the exact **reference** (computed here from the mixture's parameters, never from the formulas
under test):

    grad log q(x_t) = -sum_k r_k (x_t - sqrt(alpha_bar_t) m_k)/v_k,
    E[x_0 | x_t]    =  sum_k r_k ((1 - alpha_bar_t) m_k + sqrt(alpha_bar_t) s_k^2 x_t)/v_k,
    Var[x_0 | x_t]  =  sum_k r_k ((1 - alpha_bar_t) s_k^2/v_k + (mu_k - E[x_0 | x_t])^2)  (per coordinate).

What is tested (derivation ``score``: ``score_from_eps``, ``eps_from_score``, ``tweedie_mean``):

- exact rows (float64 rounding only) at every t and at points x_t drawn from q(x_t), some of them
  far out in the tails: ``score_from_eps`` at eps_theta = the mixture code's exact E[eps | x_t]
  (``GaussianMixture.eps_posterior_mean``) equals the reference score; ``eps_from_score`` of the
  reference score equals that E[eps | x_t]; the round trip eps_from_score(score_from_eps(e)) = e;
  ``tweedie_mean`` of the reference score equals the reference E[x_0 | x_t];
- statistical rows, by simulation without conditioning on a point, at the probe steps (t = 1,
  10, the t with alpha_bar_t ~ 1/2, T): draw (x_0, eps), form x_t; Tweedie says the residual
  R = x_0 - tweedie_mean(x_t, score(x_t)) has E[R | x_t] = 0, so E[R h(x_t)] = 0 for every
  bounded h; likewise E[eps | x_t] = eps_from_score(score) makes eps - eps_from_score(score(x_t))
  orthogonal to every h.  Tested per coordinate for h = 1, tanh(x_t,1/sd_1), tanh(x_t,2/sd_2)
  (sd_d: the sd of x_t,d, so h is a bounded stand-in for x_t,d on its own scale), each a z-test
  whose standard error is exact given the x_t drawn (see :func:`run`).  Probes with alpha_bar_t <
  ``MIN_ALPHA_BAR`` are left to the exact rows (there float64 rounding would swamp the signal).

The exact rows catch a wrong ``score_from_eps`` and code bugs in the mixture's E[eps | x_t] far
below sampling noise; the statistical rows hold ``tweedie_mean`` and ``eps_from_score`` (and the
reference itself) to the simulated joint law of (x_0, eps, x_t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ddpm_check import stats
from ddpm_check.montecarlo.context import CheckContext, default_schedule, probe_steps
from ddpm_check.montecarlo.variants import ResultsEdit, Variant


def _edit(keys: tuple[str, ...], fn) -> ResultsEdit:
    """A results edit of derivation ``score``: ``fn(expr, symbols)`` applied to ``keys``."""

    def edit(name: str, res: dict) -> dict:
        if name != "score":
            return res
        from derivations import symbols as S

        return {k: (fn(e, S) if k in keys else e) for k, e in res.items()}

    return edit


def _drop_sqrt_of_one_minus_alpha_bar(e, S):
    """(1 - alpha_bar_t)^(k/2) -> (1 - alpha_bar_t)^k: the variance where the sd belongs."""
    base = 1 - S.alpha_bar_t
    return e.replace(lambda x: x.is_Pow and x.base == base and x.exp.is_Rational and x.exp.q == 2,
                     lambda x: base ** (2 * x.exp))


def _times_sqrt_alpha_bar(e, S):
    """``e`` * sqrt(alpha_bar_t): cancels the 1/sqrt(alpha_bar_t) of Tweedie's formula."""
    import sympy as sp

    return sp.expand(e * sp.sqrt(S.alpha_bar_t))


VARIANTS = (
    Variant("score_one_minus_alpha_bar_for_sqrt",
            "score = -E[eps | x_t]/(1 - alpha_bar_t): the variance where the sd sqrt(1 - alpha_bar_t) belongs",
            results=_edit(("score_from_eps",), _drop_sqrt_of_one_minus_alpha_bar)),
    Variant("score_without_scale",
            "score = -E[eps | x_t]: the 1/sqrt(1 - alpha_bar_t) missing",
            results=_edit(("score_from_eps",), lambda e, S: -S.eps_theta)),
    Variant("score_wrong_sign",
            "score = +E[eps | x_t]/sqrt(1 - alpha_bar_t) and eps = +sqrt(1 - alpha_bar_t) score (sign flipped in both)",
            results=_edit(("score_from_eps", "eps_from_score"), lambda e, S: -e)),
    Variant("eps_from_score_without_sqrt",
            "eps_theta = -(1 - alpha_bar_t) score: the square root of 1 - alpha_bar_t dropped",
            results=_edit(("eps_from_score",), _drop_sqrt_of_one_minus_alpha_bar)),
    Variant("tweedie_without_sqrt_alpha_bar",
            "E[x_0 | x_t] = x_t + (1 - alpha_bar_t) score: the 1/sqrt(alpha_bar_t) missing",
            results=_edit(("tweedie_mean",), _times_sqrt_alpha_bar)),
    Variant("tweedie_alpha_bar_for_one_minus",
            "E[x_0 | x_t] = (x_t + alpha_bar_t score)/sqrt(alpha_bar_t): alpha_bar_t where 1 - alpha_bar_t belongs",
            results=_edit(("tweedie_mean",), lambda e, S: e.subs(1 - S.alpha_bar_t, S.alpha_bar_t))),
    Variant("alpha_bar_off_by_one",
            "the formulas evaluated with alpha_bar_{t-1} where alpha_bar_t belongs (index off by one)",
            shift_inputs=True),
    Variant("predictor_alpha_for_alpha_bar",
            "code bug only: the mixture's E[eps | x_t] is told alpha_t where alpha_bar_t belongs",
            sim="predictor_alphas"),
)


def score_mixture():
    """The check's data (D = 2): three components of different spreads and a mean away from 0,
    so that the score is not linear in x_t and a missing 1/sqrt(alpha_bar_t) moves E[x_0 | x_t]."""
    from ddpm_check.mixture import GaussianMixture

    return GaussianMixture([0.5, 0.3, 0.2], [[2.0, 1.0], [-1.5, 2.5], [0.5, -2.0]], [0.3, 0.8, 0.5])


#: exact rows: worst error allowed, in units of roundoff of each comparison's scale (see run); the
#: worst seen with correct code is 1.6 (linear and cosine schedules, T = 1 .. 1000)
SCORE_BUDGET_ULPS = 16.0
#: the statistical rows need alpha_bar_t >= this: below it the signal of the eps rows (sd ~
#: sqrt(alpha_bar_t)) and the 1/sqrt(alpha_bar_t) of Tweedie's formula meet float64 rounding
MIN_ALPHA_BAR = 1e-16
#: the exact rows' points: at most this many x_t over all t (one in FAR_EVERY of them scaled by FAR)
EXACT_POINTS = 30_000
FAR_EVERY, FAR = 8, 4.0
#: the test functions h(x_t): 1 and tanh(x_t,d / sd(x_t,d)) for d = 1, 2 (|h| <= 1)
H_NAMES = ("1", "tanh(x1/sd1)", "tanh(x2/sd2)")


@dataclass(frozen=True)
class MixturePosterior:
    """The exact law of x_0 given x_t for the mixture data (arrays over N points x_t, D coordinates).

    ``score`` [N, D] is grad log q(x_t); ``x0_mean`` and ``x0_var`` [N, D] are E[x_0 | x_t] and
    Var[x_0 | x_t] per coordinate; ``r`` and ``v`` [N, K] the responsibilities and variances v_k;
    ``logit_scale`` [N, K] bounds the magnitude of the terms of log r_k (for rounding scales).
    """

    score: np.ndarray
    x0_mean: np.ndarray
    x0_var: np.ndarray
    r: np.ndarray
    v: np.ndarray
    logit_scale: np.ndarray


def mixture_posterior(mix, x_t: np.ndarray, alpha_bar) -> MixturePosterior:
    """The reference: score, E[x_0 | x_t] and Var[x_0 | x_t] of the mixture ``mix`` in closed form.

    x_t ~ sum_k w_k N(sqrt(alpha_bar) m_k, v_k I), v_k = alpha_bar s_k^2 + 1 - alpha_bar (eq. 4);
    r_k proportional to w_k v_k^(-D/2) exp(-|x_t - sqrt(alpha_bar) m_k|^2 / (2 v_k)); given x_t and
    k, x_0 ~ N(mu_k, (1 - alpha_bar) s_k^2/v_k I) with mu_k = ((1 - alpha_bar) m_k + sqrt(alpha_bar)
    s_k^2 x_t)/v_k (Bayes' rule for two Gaussians).  ``x_t`` is [N, D]; ``alpha_bar`` a scalar or [N].
    Independent of ``GaussianMixture.eps_posterior_mean`` (direct distances, numpy, own softmax).
    """
    x = np.asarray(x_t, dtype=np.float64)
    n, dim = x.shape
    ab = np.broadcast_to(np.asarray(alpha_bar, dtype=np.float64).reshape(-1), (n,))[:, None]  # [N, 1]
    m, s2 = mix.means, mix.stds**2  # [K, D], [K]
    with np.errstate(divide="ignore"):
        logw = np.log(mix.weights)
    v = ab * s2[None, :] + (1.0 - ab)  # [N, K]
    diff = x[:, None, :] - np.sqrt(ab)[:, :, None] * m[None, :, :]  # [N, K, D]
    d2 = np.einsum("nkd,nkd->nk", diff, diff)
    logits = logw[None, :] - 0.5 * dim * np.log(v) - 0.5 * d2 / v
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    r = e / e.sum(axis=1, keepdims=True)  # [N, K]
    score = -np.einsum("nk,nkd->nd", r / v, diff)
    # mu_k = E[x_0 | x_t, k]: [N, K, D]
    mu = ((1.0 - ab)[:, :, None] * m[None, :, :]
          + (np.sqrt(ab) * s2[None, :])[:, :, None] * x[:, None, :]) / v[:, :, None]
    mean = np.einsum("nk,nkd->nd", r, mu)
    within = (1.0 - ab) * s2[None, :] / v  # [N, K]
    var = np.einsum("nk,nkd->nd", r, within[:, :, None] + (mu - mean[:, None, :]) ** 2)
    # the magnitude of log r_k's terms, with |x|^2 - 2 sqrt(ab) x.m + ab |m|^2 written out (as the
    # code does): the absolute rounding error of a logit is a few u times this
    xx = np.einsum("nd,nd->n", x, x)[:, None]
    xm = np.abs(x @ m.T)
    mm = np.einsum("kd,kd->k", m, m)[None, :]
    scale = (np.abs(np.where(np.isfinite(logw), logw, 0.0))[None, :] + 0.5 * dim * np.abs(np.log(v))
             + 0.5 * (xx + 2.0 * np.sqrt(ab) * xm + ab * mm) / v)
    return MixturePosterior(score, mean, var, r, v, scale)


def mixture_score(mix, x_t: np.ndarray, alpha_bar) -> np.ndarray:
    """grad log q(x_t) of the noised mixture, [N, D] (see :func:`mixture_posterior`)."""
    return mixture_posterior(mix, x_t, alpha_bar).score


def _variance_per_coordinate(mix) -> np.ndarray:
    """Var x_d of the mixture, per coordinate: sum_k w_k (s_k^2 + m_kd^2) - (sum_k w_k m_kd)^2."""
    w, m, s2 = mix.weights, mix.means, mix.stds**2
    return w @ (s2[:, None] + m**2) - (w @ m) ** 2


def _probes(sched) -> tuple[list[int], list[str]]:
    """The probe steps (alpha_bar_t >= MIN_ALPHA_BAR; t = T moved to the last such t) and notes."""
    ab = sched.alphas_cumprod
    ok = np.flatnonzero(ab >= MIN_ALPHA_BAR) + 1
    steps = [t for t in probe_steps(sched) if ab[t - 1] >= MIN_ALPHA_BAR]
    notes = []
    if ab[-1] < MIN_ALPHA_BAR:
        if ok.size:
            last = int(ok[-1])
            if last not in steps:
                steps.append(last)
            where = f"probe t = {last} instead of T"
        else:
            where = "are left out (no t qualifies)"
        notes.append(f"alpha_bar_T = {ab[-1]:.3g} < {MIN_ALPHA_BAR:g}: the statistical rows {where}; "
                     f"the exact rows cover every t")
    return sorted(steps), notes


def run(ctx: CheckContext) -> None:
    """Exact rows at every t; z-tests of E[(x_0 - tweedie_mean) h] = 0 and E[(eps - eps_from_score) h] = 0.

    **Exact rows.**  Each comparison a = b is scored as max |a - b| / (u * scale), u = 2^-53, per
    coordinate.  Rounding enters through the responsibilities (an absolute error of a few u times
    the logit's terms, ``logit_scale`` L_k, in log r_k: the code expands |x - sqrt(ab) m_k|^2,
    which cancels) and through the sums: for the score, scale = sum_k r_k (|x_d| + sqrt(ab)
    |m_kd|)/v_k (1 + L_k + sum_j r_j L_j); the eps form multiplies it by sqrt(1 - ab); Tweedie's
    mean adds (|x_d| + (1 - ab) |score_d|)/sqrt(ab) (its own terms; 1/sqrt(ab) is its condition)
    and the reference mean's terms.  ``SCORE_BUDGET_ULPS`` is a few times the worst value seen
    with correct code; a wrong formula is off by orders of magnitude.

    **Statistical rows.**  One sample of n pairs (x_0, eps) gives x_t at every probe.  For a
    residual R (x_0 - tweedie_mean, or eps - eps_from_score, with the reference score) and a test
    function h, the estimate is the mean of R_d h(x_t); given the x_t drawn, its terms are
    independent with mean 0 and variance h^2 Var[R_d | x_t] under the null (Var[x_0,d | x_t] from
    the reference; for eps, alpha_bar_t/(1 - alpha_bar_t) times it), so
    se = sqrt(sum h^2 Var[R_d | x_t])/n is exact given the x_t (as for a regression given its
    x's), and the z-test is two-sided at level alpha.  Power before sampling: |h| <= 1, so
    E[h^2 Var[R_d | x_t]] <= Var x_0,d for Tweedie (total variance) and <= Var eps_d = 1 for eps:
    the detectable error delta at those bounds must be at most 0.1 of them.  With correct formulas
    the two residuals are proportional given x_t (eps - E[eps | x_t] = -sqrt(alpha_bar_t/(1 -
    alpha_bar_t)) (x_0 - E[x_0 | x_t]), eq. 4), so their z-values coincide; a wrong
    ``tweedie_mean`` or ``eps_from_score`` moves only its own rows.
    """
    import torch

    mix = score_mixture()
    dim = mix.dim
    sched = default_schedule(ctx.user_schedule)
    acp = sched.alphas_cumprod
    f = ctx.formulas("score")
    n = ctx.samples
    steps, notes = _probes(sched)
    ctx.notes.extend(notes)

    alpha = ctx.set_tests(2 * len(steps) * dim * len(H_NAMES))
    var_x0 = _variance_per_coordinate(mix)
    ctx.require_mean_power(float(np.sqrt(var_x0.max())), n, "E[(x_0 - tweedie_mean) h(x_t)] (sd <= sd x_0,d)")
    ctx.require_mean_power(1.0, n, "E[(eps - eps_from_score) h(x_t)] (sd <= 1)")

    def code_eps(x: np.ndarray, i: np.ndarray) -> np.ndarray:
        """The mixture code's exact E[eps | x_t] (told alpha_t under the code-bug variant)."""
        arr = sched.alphas if ctx.sim == "predictor_alphas" else acp
        return mix.eps_posterior_mean(torch.as_tensor(x), torch.as_tensor(arr[i])).numpy()

    # ---- simulate: exact-row points over every t, then one sample of (x_0, eps) for the probes
    g = ctx.generator()
    m = max(min(n, EXACT_POINTS), sched.T)
    i_ex = torch.randint(0, sched.T, (m,), generator=g).numpy()
    i_ex[: sched.T] = np.arange(sched.T)  # every step at least once
    x0_ex = mix.sample(m, g).numpy()
    eps_ex = torch.randn(m, dim, generator=g, dtype=torch.float64).numpy()
    x0 = mix.sample(n, g).numpy()
    eps = torch.randn(n, dim, generator=g, dtype=torch.float64).numpy()

    ab_ex = acp[i_ex][:, None]
    x_ex = np.sqrt(ab_ex) * x0_ex + np.sqrt(1.0 - ab_ex) * eps_ex  # eq. 4
    x_ex[::FAR_EVERY] *= FAR  # far out in the tails, where the responsibilities are extreme

    # ---- exact rows
    ref = mixture_posterior(mix, x_ex, acp[i_ex])
    kw = {k: np.asarray(a)[:, None] for k, a in ctx.inputs(sched, i_ex).items()}
    e_code = code_eps(x_ex, i_ex)
    r, v, lsc = ref.r, ref.v, ref.logit_scale
    lbar = (r * lsc).sum(1, keepdims=True)
    sab = np.sqrt(ab_ex)
    terms = (np.abs(x_ex)[:, None, :] + sab[:, :, None] * np.abs(mix.means)[None]) / v[:, :, None]
    scale_s = np.einsum("nk,nkd->nd", r * (1.0 + lsc + lbar), terms)
    where = f"t=1..{sched.T}, {m} x_t"
    s_from_e = np.asarray(f["score_from_eps"](eps_theta=e_code, **kw), dtype=np.float64)
    ctx.add("score_from_eps(E[eps|x_t]) = mixture score", where, "derivation + mixture code vs closed form",
            stats.exact_test(s_from_e, ref.score, scale_s, SCORE_BUDGET_ULPS))
    e_from_s = np.asarray(f["eps_from_score"](score_t=ref.score, **kw), dtype=np.float64)
    ctx.add("eps_from_score(mixture score) = E[eps|x_t]", where, "derivation vs mixture code",
            stats.exact_test(e_from_s, e_code, np.sqrt(1.0 - ab_ex) * scale_s, SCORE_BUDGET_ULPS))
    trip = np.asarray(f["eps_from_score"](score_t=s_from_e, **kw), dtype=np.float64)
    ctx.add("eps_from_score(score_from_eps(e)) = e", where, "derivation vs derivation",
            stats.exact_test(trip, e_code, np.abs(e_code), SCORE_BUDGET_ULPS))
    tw = np.asarray(f["tweedie_mean"](x_t=x_ex, score_t=ref.score, **kw), dtype=np.float64)
    s2 = mix.stds**2
    mu_terms = (((1.0 - ab_ex)[:, :, None] * np.abs(mix.means)[None] + (sab * s2[None, :])[:, :, None]
                 * np.abs(x_ex)[:, None, :]) / v[:, :, None])
    scale_tw = ((np.abs(x_ex) + (1.0 - ab_ex) * (np.abs(ref.score) + scale_s)) / sab
                + np.einsum("nk,nkd->nd", r * (1.0 + lsc + lbar), mu_terms))
    ctx.add("tweedie_mean(x_t, mixture score) = E[x_0|x_t]", where, "derivation vs closed form",
            stats.exact_test(tw, ref.x0_mean, scale_tw, SCORE_BUDGET_ULPS))

    # ---- statistical rows at the probe steps
    for t in steps:
        i = t - 1
        ab = float(acp[i])
        x_t = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * eps  # eq. 4
        post = mixture_posterior(mix, x_t, ab)
        kw_t = ctx.inputs(sched, i)
        sd_t = np.sqrt(_variance_per_coordinate(mix.noised(ab)))
        hs = [np.ones(n)] + [np.tanh(x_t[:, d] / sd_t[d]) for d in range(dim)]
        residuals = (
            ("E[(x_0 - tweedie_mean) h] = 0",
             x0 - np.asarray(f["tweedie_mean"](x_t=x_t, score_t=post.score, **kw_t), dtype=np.float64),
             post.x0_var),
            ("E[(eps - eps_from_score) h] = 0",
             eps - np.asarray(f["eps_from_score"](score_t=post.score, **kw_t), dtype=np.float64),
             ab / (1.0 - ab) * post.x0_var),
        )
        for quantity, res, cond_var in residuals:
            for d in range(dim):
                for hname, h in zip(H_NAMES, hs):
                    with np.errstate(all="ignore"):
                        est = float(np.mean(res[:, d] * h))
                    se = math.sqrt(float(np.sum(h * h * cond_var[:, d]))) / n
                    ctx.add(quantity, f"t={t} d={d + 1} h={hname}", "derivation, simulated (x_0, eps)",
                            stats.z_test(est if math.isfinite(est) else math.inf, 0.0, se, alpha, n, kind="mean"),
                            group=quantity)
    ctx.notes.append(
        "score data: 0.5 N((2, 1), 0.09 I) + 0.3 N((-1.5, 2.5), 0.64 I) + 0.2 N((0.5, -2), 0.25 I); reference: "
        "its exact score, E[x_0|x_t], Var[x_0|x_t] in closed form; z-test se exact given the x_t drawn")
