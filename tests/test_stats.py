"""Tests of ddpm_check.stats against scipy/numpy computed independently, textbook values and
fixed-seed simulations of the claimed error rates."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as st

from ddpm_check import stats


# ---- quantiles and power ---------------------------------------------------------------------
def test_textbook_critical_values():
    assert stats.z_two_sided(0.05) == pytest.approx(1.959963984540054, rel=1e-12)
    assert stats.z_one_sided(0.001) == pytest.approx(3.090232306167813, rel=1e-12)


def test_textbook_sample_size():
    # alpha = 0.05 two-sided, power 0.8, sigma = 1, delta = 0.5: ((1.95996 + 0.84162) / 0.5)^2 = 31.4
    assert stats.mean_required_n(1.0, 0.5, alpha=0.05, beta=0.2) == 32


@pytest.mark.parametrize("n", [10, 1000, 123457])
@pytest.mark.parametrize("alpha", [0.05, 1e-4, 2e-7])
def test_mean_power_and_sample_size_invert(n, alpha):
    d = stats.mean_detectable_delta(2.5, n, alpha)
    assert stats.mean_required_n(2.5, d * (1 + 1e-9), alpha) <= n
    assert stats.mean_required_n(2.5, d * (1 - 1e-6), alpha) >= n
    # the power at delta, computed by scipy: P(|Z + delta/se| > z) >= 1 - beta
    se = 2.5 / math.sqrt(n)
    z = st.norm.isf(alpha / 2)
    power = st.norm.sf(z - d / se) + st.norm.cdf(-z - d / se)
    assert power == pytest.approx(1 - stats.BETA, abs=1e-9)


@pytest.mark.parametrize("dof", [20, 999, 40000])
def test_variance_detectable_ratio_has_the_declared_power(dof):
    alpha = 1e-5
    r = stats.variance_detectable_ratio(dof, alpha)
    lo, hi = st.chi2.ppf(alpha / 2, dof), st.chi2.isf(alpha / 2, dof)
    # under sigma^2 = (1 + r) sigma0^2 or (1 - r) sigma0^2, one side has power exactly 1 - beta,
    # the other at least 1 - beta.
    p_up = st.chi2.sf(hi / (1 + r), dof)
    p_down = st.chi2.cdf(lo / (1 - r), dof) if r < 1 else 1.0
    assert min(p_up, p_down) >= 1 - stats.BETA - 1e-9
    assert min(p_up, p_down) == pytest.approx(1 - stats.BETA, abs=1e-6)
    assert stats.variance_required_dof(r * 1.0001, alpha) <= dof
    assert stats.variance_required_dof(r * 0.999, alpha) > dof


def test_ks_power_and_required_n_invert():
    alpha = 1e-6
    for n in (50, 4000, 100000):
        d = stats.ks_detectable_delta(n, alpha)
        assert stats.ks_required_n(d * (1 + 1e-9), alpha) <= n
        assert stats.ks_required_n(d * (1 - 1e-6), alpha) >= n
        # at most docs/TESTING.md's conservative n = 2 max(ln(2/alpha), ln(2/beta)) / d^2
        assert stats.ks_required_n(d, alpha) <= 2 * max(math.log(2 / alpha), math.log(2 / stats.BETA)) / d**2 + 1


def test_dkwm_formula():
    assert stats.dkwm_epsilon(1000, 0.05) == pytest.approx(math.sqrt(math.log(40) / 2000), rel=1e-14)


def test_bonferroni_allocation():
    assert stats.alpha_per_check(5) == pytest.approx(stats.ALPHA_FW / 5)
    assert stats.alpha_per_test(8, 5) == pytest.approx(1e-4 / 5 / 8)
    with pytest.raises(ValueError):
        stats.alpha_per_check(0)
    with pytest.raises(ValueError):
        stats.bonferroni(1e-4, 0)
    with pytest.raises(ValueError):
        stats.z_two_sided(0.0)


# ---- the tests -------------------------------------------------------------------------------
def test_mean_test_statistic_by_hand():
    x = np.array([1.0, 2.0, 3.0, 6.0])  # mean 3
    out = stats.mean_test(x, mu0=2.0, sigma0=2.0, alpha=0.05)
    assert out.estimate == 3.0 and out.se == pytest.approx(1.0)
    assert out.statistic == pytest.approx(1.0)
    assert out.passed and out.n == 4
    out = stats.mean_test(x, mu0=-1.0, sigma0=2.0, alpha=0.05)
    assert out.statistic == pytest.approx(4.0) and not out.passed


def test_z_test_degenerate_null():
    assert stats.z_test(1.0, 1.0, 0.0, 0.01, 5).passed
    out = stats.z_test(1.0 + 1e-12, 1.0, 0.0, 0.01, 5)
    assert out.statistic == math.inf and not out.passed


@pytest.mark.parametrize("q_over_dof", [0.5, 0.9, 0.97, 1.0, 1.02, 1.1, 1.6])
def test_chi2_statistic_is_the_equal_tailed_test(q_over_dof):
    dof, alpha = 500, 1e-3
    q = q_over_dof * dof
    out = stats.chi2_variance_test(q * 3.0, dof, 3.0, alpha)  # sum_sq = q * sigma0^2
    p_two = 2 * min(st.chi2.cdf(q, dof), st.chi2.sf(q, dof))
    assert 2 * st.norm.sf(out.statistic) == pytest.approx(p_two, rel=1e-8)
    rejects = q < st.chi2.ppf(alpha / 2, dof) or q > st.chi2.isf(alpha / 2, dof)
    assert out.passed is (not rejects)
    assert out.estimate == pytest.approx(q * 3.0 / dof)
    assert out.expected == 3.0


def test_chi2_statistic_far_tail_is_finite_and_monotone():
    dof = 5000
    stats_ = [stats.chi2_variance_test(r * dof, dof, 1.0, 1e-6).statistic for r in (1.5, 2, 4, 10)]
    assert all(math.isfinite(s) for s in stats_)
    assert stats_ == sorted(stats_) and stats_[-1] > 50
    low = stats.chi2_variance_test(0.05 * dof, dof, 1.0, 1e-6)
    assert math.isfinite(low.statistic) and low.statistic > 50
    assert stats.chi2_variance_test(1.0, dof, 0.0, 1e-6).statistic == math.inf


def test_variance_test_matches_sample_variance():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=10000)
    out = stats.variance_test(x, 4.0, 1e-4)
    assert out.estimate == pytest.approx(np.var(x, ddof=1), rel=1e-12)
    assert out.passed
    assert not stats.variance_test(x, 4.0 * 1.2, 1e-4).passed


def test_ks_statistic_matches_scipy():
    rng = np.random.default_rng(2)
    x = rng.normal(0.3, 1.0, size=777)
    mine = stats.ks_statistic(x, st.norm.cdf)
    ref = st.kstest(x, "norm").statistic
    assert mine == pytest.approx(ref, rel=1e-12)
    out = stats.ks_test(x, st.norm.cdf, 1e-3)
    assert out.threshold == pytest.approx(stats.dkwm_epsilon(777, 1e-3))
    assert out.se is None


def test_ks_size_and_power_by_simulation():
    """Fixed-seed simulation of the declared rates at a loose alpha, beta."""
    rng = np.random.default_rng(3)
    n, alpha, beta, reps = 200, 0.1, 0.1, 400
    rej_null = sum(not stats.ks_test(rng.normal(size=n), st.norm.cdf, alpha).passed for _ in range(reps))
    assert rej_null / reps <= alpha  # DKWM is conservative
    # a shift whose sup-CDF distance is exactly the detectable delta
    d = stats.ks_detectable_delta(n, alpha, beta)
    shift = 2 * st.norm.ppf(0.5 + d / 2)  # sup |Phi(x - s) - Phi(x)| = 2 Phi(s/2) - 1
    rej_alt = sum(not stats.ks_test(rng.normal(shift, size=n), st.norm.cdf, alpha).passed
                  for _ in range(reps))
    assert rej_alt / reps >= 1 - beta


def test_ols_fit_matches_linregress_and_exact_standard_errors():
    rng = np.random.default_rng(4)
    x = rng.normal(5.0, 2.0, size=300)
    y = 0.7 * x + 1.3 + rng.normal(0, 0.5, size=300)
    fit = stats.ols_fit(x, y)
    ref = st.linregress(x, y)
    assert fit.slope == pytest.approx(ref.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-11)
    slope, icpt, resid = stats.ols_tests(fit, 0.7, 1.3, 0.25, alpha=1e-3)
    X = np.column_stack([np.ones_like(x), x])
    cov = 0.25 * np.linalg.inv(X.T @ X)  # the exact covariance of (a_hat, b_hat) given x
    assert slope.se == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-10)
    assert icpt.se == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-10)
    resid_ref = np.sum((y - X @ np.linalg.lstsq(X, y, rcond=None)[0]) ** 2) / 298
    assert resid.estimate == pytest.approx(resid_ref, rel=1e-10)
    assert slope.passed and icpt.passed and resid.passed
    assert not stats.ols_tests(fit, 0.8, 1.3, 0.25, alpha=1e-3)[0].passed


def test_ols_z_statistics_are_standard_normal_under_the_null():
    rng = np.random.default_rng(5)
    zs_b, zs_a, qs = [], [], []
    x = rng.normal(1.0, 1.0, size=40)  # fixed design: the tests are conditional on x
    b, a, _ = stats.ols_tests(stats.ols_fit(x, x + rng.normal(size=40)), -0.4, 2.0, 2.25, alpha=0.05)
    for _ in range(2000):  # the standard errors depend on x only
        y = -0.4 * x + 2.0 + rng.normal(0, 1.5, size=40)
        fit = stats.ols_fit(x, y)
        zs_b.append((fit.slope + 0.4) / b.se)
        zs_a.append((fit.intercept - 2.0) / a.se)
        qs.append(fit.rss / 2.25)
    assert st.kstest(zs_b, "norm").pvalue > 1e-3
    assert st.kstest(zs_a, "norm").pvalue > 1e-3
    assert st.kstest(qs, st.chi2(38).cdf).pvalue > 1e-3


def test_exact_test_in_ulps():
    a = np.array([1.0, 2.0, -3.0])
    assert stats.exact_test(a, a, 1.0, 4).statistic == 0.0
    b = a * (1 + 4 * np.finfo(float).eps)
    out = stats.exact_test(a, b, np.abs(a), 16)
    assert out.passed and 0 < out.statistic <= 16
    out = stats.exact_test(a, a * (1 + 1e-10), np.abs(a), 16)
    assert not out.passed and out.margin > 1e4
    assert stats.exact_test(a, np.array([1.0, np.nan, 0.0]), 1.0, 4).statistic == math.inf


def test_outcome_to_dict_has_every_field():
    d = stats.mean_test(np.ones(3), 1.0, 1.0, 0.01).to_dict()
    for key in ("kind", "estimate", "expected", "se", "statistic", "threshold", "alpha", "delta",
                "n", "passed"):
        assert key in d


# ---- seeds -----------------------------------------------------------------------------------
def test_seeds_by_name_are_distinct_and_in_range():
    names = ["marginal", "posterior", "mean-eps", "sampler", "network"]
    seeds = [stats.seed_for(n) for n in names]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    assert stats.seed_for("marginal", 1) != stats.seed_for("marginal", 2)
    assert stats.seed_for("marginal") == stats.seed_for("marginal")
    with pytest.raises(ValueError):
        stats.seed_for("marginal", -1)


def test_seeds_do_not_depend_on_python_hash_randomisation():
    code = "from ddpm_check.stats import seed_for; print(seed_for('posterior', 7))"
    outs = set()
    for hs in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hs)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, check=True).stdout.strip())
    assert outs == {str(stats.seed_for("posterior", 7))}


def test_seed_is_the_seedsequence_spawned_by_name():
    import hashlib

    words = tuple(int.from_bytes(hashlib.sha256(b"sampler").digest()[i:i + 4], "little")
                  for i in range(0, 32, 4))
    st_ = np.random.SeedSequence(entropy=42, spawn_key=words).generate_state(2, dtype=np.uint32)
    assert stats.seed_for("sampler", 42) == (int(st_[0]) | int(st_[1]) << 32) & (2**63 - 1)


def test_torch_generator_is_reproducible():
    import torch

    a = torch.randn(5, generator=stats.torch_generator(stats.seed_for("x")))
    b = torch.randn(5, generator=stats.torch_generator(stats.seed_for("x")))
    assert torch.equal(a, b)
