"""The contract every registered check must meet (docs/TESTING.md, section 2): a check is tested
by being registered in ``ddpm_check.montecarlo.CHECKS``.

It passes on the correct code with well-formed rows; it uses exactly the derivations it declares;
its test rows spend no more than its share of the false-failure budget; it has at least two
known-wrong variants and rejects each one by a wide margin; the CLI lists it with its variants.
A check whose entry says ``slow`` (it trains a network) runs here only under ``-m slow``; its
fast smoke tests live in its own test file.
"""

from __future__ import annotations

import json
import math

import pytest

import derivations
from ddpm_check import montecarlo as mc
from ddpm_check import stats

#: "statistic > several x threshold": the worst rejected row of a wrong variant
MIN_MARGIN = 3.0


def _param(entry, *values):
    """A test parameter for ``entry``, marked slow where the entry says it takes minutes."""
    return pytest.param(entry.name, *values, id="-".join([entry.name, *map(str, values)]),
                        marks=[pytest.mark.slow] if entry.slow else [])


CHECK_PARAMS = [_param(e) for e in mc.CHECKS.values()]
VARIANT_PARAMS = [_param(e, v) for e in mc.CHECKS.values() for v in e.variants]


def _changes_something(entry, v) -> bool:
    """Whether the variant changes what the check reads: a formula of a derivation it declares,
    an array of the schedule the code receives, the step the formulas are read at, or a
    simulation switch its module's code tests for."""
    import inspect

    import numpy as np
    import sympy as sp

    from ddpm_check.schedules import ARRAY_NAMES, Schedule, ScheduleConfig

    if v.shift_inputs:
        return True
    if v.sim is not None:  # named once in VARIANTS, and at least once more where the code tests for it
        src = inspect.getsource(entry.load())
        if sum(src.count(f"{q}{v.sim}{q}") for q in "'\"") >= 2:
            return True
    for deriv in entry.needs if v.results is not None else ():
        res = dict(derivations.get(deriv).results)
        new = v.results(deriv, res)
        if any(new[k] is not res[k] and sp.simplify(new[k] - res[k]) != 0 for k in res):
            return True
    if v.schedule is not None:
        s = Schedule.from_config(ScheduleConfig())
        w = v.schedule(s)
        if any(not np.array_equal(getattr(w, a), getattr(s, a)) for a in ARRAY_NAMES):
            return True
    return False


# ---- the entry ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", mc.CHECK_NAMES)
def test_entry_names_a_module_with_a_check_and_its_wrong_variants(name):
    entry = mc.CHECKS[name]
    module = entry.load()
    assert callable(module.run)
    assert entry.default_samples >= 1
    assert set(entry.needs) <= set(derivations.NAMES), entry.needs
    variants = entry.variants
    assert len(variants) >= 2, f"check {name} has fewer than 2 wrong variants"
    for v in variants.values():
        assert v.description.strip() and "\n" not in v.description
        assert _changes_something(entry, v), f"{name}/{v.name} changes nothing the check reads"
    for option, validate in entry.options.items():
        assert callable(validate) and validate(None) is None, option  # None: the check's default


# ---- the correct code passes ------------------------------------------------------------------
@pytest.mark.parametrize("name", CHECK_PARAMS)
def test_check_passes_on_correct_code(name, checked):
    res = checked(name)
    assert res.passed, [(r.quantity, r.where, r.statistic, r.threshold) for r in res.failures]
    assert res.tests, "a check without tests"
    assert res.seed == stats.seed_for(name, stats.DEFAULT_ROOT_SEED)
    assert all(r.seed == res.seed and r.check == name for r in res.rows)


@pytest.mark.parametrize("name", CHECK_PARAMS)
def test_check_uses_the_derivations_it_declares(name, checked):
    assert set(checked(name).derivations) == set(mc.CHECKS[name].needs)


