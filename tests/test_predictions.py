"""eps-, x0- and v-prediction in GaussianDiffusion, and the zero-terminal-SNR schedule.

The reference values are typed here from the definitions (v = sqrt(abar) eps - sqrt(1 - abar) x_0,
Salimans & Ho 2022; the posterior mean of Ho et al. eq. 7), computed in numpy from the schedule's
betas, not taken from the code under test.  The exact Gaussian-mixture predictors give the same
x0_hat and eps_hat in every parametrization, so every loop must produce the same samples from
the same generator whichever target the model predicts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_check.ddim import DDIMConfig
from ddpm_check.diffusion import DIFFUSERS_PREDICTION_TYPES, PREDICTIONS, GaussianDiffusion
from ddpm_check.errors import DDPMCheckError
from ddpm_check.mixture import image_mixture
from ddpm_check.schedules import Schedule, ScheduleConfig, linear_betas, make_schedule

SHAPE = (64, 1, 4, 4)


@pytest.fixture(scope="module")
def mix():
    return image_mixture(size=4, n_components=3, std=0.2)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _x(seed=0, shape=SHAPE):
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64)


def test_names_follow_diffusers():
    assert PREDICTIONS == ("eps", "x0", "v")
    assert DIFFUSERS_PREDICTION_TYPES == {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
    with pytest.raises(DDPMCheckError, match="unknown prediction 'epsilon'; choose one of eps, x0, v"):
        GaussianDiffusion(make_schedule(T=10), prediction="epsilon")


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_target_is_the_named_quantity(prediction):
    T = 40
    betas = linear_betas(T, 1e-3, 0.2)
    ab = np.cumprod(1.0 - betas)
    d = GaussianDiffusion(Schedule.from_betas(betas), dtype=torch.float64, prediction=prediction)
    x0, noise = _x(1, (8, 1, 2, 2)), _x(2, (8, 1, 2, 2))
    t = torch.arange(0, T, 5)
    a = torch.as_tensor(ab)[t].reshape(-1, 1, 1, 1)
    target = {"eps": noise, "x0": x0, "v": a.sqrt() * noise - (1 - a).sqrt() * x0}[prediction]
    seen = {}

    def model(x_t, tt):
        seen["x_t"], seen["t"] = x_t, tt
        return torch.zeros_like(x_t)

    loss = d.loss(model, x0, t=t, noise=noise, reduction="none")
    torch.testing.assert_close(seen["x_t"], a.sqrt() * x0 + (1 - a).sqrt() * noise, rtol=1e-12, atol=1e-12)
    assert torch.equal(seen["t"], t)
    torch.testing.assert_close(loss, target.square().reshape(8, -1).mean(1), rtol=1e-12, atol=1e-12)
    # the model that returns the target has zero loss; one that returns another target does not
    others = [p for p in PREDICTIONS if p != prediction]
    exact = {"eps": noise, "x0": x0, "v": a.sqrt() * noise - (1 - a).sqrt() * x0}
    assert float(d.loss(lambda x_t, tt: exact[prediction], x0, t=t, noise=noise)) < 1e-24
    for other in others:
        assert float(d.loss(lambda x_t, tt: exact[other], x0, t=t, noise=noise)) > 1e-3


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_reverse_path_equals_eps_prediction_with_the_exact_predictors(mix, prediction):
    # The mixture's exact predictors give the same x0_hat and eps_hat, so each path must give the
    # same numbers as the eps path from the same draws.
    sched = make_schedule(T=50)
    ref = GaussianDiffusion(sched, dtype=torch.float64)
    d = GaussianDiffusion(sched, dtype=torch.float64, prediction=prediction)
    eps_m = mix.predictor(sched.alphas_cumprod, "eps")
    m = mix.predictor(sched.alphas_cumprod, prediction)
    x, z = _x(3), _x(4)
    t = torch.randint(0, 50, (SHAPE[0],), generator=_gen(5))
    t[:3] = torch.tensor([0, 1, 49])
    torch.testing.assert_close(d.p_sample(m, x, t, noise=z), ref.p_sample(eps_m, x, t, noise=z), rtol=1e-9, atol=1e-9)
    pa, pb = d.p_mean_variance(m, x, t), ref.p_mean_variance(eps_m, x, t)
    for key in ("mean", "variance", "pred_x0", "eps"):
        torch.testing.assert_close(pa[key], pb[key], rtol=1e-9, atol=1e-9)
    a = d.p_sample_loop(m, SHAPE, generator=_gen(6))
    b = ref.p_sample_loop(eps_m, SHAPE, generator=_gen(6))
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    for eta in (0.0, 1.0):
        cfg = DDIMConfig(10, eta, "trailing")
        a = d.ddim_sample_loop(m, SHAPE, cfg, generator=_gen(7))
        b = ref.ddim_sample_loop(eps_m, SHAPE, cfg, generator=_gen(7))
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_fast_loops_equal_p_sample_step_by_step(mix, prediction):
    sched = Schedule.from_config(ScheduleConfig(T=30, zero_snr=prediction != "eps"))
    d = GaussianDiffusion(sched, dtype=torch.float64, prediction=prediction)
    m = mix.predictor(sched.alphas_cumprod, prediction)
    g = _gen(8)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    for i in reversed(range(30)):
        x = d.p_sample(m, x, i, noise=torch.randn(SHAPE, generator=g, dtype=torch.float64) if i else None)
    loop = d.p_sample_loop(m, SHAPE, generator=_gen(8))
    torch.testing.assert_close(loop, x, rtol=1e-10, atol=1e-10)
    graphed, _ = d._p_sample_loop_graphed(m, torch.randn(SHAPE, generator=(g2 := _gen(8)), dtype=torch.float64),
                                          g2, None, None, capture_graph=False)
    torch.testing.assert_close(graphed, x, rtol=1e-10, atol=1e-10)


def test_zero_snr_schedule_arrays():
    base = linear_betas(300)
    s = Schedule.from_config(ScheduleConfig(T=300, zero_snr=True))
    ab = np.cumprod(1.0 - base)
    assert s.alphas_cumprod[-1] == 0.0 and s.betas[-1] == 1.0
    assert s.betas[0] == base[0] and s.alphas_cumprod[0] == pytest.approx(ab[0], rel=1e-15)
    # sqrt(abar') is an affine map of sqrt(abar) (Lin et al. Alg. 1)
    q = np.sqrt(ab)
    want = (q - q[-1]) * q[0] / (q[0] - q[-1])
    np.testing.assert_allclose(s.sqrt_alphas_cumprod, want, rtol=1e-12, atol=1e-15)
    assert np.isinf(s.sqrt_recip_alphas[-1]) and np.isfinite(s.sqrt_recip_alphas[:-1]).all()
    # the posterior at t = T: coef2 = 0, coef1 = sqrt(abar_{T-1}), variance 1 - abar_{T-1}
    assert s.posterior_mean_coef2[-1] == 0.0
    assert s.posterior_mean_coef1[-1] == pytest.approx(np.sqrt(s.alphas_cumprod[-2]), rel=1e-14)
    assert s.posterior_variance[-1] == pytest.approx(1.0 - s.alphas_cumprod[-2], rel=1e-14)
    cfg = ScheduleConfig(T=300, zero_snr=True)
    assert ScheduleConfig.from_dict(cfg.to_dict()) == cfg
    assert ScheduleConfig.from_dict({"kind": "linear", "T": 300}).zero_snr is False  # old checkpoints


def test_zero_snr_refusals():
    with pytest.raises(DDPMCheckError, match="zero terminal SNR needs T >= 2"):
        ScheduleConfig(T=1, zero_snr=True)
    with pytest.raises(DDPMCheckError, match="zero_snr must be true or false, got 'yes'"):
        ScheduleConfig(T=10, zero_snr="yes")
    z = Schedule.from_config(ScheduleConfig(T=10, zero_snr=True))
    with pytest.raises(DDPMCheckError, match="eps-prediction is undefined on a zero-terminal-SNR schedule"):
        GaussianDiffusion(z)
    with pytest.raises(DDPMCheckError, match="betas"):
        Schedule.from_betas(z.betas)  # beta = 1 only through the zero-SNR rescale


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_zero_snr_first_step_reads_only_the_prediction(mix, prediction):
    # at t = T, x_T carries no signal: mu = sqrt(abar_{T-1}) x0_hat, whatever x_T is (coef2 = 0)
    z = Schedule.from_config(ScheduleConfig(T=20, zero_snr=True))
    d = GaussianDiffusion(z, dtype=torch.float64, prediction=prediction)
    x = _x(9)
    out = _x(10)
    mean = d.p_mean_variance(lambda xt, t: out, x, 19)["mean"]
    x0_hat = out if prediction == "x0" else -out  # v at abar = 0 is -x_0
    torch.testing.assert_close(mean, np.sqrt(z.alphas_cumprod[-2]) * x0_hat, rtol=1e-12, atol=1e-14)
    samples = d.p_sample_loop(mix.predictor(z.alphas_cumprod, prediction), SHAPE, generator=_gen(11))
    assert torch.isfinite(samples).all()
    ddim = d.ddim_sample_loop(mix.predictor(z.alphas_cumprod, prediction), SHAPE, DDIMConfig(5, 0.0, "trailing"),
                              generator=_gen(11))
    assert torch.isfinite(ddim).all()


def test_wrong_output_shape_names_the_prediction():
    d = GaussianDiffusion(make_schedule(T=10), prediction="v")
    with pytest.raises(DDPMCheckError, match=r"must return its v prediction with the shape of x_t \(2, 3\)"):
        d.p_sample(lambda x, t: x[:1], torch.zeros(2, 3), 4)
