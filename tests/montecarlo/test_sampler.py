"""The sampler check: which configurations are tests and which diagnostics, and the start-mismatch
bound that decides it."""

import numpy as np
import pytest
from scipy import stats as st

from ddpm_check import montecarlo as mc
from ddpm_check.mixture import GaussianMixture
from ddpm_check.montecarlo.sampler import start_mismatch_tv
from ddpm_check.schedules import ScheduleConfig


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
