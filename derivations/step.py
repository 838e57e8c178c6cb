"""Steps, derivations and the verifier.

A derivation is data (compare sympy's ``manualintegrate``): an ordered tuple of :class:`Step`,
each an equality ``lhs = rhs`` (or ``lhs =ᵈ rhs``, equality in distribution) with a one-line
justification and, where one exists, the equation number in Ho et al. 2020.  Printing lives in
:mod:`derivations.render`; this module only checks.

How a step is verified (:func:`verify_step`), exactly, never numerically:

1. the step's ``given`` substitutions are applied to both sides, in order (e.g. the definition
   x_t := √α_t x_{t-1} + √(1-α_t) z_1, or the recursion ᾱ_t := α_t ᾱ_{t-1} and β_t := 1 - α_t);
2. the display functions are unfolded: ``N(x, m, v)`` becomes the Gaussian density,
   ``Expect(y)`` / ``Var(y)`` are computed over the independent standard normals
   :data:`~derivations.symbols.NOISES` (linearity, independence, and the standard normal
   moment generating function 𝔼[z^k e^{cz}] = d^k/dc^k e^{c²/2});
3. ``lhs = rhs`` holds if ``lhs - rhs`` is exactly zero (:func:`is_zero`: expand, then a zero
   test in a field of rational functions, with ``cancel`` as the fallback); ``lhs =ᵈ rhs`` holds
   if both sides have the same characteristic function 𝔼[e^{is·}] (:func:`same_law`);
   a step may instead carry its own exact ``check(lhs, rhs) -> bool``.

A step that cannot be verified is a failed step: :func:`verify` raises :class:`DerivationError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

import sympy as sp

from derivations import symbols as S


class DerivationError(AssertionError):
    """A derivation step did not verify (a bug in a derivation, not a user error)."""


EQ = "="
EQ_IN_LAW = "=d"  # equal in distribution


@dataclass(frozen=True)
class Step:
    """One equality of a derivation.

    Attributes:
        name: short identifier ("two-step", "complete-square", ...).
        lhs, rhs: the two sides (sympy expressions).
        why: one-line justification, shown beside the step.
        ref: equation number in Ho et al. 2020 ("eq. 4"), or another reference, or None.
        given: ``(old, new)`` substitutions applied in order to both sides before checking
            (definitions in force, the recursion ᾱ_t = α_t ᾱ_{t-1}, β_t = 1 - α_t, ...).
        relation: ``"="`` (exact equality) or ``"=d"`` (equality in distribution over NOISES).
        check: optional exact test ``check(lhs, rhs) -> bool`` used instead of the default;
            it receives both sides after ``given`` (not unfolded; see :func:`unfold`).
        premise: True for a definition or a model assumption (checked only for consistency
            with its ``given``); shown as such.
    """

    name: str
    lhs: sp.Expr
    rhs: sp.Expr
    why: str
    ref: Optional[str] = None
    given: tuple = ()
    relation: str = EQ
    check: Optional[Callable[[sp.Expr, sp.Expr], bool]] = field(default=None, compare=False)
    premise: bool = False

    def substituted(self) -> tuple[sp.Expr, sp.Expr]:
        """Both sides after the ``given`` substitutions, in order."""
        lhs, rhs = sp.sympify(self.lhs), sp.sympify(self.rhs)
        for old, new in self.given:
            lhs = lhs.subs(old, new)
            rhs = rhs.subs(old, new)
        return lhs, rhs

    def verify(self) -> bool:
        """True if the step holds exactly (see the module docstring)."""
        return verify_step(self)


@dataclass(frozen=True)
class Derivation:
    """A verified chain of steps and its final results.

    Attributes:
        name: the CLI name ("posterior").
        title: one line ("q(x_{t-1} | x_t, x_0) by Bayes' rule").
        summary: a short paragraph for a learner.
        steps: the ordered steps.
        results: the final results as sympy expressions, keyed as documented in each module;
            :func:`derivations.numeric` lambdifies these (the one source of truth).
        notes: remarks printed after the steps.
        verified: True once :meth:`verify` has checked every step (``derive()`` does).
    """

    name: str
    title: str
    summary: str
    steps: tuple[Step, ...]
    results: Mapping[str, sp.Expr]
    notes: tuple[str, ...] = ()
    verified: bool = False

    def verify(self) -> "Derivation":
        """Check every step now (not cached); raise DerivationError on the first failure.

        Returns a copy with ``verified=True``."""
        verify(self.steps, derivation=self.name)
        return dataclasses.replace(self, verified=True)

    def replace_step(self, index: int, **changes) -> "Derivation":
        """A copy with step ``index`` (0-based) changed, e.g. ``rhs=...`` (for testing)."""
        steps = list(self.steps)
        steps[index] = dataclasses.replace(steps[index], **changes)
        return dataclasses.replace(self, steps=tuple(steps), verified=False)

    # Jupyter shows a derivation as typeset math.
    def _repr_markdown_(self) -> str:
        from derivations.render import to_markdown

        return to_markdown(self)

    def _repr_latex_(self) -> str:
        from derivations.render import to_latex

        return to_latex(self, math_only=True)

    def __str__(self) -> str:
        from derivations.render import to_plain

        return to_plain(self)


def verify(steps: Iterable[Step], derivation: str = "derivation") -> tuple[Step, ...]:
    """Verify every step in order; raise :class:`DerivationError` naming the first that fails."""
    steps = tuple(steps)
    for i, step in enumerate(steps, start=1):
        try:
            ok = verify_step(step)
        except Exception as exc:  # an unverifiable step is a failed step, never a skipped one
            raise DerivationError(
                f"{derivation}: step {i} ({step.name}) could not be checked: {exc}"
            ) from exc
        if not ok:
            raise DerivationError(
                f"{derivation}: step {i} ({step.name}) does not hold: {step.lhs} {step.relation} {step.rhs}"
            )
    return steps


def verify_step(step: Step) -> bool:
    """True if ``step`` holds exactly."""
    lhs, rhs = step.substituted()
    if step.check is not None:
        return bool(step.check(lhs, rhs))
    lhs, rhs = unfold(lhs), unfold(rhs)
    if step.relation == EQ_IN_LAW:
        return same_law(lhs, rhs)
    if step.relation != EQ:
        raise DerivationError(f"unknown relation {step.relation!r} in step {step.name}")
    return is_zero(lhs - rhs)


# --------------------------------------------------------------------------------------------
# exact zero test
# --------------------------------------------------------------------------------------------
def is_zero(expr: sp.Expr) -> bool:
    """Exact test that ``expr`` is identically zero.

    Targeted and cheap: expand; expand logarithms of positive quantities; then view the result
    as a polynomial in its real-valued symbols with coefficients in a field of rational
    functions of the (positive) parameters and their square roots, where zero is decidable;
    ``cancel`` is the fallback for expressions that are not polynomial in those symbols.
    """
    e = sp.expand(sp.sympify(expr))
    if e == 0:
        return True
    if e.has(sp.log):
        e = sp.expand(sp.expand_log(e, force=True))
        if e == 0:
            return True
    gens = sorted((v for v in e.free_symbols if not v.is_positive), key=str)
    try:
        poly = sp.Poly(e, *gens) if gens else sp.Poly(e, sp.Dummy("w"))
        if poly.domain != sp.EX:
            return poly.is_zero
        return all(sp.cancel(c) == 0 for c in poly.coeffs())
    except sp.PolynomialError:
        pass
    return sp.cancel(sp.together(e)) == 0


def log_equal(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """Exact test of lhs = rhs for two positive quantities (densities), through their logarithms.

    Both sides are unfolded and their logarithms expanded with ``force=True``, which is exact
    here because every factor is positive (densities, variances, 1 - ᾱ_t in (0, 1)).
    """
    lhs, rhs = unfold(lhs), unfold(rhs)
    return is_zero(sp.expand_log(sp.log(lhs), force=True) - sp.expand_log(sp.log(rhs), force=True))


# --------------------------------------------------------------------------------------------
# expectations over independent standard normals
# --------------------------------------------------------------------------------------------
_c = sp.Symbol("c")


def _normal_mgf_derivative(k: int, c: sp.Expr) -> sp.Expr:
    """𝔼[z^k e^{cz}] for z ~ 𝒩(0, 1): the k-th derivative of the MGF e^{c²/2}."""
    return sp.diff(sp.exp(_c**2 / 2), _c, k).subs(_c, c)


def expectation(expr: sp.Expr, noises: Sequence[sp.Symbol] = S.NOISES) -> sp.Expr:
    """𝔼[expr] over the independent standard normals ``noises``; other symbols are fixed.

    ``expr`` must be a sum of terms, each a product of a noise-free factor and, per noise z,
    a power z^k and exponentials linear in z (so polynomials and characteristic functions of
    affine-Gaussian expressions are covered).  Anything else raises DerivationError.
    """
    noises = tuple(noises)
    e = sp.expand(sp.sympify(expr))
    if not e.has(*noises):
        return e
    total = sp.Integer(0)
    for term in sp.Add.make_args(e):
        const = sp.Integer(1)
        powers: dict[sp.Symbol, int] = {}
        rates: dict[sp.Symbol, sp.Expr] = {}
        for factor in sp.Mul.make_args(term):
            if not factor.has(*noises):
                const *= factor
                continue
            base, exponent = factor.as_base_exp()
            if base in noises and exponent.is_Integer and exponent > 0:
                powers[base] = powers.get(base, 0) + int(exponent)
            elif isinstance(factor, sp.exp) or (base == sp.E):
                arg = factor.args[0] if isinstance(factor, sp.exp) else exponent
                arg = sp.expand(arg)
                for piece in sp.Add.make_args(arg):
                    hit = [n for n in noises if piece.has(n)]
                    if not hit:
                        const *= sp.exp(piece)
                        continue
                    if len(hit) != 1:
                        raise DerivationError(f"cannot take the expectation of {factor}")
                    n = hit[0]
                    coef = sp.cancel(piece / n)
                    if coef.has(*noises):
                        raise DerivationError(f"cannot take the expectation of {factor}")
                    rates[n] = rates.get(n, 0) + coef
            else:
                raise DerivationError(f"cannot take the expectation of {factor}")
        value = const
        for n in set(powers) | set(rates):  # independence: the expectation factorises
            value *= _normal_mgf_derivative(powers.get(n, 0), rates.get(n, sp.Integer(0)))
        total += value
    return sp.expand(total)


def variance(expr: sp.Expr, noises: Sequence[sp.Symbol] = S.NOISES) -> sp.Expr:
    """Var[expr] = 𝔼[expr²] - 𝔼[expr]² over ``noises``."""
    return sp.expand(expectation(expr**2, noises) - expectation(expr, noises) ** 2)


def characteristic_function(expr: sp.Expr, at: sp.Symbol = S.s) -> sp.Expr:
    """𝔼[e^{i·at·expr}] over the noises."""
    return expectation(sp.exp(sp.I * at * expr))


def same_law(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """True if lhs and rhs have the same characteristic function (hence the same law)."""
    diff = _exponent(characteristic_function(lhs)) - _exponent(characteristic_function(rhs))
    return is_zero(diff)


def _exponent(cf: sp.Expr) -> sp.Expr:
    """The exponent P of a characteristic function written as a product of exponentials e^P."""
    cf = sp.powsimp(sp.expand(cf), combine="exp")
    if isinstance(cf, sp.exp):
        return cf.args[0]
    if cf == 1:
        return sp.Integer(0)
    raise DerivationError(f"not of the form exp(P): {cf}")


# --------------------------------------------------------------------------------------------
# unfolding the display functions
# --------------------------------------------------------------------------------------------
def unfold(expr: sp.Expr) -> sp.Expr:
    """Replace the display functions by what they stand for (innermost first)."""
    expr = sp.sympify(expr)
    if not isinstance(expr, sp.Basic) or not expr.atoms(sp.core.function.AppliedUndef):
        return expr
    expr = expr.replace(S.N, lambda x_, m, v: S.gaussian_density(x_, m, v))
    expr = expr.replace(S.Expect, lambda y, *cond: expectation(y))
    expr = expr.replace(S.Var, lambda y, *cond: variance(y))
    return expr


__all__ = [
    "Step",
    "Derivation",
    "DerivationError",
    "EQ",
    "EQ_IN_LAW",
    "verify",
    "verify_step",
    "is_zero",
    "expectation",
    "variance",
    "characteristic_function",
    "same_law",
    "log_equal",
    "unfold",
]
