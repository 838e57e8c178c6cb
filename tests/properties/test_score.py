"""Property tests of the exact identities of the 'score' derivation in its Gaussian case,
x_0 ~ N(m_0, s_0²): Tweedie's formula with the Gaussian score gives the posterior mean, the score
is -𝔼[ε | x_t]/√(1 - ᾱ_t) and back, 𝔼[ε | x_t] = (x_t - √ᾱ_t 𝔼[x_0 | x_t])/√(1 - ᾱ_t), and the
posterior variance is below both the prior's s_0² and the likelihood's (1 - ᾱ_t)/ᾱ_t.

The functions are the lambdified results (derivations.numeric).  ᾱ_t in [1e-4, 1 - 1e-4],
m_0 in [-10, 10], s_0 in [0.05, 20], x_t in [-50, 50].  Tolerances: a multiple of machine epsilon
times the sizes of the terms, divided by what the formula divides by (√ᾱ_t, √(1 - ᾱ_t)), times
the conditioning of V = ᾱ_t s_0² + 1 - ᾱ_t (1 - ᾱ_t is rounded relative to 1).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import derivations

EPS = np.finfo(np.float64).eps

alpha_bars = st.floats(1e-4, 1 - 1e-4)
# values below 1e-100 in size become 0, so that no product is subnormal
means = st.floats(-10, 10, allow_subnormal=False).map(lambda x: x if abs(x) > 1e-100 else 0.0)
sds = st.floats(0.05, 20)
points = arrays(np.float64, st.integers(1, 16),
                elements=st.floats(-50, 50, allow_subnormal=False).map(lambda x: x if abs(x) > 1e-100 else 0.0))


def _within(got, want, tol):
    """|got - want| <= tol elementwise (tol may be 0 where every term is 0)."""
    bad = ~(np.abs(got - want) <= tol)
    assert not np.any(bad), f"got {got[bad]}, want {want[bad]}, tol {np.broadcast_to(tol, bad.shape)[bad]}"


def _num(key):
    return derivations.numeric("score", key)


@given(alpha_bars, means, sds, points)
def test_gaussian_tweedie_and_eps_link(ab, m_0, s_0, x_t):
    data = dict(alpha_bar_t=ab, m_0=m_0, s_0=s_0, x_t=x_t)
    score = _num("gaussian_score")(**data)
    post_mean = _num("gaussian_posterior_mean")(**data)
    eps_mean = _num("gaussian_eps_mean")(**data)
    V = _num("gaussian_marginal_variance")(**data)
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    cond = 1 + (1 + ab * s_0**2 + ab) / V  # rounding of V
    size = np.abs(x_t) + np.abs(m_0) + s_0**2 * np.abs(x_t) + (np.abs(x_t) + np.abs(m_0)) / V
    tol = 64 * EPS * cond * size
    # Tweedie: (x_t + (1 - ᾱ_t) score)/√ᾱ_t = 𝔼[x_0 | x_t]
    tweedie = _num("tweedie_mean")(alpha_bar_t=ab, x_t=x_t, score_t=score)
    _within(tweedie, post_mean, tol / alpha)
    # score = -𝔼[ε | x_t]/√(1 - ᾱ_t) and 𝔼[ε | x_t] = -√(1 - ᾱ_t) score
    _within(_num("score_from_eps")(alpha_bar_t=ab, eps_theta=eps_mean), score, tol / sigma)
    _within(_num("eps_from_score")(alpha_bar_t=ab, score_t=score), eps_mean, tol)
    # 𝔼[ε | x_t] = (x_t - √ᾱ_t 𝔼[x_0 | x_t])/√(1 - ᾱ_t)
    _within((x_t - alpha * post_mean) / sigma, eps_mean, tol / sigma)


@given(alpha_bars, sds)
def test_gaussian_posterior_variance_bounds(ab, s_0):
    var = _num("gaussian_posterior_variance")(alpha_bar_t=ab, s_0=s_0)
    assert var > 0
    slack = 1 + 16 * EPS / (1 - ab)  # 1 - ᾱ_t is rounded relative to 1
    assert var <= s_0**2 * slack  # observing x_t never widens the prior
    assert var <= (1 - ab) / ab * slack  # nor the likelihood's spread for x_0
    # precisions add: 1/var = 1/s_0² + ᾱ_t/(1 - ᾱ_t)
    assert abs(var * (1 / s_0**2 + ab / (1 - ab)) - 1) <= 16 * EPS / (1 - ab)
