"""The variational bound, its Gaussian KL terms and the loss weights  (Ho et al. 2020, eqs. 5, 8, 12, 14).

The negative log-likelihood is bounded by L = 𝔼_q[L_T + Σ_{t≥2} L_{t-1} + L_0] (eq. 5): the
log-ratio log q(x_{1:T}|x_0)/p_θ(x_{0:T}) splits, by the Markov factorisations and Bayes' rule,
into KL terms that telescope (checked for general T).  Each L_{t-1} is a KL divergence
between two Gaussians, derived here from the integral of the log-ratio using the moments
𝔼[x] = μ_1, 𝔼[x²] = σ_1² + μ_1², then summed over the coordinates of x.  With a fixed
reverse variance σ_t² it is ‖μ̃_t - μ_θ‖²/(2σ_t²) plus a constant (eq. 8); with the
ε-parameterisation μ_θ = (x_t - β_t/√(1-ᾱ_t) ε_θ)/√α_t it is
β_t²/(2σ_t² α_t (1-ᾱ_t)) ‖ε - ε_θ‖² (eq. 12), and dropping the weight gives L_simple (eq. 14).
With σ_t² = β̃_t and SNR(t) = ᾱ_t/(1-ᾱ_t) (Kingma et al. 2021), the weight on ‖x_0 - x̂_θ‖² is
½(SNR(t-1) - SNR(t)); on ‖ε - ε_θ‖² it is that divided by SNR(t) = β_t/(2α_t(1-ᾱ_{t-1})),
t ≥ 2.  At t = 1, β̃_1 = 0 and SNR(0) = ∞: the decoder term L_0 takes over.

Results (sympy expressions):

- ``kl_gaussian``: D_KL(𝒩(μ_1, σ_1²) ‖ 𝒩(μ_2, σ_2²)) = log(σ_2/σ_1) + (σ_1² + (μ_1-μ_2)²)/(2σ_2²) - ½
  (per coordinate; symbols mu_1, mu_2, sigma_1, sigma_2 are means and standard deviations);
- ``kl_const``: C_t = log(σ_t/√β̃_t) + β̃_t/(2σ_t²) - ½, the θ-free part of L_{t-1} per
  coordinate (zero when σ_t² = β̃_t); symbols sigma_t (a standard deviation), beta_tilde_t;
- ``eps_weight``: β_t² / (2σ_t² α_t (1-ᾱ_t)), the weight of ‖ε - ε_θ‖² in L_{t-1} (eq. 12);
- ``eps_weight_beta_tilde``: β_t / (2α_t(1-ᾱ_{t-1})), the same weight with σ_t² = β̃_t (t ≥ 2);
- ``x0_weight_snr``: ½(ᾱ_{t-1}/(1-ᾱ_{t-1}) - ᾱ_t/(1-ᾱ_t)) = ½(SNR(t-1) - SNR(t)), the weight of
  ‖x_0 - x̂_θ‖² with σ_t² = β̃_t (t ≥ 2);
- ``snr``: SNR(t) = ᾱ_t/(1-ᾱ_t).
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy import log, sqrt

from derivations import mean_eps as M
from derivations import posterior as P
from derivations import symbols as S
from derivations.step import Derivation, DerivationError, Step, expectation, is_zero

NAME = "elbo"
TITLE = "the variational bound: Gaussian KL terms, ε-weights, L_simple and the SNR form (eqs. 5, 8, 12, 14)"

a, ab, abm1, b, bt, sig = (
    S.alpha_t, S.alpha_bar_t, S.alpha_bar_tm1, S.beta_t, S.beta_tilde_t, S.sigma_t,
)
mu1, mu2, s1, s2, x = S.mu_1, S.mu_2, S.sigma_1, S.sigma_2, S.x

kl_gaussian = log(s2 / s1) + (s1**2 + (mu1 - mu2) ** 2) / (2 * s2**2) - sp.Rational(1, 2)
kl_const = log(sig / sqrt(bt)) + bt / (2 * sig**2) - sp.Rational(1, 2)
eps_weight = b**2 / (2 * sig**2 * a * (1 - ab))
eps_weight_beta_tilde = b / (2 * a * (1 - abm1))
snr = ab / (1 - ab)
snr_tm1 = abm1 / (1 - abm1)
x0_weight_snr = (snr_tm1 - snr) / 2

log_ratio = log(s2 / s1) - (x - mu1) ** 2 / (2 * s1**2) + (x - mu2) ** 2 / (2 * s2**2)
SNR_DEFS = ((S.SNR(S.t), snr), (S.SNR(S.t - 1), snr_tm1))


# --- exact checks that need more than "lhs - rhs = 0" ---------------------------------------
_t, _T = S.t, S.T
_lq_fwd, _lq_marg, _lq_post, _lp_rev = (
    sp.Function(n) for n in ("lq_fwd", "lq_marg", "lq_post", "lp_rev")
)
_lp_prior = sp.Symbol("lp_prior")
#: log-densities of the display forms (Markov factorisations of q(x_{1:T}|x_0) and p_θ(x_{0:T}))
_LOG_DENSITIES = (
    (log(S.q(S.x_1T, S.x_0)), sp.Sum(_lq_fwd(_t), (_t, 1, _T))),
    (log(S.p_theta(S.x_0T)), _lp_prior + sp.Sum(_lp_rev(_t), (_t, 1, _T))),
    (log(S.q(S.x_T, S.x_0)), _lq_marg(_T)),
    (log(S.p(S.x_T)), _lp_prior),
    (log(S.q(S.x_tm1, S.x_t, S.x_0)), _lq_post(_t)),
    (log(S.p_theta(S.x_tm1, S.x_t)), _lp_rev(_t)),
    (log(S.p_theta(S.x_0, S.x_1)), _lp_rev(1)),
)


def _check_bound(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """The pointwise identity behind eq. 5, for general T.

    log q(x_{1:T}|x_0) = Σ_{t=1}^T log q(x_t|x_{t-1}) and log p_θ(x_{0:T}) = log p(x_T) +
    Σ_{t=1}^T log p_θ(x_{t-1}|x_t) (Markov chains); for t ≥ 2 Bayes' rule gives
    log q(x_t|x_{t-1}) = log q(x_{t-1}|x_t,x_0) + log q(x_t|x_0) - log q(x_{t-1}|x_0), and
    q(x_1|x_0) is the t = 1 marginal.  The sum of the marginal terms telescopes (sympy's Sum).
    """
    def encode(e: sp.Expr) -> sp.Expr:
        e = sp.expand_log(e, force=True)
        for old, new in _LOG_DENSITIES:
            e = e.subs(old, new)
        return e

    left, right = encode(lhs), encode(rhs)
    if left.has(S.q, S.p, S.p_theta) or right.has(S.q, S.p, S.p_theta):
        return False  # a density the factorisations do not cover
    # split off t = 1; for t >= 2 apply Bayes' rule to the forward densities
    bayes = _lq_post(_t) + _lq_marg(_t) - _lq_marg(_t - 1)
    left = left.subs(sp.Sum(_lq_fwd(_t), (_t, 1, _T)), _lq_marg(1) + sp.Sum(bayes, (_t, 2, _T)))
    left = left.subs(sp.Sum(_lp_rev(_t), (_t, 1, _T)), _lp_rev(1) + sp.Sum(_lp_rev(_t), (_t, 2, _T)))
    # gather every sum (all over t = 2..T) into one summand, then let sympy sum it
    summand, rest = sp.Integer(0), sp.Integer(0)
    for term in sp.Add.make_args(sp.expand(left - right)):
        coeff, part = term.as_independent(sp.Sum)
        if isinstance(part, sp.Sum):
            if part.limits != ((_t, 2, _T),):
                return False
            summand += coeff * part.function
        else:
            rest += term
    total = rest + sp.Sum(sp.expand(summand), (_t, 2, _T)).doit()
    return is_zero(total)


def _kl_from_moments(p_mean, p_sd, q_mean, q_sd) -> sp.Expr:
    """D_KL(𝒩(p_mean, p_sd²) ‖ 𝒩(q_mean, q_sd²)) = 𝔼_p[log p(x) - log q(x)] from the densities,
    using only 𝔼_p[x] = p_mean and 𝔼_p[x²] = p_sd² + p_mean² (the integrand is quadratic in x)."""
    integrand = sp.expand(
        sp.expand_log(
            log(S.gaussian_density(x, p_mean, p_sd**2)) - log(S.gaussian_density(x, q_mean, q_sd**2)),
            force=True,
        )
    )
    poly = sp.Poly(integrand, x)
    if poly.degree() > 2:
        raise DerivationError("the log-ratio of two Gaussians should be quadratic in x")
    moments = {0: sp.Integer(1), 1: p_mean, 2: p_sd**2 + p_mean**2}
    return sp.expand(sum(c * moments[k] for (k,), c in poly.terms()))


def _check_kl(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """lhs = KL(N(x, m1, v1), N(x, m2, v2)) computed from the densities and the two moments."""
    if not (isinstance(lhs, S.KL) and all(isinstance(a_, S.N) for a_ in lhs.args)):
        return False
    (x1, m1, v1), (x2, m2, v2) = (a_.args for a_ in lhs.args)
    value = _kl_from_moments(m1, sqrt(v1), m2, sqrt(v2))
    return is_zero(sp.expand_log(value - rhs, force=True))


_DIM = 3  # the coordinates used to check the sum over dimensions


def _check_kl_sum(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """KL between q(x_{t-1}|x_t,x_0) = 𝒩(μ̃, β̃ I) and p_θ(x_{t-1}|x_t) = 𝒩(μ_θ, σ_t² I) in d = 3
    dimensions, computed as 𝔼_q[log q - log p] with independent coordinates x_i = μ̃_i + √β̃ z_i,
    equals the displayed ‖μ̃ - μ_θ‖²/(2σ_t²) + d·C_t with d = 3 and the norm written out."""
    if lhs != S.KL(S.q(S.x_tm1, S.x_t, S.x_0), S.p_theta(S.x_tm1, S.x_t)):
        return False
    mt = sp.symbols(f"mt_1:{_DIM + 1}", real=True)
    mp = sp.symbols(f"mp_1:{_DIM + 1}", real=True)
    xs = sp.symbols(f"xc_1:{_DIM + 1}", real=True)
    zs = (S.z_1, S.z_2, S.z_3)
    log_q = sum(log(S.gaussian_density(xs[i], mt[i], bt)) for i in range(_DIM))
    log_p = sum(log(S.gaussian_density(xs[i], mp[i], sig**2)) for i in range(_DIM))
    integrand = sp.expand(sp.expand_log(log_q - log_p, force=True))
    integrand = integrand.subs({xs[i]: mt[i] + sqrt(bt) * zs[i] for i in range(_DIM)})
    kl = expectation(integrand)
    shown = rhs.replace(
        S.SqNorm, lambda v: sum(v.subs({S.mu_tilde_t: mt[i], S.mu_theta: mp[i]}) ** 2 for i in range(_DIM))
    ).subs({S.d: _DIM, S.C_t: kl_const})
    return is_zero(sp.expand_log(kl - shown, force=True))


def _check_limit(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """Evaluate the limit with sympy and compare."""
    return lhs.doit() == rhs


def build() -> Derivation:
    """The steps (unverified); :func:`derive` verifies them."""
    q_post = S.q(S.x_tm1, S.x_t, S.x_0)
    p_rev = S.p_theta(S.x_tm1, S.x_t)
    mu_eps = M.mu_tilde_t_eps
    mu_theta_eps = mu_eps.subs(S.eps, S.eps_theta)
    x0_hat = M.x_0_from_eps.subs(S.eps, S.eps_theta)
    beta_tilde_def = (bt, P.posterior_variance)
    coef1, coef2 = P.posterior_mean_coef1, P.posterior_mean_coef2
    kl_display = S.KL(S.N(x, mu1, s1**2), S.N(x, mu2, s2**2))
    kl_terms = S.KL(S.N(x, S.mu_tilde_t, bt), S.N(x, S.mu_theta, sig**2))
    a0 = S.alpha_bar_0

    steps = (
        Step(
            "bound",
            log(S.q(S.x_1T, S.x_0) / S.p_theta(S.x_0T)),
            log(S.q(S.x_T, S.x_0) / S.p(S.x_T))
            + sp.Sum(log(q_post / p_rev), (S.t, 2, S.T))
            - log(S.p_theta(S.x_0, S.x_1)),
            "factorise both Markov chains and rewrite q(x_t|x_{t-1}) by Bayes' rule for t ≥ 2; the "
            "q(x_t|x_0) terms telescope. Under 𝔼_q: L = L_T + Σ_{t≥2} L_{t-1} + L_0 with "
            "L_{t-1} = D_KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)), L_0 = -log p_θ(x_0|x_1)",
            "eq. 5",
            check=_check_bound,
        ),
        Step(
            "log-ratio",
            log(S.N(x, mu1, s1**2)) - log(S.N(x, mu2, s2**2)),
            log_ratio,
            "the log-ratio of two Gaussian densities (1-D) is quadratic in x",
            check=lambda l, r: is_zero(
                sp.expand_log(sp.expand_log(l.replace(S.N, S.gaussian_density), force=True) - r, force=True)
            ),
        ),
        Step(
            "moment-1",
            S.Expect(x),
            mu1,
            "for x ~ N(μ_1, σ_1²), i.e. x = μ_1 + σ_1 z",
            given=((x, mu1 + s1 * S.z),),
        ),
        Step(
            "moment-2",
            S.Expect(x**2),
            s1**2 + mu1**2,
            "its second moment",
            given=((x, mu1 + s1 * S.z),),
        ),
        Step(
            "kl",
            kl_display,
            kl_gaussian,
            "D_KL = 𝔼_{x~N_1}[log N_1(x) - log N_2(x)]: average the quadratic log-ratio with the two moments",
            check=_check_kl,
        ),
        Step(
            "kl-fixed-variance",
            kl_terms,
            (S.mu_tilde_t - S.mu_theta) ** 2 / (2 * sig**2) + S.C_t,
            "q's variance is β̃_t, the model's a fixed σ_t²: only the mean term depends on θ; "
            "C_t = log(σ_t/√β̃_t) + β̃_t/(2σ_t²) - ½",
            given=((S.C_t, kl_const),),
            check=_check_kl,
        ),
        Step(
            "equal-variances",
            S.C_t,
            sp.Integer(0),
            "with equal variances σ_t² = β̃_t the constant vanishes",
            given=((S.C_t, kl_const), (sig, sqrt(bt))),
        ),
        Step(
            "kl-sum",
            S.KL(q_post, p_rev),
            S.SqNorm(S.mu_tilde_t - S.mu_theta) / (2 * sig**2) + S.d * S.C_t,
            "covariances β̃_t I and σ_t² I: the coordinates are independent, so the KL is the sum "
            "of the 1-D terms over the d coordinates (checked for d = 3)",
            "eq. 8",
            check=_check_kl_sum,
        ),
        Step(
            "eps-weight",
            (S.mu_tilde_t - S.mu_theta) ** 2 / (2 * sig**2),
            eps_weight * (S.eps - S.eps_theta) ** 2,
            "ε-parameterisation: μ̃_t = (x_t - β_t/√(1-ᾱ_t) ε)/√α_t and μ_θ the same with ε_θ "
            "(per coordinate; summed it is ‖ε - ε_θ‖²)",
            "eq. 12",
            given=((S.mu_tilde_t, mu_eps), (S.mu_theta, mu_theta_eps)),
        ),
        Step(
            "L-simple",
            S.L_simple,
            S.Expect(S.SqNorm(S.eps - S.eps_theta)),
            "drop the weight (and C_t): the simplified loss, t uniform, x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε; "
            "it re-weights the bound (the source's code uses L1, the text L2)",
            "eq. 14",
            given=((S.L_simple, S.Expect(S.SqNorm(S.eps - S.eps_theta))),),
            check=lambda l, r: l == r,  # a definition: consistent with its given
            premise=True,
        ),
        Step(
            "eps-weight-beta-tilde",
            eps_weight.subs(sig, sqrt(bt)),
            eps_weight_beta_tilde,
            "with σ_t² = β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t)·β_t the weight of ‖ε - ε_θ‖² is",
            given=(beta_tilde_def,),
        ),
        Step(
            "snr",
            S.SNR(S.t),
            snr,
            "signal-to-noise ratio of x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (Kingma et al. 2021)",
            given=SNR_DEFS[:1],
            premise=True,
        ),
        Step(
            "x0-difference",
            S.mu_tilde_t - S.mu_theta,
            coef1 * (S.x_0 - S.x_hat_0),
            "x_0-parameterisation: μ_θ = μ̃_t(x_t, x̂_θ), the posterior mean with the prediction x̂_θ of x_0",
            "eq. 7",
            given=((S.mu_tilde_t, P.mu_tilde_t), (S.mu_theta, coef1 * S.x_hat_0 + coef2 * S.x_t)),
        ),
        Step(
            "x0-weight",
            coef1**2 / (2 * bt),
            (S.SNR(S.t - 1) - S.SNR(S.t)) / 2,
            "so with σ_t² = β̃_t the weight of ‖x_0 - x̂_θ‖² is half the drop in SNR (t ≥ 2)",
            given=(beta_tilde_def,) + SNR_DEFS + P.RECURSION,
        ),
        Step(
            "x0-to-eps",
            (S.x_0 - S.x_hat_0) ** 2,
            (S.eps - S.eps_theta) ** 2 / S.SNR(S.t),
            "x_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t, and x̂_θ the same with ε_θ",
            "eq. 15",
            given=((S.x_0, M.x_0_from_eps), (S.x_hat_0, x0_hat)) + SNR_DEFS[:1],
        ),
        Step(
            "eps-weight-snr",
            (S.SNR(S.t - 1) - S.SNR(S.t)) / (2 * S.SNR(S.t)),
            eps_weight_beta_tilde,
            "on ‖ε - ε_θ‖² the SNR weight is divided by SNR(t): the ε-weight with σ_t² = β̃_t again (t ≥ 2)",
            given=SNR_DEFS + P.RECURSION,
        ),
        Step(
            "t1",
            sp.Limit(a0 / (1 - a0), a0, 1, "-"),
            sp.oo,
            "t = 1: ᾱ_0 = 1, so SNR(0) = ∞ and β̃_1 = 0 (the step back is deterministic); the KL "
            "weights above are infinite, and the decoder term L_0 = -log p_θ(x_0|x_1) takes over (eq. 5)",
            check=_check_limit,
        ),
    )
    return Derivation(
        name=NAME,
        title=TITLE,
        summary=(
            "Why training on ‖ε - ε_θ‖² is (a re-weighted) maximum likelihood: the bound splits into "
            "Gaussian KL terms whose only θ-dependence is a weighted squared error between noises."
        ),
        steps=steps,
        results={
            "kl_gaussian": kl_gaussian,
            "kl_const": kl_const,
            "eps_weight": eps_weight,
            "eps_weight_beta_tilde": eps_weight_beta_tilde,
            "x0_weight_snr": x0_weight_snr,
            "snr": snr,
        },
        notes=(
            "eps_weight_beta_tilde and x0_weight_snr hold for t ≥ 2; at t = 1 (array index 0, "
            "alphas_cumprod_prev[0] = 1) they divide by zero.",
        ),
    )


@functools.cache
def derive() -> Derivation:
    """Build and verify every step (cached); raises DerivationError if one fails."""
    return build().verify()
