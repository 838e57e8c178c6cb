"""Our schedule arrays agree, name by name, with openai/improved-diffusion (and guided-diffusion).

Someone porting code between improved-diffusion and ddpm-check must get the same array under the
same name: ``posterior_mean_coef1`` must be the coefficient of x_0 and ``posterior_mean_coef2`` that
of x_t, as in ``GaussianDiffusion.__init__`` of improved_diffusion/gaussian_diffusion.py and in the
order of Ho et al. 2020, eq. 7:

    mu_tilde_t(x_t, x_0) = coef1 x_0 + coef2 x_t,
    coef1 = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t),
    coef2 = (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t).

The reference below is an independent float64 numpy re-implementation of those formulas (it does
not import ddpm_check).  Index convention, shared by both: array index i <-> paper step t = i + 1.
"""

import numpy as np
import pytest
import torch

from ddpm_check.diffusion import GaussianDiffusion
from ddpm_check.schedules import ARRAY_NAMES, Schedule, make_schedule


def _improved_diffusion_arrays(betas) -> dict[str, np.ndarray]:
    """The [T] arrays improved-diffusion stores on its GaussianDiffusion, by attribute name (T >= 2)."""
    betas = np.array(betas, dtype=np.float64)  # a writable copy
    alphas = 1.0 - betas  # a local there, not an attribute
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "alphas_cumprod_next": np.concatenate([abar[1:], [0.0]]),
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
        "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
        "posterior_variance": post_var,
        # beta_tilde_1 = 0, so the log at index 0 borrows the value at index 1.
        "posterior_log_variance_clipped": np.log(np.concatenate([[post_var[1]], post_var[1:]])),
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),  # multiplies x_0
        "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),  # multiplies x_t
    }


SCHEDULES = {
    "linear-300": lambda: make_schedule("linear", 300, 1e-4, 0.02),
    "linear-1000": lambda: make_schedule("linear", 1000, 1e-4, 0.02),
    "cosine-1000": lambda: make_schedule("cosine", 1000),
    "custom-17": lambda: Schedule.from_betas(np.random.default_rng(17).uniform(1e-4, 0.05, 17)),
    "linear-2": lambda: make_schedule("linear", 2, 1e-4, 0.02),
}
SHARED = sorted(set(ARRAY_NAMES) & set(_improved_diffusion_arrays(np.full(2, 0.1))))


@pytest.mark.parametrize("name", SHARED)
@pytest.mark.parametrize("sched", SCHEDULES)
def test_same_array_under_same_name(sched, name):
    s = SCHEDULES[sched]()
    theirs = _improved_diffusion_arrays(s.betas)[name]
    # atol = 0 everywhere: the only exact zero (coef2 at index 0, from 1 - alpha_bar_0 = 1 - 1) is
    # exactly 0.0 in both implementations, and |0 - 0| <= 0 passes, so no slack is needed for it.
    np.testing.assert_allclose(getattr(s, name), theirs, rtol=1e-12, atol=0, err_msg=f"{sched}: {name}")


def test_shared_names_cover_the_posterior():
    must = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
            "posterior_mean_coef1", "posterior_mean_coef2"}
    assert must <= set(SHARED), f"a rename dropped comparisons: {sorted(must - set(SHARED))}"


@pytest.mark.parametrize("sched", SCHEDULES)
def test_posterior_mean_is_coef1_x0_plus_coef2_xt(sched):
    s = SCHEDULES[sched]()
    ref = {k: torch.from_numpy(v) for k, v in _improved_diffusion_arrays(s.betas).items()}
    g = torch.Generator().manual_seed(0)
    x_0 = torch.randn(64, 3, 4, generator=g, dtype=torch.float64)
    x_t = torch.randn(64, 3, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, s.T, (64,), generator=g)
    t[:2] = torch.tensor([0, s.T - 1])  # always include paper steps t = 1 and t = T
    mean, _, _ = GaussianDiffusion(s, dtype=torch.float64).q_posterior_mean_variance(x_0, x_t, t)
    want = ref["posterior_mean_coef1"][t, None, None] * x_0 + ref["posterior_mean_coef2"][t, None, None] * x_t
    # a tiny atol: a mean that cancels to ~0 has no meaningful relative error.
    np.testing.assert_allclose(mean.numpy(), want.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("sched", SCHEDULES)
def test_first_step_posterior_is_point_mass_at_x0(sched):
    s = SCHEDULES[sched]()
    theirs = _improved_diffusion_arrays(s.betas)
    for who, c1, c2 in [("improved-diffusion", theirs["posterior_mean_coef1"], theirs["posterior_mean_coef2"]),
                        ("ddpm-check", s.posterior_mean_coef1, s.posterior_mean_coef2)]:
        # coef1[0] = beta_1 / (1 - (1 - beta_1)): the rounding of 1 - beta_1 leaves ~eps/beta_1 error.
        np.testing.assert_allclose(c1[0], 1.0, rtol=1e-10, err_msg=f"{who}: coef1 at t = 1")
        assert c2[0] == 0.0, f"{who}: coef2 at t = 1 is {c2[0]!r}, not 0"
