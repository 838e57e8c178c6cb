"""DDPM whose reverse step reads alpha_bar one index too late.

The one mistake: in step, the eps coefficient beta_t / sqrt(1 - alpha_bar_t)
takes alpha_bar from alphas_cumprod[t + 1] (clamped to T - 1) instead of
alphas_cumprod[t]: the author added 1 to turn the index into the paper's t,
but the arrays are already stored 0-based. beta_t and alpha_t are read right.
Bug class: off-by-one between 1-based paper timesteps and 0-based arrays.

What verify should report: schedule, q_sample, loss and the noise of step are
right; the MEAN of step is wrong, worst at small t. The eps coefficient is
sqrt((1 - alpha_bar_t) / (1 - alpha_bar_{t+1})) times correct: 0.613x at t=1
(index 0: 0.00613 instead of 0.0100), 0.730x at t=2, 0.791x at t=3, 0.9956x at
t=150, 0.9995x at t=299, exact at t=T (clamped). The mean error is
(c_t - c_wrong) / sqrt(alpha_t) * eps: 3.87e-3 * eps at index 0, 2.75e-3 * eps at
index 1, 6.1e-5 * eps at index 149. sample inherits the error.
"""
import numpy as np
import torch

T = 300


def _at(arr, t, x):
    """arr[t] for each batch element, shaped [N, 1, 1, 1] to broadcast over x."""
    vals = arr.to(x.device)[t.to(x.device)].to(x.dtype)
    return vals.view(-1, *([1] * (x.dim() - 1)))


class DDPM:
    def __init__(self, T=T, beta_start=1e-4, beta_end=0.02):
        self.T = T
        self.schedule_claim = {"kind": "linear", "beta_start": beta_start, "beta_end": beta_end}
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])  # alpha_bar_0 = 1

        self.betas = torch.from_numpy(betas)
        self.alphas = torch.from_numpy(alphas)
        self.alphas_cumprod = torch.from_numpy(alphas_cumprod)
        self.alphas_cumprod_prev = torch.from_numpy(alphas_cumprod_prev)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas = 1.0 / self.alphas.sqrt()
        # beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
        self.posterior_variance = (
            (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod) * self.betas
        )

    def q_sample(self, x_0, t, noise):
        return (_at(self.sqrt_alphas_cumprod, t, x_0) * x_0
                + _at(self.sqrt_one_minus_alphas_cumprod, t, x_0) * noise)

    @torch.no_grad()
    def step(self, eps, t, x_t, generator):
        t_paper = (t + 1).clamp(max=self.T - 1)  # paper step t = index + 1
        eps_coef = _at(self.betas, t, x_t) / (1.0 - _at(self.alphas_cumprod, t_paper, x_t)).sqrt()
        mean = _at(self.sqrt_recip_alphas, t, x_t) * (x_t - eps_coef * eps)
        if not (t > 0).any():
            return mean  # paper step t = 1 everywhere: no noise, nothing drawn
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
        nonzero = (t > 0).to(device=x_t.device, dtype=x_t.dtype)
        nonzero = nonzero.view(-1, *([1] * (x_t.dim() - 1)))
        return mean + nonzero * _at(self.posterior_variance, t, x_t).sqrt() * z

    @torch.no_grad()
    def sample(self, model, shape, generator):
        x = torch.randn(shape, generator=generator)
        for i in reversed(range(self.T)):
            t = torch.full((shape[0],), i, dtype=torch.long)
            x = self.step(model(x, t), t, x, generator)
        return x

    def loss(self, model, x_0, t, noise):
        x_t = self.q_sample(x_0, t, noise)
        return torch.mean((noise - model(x_t, t)) ** 2)


ddpm = DDPM()
