"""x_0-, ε- and v-prediction, the conversions between them, and their loss weights
(Ho et al. 2020, eqs. 4, 15; Salimans & Ho 2022, §4 and Appendix D; Kingma et al. 2021).

Given x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq. 4), a network may predict x_0, the noise ε, or the
velocity v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022, who write α_t = √ᾱ_t, σ_t = √(1-ᾱ_t)).
(x_t, v) is (x_0, ε) rotated by the angle φ_t with cos φ_t = √ᾱ_t, sin φ_t = √(1-ᾱ_t), so each
of x_0, ε, v follows from x_t and any one of the others, and the inverse rotation gives
x_0 = √ᾱ_t x_t - √(1-ᾱ_t) v and ε = √(1-ᾱ_t) x_t + √ᾱ_t v (App. D).

Every conversion is affine in the predicted quantity, so a prediction converted the same way
has an error that is a fixed multiple of the original error.  Per coordinate, with
SNR(t) = ᾱ_t/(1-ᾱ_t) (Kingma et al. 2021):

    (x_0 - x̂_0)² = (ε - ε_θ)² / SNR(t)                       [x̂_0 from ε_θ]
    (v - v_θ)²   = (1 + SNR(t)) (x_0 - x̂_0)²                 [x̂_0 from v_θ]
    (v - v_θ)²   = (1 + SNR(t))/SNR(t) · (ε - ε_θ)²          [ε_θ from v_θ]

Results (sympy expressions in alpha_bar_t, x_t, x_0, eps, v; conversions are named
``<target>_from_<inputs besides x_t>``, weights ``<target>_loss_weight[_<other>]``):

- ``x_0_from_eps``: (x_t - √(1-ᾱ_t) ε)/√ᾱ_t  (eq. 15);
- ``eps_from_x_0``: (x_t - √ᾱ_t x_0)/√(1-ᾱ_t);
- ``v_from_eps_x_0``: √ᾱ_t ε - √(1-ᾱ_t) x_0, the definition of v (no x_t);
- ``x_0_from_v``: √ᾱ_t x_t - √(1-ᾱ_t) v;
- ``eps_from_v``: √(1-ᾱ_t) x_t + √ᾱ_t v;
- ``v_from_eps``: (ε - √(1-ᾱ_t) x_t)/√ᾱ_t;
- ``v_from_x_0``: (√ᾱ_t x_t - x_0)/√(1-ᾱ_t);
- ``x0_loss_weight``: (1-ᾱ_t)/ᾱ_t = 1/SNR(t), the factor taking (ε - ε_θ)² to (x_0 - x̂_0)²;
- ``v_loss_weight_x0``: 1/(1-ᾱ_t) = 1 + SNR(t), the factor taking (x_0 - x̂_0)² to (v - v_θ)²;
- ``v_loss_weight_eps``: 1/ᾱ_t = (1 + SNR(t))/SNR(t), the factor taking (ε - ε_θ)² to (v - v_θ)²;
- ``snr``: SNR(t) = ᾱ_t/(1-ᾱ_t)  (the same as in 'elbo').
"""

from __future__ import annotations

import functools

from sympy import sqrt

from derivations import elbo as E
from derivations import mean_eps as M
from derivations import symbols as S
from derivations.step import Derivation, Step

NAME = "parametrizations"
TITLE = "x_0-, ε- and v-prediction: conversions and loss weights (Salimans & Ho 2022, App. D)"

ab, xt, x0, eps, v = S.alpha_bar_t, S.x_t, S.x_0, S.eps, S.v

forward = M.reparam  # x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq. 4)
x_0_from_eps = M.x_0_from_eps
eps_from_x_0 = (xt - sqrt(ab) * x0) / sqrt(1 - ab)
v_from_eps_x_0 = sqrt(ab) * eps - sqrt(1 - ab) * x0
x_0_from_v = sqrt(ab) * xt - sqrt(1 - ab) * v
eps_from_v = sqrt(1 - ab) * xt + sqrt(ab) * v
v_from_eps = (eps - sqrt(1 - ab) * xt) / sqrt(ab)
v_from_x_0 = (sqrt(ab) * xt - x0) / sqrt(1 - ab)

snr = E.snr
x0_loss_weight = (1 - ab) / ab
v_loss_weight_x0 = 1 / (1 - ab)
v_loss_weight_eps = 1 / ab

SNR_DEF = E.SNR_DEFS[:1]  # SNR(t) = ᾱ_t/(1-ᾱ_t)


