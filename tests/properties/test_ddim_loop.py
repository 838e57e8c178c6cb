"""Property tests of the DDIM loop's exact behaviour over random valid schedules (docs/TESTING.md §1).

- S = T and eta = 1: ``ddim_sample_loop`` equals ``p_sample_loop`` draw for draw (same generator),
  whatever the spacing (every spacing visits every step when S = T);
- point-mass data with its exact (oracle) noise predictor: every configuration returns x_0 itself,
  because the last step has alpha_bar_prev = 1 and returns x0_hat (derivation ``ddim``,
  steps 'last-sigma' and 'last-step');
- an injected mistake (after the last visit alpha_bar_prev = alphas_cumprod[0], diffusers'
  set_alpha_to_one=False) always breaks the second property.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ddpm_check.ddim import SPACINGS, DDIMConfig, plan, plan_from
from ddpm_check.diffusion import GaussianDiffusion
from ddpm_check.montecarlo.sampler import sampler_mixture
from ddpm_check.schedules import Schedule

betas_st = st.integers(2, 40).flatmap(
    lambda T: arrays(np.float64, T, elements=st.floats(1e-4, 0.3, allow_subnormal=False)))


@given(betas_st, st.sampled_from(SPACINGS), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_all_steps_eta_1_equals_ddpm(betas, spacing, n, seed):
    s = Schedule.from_betas(betas)
    d = GaussianDiffusion(s, dtype=torch.float64)
    m = sampler_mixture().eps_predictor(s.alphas_cumprod)
    a = d.p_sample_loop(m, (n, 2), generator=torch.Generator().manual_seed(seed))
    b = d.ddim_sample_loop(m, (n, 2), DDIMConfig(s.T, 1.0, spacing), generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def _oracle(s: Schedule, c: float):
    ac = torch.tensor(np.array(s.alphas_cumprod))
    return lambda x, t: (x - ac[t].sqrt()[:, None] * c) / (1 - ac[t]).sqrt()[:, None]


@given(betas_st, st.sampled_from(SPACINGS), st.data(), st.floats(0.0, 1.0), st.floats(-3.0, 3.0))
def test_point_mass_comes_back_exactly_and_the_wrong_final_alpha_bar_does_not(betas, spacing, data, eta, c):
    s = Schedule.from_betas(betas)
    d = GaussianDiffusion(s, dtype=torch.float64)
    S = data.draw(st.integers(1, s.T))
    cfg = DDIMConfig(S, eta, spacing)
    x = d.ddim_sample_loop(_oracle(s, c), (16, 1), cfg, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, torch.full_like(x, c), rtol=0, atol=1e-8)
    p = plan(s.alphas_cumprod, cfg)
    wrong = plan_from(cfg, p.timesteps, p.alpha_bar, np.concatenate([p.alpha_bar_prev[:-1], [s.alphas_cumprod[0]]]))
    y = d.ddim_sample_loop(_oracle(s, c), (16, 1), wrong, generator=torch.Generator().manual_seed(0))
    assert (y - c).abs().max() > 1e-6  # sqrt(abar_1) c + sqrt(1 - abar_1) eps is not c
