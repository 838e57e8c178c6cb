"""Schedule diagnostics: hand-computed alpha_bar_T, SNR, L_T against quadrature, specs, the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from ddpm_check import diagnostics as D
from ddpm_check.errors import DDPMCheckError
from ddpm_check.schedules import Schedule, ScheduleConfig, make_schedule


def explicit_linear_alpha_bars(T: int, b0: float = 1e-4, b1: float = 0.02) -> list[float]:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), beta_s linear, as an explicit Python loop."""
    out, p = [], 1.0
    for s in range(T):
        beta = b0 + (b1 - b0) * s / (T - 1) if T > 1 else b0
        p *= 1.0 - beta
        out.append(p)
    return out


def kl_by_quadrature(alpha_bar: float, x0: float) -> float:
    """KL(N(sqrt(ab) x0, 1 - ab) || N(0, 1)) = integral of p log(p/q), numerically."""
    p = stats.norm(math.sqrt(alpha_bar) * x0, math.sqrt(1.0 - alpha_bar))
    q = stats.norm(0.0, 1.0)
    val, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -30, 30, limit=400,
                            epsabs=1e-15, epsrel=1e-11, points=[math.sqrt(alpha_bar) * x0])
    return val


def kl_brief_formula(alpha_bar: float, x0_sq: float) -> float:
    """1/2 (ab x0^2 + (1 - ab) - 1 - ln(1 - ab)), with log1p for accuracy at small ab."""
    return 0.5 * (alpha_bar * x0_sq - alpha_bar - math.log1p(-alpha_bar))


# ---- alpha_bar_T, sqrt, SNR, t_half: against explicit products ------------------------------
@pytest.mark.parametrize("T", [1, 2, 300, 1000])
def test_alpha_bar_T_and_snr_match_explicit_product(T):
    d = D.diagnose(make_schedule("linear", T=T))
    ab = explicit_linear_alpha_bars(T)
    assert d.alpha_bar_T == pytest.approx(ab[-1], rel=1e-12)
    assert d.sqrt_alpha_bar_T == pytest.approx(math.sqrt(ab[-1]), rel=1e-12)
    assert d.snr_T == pytest.approx(ab[-1] / (1 - ab[-1]), rel=1e-12)
    assert d.log_snr_T == pytest.approx(math.log(ab[-1] / (1 - ab[-1])), rel=1e-12, abs=1e-12)
    below = [t for t, a in enumerate(ab, 1) if a <= 0.5]
    assert d.t_half == (below[0] if below else None)


def test_source_schedule_numbers():
    """The facts the design states: T = 300 leaves sqrt(alpha_bar_T) ~ 0.22 of x_0; alpha_t in [0.98, 0.9999]."""
    d = D.diagnose(make_schedule("linear", T=300))
    assert abs(d.sqrt_alpha_bar_T - 0.22) < 0.005
    assert d.alpha_min == pytest.approx(1 - 0.02, rel=1e-15)
    assert d.alpha_max == pytest.approx(1 - 1e-4, rel=1e-15)
    assert d.beta_max == pytest.approx(0.02) and d.t_beta_max == 300
    assert d.t_half_frac == pytest.approx(d.t_half / 300)


def test_ho_schedule_meets_their_l_t():
    """Ho et al. 2020 (sec. 4): their linear T = 1000 schedule gives L_T ~ 1e-5 bits per dimension."""
    d = D.diagnose(make_schedule("linear", T=1000))
    assert 0.5e-5 < d.L_T_uniform_bits < 2e-5
    assert d.L_T_worst_bits < 5e-5


def test_cosine_largest_beta_is_the_clip():
    d = D.diagnose(make_schedule("cosine", T=1000))
    assert d.beta_max == pytest.approx(0.999) and d.t_beta_max == 1000
    assert d.alpha_min == pytest.approx(0.001)
    assert d.beta_start is None and d.beta_end is None


# ---- L_T -------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha_bar", [0.9, 0.5, 0.04805842894429403, 4.0358e-5])
@pytest.mark.parametrize("x0", [1.0, -0.6, 0.0])
def test_kl_prior_matches_quadrature_and_formula(alpha_bar, x0):
    got = D.kl_prior(alpha_bar, x0 * x0)
    assert got == pytest.approx(kl_by_quadrature(alpha_bar, x0), rel=1e-7, abs=1e-13)
    assert got == pytest.approx(kl_brief_formula(alpha_bar, x0 * x0), rel=1e-9, abs=1e-16)


@pytest.mark.parametrize("alpha_bar", [0.5, 0.04805842894429403])
def test_uniform_average_is_the_integral_over_x0(alpha_bar):
    avg, _ = integrate.quad(lambda x0: 0.5 * kl_brief_formula(alpha_bar, x0 * x0), -1, 1)
    assert D.kl_prior(alpha_bar, D.UNIFORM_X0_SQ) == pytest.approx(avg, rel=1e-10)


