"""The score check: its closed-form reference, its probes, what its statistical rows reject, and
its behaviour on other schedules (docs/TESTING.md, section 2)."""

import math

import numpy as np
import pytest
from scipy import stats as st
from scipy.special import logsumexp

from ddpm_check import montecarlo as mc
from ddpm_check.errors import DDPMCheckError
from ddpm_check.montecarlo.score import MIN_ALPHA_BAR, mixture_posterior, score_mixture
from ddpm_check.schedules import Schedule, ScheduleConfig

#: points x_t: near the components, between them, and far out in the tails
POINTS = np.array([[0.0, 0.0], [1.9, 1.1], [-1.4, 2.4], [0.3, -1.5], [0.2, 1.8], [7.0, -6.0], [-9.0, 12.0]])
ALPHA_BARS = (0.9999, 0.9, 0.5, 0.05, 1e-6)


def _alphas_cumprod(kind, T):
    return Schedule.from_config(ScheduleConfig(kind, T=T)).alphas_cumprod


def _log_density(mix, x, ab):
    """log q(x_t) typed from eq. 4: sum_k w_k N(x; sqrt(ab) m_k, (ab s_k^2 + 1 - ab) I), with scipy."""
    terms = [math.log(w) + st.multivariate_normal(math.sqrt(ab) * m, (ab * s * s + 1 - ab) * np.eye(2)).logpdf(x)
             for w, m, s in zip(mix.weights, mix.means, mix.stds)]
    return logsumexp(np.stack(terms), axis=0)


@pytest.mark.parametrize("ab", ALPHA_BARS)
def test_mixture_score_is_the_gradient_of_the_log_density(ab):
    """Central differences of scipy's log density (error O(h^2) ~ 1e-9 of the curvature scale)."""
    mix = score_mixture()
    score = mixture_posterior(mix, POINTS, ab).score
    h = 1e-5
    for d in range(2):
        e = np.zeros(2)
        e[d] = h
        fd = (_log_density(mix, POINTS + e, ab) - _log_density(mix, POINTS - e, ab)) / (2 * h)
        np.testing.assert_allclose(score[:, d], fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ab", (0.9, 0.5, 0.05))
def test_mixture_posterior_mean_and_variance_by_quadrature(ab):
    """E[x_0 | x_t] and Var[x_0 | x_t] against sums over a fine grid of x_0 (Bayes' rule with the
    kernel of eq. 4 and the data density): the Riemann sum of a smooth, fast-decaying integrand."""
    mix = score_mixture()
    g = np.linspace(-10.0, 10.0, 1001)
    X, Y = np.meshgrid(g, g, indexing="ij")
    x0 = np.stack([X.ravel(), Y.ravel()], 1)
    log_data = logsumexp(np.stack([math.log(w) + st.multivariate_normal(m, s * s * np.eye(2)).logpdf(x0)
                                   for w, m, s in zip(mix.weights, mix.means, mix.stds)]), axis=0)
    post = mixture_posterior(mix, POINTS[:5], ab)
    for j, xt in enumerate(POINTS[:5]):
        log_kernel = -((xt - math.sqrt(ab) * x0) ** 2).sum(1) / (2 * (1 - ab))
        lw = log_data + log_kernel
        w = np.exp(lw - lw.max())
        w /= w.sum()
        mean = w @ x0
        var = w @ (x0 - mean) ** 2
        np.testing.assert_allclose(post.x0_mean[j], mean, rtol=0, atol=1e-9)
        np.testing.assert_allclose(post.x0_var[j], var, rtol=1e-8, atol=0)


def test_score_probes_where_bugs_show(checked):
    res = checked("score")
    wheres = {(r.quantity.split(")")[0], r.where.split()[0]) for r in res.tests if r.kind == "mean"}
    for t in (1, 10, 143, 300):  # alpha_bar_143 ~ 0.5 for the source's schedule; t = T
        assert ("E[(x_0 - tweedie_mean", f"t={t}") in wheres
        assert ("E[(eps - eps_from_score", f"t={t}") in wheres
    exact = [r for r in res.tests if r.kind == "exact"]
    assert len(exact) == 4 and all(r.where.startswith("t=1..300") for r in exact)


@pytest.mark.parametrize("variant", ["tweedie_without_sqrt_alpha_bar", "tweedie_alpha_bar_for_one_minus",
                                     "eps_from_score_without_sqrt", "score_wrong_sign"])
def test_the_simulation_alone_rejects_a_wrong_tweedie_or_eps_formula(variant, checked):
    """Tweedie 'by simulation' is a test in its own right: the statistical rows, not only the
    exact ones, reject these formulas by a wide margin."""
    stat = [r for r in checked("score", variant).tests if r.kind == "mean"]
    assert max(r.margin for r in stat) > 3.0


def test_a_code_only_bug_is_caught_by_the_exact_rows(checked):
    """The mixture's E[eps | x_t] told alpha_t for alpha_bar_t: only the exact rows read that code."""
    res = checked("score", "predictor_alpha_for_alpha_bar")
    assert res.failures and {r.kind for r in res.failures} == {"exact"}


def test_score_on_a_user_schedule():
    res = mc.run_check("score", samples=20_000, schedule=ScheduleConfig("cosine", T=100))
    assert res.passed, [(r.quantity, r.where, r.statistic) for r in res.failures]
    half = int(np.argmin(np.abs(_alphas_cumprod("cosine", 100) - 0.5))) + 1
    steps = {r.where.split()[0] for r in res.tests if r.kind == "mean"}
    assert {f"t={half}", "t=100"} <= steps
    assert res.schedule["kind"] == "cosine" and res.schedule["T"] == 100


def test_score_with_one_step():
    res = mc.run_check("score", samples=20_000, schedule=ScheduleConfig("linear", T=1))
    assert res.passed
    assert {r.where.split()[0] for r in res.tests if r.kind == "mean"} == {"t=1"}


def test_tiny_alpha_bar_moves_the_last_probe_and_says_so():
    """alpha_bar_T = 0.4**50 ~ 1e-20: Tweedie's 1/sqrt(alpha_bar_t) would meet rounding; the
    statistical rows probe the last t with alpha_bar_t >= MIN_ALPHA_BAR, the exact rows every t."""
    betas = (0.01,) * 10 + (0.6,) * 50
    res = mc.run_check("score", samples=20_000, schedule=ScheduleConfig("custom", T=60, betas=betas))
    assert res.passed
    ab = np.cumprod(1 - np.array(betas))
    last = int(np.flatnonzero(ab >= MIN_ALPHA_BAR)[-1]) + 1
    steps = {r.where.split()[0] for r in res.tests if r.kind == "mean"}
    assert f"t={last}" in steps and "t=60" not in steps
    assert any("instead of T" in note for note in res.notes)
    assert all(r.where.startswith("t=1..60") for r in res.tests if r.kind == "exact")


def test_too_few_samples_names_the_smallest_that_would_do():
    with pytest.raises(DDPMCheckError, match=r"--samples 1000 is too small.*use --samples >= \d+"):
        mc.run_check("score", samples=1000)
