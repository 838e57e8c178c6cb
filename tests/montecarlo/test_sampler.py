"""The sampler check: which configurations are tests and which diagnostics, and the start-mismatch
bound that decides it."""

import numpy as np
import pytest
from scipy import stats as st

from ddpm_check import montecarlo as mc
from ddpm_check import stats
from ddpm_check.mixture import GaussianMixture
from ddpm_check.montecarlo import sampler as SM
from ddpm_check.montecarlo.sampler import start_mismatch_tv
from ddpm_check.schedules import Schedule, ScheduleConfig


def test_sampler_roles_and_findings(checked):
    res = checked("sampler")
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


def _groups(res):
    out = {}
    for r in res.rows:
        out.setdefault(r.group, []).append(r)
    return out


def test_zero_snr_v_start_is_a_test_with_no_mismatch_allowance(checked):
    """T = 300 rescaled to zero terminal SNR, v-prediction, from N(0, I) = q(x_T): a test whose KS
    threshold is the DKWM bound alone (TV 0), and it passes where the source's start does not."""
    res = checked("sampler")
    zs = _groups(res)[SM.ZERO_SNR_GROUP]
    assert len(zs) == len(SM.SAMPLER_DIRECTIONS)
    assert {r.role for r in zs} == {"test"} and all(r.verdict == "pass" for r in zs)
    eps = stats.dkwm_epsilon(zs[0].n, zs[0].alpha)
    assert all(r.threshold == eps for r in zs)  # no TV allowance
    assert all("zero terminal SNR" in r.note and "v-prediction" in r.note for r in zs)
    # the source's start (same T, eps-prediction) is off by more than twice that threshold
    src = _groups(res)[SM.SOURCE_GROUP]
    assert max(r.statistic for r in src) > 2 * eps > 2 * max(r.statistic for r in zs)
    assert "linear T=300 zero-SNR (v): 0.0000 (test)" in " ".join(res.notes)
    # 4 test configurations of 4 projections: the alpha of every test row counts them
    assert len(res.tests) == 16
    assert res.tests[0].alpha == pytest.approx(stats.alpha_per_test(16, len(mc.CHECKS)), rel=1e-12)


def test_zero_snr_schedule_counts_as_fine_steps():
    # beta_T = 1 at the very end, where alpha_bar is ~0: the fine-steps rule only looks where
    # alpha_bar_t >= FINE_ALPHA_BAR, so the configuration stays a test
    s = Schedule.from_config(ScheduleConfig(T=300, zero_snr=True))
    assert s.betas[-1] == 1.0 and s.alphas_cumprod[-1] == 0.0
    assert s.betas.max() > SM.FINE_BETA and SM._fine_steps(s)
    coarse = Schedule.from_config(ScheduleConfig(T=20, beta_start=0.01, beta_end=0.2, zero_snr=True))
    assert not SM._fine_steps(coarse)


def test_v_wrong_sign_variant_hits_only_the_v_configuration(checked):
    res = checked("sampler", "v_wrong_sign")
    failed = {r.group for r in res.failures}
    assert failed == {SM.ZERO_SNR_GROUP}
    assert min(r.statistic / r.threshold for r in res.failures) > 3


def test_user_schedules_get_no_zero_snr_configuration():
    """A user schedule is run as given (from N(0, I) and q(x_T), eps-prediction); the zero-SNR
    configuration is a default one.  A zero-SNR user schedule (which run_check refuses today:
    alpha_bar_T = 0) would be one configuration, v-prediction from N(0, I) = q(x_T), TV 0."""
    user = Schedule.from_config(ScheduleConfig(T=100))
    assert [(c.group, c.prediction) for c in SM._sampler_configs(user)] == [
        ("linear T=100, x_T~N(0,I)", "eps"), ("linear T=100, x_T~q(x_T)", "eps")]
    zs = Schedule.from_config(ScheduleConfig(T=100, zero_snr=True))
    (c,) = SM._sampler_configs(zs)
    assert (c.group, c.prediction) == ("linear T=100 zero-SNR (v), x_T~N(0,I)", "v")
    assert SM._start_tv(SM.sampler_mixture(), c) == 0.0
    defaults = SM._sampler_configs(None)
    assert [c.group for c in defaults if c.prediction == "v"] == [SM.ZERO_SNR_GROUP]
    assert defaults[-1].group == SM.ZERO_SNR_GROUP  # last: the other configurations keep their draws


def test_start_mismatch_tv_against_closed_forms():
    # the data N(0, I): q(x_T) = N(0, I) for every alpha_bar
    std_normal = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [0.0, 0.0]], [1.0, 1.0])
    assert start_mismatch_tv(std_normal, 0.3) < 1e-6
    # N(m, I) at alpha_bar = 1 vs N(0, I): TV = 2 Phi(|m|/2) - 1
    shifted = GaussianMixture([1.0], [[1.2, -0.5]], [1.0])
    want = 2 * st.norm.cdf(np.hypot(1.2, 0.5) / 2) - 1
    assert start_mismatch_tv(shifted, 1.0 - 1e-12) == pytest.approx(want, abs=1e-5)


def test_sampler_with_coarse_steps_reports_diagnostics_only():
    res = mc.run_check("sampler", schedule=ScheduleConfig("linear", T=3, beta_start=0.01, beta_end=0.2))
    assert res.rows and all(r.role == "diagnostic" for r in res.rows)
    assert any("coarse steps" in r.note for r in res.rows)