def test_diagnostics_bits_and_nats():
    d = D.diagnose(make_schedule("linear", T=300))
    ab = explicit_linear_alpha_bars(300)[-1]
    assert d.L_T_worst_nats == pytest.approx(kl_brief_formula(ab, 1.0), rel=1e-10)
    assert d.L_T_uniform_nats == pytest.approx(kl_brief_formula(ab, 1 / 3), rel=1e-10)
    assert d.L_T_worst_bits == pytest.approx(d.L_T_worst_nats / math.log(2), rel=1e-14)
    assert d.L_T_uniform_bits == pytest.approx(d.L_T_uniform_nats / math.log(2), rel=1e-14)
    assert d.L_T_uniform_nats < d.L_T_worst_nats


def test_kl_prior_vectorised_and_bad_input():
    ab = np.array([0.1, 0.5])
    got = D.kl_prior(ab, 1.0)
    assert got.shape == (2,) and got[1] > got[0] > 0
    with pytest.raises(DDPMCheckError, match="alpha_bar"):
        D.kl_prior(1.0)
    with pytest.raises(DDPMCheckError, match="x0_sq"):
        D.kl_prior(0.5, -1.0)


# ---- curves ----------------------------------------------------------------------------------
def test_curves():
    s = make_schedule("linear", T=50)
    c = D.curves(s)
    ab = np.array(explicit_linear_alpha_bars(50))
    np.testing.assert_allclose(c["t_frac"], np.arange(1, 51) / 50)
    np.testing.assert_allclose(c["alpha_bar"], ab, rtol=1e-12)
    np.testing.assert_allclose(c["log_snr"], np.log(ab / (1 - ab)), rtol=1e-10)
    assert c["beta_tilde_ratio"][0] == 0.0  # beta_tilde_1 = 0
    prev = np.concatenate(([1.0], ab[:-1]))
    np.testing.assert_allclose(c["beta_tilde_ratio"], (1 - prev) / (1 - ab), rtol=1e-10)
    assert np.all(np.diff(c["log_snr"]) < 0)


# ---- specs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    ("linear:300:1e-4:0.02", ScheduleConfig("linear", 300, 1e-4, 0.02)),
    ("linear:1000", ScheduleConfig("linear", 1000, 1e-4, 0.02)),
    ("  LINEAR:10:0.001:0.05 ", ScheduleConfig("linear", 10, 1e-3, 0.05)),
    ("cosine:1000", ScheduleConfig("cosine", 1000)),
])
def test_parse_spec(spec, expected):
    assert D.parse_spec(spec) == expected


def test_parse_specs_repeat_and_commas_and_round_trip():
    cfgs = D.parse_specs(["linear:300:1e-4:0.02,linear:1000", "cosine:1000"])
    assert [(c.kind, c.T) for c in cfgs] == [("linear", 300), ("linear", 1000), ("cosine", 1000)]
    assert [D.parse_spec(D.spec_string(c)) for c in cfgs] == cfgs


@pytest.mark.parametrize("spec, words", [
    ("linear", ["'linear'", "malformed"]),
    ("gauss:300", ["'gauss'", "linear, cosine"]),
    ("linear:abc", ["'abc'", "T"]),
    ("linear:0", ["linear:0", "T must be"]),
    ("linear:300:1e-4", ["both BETA_START and BETA_END"]),
    ("linear:300:x:0.02", ["'x'", "BETA_START"]),
    ("linear:300:0.5:0.1", ["beta_start must be <= beta_end"]),
    ("linear:300:0:0.02", ["beta_start", "(0, 1)"]),
    ("cosine:300:1e-4:0.02", ["takes no betas"]),
    ("", ["malformed"]),
])
def test_parse_spec_errors_name_the_value(spec, words):
    with pytest.raises(DDPMCheckError) as exc:
        D.parse_spec(spec)
    for w in words:
        assert w in str(exc.value)


def test_parse_specs_empty_entry():
    with pytest.raises(DDPMCheckError, match="empty entry"):
        D.parse_specs(["linear:300,,cosine:10"])


# ---- plot ------------------------------------------------------------------------------------
def test_plot_writes_png(tmp_path):
    path = D.plot([make_schedule("linear", T=30), make_schedule("cosine", T=40)], tmp_path / "sub" / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name, word", [("s.txt", ".png"), ("dir", "folder")])
def test_plot_path_errors(tmp_path, name, word):
    (tmp_path / "dir").mkdir()
    with pytest.raises(DDPMCheckError, match=word):
        D.check_plot_path(tmp_path / name)


def test_diagnose_custom_schedule():
    d = D.diagnose(Schedule.from_betas([0.1, 0.3, 0.3]))
    assert d.alpha_bar_T == pytest.approx(0.9 * 0.7 * 0.7, rel=1e-14)
    assert d.t_half == 3 and d.label == "custom T=3"
