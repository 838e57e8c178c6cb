"""Isotropic Gaussian mixtures: a data distribution whose exact denoiser is known.

Data:   x_0 ~ sum_k w_k N(m_k, s_k^2 I),  x_0 in R^D.
Noised: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)   (Ho et al. 2020, eq. 4), so

    x_t ~ sum_k w_k N(sqrt(alpha_bar_t) m_k, v_k I),   v_k = alpha_bar_t s_k^2 + 1 - alpha_bar_t.

Given x_t and the component k, (x_0, x_t) are jointly Gaussian and
eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t) has

    E[eps | x_t, k] = sqrt(1 - alpha_bar_t) (x_t - sqrt(alpha_bar_t) m_k) / v_k,

so the Bayes-optimal noise predictor (the minimiser of E||eps - eps_theta(x_t, t)||^2) is

    E[eps | x_t] = sum_k r_k(x_t) E[eps | x_t, k],   r_k proportional to w_k N(x_t; sqrt(alpha_bar_t) m_k, v_k I).

This is what the sampler and network checks compare against, and what the mixture data set of
``ddpm_check.data`` draws from.  A single Gaussian is the case K = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as st

from ddpm_check.errors import DDPMCheckError


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """sum_k weights[k] N(means[k], stds[k]^2 I) in R^D.

    Shapes: weights [K], means [K, D], stds [K]; all float64.
    """

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        m = np.asarray(self.means, dtype=np.float64)
        s = np.asarray(self.stds, dtype=np.float64)
        if m.ndim == 1:
            m = m[:, None]
        if w.ndim != 1 or m.shape[0] != w.shape[0] or s.shape != w.shape:
            raise DDPMCheckError(
                f"mixture shapes do not agree: weights {w.shape}, means {m.shape}, stds {s.shape}"
            )
        if not (np.all(np.isfinite(w)) and np.all(w >= 0) and abs(w.sum() - 1.0) < 1e-9):
            raise DDPMCheckError(f"mixture weights must be >= 0 and sum to 1, got {w.tolist()}")
        if not (np.all(np.isfinite(s)) and np.all(s > 0)):
            raise DDPMCheckError(f"mixture stds must be > 0, got {s.tolist()}")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "stds", s)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[0])

    # ---- sampling -------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Draw n points x_0 ~ the mixture.  Returns [n, D]."""
        w = torch.as_tensor(self.weights)
        k = torch.multinomial(w, n, replacement=True, generator=generator)  # [n]
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = torch.as_tensor(self.means)[k] + torch.as_tensor(self.stds)[k, None] * z
        return x.to(dtype)

    # ---- the noised marginal --------------------------------------------------------------
    def noised(self, alpha_bar: float) -> "GaussianMixture":
        """The law of x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, itself a mixture."""
        a = float(alpha_bar)
        return GaussianMixture(self.weights, math.sqrt(a) * self.means,
                               np.sqrt(a * self.stds**2 + 1.0 - a))

    def projection_cdf(self, direction: np.ndarray, values: np.ndarray) -> np.ndarray:
        """CDF of u.x for x ~ the mixture and a unit vector u (a 1-D mixture of normals)."""
        u = np.asarray(direction, dtype=np.float64)
        u = u / np.linalg.norm(u)
        loc = self.means @ u  # [K]
        values = np.asarray(values, dtype=np.float64)
        cdf = np.zeros_like(values)
        for w, mu, s in zip(self.weights, loc, self.stds):
            cdf += w * st.norm.cdf(values, loc=mu, scale=s)
        return cdf

    # ---- the exact denoiser ---------------------------------------------------------------
    def _responsibilities(self, x_t: torch.Tensor, alpha_bar: torch.Tensor):
        """(x [N, D] float64, abar [N, 1], r_k(x_t) [N, K], v_k [N, K], means [K, D], s_k^2 [K])."""
        x = x_t.to(torch.float64)
        n = x.shape[0]
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64, device=x.device).reshape(-1)
        if ab.numel() == 1:
            ab = ab.expand(n)
        ab = ab[:, None]  # [N, 1]
        means = torch.as_tensor(self.means, device=x.device)  # [K, D]
        s2 = torch.as_tensor(self.stds, device=x.device) ** 2  # [K]
        logw = torch.log(torch.as_tensor(self.weights, device=x.device))  # [K]
        v = ab * s2[None, :] + (1.0 - ab)  # [N, K]
        # squared distance ||x - sqrt(ab) m_k||^2 without forming [N, K, D]
        d2 = (x * x).sum(1, keepdim=True) - 2 * ab.sqrt() * (x @ means.T) + ab * (means * means).sum(1)[None, :]
        d2 = d2.clamp_min(0.0)
        logr = logw[None, :] - 0.5 * self.dim * torch.log(v) - 0.5 * d2 / v  # [N, K]
        return x, ab, torch.softmax(logr, dim=1), v, means, s2

    def eps_posterior_mean(self, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """E[eps | x_t] for x_t at noise level alpha_bar (see the module docstring).

        Args:
            x_t: [N, D] (any float dtype; computed in float64).
            alpha_bar: [N] or a scalar, alpha_bar_t for each row.
        Returns:
            [N, D] in the dtype of x_t.
        """
        x, ab, r, v, means, _ = self._responsibilities(x_t, alpha_bar)
        # sum_k r_k (x - sqrt(ab) m_k) / v_k = x * sum_k r_k/v_k - sqrt(ab) * sum_k (r_k/v_k) m_k
        rv = r / v  # [N, K]
        e = x * rv.sum(1, keepdim=True) - ab.sqrt() * (rv @ means)
        e = (1.0 - ab).sqrt() * e
        return e.to(x_t.dtype)

    def x0_posterior_mean(self, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t] = sum_k r_k (m_k + sqrt(abar) s_k^2 (x_t - sqrt(abar) m_k) / v_k), computed
        directly (not from E[eps | x_t], which would divide by sqrt(abar)), so abar = 0 gives the
        data mean.  Shapes as :meth:`eps_posterior_mean`."""
        x, ab, r, v, means, s2 = self._responsibilities(x_t, alpha_bar)
        sab = ab.sqrt()
        rsv = r * s2[None, :] / v  # [N, K]
        m = r @ means + sab * (x * rsv.sum(1, keepdim=True) - sab * (rsv @ means))
        return m.to(x_t.dtype)

    def eps_predictor(self, alphas_cumprod) -> "ExactEpsPredictor":
        """A model-like callable ``f(x_t, t) -> E[eps | x_t]`` for a schedule.

        ``t`` holds 0-based array indices (index i is paper step t = i + 1), as everywhere in
        ``ddpm_check``; ``x_t`` may have any trailing shape with prod = D.
        """
        return ExactEpsPredictor(self, alphas_cumprod)

    def predictor(self, alphas_cumprod, prediction: str = "eps") -> "ExactEpsPredictor":
        """The Bayes-optimal model of a parametrization: E[eps | x_t], E[x_0 | x_t] or
        E[v | x_t] = sqrt(abar) E[eps | x_t] - sqrt(1 - abar) E[x_0 | x_t] (``prediction`` "eps",
        "x0" or "v"), called like :meth:`eps_predictor`'s."""
        return ExactEpsPredictor(self, alphas_cumprod, prediction)


class ExactEpsPredictor:
    """The Bayes-optimal predictor of a GaussianMixture, called like a model: of eps by default,
    of x_0 or v with ``prediction`` (the minimiser of the squared error on each target)."""

    def __init__(self, mixture: GaussianMixture, alphas_cumprod, prediction: str = "eps") -> None:
        if prediction not in ("eps", "x0", "v"):
            raise DDPMCheckError(f"unknown prediction {prediction!r}; choose one of eps, x0, v")
        self.mixture = mixture
        self.alphas_cumprod = torch.as_tensor(np.array(alphas_cumprod, dtype=np.float64))
        self.prediction = prediction

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = x_t.shape
        ab = self.alphas_cumprod.to(x_t.device)[t.long()]
        flat = x_t.reshape(shape[0], -1)
        if self.prediction == "eps":
            out = self.mixture.eps_posterior_mean(flat, ab)
        elif self.prediction == "x0":
            out = self.mixture.x0_posterior_mean(flat, ab)
        else:
            a = ab.to(torch.float64).reshape(-1, 1)
            out = (a.sqrt() * self.mixture.eps_posterior_mean(flat, ab).to(torch.float64)
                   - (1.0 - a).sqrt() * self.mixture.x0_posterior_mean(flat, ab).to(torch.float64)).to(x_t.dtype)
        return out.reshape(shape)


def image_mixture(channels: int = 1, size: int = 8, n_components: int = 4, std: float = 0.1,
                  seed: int = 0) -> GaussianMixture:
    """A mixture of K smooth 'template' images, each with isotropic pixel noise of ``std``.

    Templates are fixed by ``seed``: random low-frequency patterns in [-0.8, 0.8], so the data
    looks like images (and lives in [-1, 1] up to the noise) while the exact denoiser is known.
    """
    if channels < 1 or size < 1 or n_components < 1:
        raise DDPMCheckError(
            f"image_mixture needs channels, size, n_components >= 1, got {channels}, {size}, {n_components}"
        )
    if not (std > 0):
        raise DDPMCheckError(f"image_mixture std must be > 0, got {std}")
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    means = []
    for _ in range(n_components):
        img = np.zeros((channels, size, size))
        for c in range(channels):
            for _term in range(3):
                fx, fy = rng.integers(0, 3, size=2)
                phase = rng.uniform(0, 2 * np.pi)
                img[c] += rng.uniform(-1, 1) * np.cos(2 * np.pi * (fx * xx + fy * yy) / 2 + phase)
        img = 0.8 * img / max(np.abs(img).max(), 1e-12)
        means.append(img.reshape(-1))
    weights = np.full(n_components, 1.0 / n_components)
    return GaussianMixture(weights, np.stack(means), np.full(n_components, float(std)))
