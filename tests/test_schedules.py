"""Schedules: hand-computed values, the lambdified derivations, diffusers, and bad input."""

import json
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from ddpm_check.errors import DDPMCheckError
from ddpm_check.schedules import (
    ARRAY_NAMES,
    Schedule,
    ScheduleConfig,
    cosine_betas,
    linear_betas,
    make_schedule,
)

U32 = 2.0**-24  # unit roundoff of float32


# ---- a T = 3 schedule worked out by hand ---------------------------------------------------------
# betas 0.1, 0.2, 0.5 -> alphas 0.9, 0.8, 0.5 -> alpha_bar 0.9, 0.72, 0.36; alpha_bar_prev 1, 0.9, 0.72
HAND_T3 = {
    "betas": [0.1, 0.2, 0.5],
    "alphas": [0.9, 0.8, 0.5],
    "alphas_cumprod": [0.9, 0.72, 0.36],
    "alphas_cumprod_prev": [1.0, 0.9, 0.72],
    "sqrt_recip_alphas": [1 / math.sqrt(0.9), 1 / math.sqrt(0.8), math.sqrt(2.0)],
    "sqrt_alphas_cumprod": [math.sqrt(0.9), math.sqrt(0.72), 0.6],
    "sqrt_one_minus_alphas_cumprod": [math.sqrt(0.1), math.sqrt(0.28), 0.8],
    # (1 - ab_prev)/(1 - ab) beta: 0/0.1*0.1 = 0, 0.1/0.28*0.2 = 1/14, 0.28/0.64*0.5 = 7/32
    "posterior_variance": [0.0, 1 / 14, 7 / 32],
    # index 0 takes index 1's value (improved-diffusion's clipping)
    "posterior_log_variance_clipped": [math.log(1 / 14), math.log(1 / 14), math.log(7 / 32)],
    # the coefficient of x_0, sqrt(ab_prev) beta/(1 - ab): 1*0.1/0.1, sqrt(0.9)*0.2/0.28, sqrt(0.72)*0.5/0.64
    "posterior_mean_coef1": [1.0, math.sqrt(0.9) * 5 / 7, math.sqrt(0.72) * 25 / 32],
    # the coefficient of x_t, sqrt(alpha)(1 - ab_prev)/(1 - ab): 0, sqrt(0.8)*0.1/0.28, sqrt(0.5)*0.28/0.64
    "posterior_mean_coef2": [0.0, math.sqrt(0.8) * 5 / 14, math.sqrt(0.5) * 7 / 16],
}


@pytest.mark.parametrize("name", sorted(HAND_T3))
def test_t3_schedule_matches_hand_computation(name):
    s = Schedule.from_betas([0.1, 0.2, 0.5])
    assert s.T == 3
    got = getattr(s, name)
    assert got.dtype == np.float64 and got.shape == (3,)
    assert_allclose(got, HAND_T3[name], rtol=1e-14, atol=1e-15)


def test_every_array_is_listed_and_read_only():
    s = make_schedule(T=10)
    assert set(s.arrays()) == set(ARRAY_NAMES) == set(HAND_T3)
    with pytest.raises(ValueError):
        s.betas[0] = 0.5


def test_linear_betas_hand_values_and_source_default():
    assert_allclose(linear_betas(5, 0.1, 0.5), [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-15)
    assert_allclose(linear_betas(1, 0.3, 0.4), [0.3])
    s = make_schedule()  # the source's default: T = 300, beta from 1e-4 to 0.02
    assert s.T == 300 and s.config.kind == "linear"
    assert s.betas[0] == 1e-4 and s.betas[-1] == 0.02
    # the erratum the toolkit points out: about 0.22 of the signal survives at t = T
    assert 0.21 < s.sqrt_alphas_cumprod[-1] < 0.23


def test_cosine_betas_hand_values():
    # s = 0: f(u) = cos^2(u pi/2); f(0) = 1, f(1/2) = 1/2, f(1) = 0 -> betas 1/2, then 1 clipped to 0.999
    assert_allclose(cosine_betas(2, s=0.0), [0.5, 0.999], rtol=1e-14)


@pytest.mark.parametrize("T", [10, 300, 1000])
def test_cosine_alphas_cumprod_is_f_ratio(T):
    """alpha_bar_t = f(t)/f(0) (Nichol & Dhariwal eq. 17) wherever beta is not clipped."""
    s = make_schedule("cosine", T=T)
    sc = 0.008
    f = lambda t: np.cos((t / T + sc) / (1 + sc) * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(1, T + 1)
    unclipped = s.betas < 0.999
    assert unclipped[:-1].all()  # only the last step reaches the clip
    n = int(np.argmin(unclipped)) if not unclipped.all() else T
    assert_allclose(s.alphas_cumprod[:n], f(t[:n]) / f(0.0), rtol=1e-12)
    assert s.betas.max() <= 0.999


def test_t1_schedule():
    s = make_schedule("linear", T=1, beta_start=0.02, beta_end=0.02)
    assert s.alphas_cumprod_prev[0] == 1.0
    assert s.posterior_variance[0] == 0.0
    # no index 1 to borrow: log(beta_1) is used, finite
    assert_allclose(s.posterior_log_variance_clipped, [math.log(0.02)], rtol=1e-14)
    c = make_schedule("cosine", T=1)
    assert np.isfinite(c.posterior_log_variance_clipped).all()


@pytest.mark.parametrize("kind", ["linear", "cosine", "custom"])
def test_index_convention_and_identities(kind):
    betas = np.linspace(0.3, 0.01, 17) if kind == "custom" else None
    s = make_schedule(kind, T=17, betas=betas)
    assert s.alphas_cumprod_prev[0] == 1.0
    assert_allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1], rtol=0)
    assert_allclose(s.alphas_cumprod, np.cumprod(1.0 - s.betas), rtol=1e-15)
    assert np.all(np.isfinite(s.posterior_log_variance_clipped))


