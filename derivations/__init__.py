"""Symbolic derivations of the DDPM formulas, each step checked by sympy (never imports torch).

Each derivation is data: an ordered list of steps (an equality, a one-line justification, the
equation number in Ho et al. 2020) and its final results as sympy expressions.  ``get(name)``
builds and verifies it (cached); :mod:`derivations.render` prints it; :func:`numeric` lambdifies
a result for the numerical code, which therefore never retypes a formula.

Importing this package is cheap: sympy is imported only when a derivation is requested, so the
CLI can list the names without it.

The registry :data:`DERIVATIONS` lists them in teaching order, each with its one-line summary,
its module and the derivations it builds on; the CLI's listing and choices, ``derive all`` and
the tests' parametrisation come from it.  Adding a derivation is one module (``NAME``,
``build()``, ``derive()``) plus one entry (CONTRIBUTING.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ddpm_check.errors import DDPMCheckError
from ddpm_check.registry import Entry, Registry

if TYPE_CHECKING:  # pragma: no cover
    import sympy

    from derivations.step import Derivation

@dataclass(frozen=True)
class DerivationEntry(Entry):
    """A registered derivation: ``module`` has ``build()`` (the steps, unverified) and
    ``derive()`` (verified, cached) and a ``NAME`` equal to the entry's; ``summary`` is its line
    in listings (kept here so that listing needs no sympy); ``needs`` the derivations whose
    results it builds on (the derivation modules it imports)."""

    needs: tuple[str, ...] = ()


#: the derivations, in teaching order (the order of listings and of `derive all`)
DERIVATIONS: Registry[DerivationEntry] = Registry("derivation", (
    DerivationEntry("marginal", "q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I): two-step merge, closed form by "
                    "induction (eq. 4)", "derivations.marginal"),
    DerivationEntry("posterior", "q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I): Bayes' rule, complete the square "
                    "(eqs. 6-7)", "derivations.posterior"),
    DerivationEntry("mean-eps", "μ̃_t = (x_t - β_t/√(1 - ᾱ_t) ε)/√α_t and the sampling step, β̃_1 = 0 "
                    "(eq. 11, Alg. 2)", "derivations.mean_eps", needs=("posterior",)),
    DerivationEntry("elbo", "the variational bound: Gaussian KL, ε-weights, L_simple, the SNR form "
                    "(eqs. 5, 12, 14)", "derivations.elbo", needs=("posterior", "mean-eps")),
    DerivationEntry("ddim", "DDIM's family q_σ keeps DDPM's marginals for every σ; η = 1 is DDPM, η = 0 "
                    "deterministic; step skipping (Song et al. eqs. 7, 12, 16)", "derivations.ddim",
                    needs=("posterior", "mean-eps")),
    DerivationEntry("score", "Tweedie's formula 𝔼[x_0 | x_t] = (x_t + (1 - ᾱ_t) ∇log q(x_t))/√ᾱ_t, "
                    "score = -𝔼[ε | x_t]/√(1 - ᾱ_t)", "derivations.score", needs=("marginal",)),
    DerivationEntry("parametrizations", "x_0-, ε- and v-prediction: conversions, loss weights 1/SNR, "
                    "1 + SNR (Salimans & Ho 2022)", "derivations.parametrizations",
                    needs=("mean-eps", "elbo")),
    DerivationEntry("zero-snr", "zero terminal SNR: rescaled √ᾱ_t, β_T = 1, x_0 = -v at t = T "
                    "(Lin et al. 2024, Alg. 1)", "derivations.zero_snr",
                    needs=("marginal", "parametrizations")),
))
NAMES: tuple[str, ...] = DERIVATIONS.names

#: keyword arguments that numeric callables may take (symbol names; sigma_* are standard deviations)
NUMERIC_ARGS: tuple[str, ...] = (
    "alpha_t",
    "beta_t",
    "alpha_bar_t",
    "alpha_bar_tm1",
    "x_t",
    "x_0",
    "eps",
    "sigma_t",
    "eps_theta",
    "x_hat_0",
    "mu_theta",
    "beta_tilde_t",
    "mu_1",
    "mu_2",
    "sigma_1",
    "sigma_2",
    "v",
    "score_t",
    "m_0",
    "s_0",
    "eta",
)


def check_name(name: str) -> str:
    """Return ``name`` if it names a derivation, else raise DDPMCheckError listing the names."""
    return DERIVATIONS.entry(name).name


def get(name: str) -> "Derivation":
    """The verified derivation ``name`` (cached).  Raises DDPMCheckError for an unknown name
    and DerivationError if a step fails to verify."""
    return DERIVATIONS.entry(name).load().derive()


def build(name: str) -> "Derivation":
    """The derivation ``name`` *without* verifying it (for tests that mutate a step)."""
    return DERIVATIONS.entry(name).load().build()


def results(name: str) -> dict[str, "sympy.Expr"]:
    """The final results of derivation ``name`` as sympy expressions."""
    return dict(get(name).results)


@functools.lru_cache(maxsize=None)
def numeric(name: str, key: str) -> Callable[..., Any]:
    """``results(name)[key]`` lambdified for numpy.

    The callable takes keyword arguments named by symbols (alpha_t, beta_t, alpha_bar_t,
    alpha_bar_tm1, x_t, x_0, eps, ...); keywords that the expression does not use are ignored,
    a missing one raises DDPMCheckError.  Pass consistent arrays: alpha_t=alphas,
    beta_t=betas, alpha_bar_t=alphas_cumprod, alpha_bar_tm1=alphas_cumprod_prev.
    """
    res = get(name).results
    if key not in res:
        raise DDPMCheckError(
            f"unknown result {key!r} of derivation {name!r}; valid keys: {', '.join(res)}"
        )
    return numeric_from_expr(res[key])


def numeric_from_expr(expr: "sympy.Expr") -> Callable[..., Any]:
    """Any sympy expression in the shared symbols, lambdified like :func:`numeric`.

    For callers that modify a derived result (e.g. known-wrong variants for a check).
    """
    import sympy as sp

    expr = sp.sympify(expr)
    syms = sorted(expr.free_symbols, key=str)
    names = tuple(str(v) for v in syms)
    fn = sp.lambdify(syms, expr, modules="numpy")

    def call(**kwargs: Any) -> Any:
        missing = [n for n in names if n not in kwargs]
        if missing:
            raise DDPMCheckError(
                f"missing argument(s) {', '.join(missing)} for {expr}; it needs {', '.join(names)}"
            )
        return fn(*(kwargs[n] for n in names))

    call.__doc__ = f"numpy evaluation of {expr}; keyword arguments: {', '.join(names)}"
    call.arg_names = names  # type: ignore[attr-defined]
    call.expr = expr  # type: ignore[attr-defined]
    return call


def parse(text: str) -> "sympy.Expr":
    """Parse an expression written by ``sympy.srepr`` or ``str`` (JSON output) back to sympy,
    with the shared symbols' assumptions."""
    import sympy as sp

    from derivations import symbols

    return sp.parse_expr(text, local_dict=symbols.local_dict())


__all__ = [
    "DERIVATIONS",
    "DerivationEntry",
    "NAMES",
    "NUMERIC_ARGS",
    "check_name",
    "get",
    "build",
    "results",
    "numeric",
    "numeric_from_expr",
    "parse",
]
