"""The source's training and sampling loop, re-implemented faithfully.

The benchmarks time it beside ddpm-check, and ``ddpm-check audit`` runs its ``sample_timestep``
to show the ``if t == 0`` failure on a batch.

Written from the source (seed/diffusion-model-study.md) and the tutorial it follows ("Diffusion
models from scratch in PyTorch"); only the model is shared with ddpm-check (the same SimpleUnet
architecture, passed in).  What makes it the *source's* loop:

- the schedule and its derived arrays are float32 CPU tensors built with torch (``linspace``,
  ``cumprod``, ``F.pad``) as the source does;
- ``get_index_from_list`` gathers every coefficient on the CPU (``vals.gather(-1, t.cpu())``, a
  device-to-host copy and sync of t on a GPU) and copies it back with ``.to(t.device)``, per
  coefficient and per step;
- ``forward_diffusion_sample`` draws the noise with ``torch.randn_like(x_0)`` where x_0 is the
  data loader's CPU batch, then moves x_0 and the noise to the device;
- the loss is ``F.l1_loss`` (the source's code; its text says L2);
- Adam(lr) with torch's defaults, ``optimizer.zero_grad()``, fp32, contiguous (NCHW) tensors;
- sampling is ``sample_plot_image``'s loop: ONE image at a time, ``torch.full((1,), i)`` and
  ``torch.randn_like`` allocated per step, and ``if t == 0`` (a host sync on a GPU, and the reason
  the loop cannot take a batch of mixed steps).  The plotting is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SourceLoop:
    """The source's constants and functions for T steps, with tensors moved to ``device``."""

    def __init__(self, T: int = 300, device: str | torch.device = "cpu", start: float = 0.0001, end: float = 0.02):
        self.T = T
        self.device = torch.device(device)
        betas = torch.linspace(start, end, T)  # linear_beta_schedule
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, axis=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        self.betas = betas
        self.sqrt_recip_alphas = torch.sqrt(1.0 / alphas)
        self.sqrt_alphas_cumprod = torch.sqrt(alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - alphas_cumprod)
        self.posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

    @classmethod
    def from_schedule(cls, schedule, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float64) -> "SourceLoop":
        """The same functions over a ``ddpm_check.schedules.Schedule``'s arrays (CPU tensors, as
        the source keeps them), for any schedule and dtype."""
        loop = cls.__new__(cls)
        loop.T, loop.device = schedule.T, torch.device(device)
        for name in ("betas", "sqrt_recip_alphas", "sqrt_alphas_cumprod",
                     "sqrt_one_minus_alphas_cumprod", "posterior_variance"):
            setattr(loop, name, torch.tensor(getattr(schedule, name), dtype=dtype))
        return loop

    @staticmethod
    def get_index_from_list(vals, t, x_shape):
        batch_size = t.shape[0]
        out = vals.gather(-1, t.cpu())
        return out.reshape(batch_size, *((1,) * (len(x_shape) - 1))).to(t.device)

    def forward_diffusion_sample(self, x_0, t):
        device = self.device
        noise = torch.randn_like(x_0)
        sqrt_alphas_cumprod_t = self.get_index_from_list(self.sqrt_alphas_cumprod, t, x_0.shape)
        sqrt_one_minus_alphas_cumprod_t = self.get_index_from_list(self.sqrt_one_minus_alphas_cumprod, t, x_0.shape)
        return (sqrt_alphas_cumprod_t.to(device) * x_0.to(device)
                + sqrt_one_minus_alphas_cumprod_t.to(device) * noise.to(device), noise.to(device))

    def get_loss(self, model, x_0, t):
        x_noisy, noise = self.forward_diffusion_sample(x_0, t)
        noise_pred = model(x_noisy, t)
        return F.l1_loss(noise, noise_pred)

    def train_step(self, model, optimizer, batch, batch_size: int):
        """One iteration of the source's training loop; ``batch`` is the loader's CPU batch."""
        optimizer.zero_grad()
        t = torch.randint(0, self.T, (batch_size,), device=self.device).long()
        loss = self.get_loss(model, batch, t)
        loss.backward()
        optimizer.step()
        return loss

    @torch.no_grad()
    def sample_timestep(self, model, x, t, randn_like=torch.randn_like):
        """The source's step; ``randn_like`` lets a test supply the noise."""
        betas_t = self.get_index_from_list(self.betas, t, x.shape)
        sqrt_one_minus_alphas_cumprod_t = self.get_index_from_list(self.sqrt_one_minus_alphas_cumprod, t, x.shape)
        sqrt_recip_alphas_t = self.get_index_from_list(self.sqrt_recip_alphas, t, x.shape)
        model_mean = sqrt_recip_alphas_t * (x - betas_t * model(x, t) / sqrt_one_minus_alphas_cumprod_t)
        posterior_variance_t = self.get_index_from_list(self.posterior_variance, t, x.shape)
        if t == 0:
            return model_mean
        noise = randn_like(x)
        return model_mean + torch.sqrt(posterior_variance_t) * noise

    @torch.no_grad()
    def sample_image(self, model, shape, steps: int | None = None):
        """``sample_plot_image`` without the plots: one image [1, C, H, W] from T (or the first
        ``steps``) reverse steps."""
        img = torch.randn((1, *shape), device=self.device)
        stop = 0 if steps is None else self.T - steps
        for i in range(stop, self.T)[::-1]:
            t = torch.full((1,), i, device=self.device, dtype=torch.long)
            img = self.sample_timestep(model, img, t)
        return img
