"""DDIM: a family of non-Markovian forward processes with DDPM's marginals (Song et al. 2021).

For every choice of standard deviations σ_t, Song, Meng & Ermon (ICLR 2021, eq. 7) define

    q_σ(x_{t-1} | x_t, x_0) = 𝒩(√ᾱ_{t-1} x_0 + √(1 - ᾱ_{t-1} - σ_t²) · (x_t - √ᾱ_t x_0)/√(1 - ᾱ_t), σ_t² I).

Derived here, not assumed:

- if x_t has DDPM's marginal q(x_t | x_0) = 𝒩(√ᾱ_t x_0, (1 - ᾱ_t) I) (Ho et al. eq. 4), then
  x_{t-1} drawn from q_σ has q(x_{t-1} | x_0) = 𝒩(√ᾱ_{t-1} x_0, (1 - ᾱ_{t-1}) I), for every σ_t
  (so a network trained with DDPM's loss serves every member of the family; Song et al. Lemma 1);
- with σ_t(η) = η √((1 - ᾱ_{t-1})/(1 - ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t-1}) (Song et al. eq. 16), η = 1 gives
  exactly DDPM's posterior: σ_t² = β̃_t and the mean is μ̃_t (Ho et al. eq. 7); η = 0 gives
  σ_t = 0, a deterministic map x_t ↦ x_{t-1} ("DDIM");
- the step in terms of the predicted noise (Song et al. eq. 12):
  x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - σ_t²) ε_θ + σ_t z, with x̂_0 = (x_t - √(1 - ᾱ_t) ε_θ)/√ᾱ_t;
- step skipping: the marginal argument uses only ᾱ at the two steps it joins, so it holds on any
  increasing subsequence τ_1 < ... < τ_S of 1..T with ᾱ_{t-1} read as ᾱ at the previous step of
  the subsequence (Song et al. §4.2); after the last step the previous ᾱ is ᾱ_0 = 1, which makes
  σ = 0 and returns x̂_0 itself.

In the symbols, ``alpha_bar_tm1`` is ᾱ at the previous step that the sampler visits (t - 1 without
skipping).  Results (sympy expressions):

- ``ddim_mean``: √ᾱ_{t-1} x_0 + √(1 - ᾱ_{t-1} - σ_t²)(x_t - √ᾱ_t x_0)/√(1 - ᾱ_t) (x_t, x_0, sigma_t);
- ``ddim_mean_eps``: √ᾱ_{t-1} x̂_0(x_t, ε) + √(1 - ᾱ_{t-1} - σ_t²) ε (x_t, eps, sigma_t);
- ``sigma_eta``: σ_t(η) (eta, alpha_bar_t, alpha_bar_tm1);
- ``sigma_eta_squared_at_1``: σ_t(1)² = β̃_t written with ᾱ only, (1 - ᾱ_{t-1})/(1 - ᾱ_t) (1 - ᾱ_t/ᾱ_{t-1}).
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy import sqrt

from derivations import mean_eps as M
from derivations import posterior as P
from derivations import symbols as S
from derivations.step import EQ_IN_LAW, Derivation, Step, is_zero

NAME = "ddim"
TITLE = "DDIM: one family of samplers with DDPM's marginals, η between DDIM and DDPM (Song et al. eqs. 7, 12, 16)"

a, ab, abm1, b = S.alpha_t, S.alpha_bar_t, S.alpha_bar_tm1, S.beta_t
xt, xtm1, x0, eps, sig, eta = S.x_t, S.x_tm1, S.x_0, S.eps, S.sigma_t, S.eta

#: the coefficient of the "direction pointing to x_t": √(1 - ᾱ_{t-1} - σ_t²)
direction_coef = sqrt(1 - abm1 - sig**2)
ddim_mean = sqrt(abm1) * x0 + direction_coef * (xt - sqrt(ab) * x0) / sqrt(1 - ab)
ddim_mean_eps = sqrt(abm1) * M.x_0_from_eps + direction_coef * eps
sigma_eta = eta * sqrt((1 - abm1) / (1 - ab)) * sqrt(1 - ab / abm1)
sigma_eta_squared_at_1 = (1 - abm1) / (1 - ab) * (1 - ab / abm1)

#: the forward-process facts: ᾱ_t = α_t ᾱ_{t-1} and β_t = 1 - α_t (without step skipping)
RECURSION = P.RECURSION


def positive_roots_equal(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """lhs = rhs for two quantities known to be positive, by the exact identity lhs² = rhs².

    Used where sympy cannot take a square root apart because it does not know that a factor such
    as 1 - ᾱ_{t-1} is positive (it is: 0 < ᾱ < 1)."""
    return is_zero(sp.expand(lhs**2) - sp.expand(rhs**2))


def build() -> Derivation:
    """The steps (unverified); :func:`derive` verifies them."""
    family = S.N(xtm1, ddim_mean, sig**2)
    x_t_marginal = sqrt(ab) * x0 + sqrt(1 - ab) * S.z_1
    draw = ddim_mean + sig * S.z_2  # x_{t-1} ~ q_σ(x_{t-1} | x_t, x_0)
    eta1 = ((eta, 1),)
    coef_eta1 = sqrt(a) * (1 - abm1) / sqrt(1 - ab)  # √(1 - ᾱ_{t-1} - β̃_t), derived below
    x0_hat = M.x_0_from_eps.subs(eps, S.eps_theta)
    steps = (
        Step(
            "family",
            S.q(xtm1, xt, x0),
            family,
            "the DDIM family, one member per choice of σ_t ≥ 0: a Gaussian whose mean moves "
            "from x_0 towards x_t",
            "Song et al. eq. 7",
            given=((S.q(xtm1, xt, x0), family),),
            premise=True,
        ),
        Step(
            "marginal-preserved",
            xtm1,
            sqrt(abm1) * x0 + sqrt(1 - abm1) * S.z,
            "if x_t = √ᾱ_t x_0 + √(1-ᾱ_t) z_1 (eq. 4), then x_{t-1} = mean + σ_t z_2 has DDPM's "
            "marginal q(x_{t-1} | x_0), for every σ_t (independent Gaussians add their variances)",
            "Song et al. Lemma 1",
            given=((xtm1, draw), (xt, x_t_marginal)),
            relation=EQ_IN_LAW,
        ),
        Step(
            "sigma-eta",
            sig,
            sigma_eta,
            "the family's σ_t indexed by η ≥ 0",
            "Song et al. eq. 16",
            given=((sig, sigma_eta),),
            premise=True,
        ),
        Step(
            "eta1-variance",
            sigma_eta.subs(eta1) ** 2,
            P.posterior_variance,
            "η = 1: σ_t² = (1-ᾱ_{t-1})/(1-ᾱ_t) · (1 - α_t) = β̃_t, DDPM's posterior variance",
            "Ho et al. eq. 7",
            given=RECURSION,
        ),
        Step(
            "eta1-direction",
            direction_coef.subs(sig**2, P.posterior_variance),
            coef_eta1,
            "then 1 - ᾱ_{t-1} - β̃_t = α_t (1-ᾱ_{t-1})²/(1-ᾱ_t); both sides are positive, "
            "so equal squares suffice",
            given=RECURSION,
            check=positive_roots_equal,
        ),
        Step(
            "eta1-mean",
            ddim_mean.subs(direction_coef, coef_eta1),
            P.mu_tilde_t,
            "so at η = 1 the family's mean is μ̃_t(x_t, x_0): DDPM's posterior, the η = 1 member "
            "is DDPM's step",
            "Ho et al. eq. 7",
            given=RECURSION,
        ),
        Step(
            "eta0",
            sigma_eta.subs(eta, 0),
            sp.Integer(0),
            "η = 0: σ_t = 0, x_{t-1} is a deterministic function of (x_t, x_0): the DDIM sampler",
            "Song et al. §4.1",
        ),
        Step(
            "x0-hat",
            S.x_hat_0,
            x0_hat,
            "a noise predictor gives x̂_0 = (x_t - √(1-ᾱ_t) ε_θ)/√ᾱ_t (derivation 'mean-eps')",
            "Song et al. eq. 9",
            given=((S.x_hat_0, x0_hat),),
            premise=True,
        ),
        Step(
            "direction",
            (xt - sqrt(ab) * x0_hat) / sqrt(1 - ab),
            S.eps_theta,
            "with x_0 = x̂_0, the direction (x_t - √ᾱ_t x_0)/√(1-ᾱ_t) is the predicted noise itself",
        ),
        Step(
            "eps-step",
            ddim_mean.subs(x0, x0_hat) + sig * S.z,
            sqrt(abm1) * x0_hat + direction_coef * S.eps_theta + sig * S.z,
            "the sampling step: predicted x_0, the direction pointing to x_t, random noise",
            "Song et al. eq. 12",
        ),
        Step(
            "eta1-eps-step",
            (sqrt(abm1) * x0_hat + coef_eta1 * S.eps_theta),
            M.mu_tilde_t_eps.subs(eps, S.eps_theta),
            "at η = 1 the ε-form step is Algorithm 2's mean (x_t - β_t/√(1-ᾱ_t) ε_θ)/√α_t",
            "Ho et al. eq. 11",
            given=RECURSION,
        ),
        Step(
            "skip",
            xtm1,
            sqrt(abm1) * x0 + sqrt(1 - abm1) * S.z,
            "step skipping: 'marginal-preserved' used only ᾱ at the two steps it joins, never "
            "α_t = ᾱ_t/ᾱ_{t-1} of a single step, so on any increasing subsequence τ of 1..T the "
            "jump from τ_i to τ_{i-1} (here ᾱ_{t-1} = ᾱ at τ_{i-1}) keeps the marginals",
            "Song et al. §4.2",
            given=((xtm1, draw), (xt, x_t_marginal)),
            relation=EQ_IN_LAW,
        ),
        Step(
            "last-sigma",
            sigma_eta.subs(abm1, 1),
            sp.Integer(0),
            "after the last visited step the previous ᾱ is ᾱ_0 = 1 (nothing noised yet): "
            "σ = 0 for every η",
        ),
        Step(
            "last-step",
            (sqrt(abm1) * x0_hat + direction_coef * S.eps_theta).subs({abm1: 1, sig: 0}),
            x0_hat,
            "and the last step returns x̂_0 itself (with ᾱ_0 read off the schedule's first entry "
            "instead, the output keeps a little of the predicted noise)",
        ),
    )
    return Derivation(
        name=NAME,
        title=TITLE,
        summary=(
            "A whole family of reverse steps shares DDPM's marginals, so one trained noise "
            "predictor serves all of them: η = 1 is DDPM's ancestral step, η = 0 a deterministic "
            "map, and the same step can jump over timesteps."
        ),
        steps=steps,
        results={
            "ddim_mean": ddim_mean,
            "ddim_mean_eps": ddim_mean_eps,
            "sigma_eta": sigma_eta,
            "sigma_eta_squared_at_1": sigma_eta_squared_at_1,
        },
        notes=(
            "Only the marginals q(x_t | x_0) are shared: the joint law of the whole chain differs "
            "between members, and with a trained (imperfect) ε_θ so do the samples.",
            "The η = 1 step on a subsequence is the DDPM posterior of the skipped process "
            "(ᾱ_t/ᾱ_{t-1} playing α_t).",
        ),
    )


@functools.cache
def derive() -> Derivation:
    """Build and verify every step (cached); raises DerivationError if one fails."""
    return build().verify()
