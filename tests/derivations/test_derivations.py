"""The symbolic derivations: every step verifies, wrong steps fail, results match numpy.

Expected formulas here are typed from Ho et al. 2020 / the issue text, never copied from
derivations/; numerical comparisons use an independent numpy computation of the schedule.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sympy as sp
from sympy import sqrt

import derivations
from ddpm_check.errors import DDPMCheckError
from derivations import symbols as S
from derivations.step import (
    EQ_IN_LAW,
    Derivation,
    DerivationError,
    Step,
    expectation,
    is_zero,
    same_law,
    variance,
    verify,
    verify_step,
)

a, ab, abm1, b, bt = S.alpha_t, S.alpha_bar_t, S.alpha_bar_tm1, S.beta_t, S.beta_tilde_t
RECURSION = {ab: a * abm1, b: 1 - a}

ALL_STEPS = [
    (name, i, step.name) for name in derivations.NAMES for i, step in enumerate(derivations.build(name).steps)
]


# --------------------------------------------------------------------------------------------
# every step of every derivation verifies
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,index,step_name", ALL_STEPS, ids=[f"{n}:{s}" for n, _, s in ALL_STEPS])
def test_every_step_verifies(name, index, step_name):
    step = derivations.build(name).steps[index]
    assert step.name == step_name
    assert verify_step(step) is True


@pytest.mark.parametrize("name", derivations.NAMES)
def test_derive_returns_verified_and_cached(name):
    d = derivations.get(name)
    assert isinstance(d, Derivation)
    assert d.verified and d.name == name
    assert derivations.get(name) is d  # cached: repeated calls are cheap
    assert 3 <= len(d.steps) <= 30  # it shows its work, and stays readable in a terminal
    for step in d.steps:
        assert step.why and isinstance(step.lhs, sp.Basic) and isinstance(step.rhs, sp.Basic)
    assert any(step.ref for step in d.steps)  # cites the paper somewhere


def test_build_is_unverified_until_verify():
    d = derivations.build("posterior")
    assert not d.verified
    assert d.verify().verified


def test_unknown_name_is_a_user_error():
    with pytest.raises(DDPMCheckError, match="valid names: " + ", ".join(derivations.NAMES)):
        derivations.get("posteriors")
    with pytest.raises(DDPMCheckError, match="'nope'"):
        derivations.build("nope")


# --------------------------------------------------------------------------------------------
# the results are the formulas of the paper
# --------------------------------------------------------------------------------------------
EXPECTED = {
    "marginal": {
        "x_t_mean_coef": sqrt(ab),
        "x_t_variance": 1 - ab,
        "alpha_bar_t": a * abm1,
    },
    "posterior": {
        "posterior_mean_coef1": sqrt(abm1) * b / (1 - ab),
        "posterior_mean_coef2": sqrt(a) * (1 - abm1) / (1 - ab),
        "posterior_variance": (1 - abm1) / (1 - ab) * b,
        "mu_tilde_t": sqrt(a) * (1 - abm1) / (1 - ab) * S.x_t + sqrt(abm1) * b / (1 - ab) * S.x_0,
    },
    "mean-eps": {
        "mu_tilde_t_eps": (S.x_t - b / sqrt(1 - ab) * S.eps) / sqrt(a),
        "x_0_from_eps": (S.x_t - sqrt(1 - ab) * S.eps) / sqrt(ab),
        "posterior_variance": (1 - abm1) / (1 - ab) * b,
    },
    "elbo": {
        "kl_gaussian": sp.log(S.sigma_2 / S.sigma_1)
        + (S.sigma_1**2 + (S.mu_1 - S.mu_2) ** 2) / (2 * S.sigma_2**2)
        - sp.Rational(1, 2),
        "eps_weight": b**2 / (2 * S.sigma_t**2 * a * (1 - ab)),
        "eps_weight_beta_tilde": b / (2 * a * (1 - abm1)),
        "x0_weight_snr": (abm1 / (1 - abm1) - ab / (1 - ab)) / 2,
        "snr": ab / (1 - ab),
        "kl_const": sp.log(S.sigma_t / sqrt(bt)) + bt / (2 * S.sigma_t**2) - sp.Rational(1, 2),
    },
    # Tweedie (Efron 2011): E[μ | y] = y + σ² d/dy log q(y) for y = μ + σ noise, here μ = √ᾱ_t x_0,
    # σ² = 1 - ᾱ_t; Gaussian data x_0 ~ N(m_0, s_0²) by the regression form of Gaussian conditioning,
    # E[a | b] = E[a] + Cov(a, b)/Var(b) (b - E[b]), Var[a | b] = Var(a) - Cov(a, b)²/Var(b)
    "score": {
        "tweedie_mean": (S.x_t + (1 - ab) * S.score_t) / sqrt(ab),
        "score_from_eps": -S.eps_theta / sqrt(1 - ab),
        "eps_from_score": -sqrt(1 - ab) * S.score_t,
        "gaussian_marginal_variance": ab * S.s_0**2 + (1 - ab),
        "gaussian_score": (sqrt(ab) * S.m_0 - S.x_t) / (ab * S.s_0**2 + (1 - ab)),
        "gaussian_posterior_mean": S.m_0
        + sqrt(ab) * S.s_0**2 / (ab * S.s_0**2 + (1 - ab)) * (S.x_t - sqrt(ab) * S.m_0),
        "gaussian_posterior_variance": S.s_0**2 - ab * S.s_0**4 / (ab * S.s_0**2 + (1 - ab)),
        "gaussian_eps_mean": sqrt(1 - ab) / (ab * S.s_0**2 + (1 - ab)) * (S.x_t - sqrt(ab) * S.m_0),
    },
    # Salimans & Ho 2022 with α_t = √ᾱ_t, σ_t = √(1-ᾱ_t): v = α ε - σ x, x = α z - σ v, ε = σ z + α v;
    # the weights as the issue states them in SNR = ᾱ_t/(1-ᾱ_t)
    "parametrizations": {
        "x_0_from_eps": (S.x_t - sqrt(1 - ab) * S.eps) / sqrt(ab),
        "eps_from_x_0": (S.x_t - sqrt(ab) * S.x_0) / sqrt(1 - ab),
        "v_from_eps_x_0": sqrt(ab) * S.eps - sqrt(1 - ab) * S.x_0,
        "x_0_from_v": sqrt(ab) * S.x_t - sqrt(1 - ab) * S.v,
        "eps_from_v": sqrt(1 - ab) * S.x_t + sqrt(ab) * S.v,
        "v_from_eps": (S.eps - sqrt(1 - ab) * S.x_t) / sqrt(ab),
        "v_from_x_0": (sqrt(ab) * S.x_t - S.x_0) / sqrt(1 - ab),
        "x0_loss_weight": 1 / (ab / (1 - ab)),
        "v_loss_weight_x0": 1 + ab / (1 - ab),
        "v_loss_weight_eps": (1 + ab / (1 - ab)) / (ab / (1 - ab)),
        "snr": ab / (1 - ab),
    },
    # Lin et al. 2024, Algorithm 1: alphas_bar_sqrt -= last; alphas_bar_sqrt *= first / (first - last);
    # alphas_bar = alphas_bar_sqrt ** 2; alphas = alphas_bar[t] / alphas_bar[t - 1]; betas = 1 - alphas
    "ddim": {
        # Song et al. 2021 eq. 7 (mean), eq. 12 (eps form), eq. 16 (sigma)
        "ddim_mean": sqrt(abm1) * S.x_0 + sqrt(1 - abm1 - S.sigma_t**2) * (S.x_t - sqrt(ab) * S.x_0) / sqrt(1 - ab),
        "ddim_mean_eps": sqrt(abm1) * (S.x_t - sqrt(1 - ab) * S.eps) / sqrt(ab) + sqrt(1 - abm1 - S.sigma_t**2) * S.eps,
        "sigma_eta": S.eta * sqrt((1 - abm1) / (1 - ab)) * sqrt(1 - ab / abm1),
        "sigma_eta_squared_at_1": (1 - abm1) / (1 - ab) * b,  # beta_tilde_t
    },
    "zero-snr": {
        "sqrt_alpha_bar_rescaled": (sqrt(ab) - sqrt(S.alpha_bar_T)) * sqrt(S.alpha_bar_1)
        / (sqrt(S.alpha_bar_1) - sqrt(S.alpha_bar_T)),
        "alpha_bar_rescaled": ((sqrt(ab) - sqrt(S.alpha_bar_T)) * sqrt(S.alpha_bar_1)
                               / (sqrt(S.alpha_bar_1) - sqrt(S.alpha_bar_T))) ** 2,
        "beta_rescaled": 1 - ab / abm1,
        "beta_rescaled_from_original": 1 - ((sqrt(ab) - sqrt(S.alpha_bar_T))
                                            / (sqrt(abm1) - sqrt(S.alpha_bar_T))) ** 2,
        "x_0_from_v_at_T": -S.v,
    },
}


@pytest.mark.parametrize("name", derivations.NAMES)
def test_results_are_the_papers_formulas(name):
    res = derivations.results(name)
    assert set(res) == set(EXPECTED[name])
    for key, expected in EXPECTED[name].items():
        # equal given the definitions alpha_bar_t = alpha_t alpha_bar_{t-1} and beta_t = 1 - alpha_t
        diff = sp.simplify((res[key] - expected).subs(RECURSION))
        assert diff == 0, f"{name}: {key} differs from the expected formula by {diff}"


def test_beta_tilde_equals_inverse_of_sum_of_precisions():
    """β̃_t = (α_t/β_t + 1/(1 - ᾱ_{t-1}))⁻¹ (the issue's first form), given the recursion."""
    bt_expr = derivations.results("posterior")["posterior_variance"]
    diff = (bt_expr - 1 / (a / b + 1 / (1 - abm1))).subs(RECURSION)
    assert sp.simplify(diff) == 0


# --------------------------------------------------------------------------------------------
# lambdified results against an independent numpy computation
# --------------------------------------------------------------------------------------------
def _schedule(rng, T):
    betas = np.sort(rng.uniform(1e-5, 0.05, size=T))
    if rng.random() < 0.5:
        rng.shuffle(betas)  # arbitrary (non-monotone) schedules too
    alphas = 1.0 - betas
    cum = np.cumprod(alphas)
    prev = np.concatenate([[1.0], cum[:-1]])
    return dict(alpha_t=alphas, beta_t=betas, alpha_bar_t=cum, alpha_bar_tm1=prev)


def _more_arrays(rng, kw, x_0, eps):
    """Further keyword arrays: a prediction ε_θ, a score, v = √ᾱ_t ε - √(1-ᾱ_t) x_0, Gaussian data."""
    T = x_0.shape[0]
    cum = kw["alpha_bar_t"]
    return dict(eps_theta=rng.normal(size=T), score_t=rng.normal(size=T) * 2,
                v=np.sqrt(cum) * eps - np.sqrt(1 - cum) * x_0,
                m_0=rng.normal(size=T), s_0=rng.uniform(0.2, 3.0, size=T))


def _numpy_expected(kw, x_t, x_0, eps, sigma, more=None):
    al, be, cum, prev = kw["alpha_t"], kw["beta_t"], kw["alpha_bar_t"], kw["alpha_bar_tm1"]
    c1 = np.sqrt(prev) * be / (1 - cum)  # multiplies x_0
    c2 = np.sqrt(al) * (1 - prev) / (1 - cum)  # multiplies x_t
    names = ("eps_theta", "score_t", "v", "m_0", "s_0")
    more = more if more is not None else dict.fromkeys(names, np.ones_like(x_t))
    eps_theta, score, v, m_0, s_0 = (more[k] for k in names)
    alpha, sigma_ = np.sqrt(cum), np.sqrt(1 - cum)  # Salimans & Ho's α_t and σ_t
    var_t = s_0**2 * cum + (1 - cum)  # Var(x_t) for x_0 ~ N(m_0, s_0²)
    return {
        ("marginal", "x_t_mean_coef"): np.sqrt(cum),
        ("marginal", "x_t_variance"): 1 - cum,
        ("marginal", "alpha_bar_t"): al * prev,
        ("posterior", "posterior_mean_coef1"): c1,
        ("posterior", "posterior_mean_coef2"): c2,
        ("posterior", "posterior_variance"): be * (1 - prev) / (1 - cum),
        ("posterior", "mu_tilde_t"): c1 * x_0 + c2 * x_t,
        ("mean-eps", "mu_tilde_t_eps"): (x_t - be / np.sqrt(1 - cum) * eps) / np.sqrt(al),
        ("mean-eps", "x_0_from_eps"): (x_t - np.sqrt(1 - cum) * eps) / np.sqrt(cum),
        ("mean-eps", "posterior_variance"): be * (1 - prev) / (1 - cum),
        ("elbo", "eps_weight"): be**2 / (2 * sigma**2 * al * (1 - cum)),
        ("elbo", "snr"): cum / (1 - cum),
        ("score", "tweedie_mean"): (x_t + (1 - cum) * score) / alpha,
        ("score", "score_from_eps"): -eps_theta / sigma_,
        ("score", "eps_from_score"): -sigma_ * score,
        ("score", "gaussian_marginal_variance"): var_t,
        ("score", "gaussian_score"): -(x_t - alpha * m_0) / var_t,
        ("score", "gaussian_posterior_variance"): 1 / (1 / s_0**2 + cum / (1 - cum)),  # precisions add
        # Gaussian conditioning: E[a | b] = E[a] + Cov(a, b)/Var(b) (b - E[b]), Cov(x_0, x_t) = √ᾱ_t s_0²,
        # Cov(ε, x_t) = √(1-ᾱ_t)
        ("score", "gaussian_posterior_mean"): m_0 + alpha * s_0**2 / var_t * (x_t - alpha * m_0),
        ("score", "gaussian_eps_mean"): sigma_ / var_t * (x_t - alpha * m_0),
        ("parametrizations", "x_0_from_eps"): (x_t - sigma_ * eps) / alpha,
        ("parametrizations", "eps_from_x_0"): (x_t - alpha * x_0) / sigma_,
        ("parametrizations", "v_from_eps_x_0"): alpha * eps - sigma_ * x_0,
        ("parametrizations", "x_0_from_v"): alpha * x_t - sigma_ * v,
        ("parametrizations", "eps_from_v"): sigma_ * x_t + alpha * v,
        ("parametrizations", "v_from_eps"): (eps - sigma_ * x_t) / alpha,
        ("parametrizations", "v_from_x_0"): (alpha * x_t - x_0) / sigma_,
        ("parametrizations", "x0_loss_weight"): (1 - cum) / cum,
        ("parametrizations", "v_loss_weight_x0"): 1 / (1 - cum),
        ("parametrizations", "v_loss_weight_eps"): 1 / cum,
        ("parametrizations", "snr"): cum / (1 - cum),
        ("ddim", "sigma_eta_squared_at_1"): be * (1 - prev) / (1 - cum),  # eta = 1: beta_tilde_t
        ("zero-snr", "beta_rescaled"): 1 - cum / prev,  # any schedule's β from its cumulative products
        ("zero-snr", "x_0_from_v_at_T"): -v,
    }


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_results_match_numpy(eta):
    """DDIM's step on a subsequence (every 7th step of 300) with sigma(eta), against numpy."""
    rng = np.random.default_rng(11)
    cum = np.cumprod(1 - np.linspace(1e-4, 0.02, 300))
    visits = np.arange(299, -1, -7)
    ab = cum[visits]
    prev = np.concatenate([cum[visits[1:]], [1.0]])
    x_0, eps = rng.normal(size=len(visits)), rng.normal(size=len(visits))
    x_t = np.sqrt(ab) * x_0 + np.sqrt(1 - ab) * eps
    sigma = eta * np.sqrt((1 - prev) / (1 - ab) * (1 - ab / prev))
    kw = dict(alpha_bar_t=ab, alpha_bar_tm1=prev, x_t=x_t, x_0=x_0, eps=eps, eta=eta)
    np.testing.assert_allclose(derivations.numeric("ddim", "sigma_eta")(**kw), sigma, rtol=1e-12, atol=1e-300)
    direction = np.sqrt(1 - prev - sigma**2)
    want = np.sqrt(prev) * x_0 + direction * eps  # (x_t - sqrt(ab) x_0)/sqrt(1 - ab) = eps
    np.testing.assert_allclose(derivations.numeric("ddim", "ddim_mean")(sigma_t=sigma, **kw), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(derivations.numeric("ddim", "ddim_mean_eps")(sigma_t=sigma, **kw), want, rtol=1e-9, atol=1e-11)
    assert sigma[-1] == 0.0  # after the last visit alpha_bar_prev = 1: no noise


@pytest.mark.parametrize("name", derivations.NAMES)
def test_every_derivation_has_results_compared_with_numpy(name):
    kw = _schedule(np.random.default_rng(0), 3)
    ones = np.ones(3)
    assert any(n == name for n, _ in _numpy_expected(kw, ones, ones, ones, ones)), \
        f"add {name}'s results, computed with numpy, to _numpy_expected"


@pytest.mark.parametrize("seed,T", [(0, 1), (1, 7), (2, 300), (3, 1000)])
def test_lambdified_results_match_numpy(seed, T):
    rng = np.random.default_rng(seed)
    kw = _schedule(rng, T)
    x_0, eps = rng.normal(size=T), rng.normal(size=T)
    x_t = np.sqrt(kw["alpha_bar_t"]) * x_0 + np.sqrt(1 - kw["alpha_bar_t"]) * eps
    sigma = np.sqrt(kw["beta_t"])
    more = _more_arrays(rng, kw, x_0, eps)
    call = dict(kw, x_t=x_t, x_0=x_0, eps=eps, sigma_t=sigma, unused_keyword=None, **more)
    expected = _numpy_expected(kw, x_t, x_0, eps, sigma, more)
    for (name, key), want in expected.items():
        got = derivations.numeric(name, key)(**call)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"{name}:{key}")


def test_elbo_weights_match_numpy_for_t_ge_2():
    rng = np.random.default_rng(5)
    kw = {k: v[1:] for k, v in _schedule(rng, 200).items()}  # t >= 2
    al, be, cum, prev = kw["alpha_t"], kw["beta_t"], kw["alpha_bar_t"], kw["alpha_bar_tm1"]
    np.testing.assert_allclose(
        derivations.numeric("elbo", "eps_weight_beta_tilde")(**kw), be / (2 * al * (1 - prev)), rtol=1e-12
    )
    snr = cum / (1 - cum)
    snr_prev = prev / (1 - prev)
    np.testing.assert_allclose(
        derivations.numeric("elbo", "x0_weight_snr")(**kw), 0.5 * (snr_prev - snr), rtol=1e-12
    )


def test_kl_gaussian_matches_numerical_integral():
    from scipy import integrate, stats

    f = derivations.numeric("elbo", "kl_gaussian")
    for m1, s1, m2, s2 in [(0.3, 0.7, -0.4, 1.3), (1.0, 2.0, 1.5, 0.5)]:
        integrand = lambda x: stats.norm.pdf(x, m1, s1) * (stats.norm.logpdf(x, m1, s1) - stats.norm.logpdf(x, m2, s2))
        want, _ = integrate.quad(integrand, -30, 30, epsabs=1e-13, epsrel=1e-13, limit=200)
        np.testing.assert_allclose(f(mu_1=m1, sigma_1=s1, mu_2=m2, sigma_2=s2), want, rtol=1e-9)


def test_t1_values():
    """At t = 1 (array index 0, alphas_cumprod_prev[0] = 1): β̃_1 = 0, coef1 = 1, coef2 = 0."""
    kw = _schedule(np.random.default_rng(7), 10)
    assert derivations.numeric("posterior", "posterior_variance")(**kw)[0] == 0.0
    assert derivations.numeric("posterior", "posterior_mean_coef2")(**kw)[0] == 0.0
    np.testing.assert_allclose(derivations.numeric("posterior", "posterior_mean_coef1")(**kw)[0], 1.0, rtol=1e-10)


def test_note_about_T300_signal_left():
    """The marginal's note: with T = 300, linear 1e-4..0.02, √ᾱ_T ≈ 0.22."""
    cum = np.cumprod(1 - np.linspace(1e-4, 0.02, 300))
    assert abs(np.sqrt(cum[-1]) - 0.22) < 0.005
    assert "0.22" in " ".join(derivations.get("marginal").notes)


def _lin_rescale(betas):
    """Lin et al. 2024, Algorithm 1 (rescale_zero_terminal_snr), typed from the paper in numpy."""
    alphas = 1.0 - betas
    alphas_bar_sqrt = np.sqrt(np.cumprod(alphas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = alphas_bar_sqrt - last
    alphas_bar_sqrt = alphas_bar_sqrt * first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return alphas_bar_sqrt, alphas_bar, 1 - alphas


@pytest.mark.parametrize("seed,T", [(1, 2), (2, 7), (3, 300), (4, 1000)])
def test_zero_snr_matches_algorithm_1(seed, T):
    rng = np.random.default_rng(seed)
    kw = _schedule(rng, T)
    cum = kw["alpha_bar_t"]
    ends = dict(alpha_bar_1=cum[0], alpha_bar_T=cum[-1])
    want_sqrt, want_cum, want_betas = _lin_rescale(kw["beta_t"])
    got_sqrt = derivations.numeric("zero-snr", "sqrt_alpha_bar_rescaled")(alpha_bar_t=cum, **ends)
    got_cum = derivations.numeric("zero-snr", "alpha_bar_rescaled")(alpha_bar_t=cum, **ends)
    np.testing.assert_allclose(got_sqrt, want_sqrt, rtol=1e-12, atol=0)
    np.testing.assert_allclose(got_cum, want_cum, rtol=1e-12, atol=0)
    assert got_sqrt[-1] == 0.0 and got_cum[-1] == 0.0  # zero terminal SNR, exactly
    # betas from the rescaled cumulative products (the algorithm's), alphas_cumprod_prev[0] = 1
    prev = np.concatenate([[1.0], want_cum[:-1]])
    betas = derivations.numeric("zero-snr", "beta_rescaled")(alpha_bar_t=want_cum, alpha_bar_tm1=prev)
    np.testing.assert_allclose(betas, want_betas, rtol=1e-12, atol=0)
    assert betas[-1] == 1.0  # the last step keeps none of the signal
    # β'_1 = β_1: 1 - ᾱ'_1 with ᾱ'_1 = ᾱ_1 up to a few roundings, relative to a β_1 ≥ 1e-5
    np.testing.assert_allclose(betas[0], kw["beta_t"][0], rtol=64 * np.finfo(float).eps / kw["beta_t"][0])
    # from the original arrays for t >= 2: the same betas
    orig = derivations.numeric("zero-snr", "beta_rescaled_from_original")(
        alpha_bar_t=cum[1:], alpha_bar_tm1=kw["alpha_bar_tm1"][1:], alpha_bar_T=cum[-1])
    np.testing.assert_allclose(orig, want_betas[1:], rtol=0, atol=64 * np.finfo(float).eps)
    v = rng.normal(size=T)
    np.testing.assert_array_equal(derivations.numeric("zero-snr", "x_0_from_v_at_T")(v=v), -v)


def test_zero_snr_note_about_linear_T1000():
    """The zero-snr note: linear 1e-4..0.02 with T = 1000 leaves ᾱ_T ≈ 4e-5, √ᾱ_T ≈ 0.0064."""
    cum = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    assert abs(cum[-1] - 4e-5) < 0.5e-5 and abs(np.sqrt(cum[-1]) - 0.0064) < 0.00005
    notes = " ".join(derivations.get("zero-snr").notes)
    assert "4e-5" in notes and "0.0064" in notes


def test_tweedie_for_a_gaussian_mixture():
    """Tweedie's formula (the 'score' derivation, any data) on non-Gaussian data: a mixture of three
    Gaussians. 𝔼[x_0 | x_t] by numerical integration over x_0, the score d/dx log q(x_t) of the
    mixture's marginal by a complex-step derivative (no cancellation)."""
    from scipy import integrate

    w, mu, sd = np.array([0.5, 0.3, 0.2]), np.array([-2.0, 0.5, 3.0]), np.array([0.4, 1.0, 0.3])
    tweedie = derivations.numeric("score", "tweedie_mean")

    def normal_pdf(x, m, var):
        return np.exp(-((x - m) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)

    for ab_t in (0.999, 0.7, 0.2, 0.01):
        def q_t(x):  # q(x_t) = Σ w_k N(x_t; √ᾱ μ_k, ᾱ s_k² + 1 - ᾱ)
            return sum(w[k] * normal_pdf(x, np.sqrt(ab_t) * mu[k], ab_t * sd[k] ** 2 + 1 - ab_t) for k in range(3))

        def joint(x0, x):  # q(x_0) q(x_t | x_0)
            data = sum(w[k] * normal_pdf(x0, mu[k], sd[k] ** 2) for k in range(3))
            return data * normal_pdf(x, np.sqrt(ab_t) * x0, 1 - ab_t)

        for x in (-2.5, -0.3, 0.0, 1.1, 2.8):
            h = 1e-20
            score = np.imag(np.log(q_t(x + 1j * h))) / h
            opts = dict(points=[np.clip(x / np.sqrt(ab_t), -11, 11)],  # the kernel is narrow when ᾱ_t ≈ 1
                        epsabs=1e-14, epsrel=1e-12, limit=400)
            num, _ = integrate.quad(lambda x0: x0 * joint(x0, x), -12, 12, **opts)
            den, _ = integrate.quad(lambda x0: joint(x0, x), -12, 12, **opts)
            np.testing.assert_allclose(tweedie(x_t=x, alpha_bar_t=ab_t, score_t=score), num / den,
                                       rtol=1e-8, atol=1e-10, err_msg=f"alpha_bar_t={ab_t}, x_t={x}")


def test_numeric_errors_and_extras():
    f = derivations.numeric("posterior", "posterior_variance")
    assert set(f.arg_names) == {"alpha_bar_t", "alpha_bar_tm1", "beta_t"}
    with pytest.raises(DDPMCheckError, match="alpha_bar_tm1"):
        f(alpha_bar_t=0.5, beta_t=0.1)
    with pytest.raises(DDPMCheckError, match="valid keys"):
        derivations.numeric("posterior", "no_such_key")
    wrong = derivations.numeric_from_expr(derivations.results("posterior")["posterior_variance"].subs(abm1, ab))
    assert wrong(alpha_bar_t=0.5, alpha_bar_tm1=0.6, beta_t=0.1) == pytest.approx(0.1)


# --------------------------------------------------------------------------------------------
# a wrong step makes derive()/verify() fail
# --------------------------------------------------------------------------------------------
def _mutate_rhs(name, step_name, change):
    d = derivations.build(name)
    index = [s.name for s in d.steps].index(step_name)
    return d.replace_step(index, rhs=change(d.steps[index].rhs)), index


def _sqrt_alpha_to_alpha(e):
    return e.xreplace({sqrt(a): a})


MUTATIONS = [
    ("ddim", "marginal-preserved", lambda e: e.subs(sqrt(1 - abm1), 1 - abm1)),
    ("ddim", "eta1-variance", lambda e: e.subs(abm1, ab)),
    ("ddim", "eta1-direction", lambda e: e * sqrt(a)),
    ("ddim", "eta1-mean", lambda e: e.subs(S.x_0, S.x_t)),
    ("ddim", "eps-step", lambda e: e.subs(S.sigma_t**2, S.sigma_t)),
    ("ddim", "eta1-eps-step", lambda e: e.subs(b, bt)),
    ("ddim", "last-sigma", lambda e: e + S.eta),
    ("ddim", "last-step", lambda e: e + S.eps_theta),
    # (derivation, step, mutation of its rhs)
    ("marginal", "forward-step", _sqrt_alpha_to_alpha),  # the definition must match its given
    ("marginal", "two-step", _sqrt_alpha_to_alpha),
    ("marginal", "merge-cf", lambda e: e.subs(S.alpha_tm1, 1)),
    ("marginal", "merge-variance", lambda e: e + S.alpha_t * (1 - S.alpha_tm1)),
    ("marginal", "two-step-merged", lambda e: e.subs(sqrt(1 - S.alpha_t * S.alpha_tm1), 1 - S.alpha_t * S.alpha_tm1)),
    ("marginal", "inductive-step", lambda e: e.subs(ab, a)),
    ("marginal", "explicit-t1-5", lambda e: e.subs(S.alpha_bar_2, S.alpha_2)),
    ("marginal", "mean", lambda e: e.subs(sqrt(ab), ab)),
    ("marginal", "variance", lambda e: e.subs(ab, a)),
    ("marginal", "gaussian", lambda e: e.subs(S.s**2, S.s)),
    ("posterior", "explicit", lambda e: e.subs(S.Q, S.Q / 2)),
    ("posterior", "explicit", lambda e: e * sqrt(2)),
    ("posterior", "quadratic", lambda e: e.subs(S.B, -S.B)),
    ("posterior", "complete-square", lambda e: e + S.B**2 / S.A),
    ("posterior", "mean", _sqrt_alpha_to_alpha),
    ("posterior", "variance", lambda e: e.subs(abm1, 0)),
    ("posterior", "remainder", lambda e: e + 1),
    ("posterior", "normaliser", lambda e: e.subs(bt, b)),
    ("posterior", "posterior", lambda e: e.subs(bt, b)),
    ("mean-eps", "x0", lambda e: e.subs(sqrt(ab), ab)),
    ("mean-eps", "coef-x_t", lambda e: e.subs(sqrt(a), a)),
    ("mean-eps", "mean-eps", lambda e: e.subs(sqrt(1 - ab), 1 - ab)),
    ("mean-eps", "sample", lambda e: e.subs(bt, sqrt(bt))),
    ("mean-eps", "t1-variance", lambda e: e + S.beta_1),
    ("elbo", "bound", lambda e: e + sp.log(S.p_theta(S.x_0, S.x_1))),
    ("elbo", "kl", lambda e: e.subs(S.sigma_1**2, S.sigma_1)),
    ("elbo", "kl-sum", lambda e: e.subs(S.d, 1)),
    ("elbo", "eps-weight", lambda e: e.subs(a, sqrt(a))),
    ("elbo", "x0-weight", lambda e: 2 * e),
    ("elbo", "eps-weight-snr", lambda e: e.subs(abm1, ab)),
    ("elbo", "t1", lambda e: sp.Integer(1)),
    ("score", "kernel-gradient", lambda e: -e),
    ("score", "tweedie", lambda e: e.subs(1 - ab, ab)),
    ("score", "tweedie", lambda e: e * sqrt(ab)),  # 𝔼[√ᾱ_t x_0 | x_t] taken for 𝔼[x_0 | x_t]
    ("score", "eps-mean", lambda e: e.subs(sqrt(ab), ab)),
    ("score", "score-eps", lambda e: -e),
    ("score", "score-eps", lambda e: e.subs(sqrt(1 - ab), 1 - ab)),  # variance for standard deviation
    ("score", "l2-optimum", lambda e: e - S.Var(S.eps, S.x_t)),
    ("score", "marginal", lambda e: e.subs(S.s_0**2, S.s_0)),
    ("score", "gaussian-score", lambda e: e.subs(sqrt(ab) * S.m_0, S.m_0)),
    ("score", "precision", lambda e: 1 / e),
    ("score", "posterior", lambda e: e.func(e.args[0], e.args[1], S.s_0**2)),  # the prior's variance
    ("score", "posterior", lambda e: e.func(e.args[0], S.m_0, e.args[2])),  # the prior's mean
    ("score", "posterior-mean", lambda e: e.subs(S.m_0, 0)),
    ("score", "tweedie-gaussian", lambda e: e.subs(S.s_0, 1)),
    ("score", "score-eps-gaussian", lambda e: e * sqrt(1 - ab)),
    ("parametrizations", "v", lambda e: -e),
    ("parametrizations", "rotation", lambda e: e + S.x_0 * S.eps),
    ("parametrizations", "x0-from-eps", lambda e: e.subs(sqrt(ab), ab)),
    ("parametrizations", "eps-from-x0", lambda e: e.subs(sqrt(1 - ab), 1 - ab)),
    ("parametrizations", "x0-from-v", lambda e: e.subs(S.v, -S.v)),
    ("parametrizations", "eps-from-v", lambda e: e.xreplace({sqrt(ab): sqrt(1 - ab), sqrt(1 - ab): sqrt(ab)})),
    ("parametrizations", "v-from-eps", lambda e: e.subs(S.x_t, -S.x_t)),
    ("parametrizations", "v-from-x0", lambda e: e.subs(S.x_0, -S.x_0)),
    ("parametrizations", "x0-error", lambda e: e.subs(S.SNR(S.t), 1 / S.SNR(S.t))),
    ("parametrizations", "v-error-x0", lambda e: e.subs(1 + S.SNR(S.t), S.SNR(S.t))),  # SNR, not SNR + 1
    ("parametrizations", "v-error-eps", lambda e: e * S.SNR(S.t)),
    ("zero-snr", "last", lambda e: sqrt(S.alpha_bar_T)),
    ("zero-snr", "first", lambda e: e**2),
    ("zero-snr", "slope", lambda e: 1 / e),
    ("zero-snr", "alpha-bar", lambda e: e.subs(S.alpha_bar_1, sqrt(S.alpha_bar_1))),
    ("zero-snr", "beta", lambda e: e.subs(ab / abm1, abm1 / ab)),
    ("zero-snr", "beta-rescaled", lambda e: e.subs(S.alpha_bar_T, 0)),
    ("zero-snr", "beta-first", lambda e: 1 - e),
    ("zero-snr", "beta-last", lambda e: S.beta_t),  # the last beta unchanged
    ("zero-snr", "snr-last", lambda e: sp.oo),
    ("zero-snr", "x_T", lambda e: S.x_0),
    ("zero-snr", "eps-form-at-T", lambda e: e.subs(S.eps, 0)),
    ("zero-snr", "v-at-T", lambda e: -e),
    ("zero-snr", "x0-from-v-at-T", lambda e: -e),
]


@pytest.mark.parametrize("name,step_name,change", MUTATIONS, ids=[f"{n}:{s}" for n, s, _ in MUTATIONS])
def test_wrong_step_fails(name, step_name, change):
    wrong, index = _mutate_rhs(name, step_name, change)
    assert wrong.steps[index].rhs != derivations.build(name).steps[index].rhs, "mutation changed nothing"
    assert verify_step(wrong.steps[index]) is False
    with pytest.raises(DerivationError, match=f"step {index + 1} \\({step_name}\\)"):
        wrong.verify()
    with pytest.raises(DerivationError):
        verify(wrong.steps, derivation=name)


def test_verify_public_api_on_hand_built_steps():
    good = Step("merge", S.Var(sqrt(a) * S.z_1 + sqrt(1 - a) * S.z_2), sp.Integer(1), "variances add")
    bad = dataclasses.replace(good, lhs=S.Var(a * S.z_1 + sqrt(1 - a) * S.z_2))  # α where √α belongs
    assert verify([good]) == (good,)
    with pytest.raises(DerivationError, match="step 2 \\(merge\\)"):
        verify([good, bad])


def test_unknown_relation_and_unverifiable_step_fail():
    with pytest.raises(DerivationError):
        verify([Step("x", S.x, S.x, "why", relation="<")])
    with pytest.raises(DerivationError, match="could not be checked"):
        verify([Step("x", S.Expect(sp.log(S.z**2 + 1)), sp.Integer(0), "not supported")])


# --------------------------------------------------------------------------------------------
# the verifier's building blocks
# --------------------------------------------------------------------------------------------
def test_expectation_of_standard_normal_moments():
    z, z1, z2 = S.z, S.z_1, S.z_2
    assert expectation(z) == 0
    assert expectation(z**2) == 1
    assert expectation(z**4) == 3  # (k-1)!! for even k
    assert expectation(z**6) == 15
    assert expectation(z1 * z2) == 0
    assert expectation(z1**2 * z2**2) == 1
    assert expectation(3 + S.x * z) == 3
    c = sp.Symbol("c", real=True)
    assert sp.simplify(expectation(sp.exp(c * z)) - sp.exp(c**2 / 2)) == 0
    assert sp.simplify(expectation(sp.exp(sp.I * S.s * z)) - sp.exp(-S.s**2 / 2)) == 0
    assert variance(2 * z1 + 3 * z2) == 13


def test_same_law_and_is_zero():
    assert same_law(sqrt(a) * S.z_1 + sqrt(1 - a) * S.z_2, S.z)
    assert not same_law(a * S.z_1 + sqrt(1 - a) * S.z_2, S.z)
    assert not same_law(S.z + 1, S.z)
    assert is_zero((S.x_t + 1) ** 2 - S.x_t**2 - 2 * S.x_t - 1)
    assert not is_zero(sqrt(a) - a)
    assert is_zero(sqrt(a * abm1) - sqrt(a) * sqrt(abm1))
    assert not is_zero(S.x_t * 1e-30)


def test_law_step_relation():
    step = Step("law", S.x_t, sqrt(ab) * S.x_0 + sqrt(1 - ab) * S.eps, "w", relation=EQ_IN_LAW,
                given=((S.x_t, sqrt(ab) * S.x_0 + sqrt(1 - ab) * S.z),))
    assert step.verify()
    assert not dataclasses.replace(step, relation="=").verify()  # not equal as random variables


# --------------------------------------------------------------------------------------------
# JSON round trip of expressions, Jupyter display
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", derivations.NAMES)
def test_expressions_parse_back(name):
    d = derivations.get(name)
    exprs = [e for step in d.steps for e in (step.lhs, step.rhs)] + list(d.results.values())
    for e in exprs:
        assert sp.parse_expr(sp.srepr(e)) == e
        assert derivations.parse(sp.srepr(e)) == e
        # str round-trips up to sympy's automatic evaluation (2*(1 - a) -> 2 - 2*a)
        parsed = derivations.parse(str(e))
        assert parsed == e or is_zero(parsed - e), str(e)
        assert parsed.free_symbols == e.free_symbols  # same symbols, same assumptions


def test_jupyter_display():
    d = derivations.get("mean-eps")
    md = d._repr_markdown_()
    assert md.startswith("## mean-eps") and "$$" in md and r"\frac" in md
    tex = d._repr_latex_()
    assert tex.startswith("$$\\begin{aligned}") and tex.endswith("\\end{aligned}$$")
    assert r"\boxed" in tex
    assert "1. ✓" in str(d)
