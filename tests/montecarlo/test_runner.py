"""The runner (``ddpm_check.montecarlo``): names, seeds, schedules, bad input, options, and the
false-failure budget enforced on the rows a check actually produced."""

from __future__ import annotations

import sys
import types

import pytest

from ddpm_check import montecarlo as mc
from ddpm_check import stats
from ddpm_check.errors import DDPMCheckError
from ddpm_check.montecarlo import CheckDefect, CheckEntry
from ddpm_check.registry import Registry
from ddpm_check.schedules import ScheduleConfig


# ---- the budget is counted, not typed ---------------------------------------------------------
def _fake_check(monkeypatch, run, needs=()):
    """Register a check 'fake' whose module's run is ``run`` (beside the real ones)."""
    module = types.ModuleType("fake_check_module")
    module.run = run
    module.VARIANTS = ()
    monkeypatch.setitem(sys.modules, "fake_check_module", module)
    entries = [*mc.CHECKS.values(), CheckEntry("fake", "a check made up by a test", "fake_check_module", needs=needs)]
    monkeypatch.setattr(mc, "CHECKS", Registry("check", entries))


def _add_z_rows(ctx, declared: int, added: int):
    alpha = ctx.set_tests(declared)
    for k in range(added):
        ctx.add("mean", f"probe {k}", "test", stats.z_test(0.0, 0.0, 1.0, alpha, 100))


def test_the_share_is_the_family_wise_level_over_the_registered_checks(monkeypatch):
    assert mc.alpha_per_check() == stats.ALPHA_FW / len(mc.CHECKS)
    _fake_check(monkeypatch, lambda ctx: _add_z_rows(ctx, 3, 3))
    assert len(mc.CHECKS) == len(mc.CHECK_NAMES) + 1
    res = mc.run_check("fake")
    assert res.alpha_check == stats.ALPHA_FW / len(mc.CHECKS)  # one more check: smaller shares
    assert res.alpha_spent == pytest.approx(res.alpha_check)
    assert [r.alpha for r in res.tests] == [res.alpha_check / 3] * 3


def test_rows_beyond_the_declared_tests_are_a_defect_of_the_check(monkeypatch):
    _fake_check(monkeypatch, lambda ctx: _add_z_rows(ctx, 2, 3))
    with pytest.raises(CheckDefect, match=r"3 statistical test rows \(set_tests declared 2\) spend alpha .*more than its share"):
        mc.run_check("fake")


def test_diagnostic_rows_spend_no_budget(monkeypatch):
    def run(ctx):
        _add_z_rows(ctx, 1, 1)
        ctx.add("extra", "probe", "test", stats.z_test(0.0, 0.0, 1.0, ctx.alpha, 100), role=mc.ROLE_DIAGNOSTIC)

    _fake_check(monkeypatch, run)
    assert mc.run_check("fake").passed


def test_a_derivation_not_declared_is_a_defect_of_the_check(monkeypatch):
    _fake_check(monkeypatch, lambda ctx: ctx.formulas("posterior"), needs=("marginal",))
    with pytest.raises(CheckDefect, match="uses derivation 'posterior' but its registry entry declares"):
        mc.run_check("fake")


# ---- names, seeds, schedules --------------------------------------------------------------------
def test_resolve_names():
    assert mc.resolve_names("all") == [n for n, e in mc.CHECKS.items() if not e.slow]
    assert mc.resolve_names("all", network=True) == list(mc.CHECKS)
    assert mc.resolve_names("network") == ["network"]
    with pytest.raises(DDPMCheckError, match="valid names"):
        mc.resolve_names("everything")


