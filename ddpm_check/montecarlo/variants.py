"""Known-wrong variants: deliberately wrong formulas or code that a check must reject.

A check module lists its own variants (``VARIANTS``); the test suite runs each one and asserts
that the check rejects it by a wide margin (docs/TESTING.md, section 2).  A variant changes
one or more of:

* ``results``: the derived formulas the check expects, edited by sympy (``swap_symbol``,
  ``drop_sqrt``, ``replace_by``: symbols are named as in ``derivations.symbols``, which is
  imported only when the edit runs, so listing the variants needs no sympy);
* ``schedule``: the schedule the code under test receives (``replace_arrays``, ``shifted``);
* ``sim``: a named change to the simulation, which the check itself interprets;
* ``shift_inputs``: the derived formulas evaluated at step t - 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ddpm_check.schedules import Schedule

#: an edit of a derivation's results: (derivation name, {result key: sympy expr}) -> the same, edited
ResultsEdit = Callable[[str, dict], dict]


@dataclass(frozen=True)
class Variant:
    """A deliberately wrong formula (``results``), wrong code (``schedule``, ``sim``), or both."""

    name: str
    description: str
    results: ResultsEdit | None = None
    schedule: Callable[[Schedule], Schedule] | None = None
    sim: str | None = None
    shift_inputs: bool = False  # evaluate the derived formulas at step t - 1


# ---- edits of derived formulas ------------------------------------------------------------------
def _edit(deriv: str, keys: Sequence[str], fn: Callable[[Any, Any], Any]) -> ResultsEdit:
    """A results edit applying ``fn(expr, symbols)`` to ``keys`` of derivation ``deriv`` only."""

    def edit(name: str, res: dict) -> dict:
        if name != deriv:
            return res
        from derivations import symbols as S

        out = dict(res)
        for k in keys:
            out[k] = fn(out[k], S)
        return out

    return edit


def swap_symbol(deriv: str, keys: Sequence[str], old: str, new: str) -> ResultsEdit:
    """Symbol ``old`` replaced by ``new`` in the results ``keys`` (e.g. alpha_t for alpha_bar_t)."""
    return _edit(deriv, keys, lambda e, S: e.subs(getattr(S, old), getattr(S, new)))


def drop_sqrt(deriv: str, keys: Sequence[str], symbol: str) -> ResultsEdit:
    """``symbol`` where its square root belongs: sym**(k/2) -> sym**k for every half-integer power."""

    def fn(e, S):
        sym = getattr(S, symbol)
        return e.replace(lambda x: x.is_Pow and x.base == sym and x.exp.is_Rational and x.exp.q == 2,
                         lambda x: sym ** (2 * x.exp))

    return _edit(deriv, keys, fn)


def replace_by(deriv: str, keys: Sequence[str], symbol: str) -> ResultsEdit:
    """The results ``keys`` replaced by the bare ``symbol`` (e.g. beta_t where beta_tilde_t belongs)."""
    return _edit(deriv, keys, lambda e, S: getattr(S, symbol))


# ---- edits of the code's schedule ----------------------------------------------------------------
def replace_arrays(schedule: Schedule, **arrays: np.ndarray) -> Schedule:
    """``schedule`` with some of its arrays replaced (the others untouched)."""
    return dataclasses.replace(schedule, **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})


def shifted(a: np.ndarray) -> np.ndarray:
    """a[i - 1] at index i (index 0 keeps a[0]): an array read one step off."""
    return np.concatenate(([a[0]], a[:-1]))


def by_name(variants: Sequence[Variant]) -> dict[str, Variant]:
    """{name: variant}, refusing two variants of one name (a check's list is its catalogue)."""
    out: dict[str, Variant] = {}
    for v in variants:
        if v.name in out:
            raise ValueError(f"two variants named {v.name!r}")
        out[v.name] = v
    return out
