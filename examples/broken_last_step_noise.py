"""DDPM that adds noise on the last reverse step (index 0, paper t = 1).

The one mistake: the zero posterior variance at index 0 is replaced by beta_1
("to avoid sqrt(0) / log(0)", as some code clips it) and step has no t > 0
special case, so it always draws z and adds sigma_t z, also where t = 0.
Bug class: missing "no noise at t = 1" case of Ho et al. Algorithm 2
(line 3: z ~ N(0, I) if t > 1, else z = 0).

What verify should report: schedule, q_sample, loss, the mean of step and its
noise for index >= 1 are right; step at index 0 adds noise with std
sqrt(beta_1) = 0.0100 instead of none, also per element in a batch mixing t = 0
and t > 0, and draws from the generator where it should not. posterior_variance[0]
is 1e-4 instead of 0. sample draws T + 1 = 301 noise tensors instead of 300 and
its output carries the extra 0.01 * z.
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
        self.posterior_variance[0] = self.betas[0]  # clip the 0 at t = 1

    def q_sample(self, x_0, t, noise):
        return (_at(self.sqrt_alphas_cumprod, t, x_0) * x_0
                + _at(self.sqrt_one_minus_alphas_cumprod, t, x_0) * noise)

    @torch.no_grad()
    def step(self, eps, t, x_t, generator):
        mean = _at(self.sqrt_recip_alphas, t, x_t) * (x_t - _at(self.eps_coef, t, x_t) * eps)
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
        return mean + _at(self.posterior_variance, t, x_t).sqrt() * z

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
