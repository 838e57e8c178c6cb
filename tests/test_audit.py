"""The audit: every verdict is computed, and a corrected input flips it.

Each claim function runs on the source's input (its verdict as the source stands) and on a
corrected or deliberately wrong input (the opposite verdict).  The numbers it reports are
compared with values computed here independently (explicit products, quadrature, closed forms).
The toolkit's Monte Carlo checks that the claims cite are exercised by tests/cli/test_audit.py
(a full audit); here ``checks=False`` keeps the tests fast, except for zero-snr-start, whose
evidence is the sampler check itself (run here at its defaults and with a wrong variant).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch
from scipy import integrate, optimize, stats

from ddpm_check import audit as A
from ddpm_check.errors import DDPMCheckError
from ddpm_check.mixture import GaussianMixture
from ddpm_check.schedules import make_schedule
from derivations import symbols as S

SMALL = 2_000  # Monte Carlo size for the audit's own simulations in these tests


def linear_alphas(T: int, b0: float = 1e-4, b1: float = 0.02) -> list[float]:
    return [1.0 - (b0 + (b1 - b0) * s / (T - 1)) for s in range(T)]


# ---- 1. the forward step's index ------------------------------------------------------------
def test_forward_step_as_written_is_an_erratum():
    c = A.claim_forward_step(samples=SMALL, checks=False)
    assert c.verdict == A.ERRATUM
    a = linear_alphas(300)
    # as written with alpha_0 = 1: Var x_t = 1 - alpha_bar_{t-1} (one step behind)
    lag = [1 - math.prod(a[: t - 1]) for t in (1, 2, 3)]
    closed = [1 - math.prod(a[:t]) for t in (1, 2, 3)]
    np.testing.assert_allclose(c.evidence["variance_recursion"], lag, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(c.evidence["variance_closed_form"], closed, rtol=1e-12)
    assert not c.evidence["symbolic_equal"]
    assert "alpha_0" in c.evidence["symbolic"][2]["variance"]
    assert not c.evidence["two_step_matches_source_display"]
    assert not c.evidence["monte_carlo_variance_test"]["passed"]


def test_forward_step_with_alpha_t_holds():
    c = A.claim_forward_step(index_shift=0, samples=SMALL, checks=False)
    assert c.verdict == A.HOLDS
    assert c.evidence["symbolic_equal"] and c.evidence["two_step_matches_source_display"]
    assert max(c.evidence["relative_error"]) < 1e-11
    assert c.evidence["monte_carlo_variance_test"]["passed"]


def test_forward_step_variances_recursion():
    a = [0.9, 0.8, 0.7, 0.6]
    np.testing.assert_allclose(A.forward_step_variances(a, 0), [1 - 0.8, 1 - 0.8 * 0.7, 1 - 0.8 * 0.7 * 0.6])
    np.testing.assert_allclose(A.forward_step_variances(a, 1), [1 - 0.9, 1 - 0.9 * 0.8, 1 - 0.9 * 0.8 * 0.7])


def test_forward_step_bad_input():
    with pytest.raises(DDPMCheckError, match="index_shift"):
        A.claim_forward_step(index_shift=2, checks=False)
    with pytest.raises(DDPMCheckError, match="samples"):
        A.claim_forward_step(samples=0, checks=False)


# ---- 2. alpha_t -> 0 -----------------------------------------------------------------------------
def test_alpha_to_zero_is_an_erratum_for_the_source():
    c = A.claim_alpha_to_zero()
    assert c.verdict == A.ERRATUM
    assert c.evidence["alpha_min"] == pytest.approx(1 - 0.02, rel=1e-15)
    assert c.evidence["alpha_max"] == pytest.approx(1 - 1e-4, rel=1e-15)
    assert c.evidence["alpha_bar_T"] == pytest.approx(math.prod(linear_alphas(300)), rel=1e-12)
    assert "alpha_bar_t" in c.explanation


def test_alpha_to_zero_holds_for_the_cosine_schedule():
    """The cosine schedule's last beta is the 0.999 clip: alpha_T = 0.001 does fall to 0."""
    c = A.claim_alpha_to_zero(make_schedule("cosine", T=1000))
    assert c.verdict == A.HOLDS
    assert c.evidence["alpha_last"] == pytest.approx(0.001)


