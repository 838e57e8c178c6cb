"""Property tests of the exact identities the derivations rely on, on the derived results.

Schedules are built here with numpy (linear, and arbitrary β in [1e-5, 0.05], T ≤ 1000); the
coefficient functions are the lambdified results of derivations/ (derivations.numeric), so these
properties test what was derived.  Tolerances scale with machine epsilon and with the
conditioning of each formula (1/(1 - ᾱ_t) where a difference of nearby numbers is taken).
The hypothesis profile comes from tests/conftest.py.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import derivations
from tests.properties.strategies import schedules as strategies

EPS = np.finfo(np.float64).eps
schedules = strategies(1)


def _arrays(betas):
    """The schedule arrays, 0-based (index i is paper step t = i + 1), alphas_cumprod_prev[0] = 1."""
    alphas = 1.0 - betas
    cum = np.cumprod(alphas)
    prev = np.concatenate([[1.0], cum[:-1]])
    return dict(alpha_t=alphas, beta_t=betas, alpha_bar_t=cum, alpha_bar_tm1=prev)


def _num(name, key):
    return derivations.numeric(name, key)


@given(schedules)
def test_alpha_bar_recursion(betas):
    kw = _arrays(betas)
    np.testing.assert_allclose(_num("marginal", "alpha_bar_t")(**kw), kw["alpha_bar_t"], rtol=2 * EPS, atol=0)


@given(schedules)
def test_beta_tilde_bounds(betas):
    kw = _arrays(betas)
    bt = _num("posterior", "posterior_variance")(**kw)
    assert bt[0] == 0.0  # β̃_1 = 0: the last sampling step adds no noise
    assert np.all(bt[1:] > 0)
    # β̃_t/β_t = 1 - gap with gap = ᾱ_{t-1} β_t/(1 - ᾱ_t): strictly below β_t wherever the gap is
    # representable in float64 (once ᾱ_{t-1} underflows past eps, β̃_t rounds to β_t)
    beta, cum, prev = kw["beta_t"][1:], kw["alpha_bar_t"][1:], kw["alpha_bar_tm1"][1:]
    gap = prev * beta / (1 - cum)
    visible = gap > 8 * EPS
    assert np.all(bt[1:][visible] < beta[visible])
    assert np.all(bt[1:] <= beta * (1 + 4 * EPS))


@given(schedules)
def test_posterior_mean_coefficients_reproduce_sqrt_alpha_bar_prev(betas):
    """coef1 + coef2·√ᾱ_t = √ᾱ_{t-1}: the posterior mean of x_{t-1} at x_t = √ᾱ_t x_0 (no noise)."""
    kw = _arrays(betas)
    c1 = _num("posterior", "posterior_mean_coef1")(**kw)  # multiplies x_0
    c2 = _num("posterior", "posterior_mean_coef2")(**kw)  # multiplies x_t
    lhs = c1 + c2 * np.sqrt(kw["alpha_bar_t"])
    rhs = np.sqrt(kw["alpha_bar_tm1"])
    tol = 8 * EPS / (1 - kw["alpha_bar_t"])  # 1 - ᾱ_t is a difference of nearby numbers
    assert np.all(np.abs(lhs - rhs) <= tol * rhs)


@given(schedules, st.integers(0, 2**32 - 1))
def test_eps_form_equals_x0_form_of_mu_tilde(betas, seed):
    kw = _arrays(betas)
    rng = np.random.default_rng(seed)
    x_0 = rng.normal(size=betas.shape) * 3
    eps = rng.normal(size=betas.shape)
    x_t = np.sqrt(kw["alpha_bar_t"]) * x_0 + np.sqrt(1 - kw["alpha_bar_t"]) * eps
    mu_x0 = _num("posterior", "mu_tilde_t")(**kw, x_t=x_t, x_0=x_0)
    mu_eps = _num("mean-eps", "mu_tilde_t_eps")(**kw, x_t=x_t, eps=eps)
    scale = np.abs(x_t) + np.abs(x_0) + np.abs(eps)
    tol = 16 * EPS * scale / (1 - kw["alpha_bar_t"])
    assert np.all(np.abs(mu_x0 - mu_eps) <= tol)


@given(schedules)
def test_elbo_eps_weight_two_ways(betas):
    """β_t/(2α_t(1-ᾱ_{t-1})) = ½(SNR(t-1) - SNR(t))/SNR(t) = eps_weight at σ_t² = β̃_t, t ≥ 2."""
    kw = {k: v[1:] for k, v in _arrays(betas).items()}
    if kw["beta_t"].size == 0:
        return
    w = _num("elbo", "eps_weight_beta_tilde")(**kw)
    via_snr = _num("elbo", "x0_weight_snr")(**kw) / _num("elbo", "snr")(**kw)
    sigma = np.sqrt(_num("posterior", "posterior_variance")(**kw))
    via_sigma = _num("elbo", "eps_weight")(**kw, sigma_t=sigma)
    # SNR(t-1) - SNR(t) is a difference of nearby numbers: relative error up to ~eps/β_t
    cond = 1 / kw["beta_t"] + 1 / (1 - kw["alpha_bar_tm1"])
    np.testing.assert_array_less(np.abs(via_snr - w), 64 * EPS * cond * w)
    np.testing.assert_array_less(np.abs(via_sigma - w), 64 * EPS * cond * w)
