"""The Monte Carlo checks: each passes on the correct code and rejects each of its known-wrong
variants by a wide margin (TESTING.md section 2).  Results of the default runs are cached per
module so each check runs once."""

from __future__ import annotations

import functools
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats as st

from ddpm_check import montecarlo as mc
from ddpm_check import stats as S
from ddpm_check.errors import DDPMCheckError
from ddpm_check.mixture import GaussianMixture
from ddpm_check.schedules import ScheduleConfig

FAST = ("marginal", "posterior", "mean-eps", "sampler")
#: "statistic > several x threshold": the worst rejected row of a wrong variant
MIN_MARGIN = 3.0


@functools.lru_cache(maxsize=None)
def _run(name: str, variant: str | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mc.run_check(name, variant=variant)


# ---- the correct code passes ------------------------------------------------------------------
@pytest.mark.parametrize("name", FAST)
def test_check_passes_on_correct_code(name):
    res = _run(name)
    assert res.passed, [(r.quantity, r.where, r.statistic, r.threshold) for r in res.failures]
    assert res.tests, "a check without tests"
    assert res.seed == S.seed_for(name, S.DEFAULT_ROOT_SEED)
    assert all(r.seed == res.seed and r.check == name for r in res.rows)


@pytest.mark.parametrize("name", FAST)
def test_rows_are_well_formed_tests(name):
    res = _run(name)
    for r in res.tests:
        assert r.threshold > 0 and r.n >= 1 and math.isfinite(r.statistic)
        assert r.delta > 0
        if r.kind == "ks":
            assert r.threshold >= S.dkwm_epsilon(r.n, r.alpha) - 1e-15
        if r.kind in ("mean", "ols-slope", "ols-intercept"):
            assert r.threshold == pytest.approx(S.z_two_sided(r.alpha))
            assert r.statistic == pytest.approx(abs(r.estimate - r.expected) / r.se)
            # the declared power: (z_{1-a/2} + z_{1-b}) se
            assert r.delta == pytest.approx((S.z_two_sided(r.alpha) + S.z_one_sided(S.BETA)) * r.se)
    json.dumps(res.to_dict(), allow_nan=False)  # strict JSON


def test_family_wise_alpha_is_within_budget():
    total = sum(r.alpha for name in FAST for r in _run(name).tests)
    # network has 2 statistical tests at its own share
    assert total + S.alpha_per_check() <= S.ALPHA_FW * (1 + 1e-12)
    for name in FAST:
        alphas = {r.alpha for r in _run(name).tests if r.kind != "exact"}
        if alphas:
            (a,) = alphas  # one level per check: its share split equally
            assert a * sum(r.kind != "exact" for r in _run(name).tests) <= S.alpha_per_check() * (1 + 1e-12)


def test_marginal_probes_where_bugs_show():
    res = _run("marginal")
    wheres = {r.where for r in res.rows}
    for t in (1, 143, 300):  # alpha_bar_143 ~ 0.5 for the source's schedule; t = T
        for x0 in ("0", "1", "-3", "10"):
            assert f"t={t} x0={x0}" in wheres
    assert {r.source for r in res.rows} >= {"iterate eq. 2", "q_sample"}


def test_posterior_tests_derivation_and_schedule_arrays():
    res = _run("posterior")
    srcs = {(r.quantity, r.source) for r in res.tests}
    for q in ("slope = coef2", "intercept = coef1 x0", "resid var = beta_tilde"):
        assert (q, "derivation") in srcs and (q, "schedule") in srcs


def test_sampler_roles_and_findings():
    res = _run("sampler")
    by_group = {}
    for r in res.rows:
        by_group.setdefault(r.group, []).append(r)
    assert {r.role for r in by_group["linear T=1000, x_T~N(0,I)"]} == {"test"}
    assert {r.role for r in by_group["linear T=300, x_T~q(x_T)"]} == {"test"}
    # the source's choice (T = 300, x_T ~ N(0, I)) is a diagnostic, and its error is visible
    src = by_group["linear T=300 (source), x_T~N(0,I)"]
    assert {r.role for r in src} == {"diagnostic"}
    assert max(r.statistic for r in src) > 2 * src[0].threshold
    assert all(r.verdict == "finding" for r in by_group["linear T=50, x_T~N(0,I)"])


# ---- every wrong variant is rejected by a wide margin -------------------------------------
@pytest.mark.parametrize("name,variant", [(n, v) for n in FAST for v in mc.VARIANTS[n]])
def test_wrong_variant_is_rejected_with_margin(name, variant):
    res = _run(name, variant)
    assert not res.passed, f"{name}/{variant} was not rejected"
    worst = res.worst
    assert worst.margin > MIN_MARGIN, (worst.quantity, worst.where, worst.statistic, worst.threshold)
    assert res.variant == variant


def test_every_check_has_wrong_variants():
    for name in mc.CHECK_NAMES:
        assert len(mc.VARIANTS[name]) >= 2, name


def test_a_code_only_bug_is_caught_by_the_exact_rows():
    """coef1 computed with alpha_bar_t for alpha_bar_{t-1}: a 1e-4 relative error that no
    regression at this n can see; the exact comparison with the derivation does."""
    res = _run("posterior", "schedule_coef1_alpha_bar_t")
    assert {r.kind for r in res.failures} == {"exact"}


def test_variants_built_by_sympy_substitution_change_the_formula():
    import derivations
    import sympy as sp
    from derivations.symbols import alpha_bar_t, alpha_t

    res = dict(derivations.get("posterior").results)
    new = mc._VARIANTS["posterior"]["alpha_for_sqrt_alpha"].results("posterior", res)
    # alpha_t where sqrt(alpha_t) belongs: the wrong coef2 (of x_t) is the right one times sqrt(alpha_t)
    assert sp.simplify(new["posterior_mean_coef2"] / res["posterior_mean_coef2"] - sp.sqrt(alpha_t)) == 0
    assert new["posterior_variance"] == res["posterior_variance"]
    m = dict(derivations.get("marginal").results)
    wrong = mc._VARIANTS["marginal"]["one_minus_alpha_for_one_minus_alpha_bar"].results("marginal", m)
    assert sp.simplify(wrong["x_t_variance"] - (1 - alpha_t)) == 0
    assert alpha_bar_t in m["x_t_variance"].free_symbols


# ---- seeds, schedules, bad input ----------------------------------------------------------
def test_same_seed_same_numbers_other_seed_other_numbers():
    cfg = ScheduleConfig("linear", T=50)
    a = mc.run_check("posterior", schedule=cfg, seed=5)
    b = mc.run_check("posterior", schedule=cfg, seed=5)
    c = mc.run_check("posterior", schedule=cfg, seed=6)
    assert [r.estimate for r in a.rows] == [r.estimate for r in b.rows]
    assert [r.estimate for r in a.rows] != [r.estimate for r in c.rows]
    assert a.seed == S.seed_for("posterior", 5) != c.seed


@pytest.mark.parametrize("name", ["marginal", "posterior", "mean-eps"])
def test_another_schedule_passes(name):
    res = mc.run_check(name, schedule=ScheduleConfig("cosine", T=100))
    assert res.passed
    assert res.schedule["kind"] == "cosine" and res.schedule["T"] == 100


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


def test_resolve_names():
    assert mc.resolve_names("all") == ["marginal", "posterior", "mean-eps", "sampler"]
    assert mc.resolve_names("all", network=True)[-1] == "network"
    assert mc.resolve_names("network") == ["network"]
    with pytest.raises(DDPMCheckError, match="valid names"):
        mc.resolve_names("everything")


def test_posterior_needs_two_steps():
    with pytest.raises(DDPMCheckError, match="T >= 2"):
        mc.run_check("posterior", schedule=ScheduleConfig("linear", T=1))


def test_start_mismatch_tv_against_closed_forms():
    # the data N(0, I): q(x_T) = N(0, I) for every alpha_bar
    std_normal = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [0.0, 0.0]], [1.0, 1.0])
    assert mc.start_mismatch_tv(std_normal, 0.3) < 1e-6
    # N(m, I) at alpha_bar = 1 vs N(0, I): TV = 2 Phi(|m|/2) - 1
    shifted = GaussianMixture([1.0], [[1.2, -0.5]], [1.0])
    want = 2 * st.norm.cdf(np.hypot(1.2, 0.5) / 2) - 1
    assert mc.start_mismatch_tv(shifted, 1.0 - 1e-12) == pytest.approx(want, abs=1e-5)