@pytest.mark.parametrize("name", CHECK_PARAMS)
def test_rows_are_well_formed_tests(name, checked):
    res = checked(name)
    for r in res.tests:
        assert r.threshold > 0 and r.n >= 1 and math.isfinite(r.statistic)
        assert r.delta > 0
        if r.kind == "ks":
            assert r.threshold >= stats.dkwm_epsilon(r.n, r.alpha) - 1e-15
        if r.kind in ("mean", "ols-slope", "ols-intercept"):
            assert r.threshold == pytest.approx(stats.z_two_sided(r.alpha))
            assert r.statistic == pytest.approx(abs(r.estimate - r.expected) / r.se)
            # the declared power: (z_{1-a/2} + z_{1-b}) se
            assert r.delta == pytest.approx((stats.z_two_sided(r.alpha) + stats.z_one_sided(stats.BETA)) * r.se)
    json.dumps(res.to_dict(), allow_nan=False)  # strict JSON


@pytest.mark.parametrize("name", CHECK_PARAMS)
def test_test_rows_spend_at_most_the_checks_share(name, checked):
    res = checked(name)
    share = stats.ALPHA_FW / len(mc.CHECKS)  # counted from the registry, never typed
    assert res.alpha_check == pytest.approx(share, rel=1e-15)
    assert res.alpha_spent <= share * (1 + 1e-12)
    alphas = {r.alpha for r in res.tests if r.kind != "exact"}
    assert len(alphas) <= 1, "one level per check: its share split equally"


def test_every_registered_check_fits_in_the_family_wise_budget(checked):
    """Run or not, every registered check holds a share, so any set run together (``check all
    --network``) stays within ALPHA_FW; the fast ones spend what their rows say."""
    spent = sum(checked(n).alpha_spent if not e.slow else mc.alpha_per_check() for n, e in mc.CHECKS.items())
    assert spent <= stats.ALPHA_FW * (1 + 1e-12)


# ---- every wrong variant is rejected by a wide margin -------------------------------------
@pytest.mark.parametrize("name,variant", VARIANT_PARAMS)
def test_wrong_variant_is_rejected_with_margin(name, variant, checked):
    res = checked(name, variant)
    unavailable = [n for n in res.notes if "compiled path" in n and "not available here" in n]
    if variant == "compiled_model_in_bfloat16" and unavailable:  # no row to fail without a compiler
        pytest.skip(unavailable[0])
    assert not res.passed, f"{name}/{variant} was not rejected"
    worst = res.worst
    assert worst.margin > MIN_MARGIN, (worst.quantity, worst.where, worst.statistic, worst.threshold)
    assert res.variant == variant


def test_paths_holds_the_graph_step_and_the_compiled_loop(checked):
    """The fast loops' rows ran and passed; the compiled one is a note (never a pass) only where
    torch.compile cannot work, and on a machine with a C++ compiler it must have run."""
    import shutil

    res = checked("paths")
    rows = {r.quantity.split(" (")[0].split(" =")[0]: r for r in res.rows if r.group == "fast loops"}
    assert any(q.startswith("graph-step loop") and r.passed for q, r in rows.items()), list(rows)
    compiled = [r for q, r in rows.items() if "torch.compile'd" in q]
    import os

    disabled = "1" in (os.environ.get("TORCHDYNAMO_DISABLE"), os.environ.get("TORCH_COMPILE_DISABLE"))
    if (shutil.which("c++") or shutil.which("g++")) and not disabled:
        assert compiled and all(r.passed for r in compiled), res.notes
    else:
        assert compiled or any("compiled path" in n for n in res.notes)


# ---- the CLI lists it ---------------------------------------------------------------------------
def test_the_check_listing_shows_every_entry_and_its_variants():
    from typer.testing import CliRunner

    from cli import app

    lines = CliRunner().invoke(app, ["check"]).output.splitlines()
    for name, entry in mc.CHECKS.items():
        i = next(k for k, line in enumerate(lines) if line.split()[:1] == [name])
        assert entry.summary in lines[i]
        assert lines[i + 1].split("wrong variants: ")[1].split(", ") == list(entry.variants)
    assert [line.split()[0] for line in lines if line[:1].strip()] == [*mc.CHECK_NAMES, "all"]
