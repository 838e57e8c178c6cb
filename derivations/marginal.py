"""q(x_t | x_0) = 𝒩(x_t; √ᾱ_t x_0, (1 - ᾱ_t) I)  (Ho et al. 2020, eq. 4).

The forward process adds Gaussian noise one step at a time (eq. 2):
x_t = √α_t x_{t-1} + √(1-α_t) z with z ~ 𝒩(0, I) and β_t = 1 - α_t.  Two steps expand to a
sum of two independent zero-mean Gaussians, which merge into one (checked through their
characteristic function and their variance); by induction on t, with ᾱ_t = α_t ᾱ_{t-1}, any
number of steps collapse to the closed form x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε, ε ~ 𝒩(0, I).  The
closed form is also checked by explicit expansion for t = 1..5.  Everything is per coordinate
(the covariances are multiples of I), so the scalar case is the whole story.

Results (sympy expressions; :func:`derivations.numeric` lambdifies them):

- ``x_t_mean_coef``: √ᾱ_t, the coefficient of x_0 in 𝔼[x_t | x_0];
- ``x_t_variance``: 1 - ᾱ_t = Var[x_t | x_0];
- ``alpha_bar_t``: α_t ᾱ_{t-1}, the recursion for ᾱ_t.
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy import I, exp, sqrt

from derivations import symbols as S
from derivations.step import EQ_IN_LAW, Derivation, Step, is_zero, same_law

NAME = "marginal"
TITLE = "q(x_t | x_0): the forward process in closed form (eq. 4)"

x_t_mean_coef = sqrt(S.alpha_bar_t)
x_t_variance = 1 - S.alpha_bar_t
alpha_bar_recursion = S.alpha_t * S.alpha_bar_tm1


def forward_step(x_prev: sp.Expr, alpha: sp.Expr, noise: sp.Symbol) -> sp.Expr:
    """One forward step x_prev -> √α x_prev + √(1-α) noise  (eq. 2, β = 1 - α)."""
    return sqrt(alpha) * x_prev + sqrt(1 - alpha) * noise


def closed_form(mean_coef: sp.Expr, variance: sp.Expr, noise: sp.Symbol, x0=S.x_0) -> sp.Expr:
    """√ᾱ x_0 + √(1-ᾱ) ε written with the given mean coefficient and variance."""
    return mean_coef * x0 + sqrt(variance) * noise


_ALPHAS = (S.alpha_1, S.alpha_2, S.alpha_3, S.alpha_4, S.alpha_5)
_ZS = (S.z_1, S.z_2, S.z_3, S.z_4, S.z_5)


def explicit_expansion(t: int) -> tuple[sp.Expr, sp.Expr]:
    """(x_t unrolled from x_0 with noises z_1..z_t, the closed form with ᾱ_t = α_1⋯α_t)."""
    x = S.x_0
    for i in range(t):
        x = forward_step(x, _ALPHAS[i], _ZS[i])
    alpha_bar = sp.Mul(*_ALPHAS[:t])
    return sp.expand(x), closed_form(sqrt(alpha_bar), 1 - alpha_bar, S.eps)


def _check_explicit(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """The displayed case and every t = 1..5: both sides have the same law."""
    return same_law(lhs, rhs) and all(same_law(*explicit_expansion(t)) for t in range(1, 6))


def _check_normal_cf(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """𝔼[e^{iuz}] for z ~ 𝒩(0, 1) by computing the Gaussian integral with sympy."""
    arg = lhs.args[0]  # lhs is Expect(exp(i u z))
    integral = sp.integrate(arg * S.gaussian_density(S.z, 0, 1), (S.z, -sp.oo, sp.oo))
    return is_zero(integral - rhs)


def build() -> Derivation:
    """The steps (unverified); :func:`derive` verifies them."""
    a, am1, ab, abm1 = S.alpha_t, S.alpha_tm1, S.alpha_bar_t, S.alpha_bar_tm1
    step_t = forward_step(S.x_tm1, a, S.z_1)  # x_t from x_{t-1}
    step_tm1 = forward_step(S.x_tm2, am1, S.z_2)  # x_{t-1} from x_{t-2}
    defs = ((S.x_t, step_t), (S.x_tm1, step_tm1))
    noise_two = sqrt(a * (1 - am1)) * S.z_2 + sqrt(1 - a) * S.z_1
    hypothesis = closed_form(sqrt(abm1), 1 - abm1, S.eps_tm1)
    closed = closed_form(x_t_mean_coef, x_t_variance, S.eps)
    recursion = (ab, alpha_bar_recursion)
    shown_t2 = explicit_expansion(2)[0]  # x_2 unrolled from x_0
    shown_t2_closed = closed_form(sqrt(S.alpha_bar_2), 1 - S.alpha_bar_2, S.eps)

    steps = (
        Step(
            "forward-step",
            S.x_t,
            step_t,
            "forward process, one step: q(x_t|x_{t-1}) = N(√α_t x_{t-1}, β_t), β_t = 1 - α_t, "
            "z_1 ~ N(0, 1) (the source writes α_{t-1} here: an off-by-one)",
            "eq. 2",
            given=((S.x_t, step_t),),
            premise=True,
        ),
        Step(
            "previous-step",
            S.x_tm1,
            step_tm1,
            "the same one step earlier, with its own noise z_2, independent of z_1",
            "eq. 2",
            given=((S.x_tm1, step_tm1),),
            premise=True,
        ),
        Step(
            "two-step",
            S.x_t,
            sqrt(a * am1) * S.x_tm2 + noise_two,
            "substitute x_{t-1} into x_t and multiply out",
            given=defs,
        ),
        Step(
            "normal-cf",
            S.Expect(exp(I * S.u * S.z)),
            exp(-S.u**2 / 2),
            "characteristic function of z ~ N(0, 1): the Gaussian integral ∫ e^{iuz} N(z; 0, 1) dz",
            check=_check_normal_cf,
        ),
        Step(
            "merge-cf",
            S.Expect(exp(I * S.s * noise_two)),
            exp(-(1 - a * am1) * S.s**2 / 2),
            "z_1, z_2 independent: the characteristic function factorises into two Gaussian ones; "
            "the product is that of N(0, 1 - α_t α_{t-1})",
        ),
        Step(
            "merge-variance",
            S.Var(noise_two),
            1 - a * am1,
            "variances of independent terms add: α_t(1 - α_{t-1}) + (1 - α_t) = 1 - α_t α_{t-1}",
        ),
        Step(
            "two-step-merged",
            S.x_t,
            closed_form(sqrt(a * am1), 1 - a * am1, S.z, x0=S.x_tm2),
            "the two noises merge into one z ~ N(0, 1) (equal in distribution given x_{t-2})",
            given=defs,
            relation=EQ_IN_LAW,
        ),
        Step(
            "base-case",
            S.x_1,
            closed_form(sqrt(S.alpha_bar_1), 1 - S.alpha_bar_1, S.eps),
            "induction, base case t = 1: one step from x_0, and ᾱ_1 = α_1",
            given=((S.x_1, forward_step(S.x_0, S.alpha_1, S.z_1)), (S.alpha_bar_1, S.alpha_1)),
            relation=EQ_IN_LAW,
        ),
        Step(
            "hypothesis",
            S.x_tm1,
            hypothesis,
            "induction hypothesis at t - 1, with ε_{t-1} ~ N(0, 1) independent of the new noise z_1",
            given=((S.x_tm1, hypothesis),),
            relation=EQ_IN_LAW,
            premise=True,
        ),
        Step(
            "inductive-step",
            S.x_t,
            closed,
            "x_t = √α_t x_{t-1} + √(1 - α_t) z_1 with the hypothesis; merge the noises as above: "
            "α_t(1 - ᾱ_{t-1}) + 1 - α_t = 1 - ᾱ_t, using ᾱ_t = α_t ᾱ_{t-1}",
            "eq. 4",
            given=((S.x_t, step_t), (S.x_tm1, hypothesis), recursion),
            relation=EQ_IN_LAW,
        ),
        Step(
            "explicit-t1-5",
            shown_t2,
            shown_t2_closed,
            "check by explicit expansion: x_t unrolled from x_0 has the closed-form law for "
            "t = 1, ..., 5 (t = 2 shown, ᾱ_2 = α_1 α_2)",
            given=((S.alpha_bar_2, S.alpha_1 * S.alpha_2),),
            relation=EQ_IN_LAW,
            check=_check_explicit,
        ),
        Step(
            "mean",
            S.Expect(S.x_t, S.x_0),
            x_t_mean_coef * S.x_0,
            "the mean of the closed form (𝔼[ε] = 0)",
            "eq. 4",
            given=((S.x_t, closed),),
        ),
        Step(
            "variance",
            S.Var(S.x_t, S.x_0),
            x_t_variance,
            "the variance of the closed form (Var[ε] = 1)",
            "eq. 4",
            given=((S.x_t, closed),),
        ),
        Step(
            "gaussian",
            S.Expect(exp(I * S.s * S.x_t), S.x_0),
            exp(I * S.s * x_t_mean_coef * S.x_0 - x_t_variance * S.s**2 / 2),
            "the characteristic function of N(√ᾱ_t x_0, 1 - ᾱ_t): "
            "q(x_t | x_0) = N(x_t; √ᾱ_t x_0, (1 - ᾱ_t) I)",
            "eq. 4",
            given=((S.x_t, closed),),
        ),
    )
    return Derivation(
        name=NAME,
        title=TITLE,
        summary=(
            "Noise added step by step merges into one Gaussian: after t steps "
            "x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε with ᾱ_t = α_1 α_2 ⋯ α_t, so x_t can be sampled "
            "from x_0 in one shot."
        ),
        steps=steps,
        results={
            "x_t_mean_coef": x_t_mean_coef,
            "x_t_variance": x_t_variance,
            "alpha_bar_t": alpha_bar_recursion,
        },
        notes=(
            "Per coordinate: the covariances are multiples of I, so each pixel follows the scalar law.",
            "With T = 300 and the linear schedule 1e-4..0.02, √ᾱ_T ≈ 0.22: x_T still holds a fifth "
            "of the signal, not pure noise.",
        ),
    )


@functools.cache
def derive() -> Derivation:
    """Build and verify every step (cached); raises DerivationError if one fails."""
    return build().verify()
