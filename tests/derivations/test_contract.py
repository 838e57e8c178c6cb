"""The contract every registered derivation must meet: a derivation is tested by being registered
in ``derivations.DERIVATIONS`` (these tests, and every test parametrised by ``derivations.NAMES``:
each step verifies and a mutated step fails, its results against independently typed formulas,
every output format, the CLI)."""

from __future__ import annotations

import types

import pytest
import sympy as sp

import derivations
from derivations.step import Derivation

MODULES = {e.module: name for name, e in derivations.DERIVATIONS.items()}


@pytest.mark.parametrize("name", derivations.NAMES)
def test_entry_names_a_module_that_builds_and_derives_it(name):
    entry = derivations.DERIVATIONS[name]
    module = entry.load()
    assert module.NAME == name
    built = module.build()
    assert isinstance(built, Derivation) and built.name == name and not built.verified
    assert derivations.get(name).verified


@pytest.mark.parametrize("name", derivations.NAMES)
def test_needs_are_the_derivations_it_imports(name):
    module = derivations.DERIVATIONS[name].load()
    imported = {MODULES[v.__name__] for v in vars(module).values()
                if isinstance(v, types.ModuleType) and v.__name__ in MODULES}
    assert imported == set(derivations.DERIVATIONS[name].needs)
    order = derivations.NAMES
    assert all(order.index(n) < order.index(name) for n in imported), "a derivation comes after what it builds on"


@pytest.mark.parametrize("name", derivations.NAMES)
def test_results_are_usable_by_the_numerical_code(name):
    """Every result is a sympy expression in the shared symbols that `numeric` can lambdify."""
    results = derivations.get(name).results
    assert results
    for key, expr in results.items():
        assert isinstance(expr, sp.Basic), key
        free = {str(s) for s in expr.free_symbols}
        f = derivations.numeric(name, key)
        assert set(f.arg_names) == free
        if free <= set(derivations.NUMERIC_ARGS):  # the schedule's arrays and the tensors it names
            f(**dict.fromkeys(f.arg_names, 0.5))  # evaluates (a finite point inside every domain)


def test_listing_follows_the_registry():
    from typer.testing import CliRunner

    from cli import app

    lines = CliRunner().invoke(app, ["derive"]).output.splitlines()
    assert [line.split()[0] for line in lines] == [*derivations.NAMES, "all"]
    for line, (name, entry) in zip(lines, derivations.DERIVATIONS.items()):
        assert line.split(None, 1)[1] == entry.summary
