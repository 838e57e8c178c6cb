"""Zero terminal SNR: rescaling a schedule so that x_T is pure noise, and why ε-prediction then
fails at t = T while v-prediction does not  (Lin et al. 2024, "Common diffusion noise schedules
and sample steps are flawed", §3.1, Algorithm 1, §3.2).

With the first and last values √ᾱ_1 and √ᾱ_T of a schedule, Algorithm 1 shifts and scales every
√ᾱ_t by the same affine map,

    √ᾱ'_t = rescale(√ᾱ_t) = (√ᾱ_t - √ᾱ_T) · √ᾱ_1 / (√ᾱ_1 - √ᾱ_T),

so that √ᾱ'_T = 0 and √ᾱ'_1 = √ᾱ_1, and recomputes the betas from the rescaled cumulative
products: β'_t = 1 - ᾱ'_t/ᾱ'_{t-1} with ᾱ'_0 = 1, hence β'_1 = β_1 and β'_T = 1 (the last step
destroys all the signal), and SNR'(T) = 0.  At t = T then x_T = ε exactly: the ε-target is the
input itself and says nothing about x_0, and x_0 = (x_T - √(1-ᾱ'_T) ε)/√ᾱ'_T (eq. 15) is 0/0;
the v-target is v = -x_0 and x_0 = √ᾱ'_T x_T - √(1-ᾱ'_T) v = -v is finite (Salimans & Ho 2022,
derivation 'parametrizations').  The map needs ᾱ_1 > ᾱ_T; for a decreasing ᾱ_t it keeps the order
(its slope is positive), so every β'_t lies in (0, 1].

Results (sympy expressions):

- ``sqrt_alpha_bar_rescaled``: (√ᾱ_t - √ᾱ_T) √ᾱ_1/(√ᾱ_1 - √ᾱ_T), in the original alpha_bar_t,
  alpha_bar_1 (the first value, alphas_cumprod[0]) and alpha_bar_T (the last, alphas_cumprod[-1]);
- ``alpha_bar_rescaled``: its square ᾱ'_t = ᾱ_1 (√ᾱ_t - √ᾱ_T)²/(√ᾱ_1 - √ᾱ_T)²;
- ``beta_rescaled``: 1 - ᾱ_t/ᾱ_{t-1}, to be evaluated at the *rescaled* cumulative products:
  alpha_bar_t = ᾱ'_t (alphas_cumprod rescaled) and alpha_bar_tm1 = ᾱ'_{t-1} with ᾱ'_0 = 1
  (alphas_cumprod_prev of the rescaled array), valid for every t including t = 1 and t = T;
- ``beta_rescaled_from_original``: 1 - (√ᾱ_t - √ᾱ_T)²/(√ᾱ_{t-1} - √ᾱ_T)², the same β'_t in the
  original alpha_bar_t, alpha_bar_tm1 and alpha_bar_T, for t ≥ 2 only (at t = 1, β'_1 = β_1);
- ``x_0_from_v_at_T``: -v, x_0 from the v-prediction at t = T.
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy import sqrt

from derivations import marginal as Mg
from derivations import parametrizations as P
from derivations import symbols as S
from derivations.step import Derivation, Step, is_zero

NAME = "zero-snr"
TITLE = "zero terminal SNR: rescale √ᾱ_t so x_T is pure noise; ε- vs v-prediction at t = T (Lin et al. 2024)"

a, ab, abm1, b = S.alpha_t, S.alpha_bar_t, S.alpha_bar_tm1, S.beta_t
ab1, abT = S.alpha_bar_1, S.alpha_bar_T
xt, x0, eps, v = S.x_t, S.x_0, S.eps, S.v


def _affine(s: sp.Expr) -> sp.Expr:
    """Algorithm 1 on one value s = √ᾱ: shift so √ᾱ_T goes to 0, scale so √ᾱ_1 stays."""
    return (s - sqrt(abT)) * sqrt(ab1) / (sqrt(ab1) - sqrt(abT))


_s = sp.Dummy("s", positive=True)
#: the display function ``rescale`` as what it stands for
RESCALE = ((S.rescale, sp.Lambda(_s, _affine(_s))),)

sqrt_alpha_bar_rescaled = _affine(sqrt(ab))
alpha_bar_rescaled = ab1 * (sqrt(ab) - sqrt(abT)) ** 2 / (sqrt(ab1) - sqrt(abT)) ** 2
beta_rescaled = 1 - ab / abm1
beta_rescaled_from_original = 1 - (sqrt(ab) - sqrt(abT)) ** 2 / (sqrt(abm1) - sqrt(abT)) ** 2
x_0_from_v_at_T = -v


def _check_doit(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """Carry out the derivative with sympy, then compare exactly."""
    return is_zero(lhs.doit() - rhs.doit())


def _at_T(e: sp.Expr) -> sp.Expr:
    """A formula in ᾱ_t and x_t written at t = T of the rescaled schedule: √ᾱ_t -> rescale(√ᾱ_T)."""
    r_T = S.rescale(sqrt(abT))
    return e.subs(sqrt(ab), r_T).subs(ab, r_T**2).subs(xt, S.x_T)


def build() -> Derivation:
    """The steps (unverified); :func:`derive` verifies them."""
    r_t, r_tm1 = S.rescale(sqrt(ab)), S.rescale(sqrt(abm1))
    r_1, r_T = S.rescale(sqrt(ab1)), S.rescale(sqrt(abT))
    steps = (
        Step(
            "rescale",
            r_t,
            sqrt_alpha_bar_rescaled,
            "Algorithm 1: shift every √ᾱ_t so that the last becomes 0, then scale so that the first "
            "keeps its value; rescale(√ᾱ_t) is the new √ᾱ_t",
            "Lin et al. 2024, Alg. 1",
            given=RESCALE,
            premise=True,
        ),
        Step(
            "last",
            r_T,
            sp.Integer(0),
            "the last value is shifted to zero",
            "Lin et al. 2024, Sec. 3.1",
            given=RESCALE,
        ),
        Step(
            "first",
            r_1,
            sqrt(ab1),
            "the first value is unchanged",
            "Lin et al. 2024, Sec. 3.1",
            given=RESCALE,
        ),
        Step(
            "slope",
            sp.Derivative(S.rescale(S.x), S.x),
            sqrt(ab1) / (sqrt(ab1) - sqrt(abT)),
            "an affine map with slope > 0 (ᾱ_1 > ᾱ_T): a decreasing √ᾱ_t stays decreasing, from √ᾱ_1 to 0",
            given=RESCALE,
            check=_check_doit,
        ),
        Step(
            "alpha-bar",
            r_t**2,
            alpha_bar_rescaled,
            "square it: the rescaled cumulative product, the new ᾱ_t",
            "Lin et al. 2024, Alg. 1",
            given=RESCALE,
        ),
        Step(
            "beta",
            b,
            1 - ab / abm1,
            "any schedule: ᾱ_t = α_t ᾱ_{t-1} and β_t = 1 - α_t, so the betas follow from the cumulative "
            "products; Algorithm 1 recomputes them from the rescaled products, with 1 before t = 1",
            "eq. 4",
            given=((b, 1 - a), (ab, Mg.alpha_bar_recursion)),
        ),
        Step(
            "beta-rescaled",
            1 - r_t**2 / r_tm1**2,
            beta_rescaled_from_original,
            "t ≥ 2: the new β_t is 1 - (new ᾱ_t)/(new ᾱ_{t-1}); the scale factor cancels",
            "Lin et al. 2024, Alg. 1",
            given=RESCALE,
        ),
        Step(
            "beta-first",
            1 - r_1**2,
            S.beta_1,
            "t = 1: the product before it is 1 (empty) and is not rescaled, so the new β_1 = 1 - ᾱ_1 = β_1",
            given=RESCALE + ((S.beta_1, 1 - ab1),),
        ),
        Step(
            "beta-last",
            1 - r_T**2 / r_tm1**2,
            sp.Integer(1),
            "t = T (ᾱ_{t-1} = ᾱ_{T-1} > ᾱ_T, so the denominator is not 0): the new β_T is 1, the last "
            "step keeps none of the signal",
            "Lin et al. 2024, Sec. 3.1",
            given=RESCALE,
        ),
        Step(
            "snr-last",
            _at_T(P.snr),
            sp.Integer(0),
            "the terminal signal-to-noise ratio ᾱ_T/(1 - ᾱ_T) of the rescaled schedule is zero",
            "Lin et al. 2024, Sec. 3.1",
            given=RESCALE,
        ),
        Step(
            "x_T",
            S.x_T,
            eps,
            "so at t = T the forward marginal is pure noise, x_T = ε exactly",
            "eq. 4",
            given=((S.x_T, _at_T(P.forward)),) + RESCALE,
        ),
        Step(
            "eps-form-at-T",
            sp.denom(P.x_0_from_eps).subs(sqrt(ab), r_T) * x0,
            _at_T(sp.numer(P.x_0_from_eps)),
            "ε-prediction at t = T: eq. 15 times its denominator, now 0, reads 0 · x_0 = x_T - ε = 0; "
            "every x_0 fits (0/0), and the ε-target x_T carries nothing about x_0",
            "Lin et al. 2024, Sec. 3.2",
            given=((S.x_T, _at_T(P.forward)),) + RESCALE,
        ),
        Step(
            "v-at-T",
            v,
            -x0,
            "v-prediction at t = T: the target v = √ᾱ_T ε - √(1 - ᾱ_T) x_0 with the rescaled ᾱ_T = 0 is "
            "-x_0, all signal",
            "Lin et al. 2024, Sec. 3.2",
            given=((v, _at_T(P.v_from_eps_x_0)),) + RESCALE,
        ),
        Step(
            "x0-from-v-at-T",
            _at_T(P.x_0_from_v),
            x_0_from_v_at_T,
            "and x_0 = √ᾱ_T x_T - √(1 - ᾱ_T) v = -v (derivation 'parametrizations'): finite, no division",
            "Salimans & Ho 2022, App. D",
            given=RESCALE,
        ),
    )
    return Derivation(
        name=NAME,
        title=TITLE,
        summary=(
            "Common schedules leave signal in x_T, but sampling starts from pure noise. Rescaling √ᾱ_t "
            "affinely makes ᾱ_T = 0 (β_T = 1, SNR(T) = 0); then ε-prediction cannot recover x_0 at "
            "t = T, and v-prediction can."
        ),
        steps=steps,
        results={
            "sqrt_alpha_bar_rescaled": sqrt_alpha_bar_rescaled,
            "alpha_bar_rescaled": alpha_bar_rescaled,
            "beta_rescaled": beta_rescaled,
            "beta_rescaled_from_original": beta_rescaled_from_original,
            "x_0_from_v_at_T": x_0_from_v_at_T,
        },
        notes=(
            "beta_rescaled takes the rescaled arrays: alpha_bar_t = the rescaled alphas_cumprod, "
            "alpha_bar_tm1 = the same shifted by one with 1 in front; beta_rescaled_from_original "
            "takes the original arrays and holds for t ≥ 2 only.",
            "With the linear schedule 1e-4..0.02 and T = 1000, ᾱ_T ≈ 4e-5: small but not zero, so "
            "x_T still holds about 0.6% of x_0 (√ᾱ_T ≈ 0.0064).",
        ),
    )


@functools.cache
def derive() -> Derivation:
    """Build and verify every step (cached); raises DerivationError if one fails."""
    return build().verify()