# ---- 3-5. merge, closed form, recursion --------------------------------------------------------
def test_gaussian_merge_holds_and_a_wrong_merge_does_not():
    assert A.claim_gaussian_merge(checks=False).verdict == A.HOLDS
    a, am1 = S.alpha_t, S.alpha_tm1
    wrong = (sp.sqrt(a * (1 - am1)) + sp.sqrt(1 - a)) ** 2  # adding standard deviations
    c = A.claim_gaussian_merge(merged_variance=wrong, checks=False)
    assert c.verdict == A.ERRATUM and not c.evidence["merged_same_law"]


@pytest.mark.parametrize("kw", [dict(variance=1 - S.alpha_t), dict(mean_coef=S.alpha_bar_t)])
def test_closed_form_holds_and_wrong_forms_do_not(kw):
    ok = A.claim_closed_form(checks=False)
    assert ok.verdict == A.HOLDS and all(ok.evidence["same_law_t1_to_5"])
    bad = A.claim_closed_form(checks=False, **kw)
    assert bad.verdict == A.ERRATUM and not all(bad.evidence["same_law_t1_to_5"][1:])


def test_alpha_bar_recursion():
    assert A.claim_alpha_bar_recursion(offset=1).verdict == A.HOLDS
    bad = A.claim_alpha_bar_recursion(offset=0)  # alpha_t alpha_bar_t = alpha_bar_{t+1}: wrong
    assert bad.verdict == A.ERRATUM and not any(bad.evidence["symbolic_t1_to_3"])
    assert bad.evidence["schedule_max_ulps"] > 1e6


# ---- 6-7. posterior, sampling step ------------------------------------------------------------
def test_posterior_holds():
    c = A.claim_posterior(checks=False)
    assert c.verdict == A.HOLDS
    assert all(c.evidence["symbolic_equal_to_derivation"].values())


@pytest.mark.parametrize("kw, key", [
    (dict(sigma2=S.beta_t), "sigma2"),
    (dict(sigma2_completed_square=1 / (S.alpha_t / S.beta_t + 1 / (1 - S.alpha_bar_t))), "sigma2_completed_square"),
    (dict(mu=sp.sqrt(S.alpha_bar_tm1) * (1 - S.alpha_bar_tm1) / (1 - S.alpha_bar_t) * S.x_t
          + sp.sqrt(S.alpha_bar_tm1) * S.beta_t / (1 - S.alpha_bar_t) * S.x_0), "mu"),
])
def test_posterior_wrong_formulas_are_errata(kw, key):
    c = A.claim_posterior(checks=False, **kw)
    assert c.verdict == A.ERRATUM
    assert not c.evidence["symbolic_equal_to_derivation"][key]


def test_sampling_step_holds_and_beta_noise_is_an_erratum():
    assert A.claim_sampling_step(checks=False).verdict == A.HOLDS
    a, ab, b = S.alpha_t, S.alpha_bar_t, S.beta_t
    wrong = (S.x_t - b / sp.sqrt(1 - ab) * S.eps_theta) / sp.sqrt(a) + sp.sqrt(b) * S.z
    c = A.claim_sampling_step(sampling_step=wrong, checks=False)
    assert c.verdict == A.ERRATUM and c.evidence["sampling_step_vs_p_sample_rel"] > 1e-6


# ---- 8. the training loss ------------------------------------------------------------------------
def posterior_x0_by_quadrature(mix, x_t: float, alpha_bar: float) -> tuple[float, float]:
    """(E[x_0 | x_t], median(x_0 | x_t)) for 1-D mixture data, by numerical integration."""
    a, b = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)

    def f(x0):
        prior = sum(w * stats.norm.pdf(x0, m, s) for w, m, s in zip(mix.weights, mix.means[:, 0], mix.stds))
        return prior * stats.norm.pdf(x_t, a * x0, b)

    pts = sorted(list(mix.means[:, 0]) + [x_t / a])
    lo, hi = -4.0, 4.0
    Z = integrate.quad(f, lo, hi, points=pts, limit=400, epsabs=0, epsrel=1e-12)[0]
    mean = integrate.quad(lambda v: v * f(v), lo, hi, points=pts, limit=400, epsabs=0, epsrel=1e-12)[0] / Z

    def cdf(c):
        inner = [p for p in pts if lo < p < c]
        return integrate.quad(f, lo, c, points=inner or None, limit=400, epsabs=0, epsrel=1e-12)[0] / Z - 0.5

    med = optimize.brentq(cdf, lo, hi, xtol=1e-13)
    return mean, med


