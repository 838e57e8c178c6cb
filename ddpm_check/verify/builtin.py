"""The built-in targets: ``ddpm_check`` (our GaussianDiffusion, float32 as ``train`` and ``sample``
run it) and ``source`` (the source blog's functions as written, ``ddpm_check.source.SourceLoop``)."""

from __future__ import annotations

from typing import Any

import torch

from ddpm_check.schedules import Schedule, ScheduleConfig


class OurDiffusion:
    """ddpm_check's paths behind the protocol: q_sample, p_sample (step), p_sample_loop (sample),
    loss; the schedule's float64 arrays and the linear/cosine claim of its config."""

    def __init__(self, config: ScheduleConfig | None = None, dtype: torch.dtype = torch.float32) -> None:
        from ddpm_check.diffusion import GaussianDiffusion

        config = config or ScheduleConfig()
        sched = Schedule.from_config(config)
        self.diffusion = GaussianDiffusion(sched, dtype=dtype)
        self.betas = sched.betas
        self.alphas_cumprod = sched.alphas_cumprod
        if config.kind == "linear":
            self.schedule_claim = {"kind": "linear", "beta_start": config.beta_start, "beta_end": config.beta_end}
        elif config.kind == "cosine":
            self.schedule_claim = {"kind": "cosine", "s": 0.008}

    def q_sample(self, x_0, t, noise):
        return self.diffusion.q_sample(x_0, t, noise=noise)

    def step(self, eps, t, x_t, generator):
        return self.diffusion.p_sample(lambda x, tt: eps, x_t, t, generator=generator)

    def sample(self, model, shape, generator):
        return self.diffusion.p_sample_loop(model, shape, generator=generator)

    def loss(self, model, x_0, t, noise):
        return self.diffusion.loss(model, x_0, t=t, noise=noise)


def make(name: str, config: ScheduleConfig | None) -> Any:
    if name == "ddpm_check":
        return OurDiffusion(config)
    raise KeyError(name)


class _SourceAdapter:
    """The source's functions under the protocol's names.  Its forward_diffusion_sample draws its
    own noise (and returns it); its sample_timestep takes a batch of one step, decides ``if t == 0``
    for the whole batch, and draws its noise with ``randn_like`` (routed to the given generator);
    sample_plot_image draws from torch's global generator one image at a time, so ``sample`` is not
    offered; get_loss draws its own noise and uses L1."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self.betas = loop.betas  # float32, as the source keeps it
        self.schedule_claim = None

    def q_sample(self, x_0, t):
        return self.loop.forward_diffusion_sample(x_0, t)

    def step(self, eps, t, x_t, generator):
        return self.loop.sample_timestep(lambda x, tt: eps, x_t, t,
                                         randn_like=lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype))


def source_target(config: ScheduleConfig | None):
    from ddpm_check.source import SourceLoop
    from ddpm_check.verify.targets import from_object

    config = config or ScheduleConfig()
    if config.kind != "linear":
        from ddpm_check.errors import DDPMCheckError

        raise DDPMCheckError(f"the source's code has the linear schedule only, not {config.kind!r}")
    loop = SourceLoop(T=config.T, start=config.beta_start, end=config.beta_end)
    ad = _SourceAdapter(loop)
    ad.schedule_claim = {"kind": "linear", "beta_start": config.beta_start, "beta_end": config.beta_end}
    tgt = from_object(ad, "source")
    tgt.q_sample_draws_noise = True
    tgt.notes.append("source: sample_plot_image draws one image at a time from torch's global generator, so "
                     "the whole-sampler comparison is not offered; forward_diffusion_sample and get_loss draw "
                     "their own noise (the loss is checked through the step and forward rows instead)")
    return tgt
