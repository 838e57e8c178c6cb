"""The shared sympy symbols, declared once, with their assumptions.

Naming follows Ho et al. 2020 and the reference code: ``alpha_t`` is α_t, ``alpha_bar_tm1`` is
ᾱ_{t-1} ("tm1" = "t minus 1"), ``beta_tilde_t`` is β̃_t, and so on.  ``str(symbol)`` is the name,
so a lambdified result takes keyword arguments with these names (see :func:`derivations.numeric`).

Schedule quantities are declared ``positive=True`` (they lie in (0, 1)); values of random
variables (x_t, x_0, ε, z, ...) are ``real=True``.  The symbols in :data:`NOISES` are independent
standard normal random variables: where a step takes an expectation (``Expect``), a variance
(``Var``) or compares laws (``=ᵈ``), the verifier averages over them and treats every other symbol
as fixed (conditioned on).

The undefined functions ``q``, ``p``, ``p_theta``, ``N``, ``Expect``, ``Var``, ``KL``, ``SNR``,
``SqNorm`` and ``rescale`` are display forms:
``q(x_t, x_tm1)`` is the density q(x_t | x_{t-1}) (first argument | the rest), ``N(x, m, v)`` the
Gaussian density 𝒩(x; m, v) with variance v, ``Expect(y, c...)`` is 𝔼[y | c...].  The verifier
unfolds them (``derivations.step``); ``derivations.render`` prints them as the math they stand
for.  They are plain sympy ``Function('name')`` objects, so ``sympy.srepr`` round-trips.
"""

from __future__ import annotations

import sympy as sp

# --- schedule quantities (positive) --------------------------------------------------------
alpha_t, alpha_tm1, alpha_bar_t, alpha_bar_tm1 = sp.symbols(
    "alpha_t alpha_tm1 alpha_bar_t alpha_bar_tm1", positive=True
)
beta_t, beta_tilde_t, sigma_t = sp.symbols("beta_t beta_tilde_t sigma_t", positive=True)
# explicit steps 1..5 for the expansion check of the closed form
alpha_1, alpha_2, alpha_3, alpha_4, alpha_5 = sp.symbols("alpha_1:6", positive=True)
beta_1 = sp.Symbol("beta_1", positive=True)
alpha_bar_0, alpha_bar_1, alpha_bar_2 = sp.symbols("alpha_bar_0 alpha_bar_1 alpha_bar_2", positive=True)
beta_tilde_1 = sp.Symbol("beta_tilde_1", positive=True)
# standard deviations / variances of two generic Gaussians (KL divergence)
sigma_1, sigma_2 = sp.symbols("sigma_1 sigma_2", positive=True)
# signal-to-noise ratios SNR(t) = alpha_bar_t / (1 - alpha_bar_t) as plain symbols
snr_t, snr_tm1 = sp.symbols("snr_t snr_tm1", positive=True)
# DDIM (Song et al. 2021): eta scales the step's noise (eta = 0 deterministic, eta = 1 DDPM)
eta = sp.Symbol("eta", positive=True)
# the last step's alpha_bar (zero terminal SNR, Lin et al. 2024) and the rescaled alpha_bar
alpha_bar_T = sp.Symbol("alpha_bar_T", positive=True)
# Gaussian data x_0 ~ N(m_0, s_0^2) (Tweedie's formula): its mean and standard deviation
m_0 = sp.Symbol("m_0", real=True)
s_0 = sp.Symbol("s_0", positive=True)

# --- values of random variables and other reals ---------------------------------------------
x_t, x_tm1, x_tm2, x_0, x_1 = sp.symbols("x_t x_tm1 x_tm2 x_0 x_1", real=True)
x = sp.Symbol("x", real=True)
eps, eps_tm1, eps_theta = sp.symbols("eps eps_tm1 eps_theta", real=True)
z, z_1, z_2, z_3, z_4, z_5 = sp.symbols("z z_1:6", real=True)
s, u = sp.symbols("s u", real=True)  # arguments of characteristic functions
mu_1, mu_2, mu_theta, mu_tilde_t = sp.symbols("mu_1 mu_2 mu_theta mu_tilde_t", real=True)
x_hat_0 = sp.Symbol("x_hat_0", real=True)  # the model's prediction of x_0
# v-prediction (Salimans & Ho 2022): v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0, and the
# model's prediction of it; score_t is the score, the gradient of log q(x_t) in x_t
v, v_theta, score_t = sp.symbols("v v_theta score_t", real=True)
# the variational bound: x_{1:T}, x_{0:T} (names "x_1T", "x_0T"), x_T; the constant C_t of a
# KL term; the dimension d of x; the simplified loss
x_T, x_1T, x_0T = sp.symbols("x_T x_1T x_0T", real=True)
C_t, L_simple = sp.symbols("C_t L_simple", real=True)
d = sp.Symbol("d", integer=True, positive=True)
T = sp.Symbol("T", integer=True, positive=True)
# the exponent of the posterior's Bayes ratio is -Q/2, Q = A x_{t-1}² - 2B x_{t-1} + C
Q, A, B, C = sp.symbols("Q A B C", real=True)

#: independent standard normal random variables (the verifier averages over these)
NOISES: tuple[sp.Symbol, ...] = (z, z_1, z_2, z_3, z_4, z_5, eps, eps_tm1)

# --- display-form functions -----------------------------------------------------------------
q = sp.Function("q")  # q(a, b, c) is the density q(a | b, c)
N = sp.Function("N")  # N(x, mean, variance) is the Gaussian density
Expect = sp.Function("Expect")  # Expect(y, c...) is E[y | c...]
Var = sp.Function("Var")  # Var(y, c...) is Var[y | c...]
KL = sp.Function("KL")  # KL(p, q) is D_KL(p || q)
SNR = sp.Function("SNR")  # SNR(t) = alpha_bar_t / (1 - alpha_bar_t)
p = sp.Function("p")  # p(x_T): the prior N(0, I) of the reverse process
p_theta = sp.Function("p_theta")  # p_theta(a, b) is the model density p_θ(a | b)
SqNorm = sp.Function("SqNorm")  # SqNorm(v) is ||v||², summed over the coordinates of x
# rescale(√ᾱ_t) is the rescaled √ᾱ'_t of zero terminal SNR (Lin et al. 2024, Algorithm 1)
rescale = sp.Function("rescale")
t = sp.Symbol("t", integer=True, positive=True)

#: every symbol and function above, by name
ALL: dict[str, object] = {
    name: obj
    for name, obj in dict(globals()).items()
    if isinstance(obj, sp.Symbol) or isinstance(obj, sp.core.function.UndefinedFunction)
}


def local_dict() -> dict[str, object]:
    """A namespace for ``sympy.parse_expr(text, local_dict=local_dict())``.

    It maps every name above to its symbol (with its assumptions) or display function, so that
    ``str(expr)`` of any derived expression parses back to an equal expression (``N`` here is
    the Gaussian density, not sympy's numerical ``N``).
    """
    return dict(ALL)


def gaussian_density(x_: sp.Expr, mean: sp.Expr, variance: sp.Expr) -> sp.Expr:
    """The density of 𝒩(mean, variance) at x_: exp(-(x - mean)² / (2 variance)) / √(2π variance)."""
    return sp.exp(-((x_ - mean) ** 2) / (2 * variance)) / sp.sqrt(2 * sp.pi * variance)
