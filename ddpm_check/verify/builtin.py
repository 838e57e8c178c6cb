"""The built-in targets: ``ddpm_check`` (our GaussianDiffusion, float32 as ``train`` and ``sample``
run it) and ``source`` (the source blog's functions as written, ``ddpm_check.source.SourceLoop``)."""

from __future__ import annotations

from typing import Any

import torch

from ddpm_check.schedules import Schedule, ScheduleConfig


class OurDiffusion:
    """ddpm_check's paths behind the protocol: q_sample, p_sample (step), p_sample_loop (sample),
    loss; the schedule's float64 arrays and the linear/cosine claim of its config."""

    def __init__(self, config: ScheduleConfig | None = None, dtype: torch.dtype = torch.float32,
                 prediction: str = "eps") -> None:
        from ddpm_check.diffusion import GaussianDiffusion

        config = config or ScheduleConfig()
        sched = Schedule.from_config(config)
        self.diffusion = GaussianDiffusion(sched, dtype=dtype, prediction=prediction)
        self.prediction = prediction
        self.betas = sched.betas
        self.alphas_cumprod = sched.alphas_cumprod
        if config.zero_snr:
            self.schedule_claim = None  # the rescaled betas are no longer the named schedule's
        elif config.kind == "linear":
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

    def ddim_step(self, eps, t, t_prev, x_t, eta, generator):
        return self.diffusion.ddim_step(eps, t, t_prev, x_t, eta, generator)

    def ddim_sample(self, model, shape, steps, eta, generator):
        from ddpm_check.ddim import DDIMConfig

        return self.diffusion.ddim_sample_loop(model, shape, DDIMConfig(steps, eta, "leading"), generator=generator)


def make(name: str, config: ScheduleConfig | None) -> Any:
    if name == "ddpm_check":
        return OurDiffusion(config)
    raise KeyError(name)


class _SourceAdapter:
    """The source's functions under the protocol's names.  Its forward_diffusion_sample draws its
    own noise (and returns it); its sample_timestep takes a batch of one step, decides ``if t == 0``
    for the whole batch, and draws its noise with ``randn_like`` (routed to the given generator);
    sample_plot_image draws from torch's global generator one image at a time, so ``sample`` is not
    offered; get_loss (L1) draws its noise with ``torch.randn_like``, answered with the given noise."""

    def __init__(self, loop, schedule_claim: dict) -> None:
        self.loop = loop
        self.betas = loop.betas  # float32, as the source keeps it
        self.schedule_claim = schedule_claim

    def q_sample(self, x_0, t):
        return self.loop.forward_diffusion_sample(x_0, t)

    def step(self, eps, t, x_t, generator):
        return self.loop.sample_timestep(lambda x, tt: eps, x_t, t,
                                         randn_like=lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype))

    def loss(self, model, x_0, t, noise):
        """get_loss as written, its one ``torch.randn_like(x_0)`` draw answered with ``noise``."""
        real = torch.randn_like
        torch.randn_like = lambda like, *a, **k: noise.to(like.dtype)
        try:
            return self.loop.get_loss(model, x_0, t)
        finally:
            torch.randn_like = real


def source_target(config: ScheduleConfig | None):
    from ddpm_check.source import SourceLoop
    from ddpm_check.verify.targets import from_object

    config = config or ScheduleConfig()
    if config.kind != "linear":
        from ddpm_check.errors import DDPMCheckError

        raise DDPMCheckError(f"the source's code has the linear schedule only, not {config.kind!r}")
    loop = SourceLoop(T=config.T, start=config.beta_start, end=config.beta_end)
    ad = _SourceAdapter(loop, {"kind": "linear", "beta_start": config.beta_start, "beta_end": config.beta_end})
    tgt = from_object(ad, "source")
    tgt.q_sample_draws_noise = True
    tgt.notes.append("source: sample_plot_image draws one image at a time from torch's global generator, so "
                     "the whole-sampler rows are not offered; forward_diffusion_sample returns the noise it draws; "
                     "get_loss's draw is answered with the given noise")
    return tgt