def test_sampler_with_coarse_steps_reports_diagnostics_only():
    res = mc.run_check("sampler", schedule=ScheduleConfig("linear", T=3, beta_start=0.01, beta_end=0.2))
    assert res.rows and all(r.role == "diagnostic" for r in res.rows)
    assert any("coarse steps" in r.note for r in res.rows)


# ---- the network check (fast smoke; the full run is slow) -----------------------------------
def test_network_smoke_runs_and_reports():
    res = mc.run_check("network", steps=20, samples=1024)
    quantities = [r.quantity for r in res.rows]
    assert quantities[:2] == ["net MSE >= Bayes floor (paired)", "excess / floor (UCB) <= tol"]
    buckets = [r for r in res.rows if r.role == "diagnostic"]
    assert len(buckets) == mc.NETWORK_BUCKETS and all(r.se > 0 for r in buckets)
    # the excess of an (under-trained) network over the exact floor is positive
    assert res.rows[0].estimate > 0 and res.rows[0].passed
    assert any("Adam steps" in n for n in res.notes)
    json.dumps(res.to_dict(), allow_nan=False)


def test_network_wrong_floor_is_beaten_even_by_a_smoke_run():
    res = mc.run_check("network", steps=20, samples=1024, variant="floor_alpha_for_alpha_bar")
    assert not res.rows[0].passed and res.rows[0].margin > MIN_MARGIN


@pytest.mark.slow
def test_network_converges_to_the_bayes_floor():
    res = mc.run_check("network")
    assert res.passed, [(r.quantity, r.statistic, r.threshold) for r in res.failures]


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(mc.VARIANTS["network"]))
def test_network_wrong_floor_is_rejected(variant):
    res = mc.run_check("network", variant=variant)
    assert not res.passed and res.worst.margin > MIN_MARGIN


def test_network_check_survives_a_bucket_whose_bayes_floor_is_zero():
    # betas 0.5..0.6: alpha_bar_t ~ 1e-105 late on, where eps is known from x_t and the exact
    # denoiser's loss is 0; the per-bucket ratio excess / floor divided by zero
    from ddpm_check.montecarlo import run_check
    from ddpm_check.schedules import ScheduleConfig

    res = run_check("network", steps=3, schedule=ScheduleConfig(beta_start=0.5, beta_end=0.6))
    buckets = [r for r in res.rows if r.quantity == "excess eps-MSE"]
    assert any(r.statistic == float("inf") for r in buckets)  # a bucket with floor exactly 0
    assert all(r.role == "diagnostic" for r in buckets)
