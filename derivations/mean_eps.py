"""μ̃_t in terms of the noise ε, and the sampling step  (Ho et al. 2020, eq. 11, Algorithm 2).

From the closed form x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq. 4), x_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t.
Substituted into the posterior mean μ̃_t(x_t, x_0) (eq. 7) this gives
μ̃_t = (x_t - β_t/√(1-ᾱ_t) ε)/√α_t, so a network that predicts ε gives the mean (eq. 11).
Sampling x_{t-1} ~ 𝒩(μ̃_t, β̃_t) is x_{t-1} = μ̃_t + √β̃_t z, z ~ 𝒩(0, I) (Algorithm 2,
line 4).  At t = 1, ᾱ_0 = 1 gives β̃_1 = 0: the last step adds no noise, and its mean is the
prediction of x_0 itself.

Results (sympy expressions in alpha_t, alpha_bar_t, alpha_bar_tm1, beta_t, x_t, eps):

- ``mu_tilde_t_eps``: (x_t - β_t/√(1-ᾱ_t) · ε)/√α_t, the posterior mean in terms of ε;
- ``x_0_from_eps``: (x_t - √(1-ᾱ_t) ε)/√ᾱ_t, x_0 recovered from x_t and ε;
- ``posterior_variance``: β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t (the same as in 'posterior').
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy import I, exp, sqrt

from derivations import posterior as P
from derivations import symbols as S
from derivations.step import Derivation, Step

NAME = "mean-eps"
TITLE = "μ̃_t in terms of ε, and the sampling step (eq. 11, Algorithm 2)"

a, ab, abm1, b = S.alpha_t, S.alpha_bar_t, S.alpha_bar_tm1, S.beta_t
xt, x0, eps = S.x_t, S.x_0, S.eps

x_0_from_eps = (xt - sqrt(1 - ab) * eps) / sqrt(ab)
mu_tilde_t_eps = (xt - b / sqrt(1 - ab) * eps) / sqrt(a)
posterior_variance = P.posterior_variance
reparam = sqrt(ab) * x0 + sqrt(1 - ab) * eps


def build() -> Derivation:
    """The steps (unverified); :func:`derive` verifies them."""
    coef1, coef2 = P.posterior_mean_coef1, P.posterior_mean_coef2
    mu_def = (S.mu_tilde_t, P.mu_tilde_t)
    sampler_eps = mu_tilde_t_eps.subs(eps, S.eps_theta) + sqrt(S.beta_tilde_t) * S.z
    # t = 1: ᾱ_0 = 1 and ᾱ_1 = α_1
    t1 = {ab: S.alpha_bar_1, a: S.alpha_1, b: S.beta_1, xt: S.x_1}
    steps = (
        Step(
            "marginal",
            xt,
            reparam,
            "the closed form (derivation 'marginal'), ε ~ N(0, I)",
            "eq. 4",
            given=((xt, reparam),),
            premise=True,
        ),
        Step(
            "x0",
            x0,
            x_0_from_eps,
            "solve it for x_0",
            "eq. 15",
            given=((xt, reparam),),
        ),
        Step(
            "posterior-mean",
            S.mu_tilde_t,
            P.mu_tilde_t,
            "the posterior mean (derivation 'posterior')",
            "eq. 7",
            given=(mu_def,),
            premise=True,
        ),
        Step(
            "substitute",
            S.mu_tilde_t,
            coef1 * x_0_from_eps + coef2 * xt,
            "replace x_0 by its expression in x_t and ε",
            given=(mu_def, (xt, reparam)),
        ),
        Step(
            "coef-x_t",
            coef2 + coef1 / sqrt(ab),
            1 / sqrt(a),
            "collect x_t, with ᾱ_t = α_t ᾱ_{t-1} and β_t = 1 - α_t",
            given=P.RECURSION,
        ),
        Step(
            "coef-eps",
            coef1 * sqrt(1 - ab) / sqrt(ab),
            b / (sqrt(a) * sqrt(1 - ab)),
            "collect ε",
            given=P.RECURSION,
        ),
        Step(
            "mean-eps",
            S.mu_tilde_t,
            mu_tilde_t_eps,
            "so the mean needs only x_t and the noise: predict ε, get μ̃_t",
            "eq. 11",
            given=(mu_def, (x0, x_0_from_eps)) + P.RECURSION,
        ),
        Step(
            "sample",
            S.Expect(exp(I * S.s * (S.mu_tilde_t + sqrt(S.beta_tilde_t) * S.z))),
            exp(I * S.s * S.mu_tilde_t - S.beta_tilde_t * S.s**2 / 2),
            "μ̃_t + √β̃_t z with z ~ N(0, 1) has the characteristic function of N(μ̃_t, β̃_t): "
            "it samples q(x_{t-1} | x_t, x_0)",
        ),
        Step(
            "sampling-step",
            S.x_tm1,
            sampler_eps,
            "the sampler: the network's ε_θ(x_t, t) in place of ε, plus √β̃_t z",
            "Alg. 2",
            given=(
                (S.x_tm1, S.mu_tilde_t + sqrt(S.beta_tilde_t) * S.z),
                (S.mu_tilde_t, mu_tilde_t_eps.subs(eps, S.eps_theta)),
            ),
            premise=True,
        ),
        Step(
            "t1-variance",
            S.beta_tilde_1,
            sp.Integer(0),
            "t = 1: ᾱ_0 = 1 (empty product), so β̃_1 = (1 - ᾱ_0)/(1 - ᾱ_1) · β_1 = 0: no noise is added",
            given=(
                (S.beta_tilde_1, posterior_variance.xreplace({abm1: S.alpha_bar_0, ab: S.alpha_bar_1, b: S.beta_1})),
                (S.alpha_bar_0, 1),
            ),
        ),
        Step(
            "t1-mean",
            mu_tilde_t_eps.xreplace(t1),
            x_0_from_eps.xreplace(t1),
            "t = 1: with ᾱ_1 = α_1 and β_1 = 1 - α_1 the last mean is the prediction of x_0 itself",
            given=((S.alpha_bar_1, S.alpha_1), (S.beta_1, 1 - S.alpha_1)),
        ),
    )
    return Derivation(
        name=NAME,
        title=TITLE,
        summary=(
            "The posterior mean written with the noise ε instead of x_0: a network trained to "
            "predict ε gives the mean of each reverse step, and sampling adds √β̃_t z, except at "
            "t = 1 where β̃_1 = 0."
        ),
        steps=steps,
        results={
            "mu_tilde_t_eps": mu_tilde_t_eps,
            "x_0_from_eps": x_0_from_eps,
            "posterior_variance": posterior_variance,
        },
        notes=(
            "The source's `if t == 0: return model_mean` is this t = 1 case (0-based index 0); "
            "for a batch it must be a per-sample mask, not a Python `if` on a tensor.",
        ),
    )


@functools.cache
def derive() -> Derivation:
    """Build and verify every step (cached); raises DerivationError if one fails."""
    return build().verify()
