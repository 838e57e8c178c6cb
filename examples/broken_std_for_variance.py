"""DDPM whose reverse step scales the noise by the variance, not the std.

The one mistake: step adds `posterior_variance[t] * z` (sigma_t^2 z) instead of
`posterior_variance[t].sqrt() * z` (sigma_t z); the `.sqrt()` is missing.
Bug class: variance / standard-deviation confusion (passing a variance where
torch.normal or `mean + std * z` wants a std, or forgetting exp(0.5 * log_var)).

What verify should report: schedule, q_sample, loss and the MEAN of step are
right; the noise std of step is sigma_t^2 instead of sigma_t, i.e. sigma_t times
too small (variance ratio = beta_tilde_t): at t=2 (index 1) the std is 6.25e-5
instead of 7.90e-3 (0.0079x), at t=150 0.0996x, at t=T=300 0.141x (0.0200
instead of 0.141). Index 0 is unaffected (no noise). sample inherits the error
(its output is far too smooth/deterministic).
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
        self.eps_coef = self.betas / self.sqrt_one_minus_alphas_cumprod
        # beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
        self.posterior_variance = (
            (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod) * self.betas
        )

    def q_sample(self, x_0, t, noise):
        return (_at(self.sqrt_alphas_cumprod, t, x_0) * x_0
                + _at(self.sqrt_one_minus_alphas_cumprod, t, x_0) * noise)

    @torch.no_grad()
    def step(self, eps, t, x_t, generator):
        mean = _at(self.sqrt_recip_alphas, t, x_t) * (x_t - _at(self.eps_coef, t, x_t) * eps)
        if not (t > 0).any():
            return mean  # paper step t = 1 everywhere: no noise, nothing drawn
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
        nonzero = (t > 0).to(device=x_t.device, dtype=x_t.dtype)
        nonzero = nonzero.view(-1, *([1] * (x_t.dim() - 1)))
        return mean + nonzero * _at(self.posterior_variance, t, x_t) * z

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