@pytest.mark.parametrize("alpha_bar", [0.99, 0.5, 0.05])
@pytest.mark.parametrize("x_t", [-0.7, 0.05, 0.9])
def test_eps_mean_and_median_match_quadrature(alpha_bar, x_t):
    mix = A.audit_mixture()
    a, b = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    mean_x0, med_x0 = posterior_x0_by_quadrature(mix, x_t, alpha_bar)
    r, m, s = A.eps_posterior_components(mix, np.array([x_t]), alpha_bar)
    # eps = (x_t - a x_0)/b is decreasing in x_0: its median is the image of x_0's median
    assert A.mixture_median(r, m, s)[0] == pytest.approx((x_t - a * med_x0) / b, abs=1e-7)
    assert float((r * m).sum()) == pytest.approx((x_t - a * mean_x0) / b, abs=1e-7)
    toolkit = mix.eps_posterior_mean(torch.tensor([[x_t]], dtype=torch.float64), torch.tensor(alpha_bar, dtype=torch.float64))
    assert float(toolkit) == pytest.approx((x_t - a * mean_x0) / b, abs=1e-7)


def test_training_loss_caveat_for_bimodal_data_and_holds_for_gaussian():
    c = A.claim_training_loss(samples=SMALL)
    assert c.verdict == A.CAVEAT
    assert c.evidence["max_rms"] > 0.05  # the median and the mean of eps|x_t differ visibly
    for row in c.evidence["per_t"]:
        assert row["extra_l2_loss"] == pytest.approx(row["rms_median_minus_mean"] ** 2)
    gauss = GaussianMixture([1.0], [[0.3]], [0.4])
    g = A.claim_training_loss(mixture=gauss, samples=SMALL)
    assert g.verdict == A.HOLDS and g.evidence["max_rms"] < 1e-9


# ---- 9. `if t == 0` --------------------------------------------------------------------------------
@pytest.mark.parametrize("t_batch", [(0, 5), (3, 3)])
def test_if_t_equals_0_fails_for_a_batch(t_batch):
    c = A.claim_t_equals_zero(t_batch=t_batch)
    assert c.verdict == A.ERRATUM
    assert "Boolean value of Tensor with more than one value is ambiguous" in c.evidence["source_error"]
    assert c.evidence["p_sample_noise_free_where_t_is_0"] and c.evidence["p_sample_noisy_where_t_positive"]


@pytest.mark.parametrize("t_batch", [(0,), (5,)])
def test_if_t_equals_0_holds_for_one_timestep(t_batch):
    c = A.claim_t_equals_zero(t_batch=t_batch)
    assert c.verdict == A.HOLDS
    assert c.evidence["source_error"] is None and c.evidence["source_vs_p_sample_max_abs"] < 1e-12


def test_source_sample_timestep_reproduction():
    """Batch of one: the reproduced step is mean (t = 0) or mean + sqrt(beta_tilde_t) z (t > 0), by hand."""
    s = make_schedule("linear", T=10)
    x = torch.full((1, 1, 2, 2), 0.3, dtype=torch.float64)
    z = torch.full_like(x, 2.0)
    for t in (0, 4):
        out = A.source_sample_timestep(lambda x_, t_: torch.zeros_like(x_), x, torch.tensor([t]), s,
                                       randn_like=lambda v: z)
        expect = 0.3 / math.sqrt(s.alphas[t]) + (0 if t == 0 else math.sqrt(s.posterior_variance[t]) * 2.0)
        assert torch.allclose(out, torch.full_like(x, expect), rtol=1e-14)