def test_to_torch_dtype_and_values():
    torch = pytest.importorskip("torch")
    s = make_schedule("cosine", T=50)
    t64 = s.to_torch("cpu", torch.float64)
    t32 = s.to_torch("cpu")
    assert set(t64) == set(ARRAY_NAMES)
    for name in ARRAY_NAMES:
        assert t64[name].dtype == torch.float64 and t32[name].dtype == torch.float32
        assert_allclose(t64[name].numpy(), getattr(s, name), rtol=0)
        assert_allclose(t32[name].numpy(), getattr(s, name).astype(np.float32), rtol=0)


def test_config_json_round_trip():
    for cfg in [ScheduleConfig(), ScheduleConfig("cosine", T=7),
                ScheduleConfig("custom", T=3, betas=(0.1, 0.2, 0.3))]:
        back = ScheduleConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg
        assert_allclose(Schedule.from_config(back).betas, Schedule.from_config(cfg).betas, rtol=0)


# ---- against the lambdified derivations (one source of truth) ----------------------------------
def _schedules():
    return [make_schedule("linear", T=300), make_schedule("cosine", T=1000),
            make_schedule("custom", betas=[0.1, 0.2, 0.5]), make_schedule("linear", T=1)]


def _kw(s):
    return dict(alpha_t=s.alphas, beta_t=s.betas, alpha_bar_t=s.alphas_cumprod,
                alpha_bar_tm1=s.alphas_cumprod_prev)


@pytest.mark.parametrize("deriv,key,array", [
    ("posterior", "posterior_mean_coef1", "posterior_mean_coef1"),
    ("posterior", "posterior_mean_coef2", "posterior_mean_coef2"),
    ("posterior", "posterior_variance", "posterior_variance"),
    ("mean-eps", "posterior_variance", "posterior_variance"),
    ("marginal", "x_t_mean_coef", "sqrt_alphas_cumprod"),
    ("marginal", "alpha_bar_t", "alphas_cumprod"),
])
def test_arrays_match_lambdified_derivations(deriv, key, array):
    import derivations  # plain import: these run once derivations/ lands

    f = derivations.numeric(deriv, key)
    for s in _schedules():
        expected = np.broadcast_to(np.asarray(f(**_kw(s)), dtype=np.float64), (s.T,))
        assert_allclose(getattr(s, array), expected, rtol=1e-12, atol=0, err_msg=f"{deriv}.{key}, T={s.T}")


def test_marginal_variance_matches_derivation():
    import derivations

    f = derivations.numeric("marginal", "x_t_variance")
    for s in _schedules():
        assert_allclose(s.sqrt_one_minus_alphas_cumprod**2, f(**_kw(s)), rtol=1e-12)


# ---- against diffusers' DDPMScheduler (an independent implementation, float32) --------------------
def _f32_cumprod_rel_bound(alphas, betas):
    """First-order bound on the relative error of a float32 cumprod of alpha = 1 - beta (in float32)."""
    per_step = U32 * (1.0 + betas) / alphas + U32  # rounding of beta, of 1 - beta, of the product
    return 2.0 * np.cumsum(per_step)


