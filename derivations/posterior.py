"""q(x_{t-1} | x_t, x_0) = 𝒩(x_{t-1}; μ̃_t(x_t, x_0), β̃_t I)  (Ho et al. 2020, eqs. 6-7).

Bayes' rule turns the forward densities into the posterior:
q(x_{t-1} | x_t, x_0) = q(x_t | x_{t-1}) q(x_{t-1} | x_0) / q(x_t | x_0), all three Gaussian
(eqs. 2 and 4).  Their exponent -Q/2 is a quadratic Q = A x_{t-1}² - 2B x_{t-1} + C in x_{t-1};
completing the square gives the mean B/A and the variance 1/A.  What is left over (C - B²/A
and the normalising constants) does not depend on x_{t-1}: it is exactly the normaliser of
𝒩(μ̃_t, β̃_t), so the posterior *is* that Gaussian (derived, not assumed).  Uses
ᾱ_t = α_t ᾱ_{t-1} and β_t = 1 - α_t.

Results (sympy expressions in alpha_t, alpha_bar_t, alpha_bar_tm1, beta_t, x_t, x_0):

- ``posterior_mean_coef1``: √ᾱ_{t-1} β_t / (1 - ᾱ_t), the coefficient of x_0 in μ̃_t;
- ``posterior_mean_coef2``: √α_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t), the coefficient of x_t in μ̃_t;
- ``posterior_variance``: β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t;
- ``mu_tilde_t``: coef1 · x_0 + coef2 · x_t.

The coefficients are numbered in the order of eq. 7 (x_0 first), as improved-diffusion and
guided-diffusion name their arrays.
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy import pi, sqrt

from derivations import symbols as S
from derivations.step import Derivation, Step, log_equal

NAME = "posterior"
TITLE = "q(x_{t-1} | x_t, x_0): Bayes' rule and completing the square (eqs. 6-7)"

a, ab, abm1, b = S.alpha_t, S.alpha_bar_t, S.alpha_bar_tm1, S.beta_t
xt, xtm1, x0 = S.x_t, S.x_tm1, S.x_0

posterior_mean_coef1 = sqrt(abm1) * b / (1 - ab)  # multiplies x_0 (eq. 7's first term)
posterior_mean_coef2 = sqrt(a) * (1 - abm1) / (1 - ab)  # multiplies x_t
posterior_variance = (1 - abm1) / (1 - ab) * b
mu_tilde_t = posterior_mean_coef1 * x0 + posterior_mean_coef2 * xt

#: the forward-process facts used: ᾱ_t = α_t ᾱ_{t-1} and β_t = 1 - α_t
RECURSION = ((ab, a * abm1), (b, 1 - a))

# the three Gaussian densities (eq. 2 and eq. 4) as display forms
forward_density = S.N(xt, sqrt(a) * xtm1, b)  # q(x_t | x_{t-1})
prev_marginal = S.N(xtm1, sqrt(abm1) * x0, 1 - abm1)  # q(x_{t-1} | x_0)
marginal = S.N(xt, sqrt(ab) * x0, 1 - ab)  # q(x_t | x_0)
bayes_ratio = forward_density * prev_marginal / marginal

# the exponent of the ratio is -E/2 with
exponent = (
    (xt - sqrt(a) * xtm1) ** 2 / b
    + (xtm1 - sqrt(abm1) * x0) ** 2 / (1 - abm1)
    - (xt - sqrt(ab) * x0) ** 2 / (1 - ab)
)
prefactor = sqrt((1 - ab) / (2 * pi * b * (1 - abm1)))
A_def = a / b + 1 / (1 - abm1)
B_def = sqrt(a) * xt / b + sqrt(abm1) * x0 / (1 - abm1)
C_def = xt**2 / b + abm1 * x0**2 / (1 - abm1) - (xt - sqrt(ab) * x0) ** 2 / (1 - ab)
ABC = ((S.A, A_def), (S.B, B_def), (S.C, C_def))


def build() -> Derivation:
    """The steps (unverified); :func:`derive` verifies them."""
    q_post = S.q(xtm1, xt, x0)
    q_fwd, q_prev, q_marg = S.q(xt, xtm1), S.q(xtm1, x0), S.q(xt, x0)
    densities = ((q_fwd, forward_density), (q_prev, prev_marginal), (q_marg, marginal))
    bayes = (q_post, q_fwd * q_prev / q_marg)
    steps = (
        Step(
            "bayes",
            q_post,
            q_fwd * q_prev / q_marg,
            "Bayes' rule; the forward process is Markov, so q(x_t | x_{t-1}, x_0) = q(x_t | x_{t-1})",
            given=(bayes,),
            premise=True,
        ),
        Step(
            "densities",
            q_post,
            bayes_ratio,
            "the three densities: the forward step (eq. 2) and the closed-form marginal "
            "(eq. 4, derivation 'marginal')",
            "eqs. 2, 4",
            given=(bayes,) + densities,
            premise=True,
        ),
        Step(
            "exponent",
            S.Q,
            exponent,
            "name the sum of the three squared deviations over their variances",
            given=((S.Q, exponent),),
            premise=True,
        ),
        Step(
            "explicit",
            q_post,
            prefactor * sp.exp(-S.Q / 2),
            "write out N(x; m, v) = exp(-(x - m)²/(2v)) / √(2πv) and collect the exponents",
            given=(bayes,) + densities + ((S.Q, exponent),),
            check=log_equal,
        ),
        Step("A", S.A, A_def, "name the coefficient of x_{t-1}²", given=ABC[:1], premise=True),
        Step("B", S.B, B_def, "name half the coefficient of -x_{t-1}", given=ABC[1:2], premise=True),
        Step("C", S.C, C_def, "name the terms without x_{t-1}", given=ABC[2:], premise=True),
        Step(
            "quadratic",
            S.Q,
            S.A * xtm1**2 - 2 * S.B * xtm1 + S.C,
            "Q is a quadratic in x_{t-1}: expand the squares and collect",
            given=((S.Q, exponent),) + ABC,
        ),
        Step(
            "complete-square",
            S.A * xtm1**2 - 2 * S.B * xtm1 + S.C,
            S.A * (xtm1 - S.B / S.A) ** 2 + S.C - S.B**2 / S.A,
            "complete the square (pure algebra, any A ≠ 0)",
        ),
        Step(
            "mean",
            B_def / A_def,
            mu_tilde_t,
            "read off the mean μ̃_t = B/A; the denominator is α_t(1 - ᾱ_{t-1}) + β_t = 1 - ᾱ_t",
            "eq. 7",
            given=RECURSION,
        ),
        Step(
            "variance",
            1 / A_def,
            posterior_variance,
            "read off the variance β̃_t = 1/A",
            "eq. 7",
            given=RECURSION,
        ),
        Step(
            "remainder",
            S.C - S.B**2 / S.A,
            sp.Integer(0),
            "what is left after completing the square is free of x_{t-1}; here it even vanishes",
            given=ABC + RECURSION,
        ),
        Step(
            "normaliser",
            prefactor,
            1 / sqrt(2 * pi * S.beta_tilde_t),
            "the constants in front are exactly the normaliser of N(μ̃_t, β̃_t)",
            given=((S.beta_tilde_t, posterior_variance),) + RECURSION,
            check=log_equal,
        ),
        Step(
            "posterior",
            q_post,
            S.N(xtm1, S.mu_tilde_t, S.beta_tilde_t),
            "so the whole Bayes ratio equals the Gaussian density: "
            "q(x_{t-1} | x_t, x_0) = N(x_{t-1}; μ̃_t(x_t, x_0), β̃_t I)",
            "eq. 6",
            given=(bayes,)
            + densities
            + ((S.mu_tilde_t, mu_tilde_t), (S.beta_tilde_t, posterior_variance))
            + RECURSION,
            check=log_equal,
        ),
    )
    return Derivation(
        name=NAME,
        title=TITLE,
        summary=(
            "Given x_0, the step back from x_t is Gaussian with a mean that mixes x_t and x_0 "
            "and a variance β̃_t slightly below β_t; both follow from Bayes' rule by completing "
            "the square."
        ),
        steps=steps,
        results={
            "posterior_mean_coef1": posterior_mean_coef1,
            "posterior_mean_coef2": posterior_mean_coef2,
            "posterior_variance": posterior_variance,
            "mu_tilde_t": mu_tilde_t,
        },
        notes=(
            "At t = 1, ᾱ_0 = 1 gives β̃_1 = 0, coef1 = 1, coef2 = 0: the posterior is a point mass at x_0.",
        ),
    )


@functools.cache
def derive() -> Derivation:
    """Build and verify every step (cached); raises DerivationError if one fails."""
    return build().verify()
