"""Tests of ddpm_check.mixture: the exact denoiser E[eps | x_t] of a Gaussian mixture.

The reference values are computed independently: per component with scipy's multivariate
normal density and the conditional mean of the jointly Gaussian (eps, x_t) pair, in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as st

from ddpm_check.errors import DDPMCheckError
from ddpm_check.mixture import GaussianMixture, image_mixture


def _reference_eps_mean(weights, means, stds, x, alpha_bar):
    """E[eps | x_t] by Bayes over the components, each (eps, x_t | k) jointly Gaussian:
    x_t | k ~ N(sqrt(ab) m_k, v_k I), Cov(eps, x_t | k) = sqrt(1 - ab) I, so
    E[eps | x_t, k] = sqrt(1 - ab) / v_k (x_t - sqrt(ab) m_k)."""
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        ab = alpha_bar[i]
        logp, cond = [], []
        for w, m, s in zip(weights, means, stds):
            v = ab * s**2 + 1 - ab
            logp.append(np.log(w) + st.multivariate_normal.logpdf(x[i], mean=np.sqrt(ab) * m,
                                                                    cov=v * np.eye(len(m))))
            cond.append(np.sqrt(1 - ab) / v * (x[i] - np.sqrt(ab) * m))
        logp = np.array(logp)
        r = np.exp(logp - logp.max())
        r /= r.sum()
        out[i] = (r[:, None] * np.array(cond)).sum(0)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eps_posterior_mean_matches_per_component_reference(seed):
    rng = np.random.default_rng(seed)
    K, D, N = 3, 3, 40
    w = rng.dirichlet(np.ones(K))
    m = rng.normal(0, 2, size=(K, D))
    s = rng.uniform(0.2, 1.5, size=K)
    mix = GaussianMixture(w, m, s)
    x = rng.normal(0, 2, size=(N, D))
    ab = rng.uniform(1e-4, 0.9999, size=N)
    got = mix.eps_posterior_mean(torch.as_tensor(x), torch.as_tensor(ab)).numpy()
    np.testing.assert_allclose(got, _reference_eps_mean(w, m, s, x, ab), rtol=1e-9, atol=1e-12)


def test_single_gaussian_closed_form():
    # K = 1: E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) m) / (ab s^2 + 1 - ab)
    m, s = np.array([1.5, -0.5]), 0.7
    mix = GaussianMixture([1.0], m[None, :], [s])
    x = torch.tensor([[0.0, 0.0], [3.0, -2.0], [-10.0, 40.0]], dtype=torch.float64)
    for ab in (1e-6, 0.3, 0.5, 0.999):
        want = np.sqrt(1 - ab) * (x.numpy() - np.sqrt(ab) * m) / (ab * s**2 + 1 - ab)
        got = mix.eps_posterior_mean(x, torch.tensor(ab, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_predictor_is_orthogonal_to_functions_of_x_t():
    """E[(eps - E[eps|x_t]) g(x_t)] = 0 for every g: a fixed-seed z-test of the defining
    property, independent of the formula."""
    mix = GaussianMixture([0.3, 0.7], [[2.0, -1.0], [-1.0, 1.0]], [0.5, 0.8])
    g = torch.Generator().manual_seed(11)
    n, ab = 200_000, 0.4
    x0 = mix.sample(n, g)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    xt = ab**0.5 * x0 + (1 - ab) ** 0.5 * eps
    resid = (eps - mix.eps_posterior_mean(xt, torch.tensor(ab, dtype=torch.float64))).numpy()
    xt = xt.numpy()
    for gfun in (np.ones(n), xt[:, 0], xt[:, 1], np.tanh(xt[:, 0] * xt[:, 1])):
        prod = resid * gfun[:, None]
        z = prod.mean(0) / (prod.std(0) / np.sqrt(n))
        assert np.all(np.abs(z) < 5), z
    # and the exact predictor beats a perturbed one on the same (x_0, eps): Bayes optimality
    e_star = mix.eps_posterior_mean(torch.as_tensor(xt), torch.tensor(ab, dtype=torch.float64)).numpy()
    mse = lambda e: np.mean(np.sum((eps.numpy() - e) ** 2, 1))  # noqa: E731
    assert mse(e_star) < mse(1.05 * e_star) and mse(e_star) < mse(e_star + 0.05)


def test_predictor_is_stable_far_from_every_component():
    mix = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [0.1, 0.1])
    x = torch.tensor([[1e3], [-1e3], [0.0]], dtype=torch.float64)
    out = mix.eps_posterior_mean(x, torch.tensor(0.999, dtype=torch.float64))
    assert torch.all(torch.isfinite(out))
    ref = _reference_eps_mean(mix.weights, mix.means, mix.stds, x.numpy(), np.full(3, 0.999))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-9)


def test_eps_predictor_uses_zero_based_index_and_any_shape():
    mix = image_mixture(channels=1, size=4, n_components=2, std=0.2, seed=3)
    acp = np.linspace(0.99, 0.01, 10)
    pred = mix.eps_predictor(acp)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 3, 9, 3, 1])
    out = pred(x, t)
    assert out.shape == x.shape
    want = _reference_eps_mean(mix.weights, mix.means, mix.stds, x.reshape(5, -1).numpy(), acp[t.numpy()])
    np.testing.assert_allclose(out.reshape(5, -1).numpy(), want, rtol=1e-9, atol=1e-12)


def test_projection_cdf_is_a_1d_mixture_of_normals_and_matches_samples():
    mix = GaussianMixture([0.2, 0.8], [[3.0, 0.0], [0.0, -1.0]], [0.5, 1.0])
    u = np.array([3.0, 4.0])  # normalised inside: (0.6, 0.8)
    v = np.linspace(-5, 5, 11)
    want = 0.2 * st.norm.cdf(v, 1.8, 0.5) + 0.8 * st.norm.cdf(v, -0.8, 1.0)
    np.testing.assert_allclose(mix.projection_cdf(u, v), want, rtol=1e-13)
    # the empirical CDF of samples: KS within the DKWM band at alpha = 1e-6 (fixed seed)
    x = mix.sample(20_000, torch.Generator().manual_seed(5)).numpy() @ (u / 5)
    d = st.kstest(x, lambda s: mix.projection_cdf(u, s)).statistic
    assert d < np.sqrt(np.log(2 / 1e-6) / (2 * 20_000))
    # and a wrong CDF is far outside it
    swapped = GaussianMixture([0.8, 0.2], mix.means, mix.stds)
    d_wrong = st.kstest(x, lambda s: swapped.projection_cdf(u, s)).statistic
    assert d_wrong > 10 * np.sqrt(np.log(2 / 1e-6) / (2 * 20_000))


def test_noised_mixture_is_the_law_of_q_sample():
    mix = GaussianMixture([0.5, 0.5], [[2.0], [-1.0]], [0.3, 0.6])
    nz = mix.noised(0.36)
    np.testing.assert_allclose(nz.means[:, 0], [1.2, -0.6], rtol=1e-14)
    np.testing.assert_allclose(nz.stds, np.sqrt(0.36 * np.array([0.09, 0.36]) + 0.64), rtol=1e-14)
    g = torch.Generator().manual_seed(8)
    x0 = mix.sample(20_000, g)
    xt = (0.6 * x0 + 0.8 * torch.randn(20_000, 1, generator=g, dtype=torch.float64)).numpy()[:, 0]
    d = st.kstest(xt, lambda s: nz.projection_cdf(np.array([1.0]), s)).statistic
    assert d < np.sqrt(np.log(2 / 1e-6) / (2 * 20_000))


def test_sample_shapes_weights_and_determinism():
    mix = GaussianMixture([0.25, 0.75], [[10.0, 0.0], [-10.0, 0.0]], [0.1, 0.1])
    x = mix.sample(4000, torch.Generator().manual_seed(1))
    assert x.shape == (4000, 2) and x.dtype == torch.float64
    frac = (x[:, 0] > 0).double().mean().item()
    assert abs(frac - 0.25) < 5 * np.sqrt(0.25 * 0.75 / 4000)
    y = mix.sample(4000, torch.Generator().manual_seed(1))
    assert torch.equal(x, y)


def test_image_mixture_templates():
    mix = image_mixture(channels=2, size=8, n_components=3, std=0.05, seed=4)
    assert mix.means.shape == (3, 2 * 8 * 8) and mix.dim == 128 and mix.n_components == 3
    assert np.abs(mix.means).max() == pytest.approx(0.8)
    np.testing.assert_allclose(mix.weights, np.full(3, 1 / 3))
    assert np.array_equal(mix.means, image_mixture(2, 8, 3, 0.05, 4).means)
    assert not np.array_equal(mix.means, image_mixture(2, 8, 3, 0.05, 5).means)


@pytest.mark.parametrize("kwargs, word", [
    (dict(weights=[0.5, 0.6], means=[[0.0], [1.0]], stds=[1.0, 1.0]), "sum to 1"),
    (dict(weights=[0.5, 0.5], means=[[0.0], [1.0]], stds=[1.0, 0.0]), "stds"),
    (dict(weights=[1.0], means=[[0.0], [1.0]], stds=[1.0]), "shapes"),
])
def test_bad_mixtures_raise(kwargs, word):
    with pytest.raises(DDPMCheckError, match=word):
        GaussianMixture(**kwargs)


def test_bad_image_mixture_raises():
    with pytest.raises(DDPMCheckError, match="std"):
        image_mixture(std=0.0)
    with pytest.raises(DDPMCheckError, match="channels"):
        image_mixture(channels=0)