# ---- 10-11. the time embedding ----------------------------------------------------------------
def test_embedding_order_holds_with_the_interleave_permutation():
    c = A.claim_embedding_order(T=64)
    assert c.verdict == A.HOLDS
    h = 16
    # interleaved column 2i is sin(t w_i) = code column i; 2i + 1 is cos(t w_i) = code column h + i
    assert c.evidence["permutation"] == [i // 2 + (h if i % 2 else 0) for i in range(32)]
    assert c.evidence["linear_output_max_abs_diff"] < 1e-3


def test_embedding_with_other_frequencies_is_not_a_permutation():
    c = A.claim_embedding_order(T=64, interleaved_divisor="half")
    assert c.verdict == A.ERRATUM and c.evidence["permutation"] is None


def test_find_column_permutation():
    a = np.arange(12.0).reshape(3, 4)
    assert A.find_column_permutation(a[:, [2, 0, 3, 1]], a, 1e-12) == [2, 0, 3, 1]
    assert A.find_column_permutation(a + 0.5, a, 1e-12) is None


def test_positional_formula_caveat_and_the_code_frequencies():
    w = A.code_frequencies(32)
    assert w[0] == pytest.approx(1.0) and w[-1] == pytest.approx(1e-4, rel=1e-5)
    c = A.claim_positional_formula()
    assert c.verdict == A.CAVEAT
    assert c.evidence["prose_lowest"] == pytest.approx(10000 ** (-15 / 16))
    assert A.claim_positional_formula(prose_divisor="half-1").verdict == A.HOLDS


# ---- 12. the prior at T = 300 ---------------------------------------------------------------------
def tv_closed_form(mu: float, var: float) -> float:
    """TV(N(mu, var), N(0, 1)), var < 1: the densities cross at the roots of a quadratic."""
    A2 = 0.5 - 0.5 / var
    B = mu / var
    C = -mu * mu / (2 * var) - 0.5 * math.log(var)
    r1, r2 = sorted(np.roots([A2, B, C]).real)
    p = stats.norm(mu, math.sqrt(var))
    return (p.cdf(r2) - p.cdf(r1)) - (stats.norm.cdf(r2) - stats.norm.cdf(r1))


@pytest.mark.parametrize("ab", [0.5, 0.04805842894429403, 4e-5])
def test_tv_prior_worst(ab):
    assert A.tv_prior_worst(ab) == pytest.approx(tv_closed_form(math.sqrt(ab), 1 - ab), rel=1e-6, abs=1e-10)


def test_terminal_prior_caveat_at_T300_gone_at_T1000():
    c = A.claim_terminal_prior(T=300, sampler=False)
    assert c.verdict == A.CAVEAT
    ab = math.prod(linear_alphas(300))
    assert c.evidence["diagnostics"]["sqrt_alpha_bar_T"] == pytest.approx(math.sqrt(ab), rel=1e-12)
    assert c.evidence["diagnostics"]["L_T_uniform_nats"] == pytest.approx(
        0.5 * (ab / 3 - ab - math.log1p(-ab)), rel=1e-10)
    assert A.claim_terminal_prior(T=1000, sampler=False).verdict == A.HOLDS
    assert A.claim_terminal_prior(T=300, kind="cosine", sampler=False).verdict == A.HOLDS


# ---- 12b. zero terminal SNR + v-prediction -------------------------------------------------------------
def test_zero_snr_start_holds_and_its_numbers_are_the_sampler_checks():
    from ddpm_check import montecarlo as mc
    from ddpm_check.montecarlo import sampler as SM

    c = A.claim_zero_snr_start()
    assert c.verdict == A.HOLDS, c.explanation
    ks = c.evidence["sampler_check"]["ks"]
    # the numbers are those of the sampler check at its defaults, run here afresh
    res = mc.run_check("sampler")
    for key, group in (("source", SM.SOURCE_GROUP), ("zero_snr_v", SM.ZERO_SNR_GROUP),
                       ("exact_start", SM.EXACT_START_GROUP)):
        rows = [r for r in res.rows if r.group == group]
        assert ks[key]["max_ks"] == max(r.statistic for r in rows)
        assert ks[key]["n"] == rows[0].n == res.samples
        assert ks[key]["dkwm_threshold"] == pytest.approx(stats_dkwm(rows[0].n, rows[0].alpha), rel=1e-14)
    assert ks["zero_snr_v"]["role"] == "test" and ks["zero_snr_v"]["row_threshold"] == ks["zero_snr_v"]["dkwm_threshold"]
    assert ks["source"]["role"] == "diagnostic"
    # the mismatch is there for the source and gone for the fix
    assert ks["source"]["max_ks"] > 2 * ks["source"]["dkwm_threshold"]
    assert ks["zero_snr_v"]["max_ks"] <= ks["zero_snr_v"]["dkwm_threshold"]
    assert c.evidence["schedules"]["zero_snr"]["alpha_bar_T"] == 0.0 and c.evidence["schedules"]["zero_snr"]["beta_T"] == 1.0
    assert c.evidence["schedules"]["source"]["tv_start"] == pytest.approx(
        SM.start_mismatch_tv(SM.sampler_mixture(), math.prod(linear_alphas(300))), rel=1e-9)
    assert c.evidence["toolkit_check"]["failed"] == 0
    assert any("zero-SNR v-prediction from N(0,I): KS" in line and "<=" in line for line in c.lines)


def stats_dkwm(n, alpha):
    return math.sqrt(math.log(2 / alpha) / (2 * n))


def test_zero_snr_start_turns_to_a_caveat_when_the_fix_is_wrong():
    from ddpm_check.montecarlo import sampler as SM

    # v read with the wrong sign in x0_hat (a real run of the sampler check's variant)
    bad = A.claim_zero_snr_start(variant="v_wrong_sign")
    assert bad.verdict == A.CAVEAT and "does not disappear" in bad.explanation
    assert bad.evidence["sampler_check"]["ks"]["zero_snr_v"]["max_ks"] > 0.5
    assert bad.evidence["toolkit_check"]["failed"] > 0
    # the eps-form run on the unrescaled schedule (the source) or T = 50 read in place of the fix
    for group in (SM.SOURCE_GROUP, "linear T=50, x_T~N(0,I)"):
        c = A.claim_zero_snr_start(fix_group=group)
        assert c.verdict == A.CAVEAT, group
        assert any(f"in place of the zero-SNR run: {group}" in line for line in c.lines)
    with pytest.raises(DDPMCheckError, match="no configuration"):
        A.claim_zero_snr_start(fix_group="linear T=7, x_T~N(0,I)")


def test_zero_snr_start_is_registered_after_terminal_prior():
    ids = list(A.CLAIM_IDS)
    assert ids.index("zero-snr-start") == ids.index("terminal-prior") + 1


# ---- 13. the subplot index ---------------------------------------------------------------------------
def test_source_subplot_indices():
    assert A.source_subplot_indices(300) == [(270 - 30 * k, 10 - k) for k in range(10)]


def test_sample_plot_index():
    c = A.claim_sample_plot(T=300)
    assert c.verdict == A.CAVEAT and c.evidence["leftmost_panel_is_final_sample"]
    assert A.claim_sample_plot(T=300, order="sampling").verdict == A.HOLDS
    bad = A.claim_sample_plot(T=305)
    assert bad.verdict == A.ERRATUM and bad.evidence["invalid_indices"] == [11]
    assert "num must be" in bad.evidence["error"]
    tiny = A.claim_sample_plot(T=5)
    assert tiny.verdict == A.ERRATUM and "ZeroDivisionError" in tiny.evidence["error"]


# ---- the audit ---------------------------------------------------------------------------------------
def test_resolve_ids_and_bad_input():
    assert A.resolve_ids(None) == list(A.CLAIM_IDS)
    assert A.resolve_ids(["posterior,alpha-to-zero", "posterior"]) == ["posterior", "alpha-to-zero"]
    with pytest.raises(DDPMCheckError, match="'nope'"):
        A.resolve_ids(["nope"])
    with pytest.raises(DDPMCheckError, match="samples"):
        A.run_audit(samples=0)
    with pytest.raises(DDPMCheckError, match="seed"):
        A.run_audit(seed=-1)


def test_run_audit_subset_and_json_ready():
    import json

    claims = A.run_audit(samples=SMALL, only=["alpha-to-zero", "if-t-equals-0", "sample-plot-index"])
    assert [c.id for c in claims] == ["alpha-to-zero", "if-t-equals-0", "sample-plot-index"]
    assert A.summary(claims) == {"holds": 0, "erratum": 2, "caveat": 1}
    for c in claims:
        d = json.loads(json.dumps(c.to_dict()))
        assert d["verdict"] in A.VERDICTS and d["lines"] and d["explanation"]
