"""Property tests of the exact identities of the 'parametrizations' derivation: the x_0-, ε- and
v-conversions round-trip, (x_t, v) is a rotation of (x_0, ε), and the loss weights.

The conversions are the lambdified results (derivations.numeric), so these properties test what
was derived.  ᾱ_t is drawn in [1e-4, 1 - 1e-4], values in [-10, 10].  Tolerances are a small
multiple of machine epsilon times the size of the terms, divided by what a formula divides by
(√ᾱ_t or √(1 - ᾱ_t)); the weights compare |errors| (linear in the rounding), not their squares.
The hypothesis profile comes from tests/conftest.py.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import derivations

EPS = np.finfo(np.float64).eps

alpha_bars = st.floats(1e-4, 1 - 1e-4)
# x_0, ε and two predictions (ε_θ, v_θ), each an array of the same length; |values| below 1e-100
# become 0 so that no square or product is subnormal
_value = st.floats(-10, 10, allow_subnormal=False).map(lambda x: x if abs(x) > 1e-100 else 0.0)
values = st.integers(1, 16).flatmap(lambda n: st.tuples(*(arrays(np.float64, n, elements=_value) for _ in range(4))))


def _within(got, want, tol):
    """|got - want| <= tol elementwise (tol may be 0 where every term is 0)."""
    bad = ~(np.abs(got - want) <= tol)
    assert not np.any(bad), f"got {got[bad]}, want {want[bad]}, tol {np.broadcast_to(tol, bad.shape)[bad]}"


def _num(key):
    return derivations.numeric("parametrizations", key)


@given(alpha_bars, values)
def test_conversions_round_trip(ab, vals):
    x_0, eps, _, _ = vals
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    x_t = alpha * x_0 + sigma * eps
    v = _num("v_from_eps_x_0")(alpha_bar_t=ab, x_0=x_0, eps=eps)
    size = np.abs(x_0) + np.abs(eps)  # |x_t| and |v| are at most this
    tol = 8 * EPS * size
    _within(_num("x_0_from_eps")(alpha_bar_t=ab, x_t=x_t, eps=eps), x_0, tol / alpha)
    _within(_num("eps_from_x_0")(alpha_bar_t=ab, x_t=x_t, x_0=x_0), eps, tol / sigma)
    _within(_num("x_0_from_v")(alpha_bar_t=ab, x_t=x_t, v=v), x_0, tol)
    _within(_num("eps_from_v")(alpha_bar_t=ab, x_t=x_t, v=v), eps, tol)
    _within(_num("v_from_eps")(alpha_bar_t=ab, x_t=x_t, eps=eps), v, tol / alpha)
    _within(_num("v_from_x_0")(alpha_bar_t=ab, x_t=x_t, x_0=x_0), v, tol / sigma)
    # a rotation keeps lengths: x_t² + v² = x_0² + ε²
    _within(x_t**2 + v**2, x_0**2 + eps**2, 16 * EPS * size**2)


@given(alpha_bars, values)
def test_loss_weights(ab, vals):
    x_0, eps, eps_theta, v_theta = vals
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    x_t = alpha * x_0 + sigma * eps
    v = _num("v_from_eps_x_0")(alpha_bar_t=ab, x_0=x_0, eps=eps)
    size = np.abs(x_0) + np.abs(eps) + np.abs(eps_theta) + np.abs(v_theta)
    # ε-prediction, x̂_0 converted from ε_θ: |x_0 - x̂_0| = √(x0_loss_weight) |ε - ε_θ|
    w_x0 = _num("x0_loss_weight")(alpha_bar_t=ab)
    x_hat = _num("x_0_from_eps")(alpha_bar_t=ab, x_t=x_t, eps=eps_theta)
    _within(np.abs(x_0 - x_hat), np.sqrt(w_x0) * np.abs(eps - eps_theta), 16 * EPS * size / alpha)
    # v-prediction, x̂_0 and ε̂ converted from v_θ
    w_v_x0 = _num("v_loss_weight_x0")(alpha_bar_t=ab)
    w_v_eps = _num("v_loss_weight_eps")(alpha_bar_t=ab)
    x_hat = _num("x_0_from_v")(alpha_bar_t=ab, x_t=x_t, v=v_theta)
    eps_hat = _num("eps_from_v")(alpha_bar_t=ab, x_t=x_t, v=v_theta)
    err_v = np.abs(v - v_theta)
    _within(err_v, np.sqrt(w_v_x0) * np.abs(x_0 - x_hat), 16 * EPS * size / sigma)
    _within(err_v, np.sqrt(w_v_eps) * np.abs(eps - eps_hat), 16 * EPS * size / alpha)


@given(alpha_bars)
def test_weights_in_snr(ab):
    """x0_loss_weight = 1/SNR, v_loss_weight_x0 = 1 + SNR, v_loss_weight_eps = (1 + SNR)/SNR = the product."""
    snr = _num("snr")(alpha_bar_t=ab)
    keys = ("x0_loss_weight", "v_loss_weight_x0", "v_loss_weight_eps")
    w_x0, w_v_x0, w_v_eps = (_num(k)(alpha_bar_t=ab) for k in keys)
    rel = 8 * EPS / (1 - ab)  # 1 - ᾱ_t is a difference of nearby numbers when ᾱ_t is near 1
    assert abs(w_x0 * snr - 1) <= rel
    assert abs(w_v_x0 / (1 + snr) - 1) <= rel
    assert abs(w_v_eps / ((1 + snr) / snr) - 1) <= rel
    assert abs(w_v_eps / (w_v_x0 * w_x0) - 1) <= rel