def build() -> Derivation:
    """The steps (unverified); :func:`derive` verifies them."""
    fwd = ((xt, forward),)
    v_def = ((v, v_from_eps_x_0),)
    snr_t = S.SNR(S.t)
    # the predictions, converted from the one the network outputs, exactly as the targets are
    x0_hat_from_eps = ((S.x_hat_0, x_0_from_eps.subs(eps, S.eps_theta)),)
    x0_hat_from_v = ((S.x_hat_0, x_0_from_v.subs(v, S.v_theta)),)
    eps_hat_from_v = ((S.eps_theta, eps_from_v.subs(v, S.v_theta)),)
    steps = (
        Step(
            "forward",
            xt,
            forward,
            "the forward marginal (derivation 'marginal'), ε ~ N(0, I)",
            "eq. 4",
            given=fwd,
            premise=True,
        ),
        Step(
            "v",
            v,
            v_from_eps_x_0,
            "define the velocity v (Salimans & Ho write α_t = √ᾱ_t, σ_t = √(1-ᾱ_t))",
            "Salimans & Ho 2022, Sec. 4",
            given=v_def,
            premise=True,
        ),
        Step(
            "rotation",
            xt**2 + v**2,
            x0**2 + eps**2,
            "(x_t, v) is (x_0, ε) rotated by the angle whose cosine is √ᾱ_t and sine √(1-ᾱ_t): lengths are kept",
            "Salimans & Ho 2022, App. D",
            given=fwd + v_def,
        ),
        Step(
            "x0-from-eps",
            x0,
            x_0_from_eps,
            "solve the forward marginal for x_0 (derivation 'mean-eps')",
            "eq. 15",
            given=fwd,
        ),
        Step(
            "eps-from-x0",
            eps,
            eps_from_x_0,
            "solve it for ε instead",
            "eq. 4",
            given=fwd,
        ),
        Step(
            "x0-from-v",
            x0,
            x_0_from_v,
            "rotate back: √ᾱ_t x_t - √(1-ᾱ_t) v = (ᾱ_t + 1 - ᾱ_t) x_0",
            "Salimans & Ho 2022, App. D",
            given=fwd + v_def,
        ),
        Step(
            "eps-from-v",
            eps,
            eps_from_v,
            "and the other coordinate: √(1-ᾱ_t) x_t + √ᾱ_t v = ε",
            "Salimans & Ho 2022, App. D",
            given=fwd + v_def,
        ),
        Step(
            "v-from-eps",
            v,
            v_from_eps,
            "v from x_t and ε: put x_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t into the definition",
            given=fwd + v_def,
        ),
        Step(
            "v-from-x0",
            v,
            v_from_x_0,
            "v from x_t and x_0: put ε = (x_t - √ᾱ_t x_0)/√(1-ᾱ_t) into the definition",
            given=fwd + v_def,
        ),
        Step(
            "snr",
            snr_t,
            snr,
            "signal-to-noise ratio of x_t (Kingma et al. 2021; derivation 'elbo')",
            given=SNR_DEF,
            premise=True,
        ),
        Step(
            "x0-error",
            (x0 - S.x_hat_0) ** 2,
            (eps - S.eps_theta) ** 2 / snr_t,
            "ε-prediction, x̂_0 = (x_t - √(1-ᾱ_t) ε_θ)/√ᾱ_t: x_0 - x̂_0 = -√(1-ᾱ_t)/√ᾱ_t (ε - ε_θ), "
            "weight (1-ᾱ_t)/ᾱ_t = 1/SNR(t)",
            "eq. 15",
            given=((x0, x_0_from_eps),) + x0_hat_from_eps + SNR_DEF,
        ),
        Step(
            "v-error-x0",
            (v - S.v_theta) ** 2,
            (1 + snr_t) * (x0 - S.x_hat_0) ** 2,
            "v-prediction, x̂_0 = √ᾱ_t x_t - √(1-ᾱ_t) v_θ: x_0 - x̂_0 = -√(1-ᾱ_t)(v - v_θ), and "
            "weight 1/(1-ᾱ_t) = 1 + SNR(t)",
            "Salimans & Ho 2022, Sec. 4",
            given=v_def + x0_hat_from_v + fwd + SNR_DEF,
        ),
        Step(
            "v-error-eps",
            (v - S.v_theta) ** 2,
            (1 + snr_t) / snr_t * (eps - S.eps_theta) ** 2,
            "v-prediction, ε_θ = √(1-ᾱ_t) x_t + √ᾱ_t v_θ: ε - ε_θ = √ᾱ_t (v - v_θ), and "
            "weight 1/ᾱ_t = (1 + SNR(t))/SNR(t)",
            "Salimans & Ho 2022, Sec. 4",
            given=v_def + eps_hat_from_v + fwd + SNR_DEF,
        ),
    )
    return Derivation(
        name=NAME,
        title=TITLE,
        summary=(
            "A network can predict the clean data x_0, the noise ε or the velocity v; each follows "
            "from x_t and any other, and the squared errors differ by SNR-dependent weights: "
            "training on one of them is training on another with a re-weighted loss."
        ),
        steps=steps,
        results={
            "x_0_from_eps": x_0_from_eps,
            "eps_from_x_0": eps_from_x_0,
            "v_from_eps_x_0": v_from_eps_x_0,
            "x_0_from_v": x_0_from_v,
            "eps_from_v": eps_from_v,
            "v_from_eps": v_from_eps,
            "v_from_x_0": v_from_x_0,
            "x0_loss_weight": x0_loss_weight,
            "v_loss_weight_x0": v_loss_weight_x0,
            "v_loss_weight_eps": v_loss_weight_eps,
            "snr": snr,
        },
        notes=(
            "The weights hold whichever quantity the network outputs, as long as the other two are "
            "converted from it with the same formulas as the targets (the conversions are affine "
            "in the prediction).",
            "`x_0_from_eps` divides by √ᾱ_t and `v_from_x_0` by √(1-ᾱ_t); `x_0_from_v` and "
            "`eps_from_v` divide by nothing, so they stay finite at ᾱ_t = 0 (derivation 'zero-snr').",
        ),
    )


@functools.cache
def derive() -> Derivation:
    """Build and verify every step (cached); raises DerivationError if one fails."""
    return build().verify()
