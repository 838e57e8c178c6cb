"""The diffusers side of the sampling benchmarks: diffusers' DDPMScheduler loop driving the same
eps-model that ddpm-check samples with.

diffusers is not a dependency of ddpm-check; ``available()`` says whether it is installed, and
the benchmarks skip this side when it is not (``pip install diffusers`` to include it).

The scheduler is built from the schedule's own betas (``trained_betas``), with the posterior
variance beta_tilde_t (``variance_type="fixed_small"``, Ho et al. sigma_t^2 = beta_tilde_t), no
clipping of the predicted x_0 and an epsilon-predicting model: the same p_theta(x_{t-1} | x_t) as
``GaussianDiffusion.p_sample``.  ``check_same_step`` confirms that on one step with shared noise
before anything is timed, so the two sides are known to compute the same thing.
"""

from __future__ import annotations

from typing import Callable

import torch


def available() -> str | None:
    """diffusers' version, or None when it is not installed."""
    try:
        import diffusers
    except Exception:
        return None
    return diffusers.__version__


def scheduler(schedule):
    """A DDPMScheduler over ``schedule``'s betas (a ddpm_check.schedules.Schedule), all T steps."""
    from diffusers import DDPMScheduler

    sch = DDPMScheduler(num_train_timesteps=schedule.T, trained_betas=[float(b) for b in schedule.betas],
                        variance_type="fixed_small", clip_sample=False, prediction_type="epsilon")
    sch.set_timesteps(schedule.T)
    return sch


@torch.no_grad()  # as diffusers' pipelines run
def sample(eps: Callable, sch, shape, device: torch.device, seed: int = 0, steps: int | None = None) -> torch.Tensor:
    """diffusers' loop: x_T ~ N(0, I), then ``scheduler.step`` for each timestep (the first
    ``steps`` of them if given), the model called with a [N] long tensor of the step."""
    gen = torch.Generator(device).manual_seed(seed)
    x = torch.randn(tuple(shape), generator=gen, device=device)
    n = x.shape[0]
    for ts in sch.timesteps[:steps]:
        t = torch.full((n,), int(ts), device=device, dtype=torch.long)
        x = sch.step(eps(x, t), ts, x, generator=gen).prev_sample
    return x


@torch.no_grad()
def check_same_step(eps: Callable, sch, diffusion, shape, device: torch.device, tol: float = 1e-4) -> float:
    """One reverse step at t = T/2 from the same x_t with the same noise through diffusers and
    through ddpm-check's ``p_sample``; returns the largest difference, raises if it exceeds ``tol``
    (relative to the sample's scale)."""
    g = torch.Generator(device).manual_seed(123)
    x_t = torch.randn(tuple(shape), generator=g, device=device)
    i = diffusion.T // 2
    # diffusers draws its noise with torch.randn(shape, generator=...) on the generator's device
    seed_gen = torch.Generator(device).manual_seed(7)
    noise = torch.randn(x_t.shape, generator=torch.Generator(device).manual_seed(7), device=device)  # the same draw
    t = torch.full((x_t.shape[0],), i, device=device, dtype=torch.long)
    theirs = sch.step(eps(x_t, t), sch.timesteps[diffusion.T - 1 - i], x_t, generator=seed_gen).prev_sample
    ours = diffusion.p_sample(eps, x_t, t, noise=noise)
    diff = float((theirs.float() - ours.float()).abs().max())
    scale = float(ours.float().abs().max())
    if not diff <= tol * max(scale, 1.0):
        raise AssertionError(f"diffusers and ddpm-check disagree on one step: max |diff| {diff:.3g} "
                             f"(scale {scale:.3g}); the timing would compare different samplers")
    return diff
