"""The posterior check: regressions against the derivation and the arrays, exact rows for code bugs."""

import pytest

from ddpm_check import montecarlo as mc
from ddpm_check.errors import DDPMCheckError
from ddpm_check.schedules import ScheduleConfig


def test_posterior_tests_derivation_and_schedule_arrays(checked):
    res = checked("posterior")
    srcs = {(r.quantity, r.source) for r in res.tests}
    for q in ("slope = coef2", "intercept = coef1 x0", "resid var = beta_tilde"):
        assert (q, "derivation") in srcs and (q, "schedule") in srcs


def test_a_code_only_bug_is_caught_by_the_exact_rows(checked):
    """coef1 computed with alpha_bar_t for alpha_bar_{t-1}: a 1e-4 relative error that no
    regression at this n can see; the exact comparison with the derivation does."""
    res = checked("posterior", "schedule_coef1_alpha_bar_t")
    assert {r.kind for r in res.failures} == {"exact"}


def test_posterior_needs_two_steps():
    with pytest.raises(DDPMCheckError, match="T >= 2"):
        mc.run_check("posterior", schedule=ScheduleConfig("linear", T=1))
