"""The DDIM sampler (ddpm_check.ddim, GaussianDiffusion.ddim_sample_loop): plans, the loop, options.

Expected visits are typed from diffusers' ``timestep_spacing`` definitions (docs of
DDIMScheduler.set_timesteps), never read from ddpm_check.ddim; coefficients are compared with
the schedule's own arrays (computed independently, in ddpm_check.schedules) and with the
lambdified derivation ``ddim``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import derivations
from ddpm_check.ddim import DDIMConfig, from_options, plan, timesteps
from ddpm_check.diffusion import GaussianDiffusion
from ddpm_check.errors import DDPMCheckError
from ddpm_check.montecarlo.sampler import sampler_mixture
from ddpm_check.schedules import Schedule, ScheduleConfig


def _sched(T=1000):
    return Schedule.from_config(ScheduleConfig(T=T))


# ---- which steps a spacing visits -------------------------------------------------------------
def test_spacings_on_1000_steps_as_diffusers_documents_them():
    lead = timesteps(1000, 50, "leading")
    assert lead[0] == 980 and lead[-1] == 0 and np.all(np.diff(lead) == -20)
    trail = timesteps(1000, 50, "trailing")
    assert trail[0] == 999 and trail[-1] == 19 and np.all(np.diff(trail) == -20)
    lin = timesteps(1000, 50, "linspace")
    assert lin[0] == 999 and lin[-1] == 0 and set(np.diff(lin).tolist()) <= {-20, -21}
    # 10 of 1000 trailing (Lin et al. 2024, Table 2): 999, 899, ..., 99
    assert timesteps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert timesteps(1000, 10, "leading").tolist() == list(range(900, -1, -100))


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("T,S", [(1, 1), (7, 3), (300, 50), (300, 300), (1000, 7), (999, 998)])
def test_every_spacing_visits_S_distinct_descending_indices(spacing, T, S):
    ts = timesteps(T, S, spacing)
    assert ts.dtype == np.int64 and len(ts) == S
    assert np.all(np.diff(ts) < 0) and ts[0] <= T - 1 and ts[-1] >= 0
    if S == T:
        assert ts.tolist() == list(range(T - 1, -1, -1))


@pytest.mark.parametrize("bad", [0, -1, 301, 2.5, True, "50"])
def test_bad_step_counts_are_refused(bad):
    with pytest.raises(DDPMCheckError, match="1..300"):
        timesteps(300, bad, "leading")


def test_bad_config_values_are_refused():
    with pytest.raises(DDPMCheckError, match="spacing 'uniform'"):
        timesteps(300, 10, "uniform")
    for eta in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(DDPMCheckError, match="eta"):
            DDIMConfig(10, eta)
    with pytest.raises(DDPMCheckError, match="spacing"):
        DDIMConfig(10, 0.0, "nope")
    with pytest.raises(DDPMCheckError, match=">= 1"):
        DDIMConfig(0)


# ---- the plan's coefficients -----------------------------------------------------------------
def test_all_steps_eta_1_is_ddpm_posterior():
    s = _sched(300)
    p = plan(s.alphas_cumprod, DDIMConfig(300, 1.0, "leading"))
    i = p.timesteps
    np.testing.assert_allclose(p.alpha_bar_prev, s.alphas_cumprod_prev[i], rtol=0, atol=0)
    np.testing.assert_allclose(p.sigma**2, s.posterior_variance[i], rtol=1e-12, atol=1e-18)
    assert p.sigma[-1] == 0.0 and p.alpha_bar_prev[-1] == 1.0


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_plan_equals_the_derivation(eta, spacing):
    s = _sched(1000)
    p = plan(s.alphas_cumprod, DDIMConfig(37, eta, spacing))
    sig = derivations.numeric("ddim", "sigma_eta")(eta=eta, alpha_bar_t=p.alpha_bar, alpha_bar_tm1=p.alpha_bar_prev)
    np.testing.assert_allclose(p.sigma, sig, rtol=1e-13, atol=0)
    np.testing.assert_allclose(p.alpha_bar_prev[:-1], s.alphas_cumprod[p.timesteps[1:]], rtol=0, atol=0)
    assert p.alpha_bar_prev[-1] == 1.0  # after the last visit: alpha_bar_0 = 1
    assert np.all(p.direction_coef**2 + p.sigma**2 <= 1.0 - p.alpha_bar_prev + 1e-15)


# ---- the loop ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_all_steps_eta_1_equals_p_sample_loop_draw_for_draw(spacing):
    s = _sched(100)
    mix = sampler_mixture()
    d = GaussianDiffusion(s, dtype=torch.float64)
    m = mix.eps_predictor(s.alphas_cumprod)
    a = d.p_sample_loop(m, (300, 2), generator=torch.Generator().manual_seed(5))
    b = d.ddim_sample_loop(m, (300, 2), DDIMConfig(100, 1.0, spacing), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_eta_0_is_deterministic_and_eta_positive_is_not():
    s = _sched(200)
    d = GaussianDiffusion(s, dtype=torch.float64)
    m = sampler_mixture().eps_predictor(s.alphas_cumprod)
    x_T = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lambda eta, seed: d.ddim_sample_loop(m, (50, 2), DDIMConfig(20, eta), x_T=x_T,  # noqa: E731
                                               generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0.0, 1), run(0.0, 2))
    assert not torch.equal(run(0.5, 1), run(0.5, 2))


def test_point_mass_is_recovered_exactly_by_every_configuration():
    """Data x_0 = c: the oracle eps makes every DDIM step land on the marginal and the last on c."""
    s = _sched(300)
    d = GaussianDiffusion(s, dtype=torch.float64)
    ac = torch.as_tensor(np.array(s.alphas_cumprod))
    oracle = lambda x, t: (x - ac[t].sqrt()[:, None] * 2.0) / (1 - ac[t]).sqrt()[:, None]  # noqa: E731
    for cfg in (DDIMConfig(10, 0.0, "leading"), DDIMConfig(50, 1.0, "trailing"), DDIMConfig(7, 0.5, "linspace")):
        x = d.ddim_sample_loop(oracle, (100, 1), cfg, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(x, torch.full_like(x, 2.0), rtol=0, atol=1e-9)


def test_capture_progress_and_bad_arguments():
    s = _sched(100)
    d = GaussianDiffusion(s, dtype=torch.float64)
    m = sampler_mixture().eps_predictor(s.alphas_cumprod)
    seen = []
    cfg = DDIMConfig(10, 0.0, "trailing")
    x, cap = d.ddim_sample_loop(m, (4, 2), cfg, capture=[99, 9], progress=lambda k, tot: seen.append((k, tot)))
    assert sorted(cap) == [9, 99] and seen == [(k, 10) for k in range(1, 11)]
    with pytest.raises(DDPMCheckError, match="not visited"):
        d.ddim_sample_loop(m, (4, 2), cfg, capture=[98])
    with pytest.raises(DDPMCheckError, match="DDIMConfig"):
        d.ddim_sample_loop(m, (4, 2), {"steps": 10})
    with pytest.raises(DDPMCheckError, match="1..100"):
        d.ddim_sample_loop(m, (4, 2), DDIMConfig(101))


# ---- the options of sample / evaluate -----------------------------------------------------------
def test_from_options_defaults_and_refusals():
    assert from_options("ddpm") is None
    assert from_options("ddim", T=300) == DDIMConfig(50, 0.0, "trailing")
    assert from_options("ddim", T=20) == DDIMConfig(20, 0.0, "trailing")
    assert from_options("ddim", 10, 1.0, "leading", T=300) == DDIMConfig(10, 1.0, "leading")
    for kw, words in ((dict(sampler="ddpm", steps=10), "--steps applies only to --sampler ddim"),
                      (dict(sampler="ddpm", eta=0.5, spacing="leading"), "--eta, --spacing apply only"),
                      (dict(sampler="ddim", steps=301, T=300), "--steps 301 is more than the model's T = 300"),
                      (dict(sampler="ddim", steps=0), "--steps must be an integer >= 1, got 0"),
                      (dict(sampler="ddim", eta=-1.0), "--eta must be in [0, 1]"),
                      (dict(sampler="ddim", spacing="uniform"), "unknown --spacing 'uniform'"),
                      (dict(sampler="pndm"), "unknown --sampler 'pndm'")):
        with pytest.raises(DDPMCheckError, match=words.replace("[", r"\[").replace("]", r"\]")):
            from_options(**kw)


def test_sample_with_ddim_counts_its_steps_and_shows_visited_steps():
    from ddpm_check.sample import Sampler, sample, sample_with_strip, strip_steps

    s = _sched(100)
    d = GaussianDiffusion(s, dtype=torch.float32)
    cfg = DDIMConfig(20, 0.0, "trailing")
    assert strip_steps(100, 10, cfg)[0] == 100 and strip_steps(100, 10, cfg)[-1] == 0
    assert set(strip_steps(100, 10, cfg)[:-1]) <= set((timesteps(100, 20, "trailing") + 1).tolist())

    class Fake(Sampler):  # the sampling functions need only the diffusion, the shape and a model
        def eps_model(self, compile=False, probe_shape=None):
            return lambda x, t: torch.zeros_like(x)

    from ddpm_check.data import DataConfig
    from ddpm_check.unet import UNetConfig

    fake = Fake(None, d, UNetConfig.small(), s.config, DataConfig.parse("digits", image_size=8), 0, [],
                torch.device("cpu"))
    seen = []
    x = sample(fake, 7, seed=0, batch_size=4, ddim=cfg, progress=lambda k, tot: seen.append((k, tot)))
    assert x.shape == (7, 1, 8, 8) and seen[-1] == (40, 40)  # 2 batches x 20 steps
    x2, ts, frames = sample_with_strip(fake, 7, seed=0, batch_size=4, ddim=cfg, strip_rows=3)
    assert torch.equal(x, x2) and frames.shape[:2] == (3, len(ts))
    assert math.isclose(float(frames[0, -1].sum()), float(x[0].sum()))


def test_ddim_step_replays_the_loop_exactly_and_refuses_bad_t_prev():
    from ddpm_check.schedules import make_schedule

    d = GaussianDiffusion(make_schedule(T=60))
    model = lambda x, t: 0.5 * torch.tanh(x) + 0.01 * t.reshape(-1, 1, 1, 1)  # noqa: E731
    for eta, spacing in ((0.0, "leading"), (1.0, "trailing"), (0.5, "linspace")):
        cfg = DDIMConfig(12, eta, spacing)
        loop = d.ddim_sample_loop(model, (5, 1, 4, 4), cfg, generator=torch.Generator().manual_seed(2))
        g = torch.Generator().manual_seed(2)
        x = torch.randn((5, 1, 4, 4), generator=g)
        ts = [int(v) for v in timesteps(60, 12, spacing)]
        for k, t in enumerate(ts):
            tp = ts[k + 1] if k + 1 < len(ts) else -1
            x = d.ddim_step(model(x, torch.full((5,), t)), torch.full((5,), t), torch.full((5,), tp), x, eta, g)
        assert torch.equal(loop, x), (eta, spacing)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(DDPMCheckError, match="t_prev must be below t"):
        d.ddim_step(x, torch.tensor([5, 5]), torch.tensor([5, 4]), x)
    with pytest.raises(DDPMCheckError, match="eta must be a number in"):
        d.ddim_step(x, torch.tensor([5, 5]), torch.tensor([4, 4]), x, eta=2.0)
