"""Property tests of the exact identities of the 'zero-snr' derivation (Lin et al. 2024, Algorithm 1)
on schedules built here with numpy: √ᾱ'_T = 0 and √ᾱ'_1 = √ᾱ_1, the rescaled √ᾱ stays decreasing,
every rescaled β lies in (0, 1] with β'_1 = β_1 and β'_T = 1, the two forms of β'_t agree for
t ≥ 2, SNR'(T) = 0, and x_0 = -v at t = T.

Schedules: linear and arbitrary β in [1e-5, 0.05], 2 ≤ T ≤ 1000 (the rescale needs ᾱ_1 > ᾱ_T).
The functions are the lambdified results (derivations.numeric).  The hypothesis profile comes
from tests/conftest.py.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import derivations
from tests.properties.strategies import schedules as strategies

EPS = np.finfo(np.float64).eps
schedules = strategies(2)


def _num(key, name="zero-snr"):
    return derivations.numeric(name, key)


def _rescaled(betas):
    """The original cumulative products and the rescaled √ᾱ', ᾱ' and β' (index i is step t = i + 1)."""
    cum = np.cumprod(1.0 - betas)
    ends = dict(alpha_bar_1=cum[0], alpha_bar_T=cum[-1])
    root = _num("sqrt_alpha_bar_rescaled")(alpha_bar_t=cum, **ends)
    cum_new = _num("alpha_bar_rescaled")(alpha_bar_t=cum, **ends)
    prev_new = np.concatenate([[1.0], cum_new[:-1]])  # ᾱ'_0 = 1: the empty product is not rescaled
    betas_new = _num("beta_rescaled")(alpha_bar_t=cum_new, alpha_bar_tm1=prev_new)
    return cum, root, cum_new, betas_new


@given(schedules)
def test_endpoints_and_order(betas):
    cum, root, cum_new, _ = _rescaled(betas)
    assert root[-1] == 0.0 and cum_new[-1] == 0.0  # zero terminal SNR, exactly
    assert abs(root[0] - np.sqrt(cum[0])) <= 4 * EPS * np.sqrt(cum[0])  # √ᾱ'_1 = √ᾱ_1
    assert np.all(np.diff(root) < 0)  # an affine map with positive slope keeps the order
    assert np.all(root[:-1] > 0)
    np.testing.assert_allclose(cum_new, root**2, rtol=8 * EPS, atol=0)


@given(schedules)
def test_rescaled_betas(betas):
    cum, _, cum_new, betas_new = _rescaled(betas)
    assert np.all(betas_new > 0) and np.all(betas_new <= 1)
    assert betas_new[-1] == 1.0  # the last step keeps none of the signal
    assert abs(betas_new[0] - betas[0]) <= 8 * EPS  # β'_1 = 1 - ᾱ'_1 = 1 - ᾱ_1 = β_1
    # t >= 2: the same betas from the original arrays (the scale cancels); both compute the same
    # differences √ᾱ_t - √ᾱ_T, so they differ by a few roundings of a ratio in [0, 1]
    prev = np.concatenate([[1.0], cum[:-1]])
    orig = _num("beta_rescaled_from_original")(alpha_bar_t=cum[1:], alpha_bar_tm1=prev[1:], alpha_bar_T=cum[-1])
    np.testing.assert_allclose(orig, betas_new[1:], rtol=0, atol=16 * EPS)


@given(schedules, st.integers(0, 2**32 - 1))
def test_terminal_snr_and_v_prediction(betas, seed):
    _, _, cum_new, _ = _rescaled(betas)
    assert _num("snr", "parametrizations")(alpha_bar_t=cum_new[-1]) == 0.0
    rng = np.random.default_rng(seed)
    x_0, eps = rng.normal(size=4) * 3, rng.normal(size=4)
    x_T = np.sqrt(cum_new[-1]) * x_0 + np.sqrt(1 - cum_new[-1]) * eps
    np.testing.assert_array_equal(x_T, eps)  # pure noise
    v = _num("v_from_eps_x_0", "parametrizations")(alpha_bar_t=cum_new[-1], x_0=x_0, eps=eps)
    np.testing.assert_array_equal(v, -x_0)
    x0_v = _num("x_0_from_v", "parametrizations")(alpha_bar_t=cum_new[-1], x_t=x_T, v=v)
    np.testing.assert_array_equal(x0_v, _num("x_0_from_v_at_T")(v=v))
    np.testing.assert_array_equal(x0_v, x_0)
    with np.errstate(divide="ignore", invalid="ignore"):  # ε-prediction: (x_T - ε)/0 = 0/0
        x0_eps = _num("x_0_from_eps", "parametrizations")(alpha_bar_t=cum_new[-1], x_t=x_T, eps=eps)
    assert np.all(np.isnan(x0_eps))
