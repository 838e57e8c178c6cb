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


def _numpy_expected(kw, x_t, x_0, eps, sigma):
    al, be, cum, prev = kw["alpha_t"], kw["beta_t"], kw["alpha_bar_t"], kw["alpha_bar_tm1"]
    c1 = np.sqrt(prev) * be / (1 - cum)  # multiplies x_0
    c2 = np.sqrt(al) * (1 - prev) / (1 - cum)  # multiplies x_t
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
    }


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
    call = dict(kw, x_t=x_t, x_0=x_0, eps=eps, sigma_t=sigma, unused_keyword=None)
    expected = _numpy_expected(kw, x_t, x_0, eps, sigma)
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