@pytest.mark.parametrize("kind,dkind,T", [
    ("linear", "linear", 300), ("linear", "linear", 1000),
    ("cosine", "squaredcos_cap_v2", 300), ("cosine", "squaredcos_cap_v2", 1000),
])
def test_matches_diffusers_ddpm_scheduler(kind, dkind, T):
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler

    sc = DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule=dkind,
                       variance_type="fixed_small")
    s = make_schedule(kind, T=T)
    assert_allclose(s.betas, sc.betas.double().numpy(), rtol=4 * U32)

    d_ab = sc.alphas_cumprod.double().numpy()
    delta = _f32_cumprod_rel_bound(s.alphas, s.betas)
    assert np.all(np.abs(s.alphas_cumprod - d_ab) <= delta * s.alphas_cumprod)

    # diffusers' posterior variance, fixed_small: (1 - ab_prev)/(1 - ab) * (1 - ab/ab_prev), clamped at 1e-20
    d_var = np.array([float(sc._get_variance(i)) for i in range(T)])
    assert s.posterior_variance[0] == 0.0 and 0 < d_var[0] <= 1e-20
    ab, abp, a, b = s.alphas_cumprod, s.alphas_cumprod_prev, s.alphas, s.betas
    dp = np.concatenate(([0.0], delta[:-1]))
    # first-order propagation of the float32 errors in alpha_bar through diffusers' formula
    rel = (dp * abp / (1 - abp + (abp == 1)) + delta * ab / (1 - ab)
           + (delta + dp + U32) * a / b + 6 * U32)
    err = np.abs(s.posterior_variance[1:] - d_var[1:])
    assert np.all(err <= 2 * rel[1:] * s.posterior_variance[1:])
    # and the bound is tight enough to see an index shift by one
    shifted = np.abs(s.posterior_variance[2:] - d_var[1:-1])
    assert np.any(shifted > 2 * rel[2:] * s.posterior_variance[2:])


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,needle", [
    (dict(T=0), "0"),
    (dict(T=-3), "-3"),
    (dict(T=2.5), "2.5"),
    (dict(T=True), "True"),
    (dict(kind="quadratic"), "quadratic"),
    (dict(beta_start=0.05, beta_end=0.02), "0.05"),
    (dict(beta_start=0.0), "0.0"),
    (dict(beta_end=1.0), "1.0"),
    (dict(beta_end=float("nan")), "nan"),
    (dict(beta_start=float("inf")), "inf"),
    (dict(kind="custom", betas=(0.1, 1.5)), "1.5"),
    (dict(kind="custom", betas=(0.1, -0.2)), "-0.2"),
    (dict(kind="custom", betas=(0.1, float("nan"))), "nan"),
    (dict(kind="custom", betas=(0.1, float("inf"))), "inf"),
    (dict(kind="custom", betas=(0.1, 0.0)), "0.0"),
    (dict(kind="custom", T=5, betas=(0.1, 0.2)), "length 2"),
    (dict(kind="custom"), "custom"),
    (dict(kind="linear", betas=(0.1,)), "custom"),
])
def test_bad_config_raises_naming_value(kwargs, needle):
    with pytest.raises(DDPMCheckError, match=None) as exc:
        ScheduleConfig(**kwargs)
    assert needle in str(exc.value)


@pytest.mark.parametrize("call,needle", [
    (lambda: linear_betas(0), "0"),
    (lambda: cosine_betas(-1), "-1"),
    (lambda: Schedule.from_betas([]), "non-empty"),
    (lambda: Schedule.from_betas([[0.1, 0.2]]), "1-D"),
    (lambda: Schedule.from_betas([0.1, "x"]), "x"),
    (lambda: Schedule.from_betas([0.1, 1e-20]), "1e-20"),
    (lambda: make_schedule("sigmoid"), "sigmoid"),
    (lambda: ScheduleConfig.from_dict({"kind": "linear", "TT": 3}), "TT"),
])
def test_bad_input_raises_naming_value(call, needle):
    with pytest.raises(DDPMCheckError) as exc:
        call()
    assert needle in str(exc.value)


# ---- zero terminal SNR (Lin et al. 2024, Algorithm 1) -------------------------------------------
@pytest.mark.parametrize("kind,T", [("linear", 300), ("linear", 1000), ("cosine", 1000), ("linear", 2)])
def test_zero_snr_betas_are_the_derived_rescale(kind, T):
    import derivations
    from ddpm_check.schedules import Schedule, ScheduleConfig, zero_snr_betas

    s = Schedule.from_config(ScheduleConfig(kind=kind, T=T))
    b = zero_snr_betas(s.betas)
    ends = dict(alpha_bar_1=s.alphas_cumprod[0], alpha_bar_T=s.alphas_cumprod[-1])
    want_ab = derivations.numeric("zero-snr", "alpha_bar_rescaled")(alpha_bar_t=s.alphas_cumprod, **ends)
    got_ab = np.cumprod(1.0 - b)
    np.testing.assert_allclose(got_ab[:-1], want_ab[:-1], rtol=1e-9, atol=1e-15)
    assert got_ab[-1] == 0.0 and b[-1] == 1.0 and b[0] == s.betas[0]
    assert np.all((b > 0) & (b <= 1))
    if T > 2:  # beta'_t for 2 <= t < T from the original arrays (the derivation's second form)
        want_b = derivations.numeric("zero-snr", "beta_rescaled_from_original")(
            alpha_bar_t=s.alphas_cumprod[1:-1], alpha_bar_tm1=s.alphas_cumprod_prev[1:-1], alpha_bar_T=ends["alpha_bar_T"])
        np.testing.assert_allclose(b[1:-1], want_b, rtol=1e-8)


def test_zero_snr_needs_two_steps():
    from ddpm_check.schedules import zero_snr_betas

    with pytest.raises(DDPMCheckError, match="T >= 2"):
        zero_snr_betas([0.1])
