"""Tweedie's formula and the score: 𝔼[x_0 | x_t] = (x_t + (1-ᾱ_t) ∇log q(x_t))/√ᾱ_t and
∇log q(x_t) = -𝔼[ε | x_t]/√(1-ᾱ_t)  (Efron 2011; Song et al. 2021; Luo 2022; Ho et al. 2020, §3.2).

The forward marginal is x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε, ε ~ 𝒩(0, I) (Ho et al. 2020, eq. 4), so
q(x_t) = ∫ q(x_t | x_0) q(x_0) dx_0 with the Gaussian kernel q(x_t | x_0) = 𝒩(x_t; √ᾱ_t x_0, 1-ᾱ_t).
The kernel's gradient is (1-ᾱ_t) ∇_{x_t} q(x_t|x_0) = (√ᾱ_t x_0 - x_t) q(x_t|x_0); differentiating
under the integral sign and dividing by q(x_t) gives Tweedie's formula for *any* data density
q(x_0) (Robbins 1956, Efron 2011).  Since ε = (x_t - √ᾱ_t x_0)/√(1-ᾱ_t), 𝔼[ε | x_t] =
(x_t - √ᾱ_t 𝔼[x_0 | x_t])/√(1-ᾱ_t), hence the score is -𝔼[ε | x_t]/√(1-ᾱ_t).  A network trained on
‖ε - ε_θ‖² (eq. 14) is best at ε_θ = 𝔼[ε | x_t] (the squared error splits into a bias and the
conditional variance), so -ε_θ/√(1-ᾱ_t) estimates the score: this is the link between eq. 12
and denoising score matching that Ho et al. 2020 point out in §3.2 (Song et al. 2021 write
s_θ = -ε_θ/σ_t).

The general steps are checked exactly by writing every conditional expectation as an integral
against the kernel and q(x_0) (Bayes), then comparing integrands (linearity of the integral).
Then everything is checked again in closed form for Gaussian data x_0 ~ 𝒩(m_0, s_0²):
q(x_t) = 𝒩(x_t; √ᾱ_t m_0, ᾱ_t s_0² + 1 - ᾱ_t), its score by differentiating the log density,
q(x_0 | x_t) by Bayes' rule and completing the square, 𝔼[x_0 | x_t] and 𝔼[ε | x_t] from it.
All per coordinate (the covariances are multiples of I).

Results (sympy expressions):

- ``tweedie_mean``: (x_t + (1-ᾱ_t) score_t)/√ᾱ_t, 𝔼[x_0 | x_t] from the score ``score_t`` of q(x_t);
- ``score_from_eps``: -ε_θ/√(1-ᾱ_t), the score from a network's ε_θ(x_t, t), which estimates
  𝔼[ε | x_t] (``eps_theta``: the prediction, not the true noise ``eps``);
- ``eps_from_score``: -√(1-ᾱ_t) score_t, the ε-prediction that a score model amounts to;
- ``gaussian_marginal_variance``: ᾱ_t s_0² + 1 - ᾱ_t, the variance of q(x_t) for x_0 ~ 𝒩(m_0, s_0²);
- ``gaussian_score``: -(x_t - √ᾱ_t m_0)/(ᾱ_t s_0² + 1 - ᾱ_t), ∇log q(x_t) for that data;
- ``gaussian_posterior_mean``: ((1-ᾱ_t) m_0 + √ᾱ_t s_0² x_t)/(ᾱ_t s_0² + 1 - ᾱ_t) = 𝔼[x_0 | x_t];
- ``gaussian_posterior_variance``: (1-ᾱ_t) s_0²/(ᾱ_t s_0² + 1 - ᾱ_t) = Var[x_0 | x_t];
- ``gaussian_eps_mean``: √(1-ᾱ_t)(x_t - √ᾱ_t m_0)/(ᾱ_t s_0² + 1 - ᾱ_t) = 𝔼[ε | x_t].

Symbols: alpha_bar_t, x_t, score_t, eps_theta, m_0 (the data mean), s_0 (its standard deviation).
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy import log, sqrt

from derivations import marginal as Mg
from derivations import symbols as S
from derivations.step import EQ_IN_LAW, Derivation, Step, is_zero, log_equal, unfold

NAME = "score"
TITLE = "Tweedie's formula: 𝔼[x_0 | x_t] from the score, and the score from 𝔼[ε | x_t]"

ab, xt, x0, eps, m0, s0 = S.alpha_bar_t, S.x_t, S.x_0, S.eps, S.m_0, S.s_0

# --- any data -------------------------------------------------------------------------------
kernel = S.N(xt, Mg.x_t_mean_coef * x0, Mg.x_t_variance)  # q(x_t | x_0), eq. 4
forward = Mg.closed_form(Mg.x_t_mean_coef, Mg.x_t_variance, eps)  # √ᾱ_t x_0 + √(1-ᾱ_t) ε
eps_from_x_0 = (xt - sqrt(ab) * x0) / sqrt(1 - ab)  # eq. 4 solved for ε
grad_log_q = sp.Derivative(log(S.q(xt)), xt)  # ∇log q(x_t), the score

tweedie_mean = (xt + (1 - ab) * S.score_t) / sqrt(ab)
score_from_eps = -S.eps_theta / sqrt(1 - ab)
eps_from_score = -sqrt(1 - ab) * S.score_t

# --- Gaussian data x_0 ~ N(m_0, s_0²) -------------------------------------------------------
gaussian_marginal_variance = ab * s0**2 + 1 - ab
gaussian_score = -(xt - sqrt(ab) * m0) / gaussian_marginal_variance
gaussian_posterior_mean = ((1 - ab) * m0 + sqrt(ab) * s0**2 * xt) / gaussian_marginal_variance
gaussian_posterior_variance = (1 - ab) * s0**2 / gaussian_marginal_variance
gaussian_eps_mean = sqrt(1 - ab) * (xt - sqrt(ab) * m0) / gaussian_marginal_variance

data_density = S.N(x0, m0, s0**2)
marginal_density = S.N(xt, sqrt(ab) * m0, gaussian_marginal_variance)
#: a draw from q(x_0 | x_t) (given x_t): the posterior mean plus its standard deviation times z
posterior_draw = gaussian_posterior_mean + sqrt(gaussian_posterior_variance) * S.z


# --- exact checks ---------------------------------------------------------------------------
_I = sp.Function("I_q")  # _I(g) stands for ∫ g(x_0) q(x_0) dx_0 over the data density


def _encode(e: sp.Expr) -> sp.Expr:
    """Write every quantity of q(x_t) as an integral against the data density (see _check_any_data).

    q(x_t) = ∫ K q(x_0) dx_0 with the kernel K = q(x_t|x_0) (eq. 4); by Bayes' rule
    𝔼[y | x_t] = ∫ y K q(x_0) dx_0 / q(x_t) and Var[y | x_t] = 𝔼[y² | x_t] - 𝔼[y | x_t]²; and
    ∇log q(x_t) = ∫ ∇K q(x_0) dx_0 / q(x_t) (differentiation under the integral sign).
    """
    K = unfold(kernel)

    def cond_mean(y):
        return _I(y * K) / _I(K)

    def is_cond(n, f):
        return isinstance(n, sp.Function) and n.func == f and n.args[1:] == (xt,)

    e = e.replace(lambda n: is_cond(n, S.Var), lambda n: cond_mean(n.args[0] ** 2) - cond_mean(n.args[0]) ** 2)
    e = e.replace(lambda n: is_cond(n, S.Expect), lambda n: cond_mean(n.args[0]))
    e = e.replace(lambda n: n == grad_log_q, lambda n: _I(sp.diff(K, xt)) / _I(K))
    return e.subs(S.q(xt), _I(K))


def _check_any_data(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """lhs = rhs for every data density q(x_0), exactly.

    Both sides are encoded as ratios of integrals ∫ g(x_0) q(x_0) dx_0 (:func:`_encode`); the
    difference times q(x_t) must be a sum c·∫ g q(x_0) dx_0 with c free of x_0, and then by
    linearity it is ∫ (Σ c g) q(x_0) dx_0, which vanishes for every q(x_0) iff Σ c g = 0.
    """
    K = unfold(kernel)
    diff = sp.expand(_encode(lhs - rhs) * _I(K))
    if diff.has(S.q, S.Expect, S.Var, sp.Derivative):
        return False  # something the encoding does not cover
    integrand = sp.Integer(0)
    for term in sp.Add.make_args(diff):
        coeff, part = term.as_independent(_I)
        if not (isinstance(part, sp.Function) and part.func == _I) or coeff.has(x0):
            return False  # not linear in the integral, or x_0 outside it
        integrand += coeff * part.args[0]
    return is_zero(sp.powsimp(sp.expand(integrand / K)))


def _check_diff(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """Unfold the densities, carry out the derivatives with sympy, compare exactly."""
    left = sp.expand_log(unfold(lhs).doit(), force=True)
    right = sp.expand_log(unfold(rhs).doit(), force=True)
    return is_zero(sp.powsimp(sp.expand(left - right)))


def build() -> Derivation:
    """The steps (unverified); :func:`derive` verifies them."""
    q_fwd, q_data, q_marg, q_post = S.q(xt, x0), S.q(x0), S.q(xt), S.q(x0, xt)
    score_def = (S.score_t, grad_log_q)
    eps_cond = (S.Expect(eps, xt), S.Expect(eps_from_x_0, xt))  # 𝔼[ε|x_t] with ε solved from eq. 4
    densities = ((q_fwd, kernel), (q_data, data_density), (q_marg, marginal_density))
    precision = 1 / s0**2 + ab / (1 - ab)
    steps = (
        Step(
            "forward",
            q_fwd,
            kernel,
            "the forward marginal (derivation 'marginal'): x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε",
            "eq. 4",
            given=((q_fwd, kernel),),
            premise=True,
        ),
        Step(
            "kernel-gradient",
            (1 - ab) * sp.Derivative(q_fwd, xt),
            (sqrt(ab) * x0 - xt) * q_fwd,
            "differentiate the Gaussian kernel in x_t",
            given=((q_fwd, kernel),),
            check=_check_diff,
        ),
        Step(
            "score",
            S.score_t,
            grad_log_q,
            "the score: the gradient in x_t of log q(x_t), the density of x_t (the data density q(x_0) "
            "mixed with the Gaussian kernel)",
            "Song et al. 2021",
            given=(score_def,),
            premise=True,
        ),
        Step(
            "tweedie",
            S.Expect(x0, xt),
            tweedie_mean,
            "Tweedie's formula, for any data q(x_0): differentiate q(x_t) under the integral with "
            "the kernel's gradient, divide by q(x_t), use Bayes' rule for 𝔼[x_0 | x_t]",
            "Efron 2011",
            given=(score_def,),
            check=_check_any_data,
        ),
        Step(
            "eps",
            eps,
            eps_from_x_0,
            "solve the forward marginal for the noise",
            "eq. 4",
            given=((xt, forward),),
        ),
        Step(
            "eps-mean",
            S.Expect(eps, xt),
            (xt - sqrt(ab) * S.Expect(x0, xt)) / sqrt(1 - ab),
            "given x_t, ε is affine in x_0: take the conditional expectation (any data)",
            given=(eps_cond,),
            check=_check_any_data,
        ),
        Step(
            "score-eps",
            S.score_t,
            -S.Expect(eps, xt) / sqrt(1 - ab),
            "Tweedie and the step before: the score is the expected noise, scaled by -1/√(1-ᾱ_t)",
            "Luo 2022",
            given=(score_def, eps_cond),
            check=_check_any_data,
        ),
        Step(
            "l2-optimum",
            S.Expect((eps - S.eps_theta) ** 2, xt),
            (S.eps_theta - S.Expect(eps, xt)) ** 2 + S.Var(eps, xt),
            "the squared error of a prediction ε_θ (fixed given x_t) is least at ε_θ = 𝔼[ε | x_t]: "
            "training on ‖ε - ε_θ‖² learns -√(1-ᾱ_t) times the score",
            "eq. 14, Sec. 3.2",
            given=(eps_cond, (S.Var(eps, xt), S.Var(eps_from_x_0, xt)), (eps, eps_from_x_0)),
            check=_check_any_data,
        ),
        Step(
            "data",
            q_data,
            data_density,
            "now Gaussian data, to check everything in closed form: x_0 ~ N(m_0, s_0²)",
            given=((q_data, data_density),),
            premise=True,
        ),
        Step(
            "marginal",
            xt,
            sqrt(ab) * m0 + sqrt(gaussian_marginal_variance) * S.z,
            "x_0 = m_0 + s_0 z_1 with z_1 independent of ε: the sum of two independent Gaussians "
            "is Gaussian, q(x_t) = N(x_t; √ᾱ_t m_0, ᾱ_t s_0² + 1 - ᾱ_t)",
            given=((xt, forward), (x0, m0 + s0 * S.z_1)),
            relation=EQ_IN_LAW,
        ),
        Step(
            "gaussian-score",
            S.score_t,
            gaussian_score,
            "differentiate the log of that Gaussian density",
            given=(score_def, (q_marg, marginal_density)),
            check=_check_diff,
        ),
        Step(
            "precision",
            precision,
            gaussian_marginal_variance / ((1 - ab) * s0**2),
            "the exponent of q(x_t|x_0) q(x_0) is quadratic in x_0; the precisions add: "
            "1/s_0² + ᾱ_t/(1-ᾱ_t), the inverse of the posterior variance",
        ),
        Step(
            "posterior",
            q_post,
            S.N(x0, gaussian_posterior_mean, gaussian_posterior_variance),
            "Bayes' rule q(x_0|x_t) = q(x_t|x_0) q(x_0)/q(x_t); complete the square in x_0: mean "
            "(m_0/s_0² + √ᾱ_t x_t/(1-ᾱ_t)) / precision, variance 1/precision",
            given=((q_post, q_fwd * q_data / q_marg),) + densities,
            check=log_equal,
        ),
        Step(
            "posterior-mean",
            S.Expect(x0, xt),
            gaussian_posterior_mean,
            "the mean of that posterior: x_0 given x_t is its mean plus √variance times z",
            given=((x0, posterior_draw),),
        ),
        Step(
            "tweedie-gaussian",
            tweedie_mean,
            gaussian_posterior_mean,
            "Tweedie's formula holds exactly with the Gaussian score",
            "Efron 2011",
            given=((S.score_t, gaussian_score),),
        ),
        Step(
            "score-eps-gaussian",
            -S.Expect(eps, xt) / sqrt(1 - ab),
            gaussian_score,
            "and -𝔼[ε | x_t]/√(1-ᾱ_t), with 𝔼[ε | x_t] = √(1-ᾱ_t)(x_t - √ᾱ_t m_0)/(ᾱ_t s_0² + 1 - ᾱ_t) "
            "from the posterior, is the Gaussian score",
            given=(eps_cond, (x0, posterior_draw)),
        ),
    )
    return Derivation(
        name=NAME,
        title=TITLE,
        summary=(
            "The best denoiser is the score in disguise: the posterior mean of x_0 is x_t moved "
            "along the score, the gradient of log q(x_t) (Tweedie), so a network that predicts the "
            "noise predicts the score: score ≈ -ε_θ/√(1-ᾱ_t)."
        ),
        steps=steps,
        results={
            "tweedie_mean": tweedie_mean,
            "score_from_eps": score_from_eps,
            "eps_from_score": eps_from_score,
            "gaussian_marginal_variance": gaussian_marginal_variance,
            "gaussian_score": gaussian_score,
            "gaussian_posterior_mean": gaussian_posterior_mean,
            "gaussian_posterior_variance": gaussian_posterior_variance,
            "gaussian_eps_mean": gaussian_eps_mean,
        },
        notes=(
            "Steps 2-8 hold for any data density (differentiation under the integral sign "
            "assumed); steps 9-16 check the same identities in closed form for x_0 ~ N(m_0, s_0²).",
            "score_from_eps is exact only for the ideal ε_θ = 𝔼[ε | x_t]; a trained network gives an "
            "estimate of the score.",
        ),
    )


@functools.cache
def derive() -> Derivation:
    """Build and verify every step (cached); raises DerivationError if one fails."""
    return build().verify()