def test_same_seed_same_numbers_other_seed_other_numbers():
    cfg = ScheduleConfig("linear", T=50)
    a = mc.run_check("posterior", schedule=cfg, seed=5)
    b = mc.run_check("posterior", schedule=cfg, seed=5)
    c = mc.run_check("posterior", schedule=cfg, seed=6)
    assert [r.estimate for r in a.rows] == [r.estimate for r in b.rows]
    assert [r.estimate for r in a.rows] != [r.estimate for r in c.rows]
    assert a.seed == stats.seed_for("posterior", 5) != c.seed


@pytest.mark.parametrize("name", ["marginal", "posterior", "mean-eps"])
def test_another_schedule_passes(name):
    res = mc.run_check(name, schedule=ScheduleConfig("cosine", T=100))
    assert res.passed
    assert res.schedule["kind"] == "cosine" and res.schedule["T"] == 100


@pytest.mark.parametrize("cfg", [ScheduleConfig("cosine", T=1000), ScheduleConfig("cosine", T=2)],
                         ids=["cosine-1000", "cosine-2"])
def test_paths_passes_on_the_cosine_schedule(cfg):
    # Two correct evaluations of the cosine betas differ by u times the ratio f(t)/f(t-1) and by
    # the condition number of cos^2 near pi/2 (up to 2,200 u of beta_t at T = 1000), and at T = 2
    # the clipped mean inherits x0_hat's rounding at abar_T = 5e-4: both once failed correct code
    res = mc.run_check("paths", schedule=cfg)
    assert res.passed, [(r.quantity, r.statistic, r.threshold) for r in res.rows if not r.passed]


def test_the_default_schedule_is_reported():
    assert mc.run_check("mean-eps").schedule == ScheduleConfig().to_dict()


# ---- bad input ------------------------------------------------------------------------------------
def test_too_few_samples_is_refused_before_sampling():
    with pytest.raises(DDPMCheckError, match=r"--samples 100 is too small.*use --samples >= \d+"):
        mc.run_check("marginal", samples=100)
    with pytest.raises(DDPMCheckError, match="too small"):
        mc.run_check("sampler", samples=500)


@pytest.mark.parametrize("kwargs, word", [
    (dict(name="marginal", samples=0), "samples must be an integer from 1 to 10,000,000, got 0"),
    (dict(name="nope"), "unknown check 'nope'; valid names: marginal, posterior"),
    (dict(name="marginal", variant="nope"), "unknown variant 'nope' of check 'marginal'"),
    (dict(name="marginal", seed=-1), "seed must be an integer from 0 to 2\\*\\*63 - 1"),
])
def test_bad_input_raises(kwargs, word):
    with pytest.raises(DDPMCheckError, match=word.replace("(", r"\(")):
        mc.run_check(**kwargs)


@pytest.mark.parametrize("options, expected", [
    ({"steps": -1}, "network check steps must be an integer from 1 to 1,000,000, got -1"),
    ({"steps": 10**15}, "network check steps must be an integer from 1 to 1,000,000, got 1000000000000000"),
    ({"step": 10}, "check 'network' takes no option step"),
])
def test_network_check_options_are_checked(options, expected):
    with pytest.raises(DDPMCheckError) as e:
        mc.run_check("network", samples=1024, **options)
    assert str(e.value) == expected


def test_options_go_only_to_the_checks_that_take_them():
    assert mc.option_owners("steps") == ["network"]
    with pytest.raises(DDPMCheckError, match=r"takes no option steps \(only the network check takes steps\)"):
        mc.run_check("marginal", steps=10)
    with pytest.raises(DDPMCheckError, match="network check's: pass network=True"):
        mc.run_all(steps=10)
    with pytest.raises(DDPMCheckError, match="no check takes option speed"):
        mc.run_all(network=True, speed=10)


def test_every_name_the_package_exports_is_what_it_says():
    """The runner's functions are importable from the package, and no submodule of the same name
    (importing a submodule sets that attribute on the package) shadows one of them."""
    import types

    mc.run_check("mean-eps")  # imports the submodules
    for name in mc.__all__:
        assert not isinstance(getattr(mc, name), types.ModuleType), name