class _DiffusersScheduler:
    """A diffusers scheduler under the protocol: its float32 ``betas`` and ``alphas_cumprod``, the
    schedule its config names, ``add_noise`` as q_sample; ``_per_t`` calls its ``step`` (one timestep
    per call in diffusers) once per distinct t of a batch, in descending order, with one generator.
    ``clip_sample`` is off: the unclipped step is the paper's (clipping x0_hat is another sampler)."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.betas = scheduler.betas
        self.alphas_cumprod = scheduler.alphas_cumprod
        c = scheduler.config
        if c.beta_schedule == "linear":
            self.schedule_claim = {"kind": "linear", "beta_start": c.beta_start, "beta_end": c.beta_end}
        elif c.beta_schedule == "squaredcos_cap_v2":
            self.schedule_claim = {"kind": "cosine", "s": 0.008}

    def q_sample(self, x_0, t, noise):
        return self.scheduler.add_noise(x_0, noise, t)

    def _per_t(self, t, x_t, step):
        """``step(k, mask)`` -> the prev samples of the elements at timestep k, gathered into one batch."""
        out = torch.empty_like(x_t)
        for k in sorted({int(v) for v in t.tolist()}, reverse=True):
            m = t == k
            out[m] = step(k, m)
        return out


class _DiffusersDDPM(_DiffusersScheduler):
    """DDPMScheduler ("fixed_small" variance: beta_tilde).  A scheduler has no sampling loop
    (diffusers' loops live in pipelines, around a network) and no loss: those are not offered."""

    def step(self, eps, t, x_t, generator):
        return self._per_t(t, x_t, lambda k, m: self.scheduler.step(eps[m], k, x_t[m], generator=generator).prev_sample)


class _DiffusersDDIM(_DiffusersScheduler):
    """DDIMScheduler with ``set_alpha_to_one`` (abar_prev = 1 after the last visit); ``ddim_step``
    by its ``step``, its stride T // num_inference_steps set from t - t_prev."""

    def ddim_step(self, eps, t, t_prev, x_t, eta, generator):
        T = self.scheduler.config.num_train_timesteps

        def step(k, m):
            strides = {int(v) for v in (k - t_prev[m]).tolist()}
            if len(strides) != 1 or T % next(iter(strides)):
                raise ValueError(f"diffusers' DDIMScheduler steps by T // num_inference_steps; got t={k} -> {sorted(strides)}")
            self.scheduler.num_inference_steps = T // next(iter(strides))
            return self.scheduler.step(eps[m], k, x_t[m], eta=float(eta), generator=generator).prev_sample

        return self._per_t(t, x_t, step)


def diffusers_target(name: str, config: ScheduleConfig | None):
    from ddpm_check.errors import DDPMCheckError
    from ddpm_check.verify.targets import from_object

    if name not in ("DDPMScheduler", "DDIMScheduler"):
        raise DDPMCheckError(f"unknown diffusers target {name!r}; verify knows diffusers:DDPMScheduler and "
                             f"diffusers:DDIMScheduler")
    try:
        import diffusers
    except ImportError:
        raise DDPMCheckError("diffusers is not installed: pip install diffusers (or pip install -e \".[test]\")") from None
    config = config or ScheduleConfig()
    kind = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[config.kind]
    common = dict(num_train_timesteps=config.T, beta_start=config.beta_start, beta_end=config.beta_end,
                  beta_schedule=kind, clip_sample=False, prediction_type="epsilon")
    if name == "DDPMScheduler":
        tgt = from_object(_DiffusersDDPM(diffusers.DDPMScheduler(variance_type="fixed_small", **common)), f"diffusers:{name}")
        tgt.notes.append(f"diffusers {diffusers.__version__} DDPMScheduler(clip_sample=False, variance_type='fixed_small'); "
                         "step is called once per distinct t of a batch (diffusers' step takes one timestep); a "
                         "scheduler has no sampling loop and no loss")
        return tgt
    tgt = from_object(_DiffusersDDIM(diffusers.DDIMScheduler(set_alpha_to_one=True, **common)), f"diffusers:{name}")
    tgt.notes.append(f"diffusers {diffusers.__version__} DDIMScheduler(clip_sample=False, set_alpha_to_one=True); "
                     "step is called once per distinct t of a batch, its stride set from t - t_prev")
    return tgt
