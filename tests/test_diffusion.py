"""GaussianDiffusion: q_sample, the posterior, x_0 from eps, the reverse step and loop, the loss."""

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from ddpm_check.diffusion import GaussianDiffusion
from ddpm_check.errors import DDPMCheckError
from ddpm_check.schedules import make_schedule

EPS64 = np.finfo(np.float64).eps


def zeros_model(x, t):
    return torch.zeros_like(x)


@pytest.fixture(scope="module")
def sched():
    return make_schedule("linear", T=300)


@pytest.fixture(scope="module")
def diff64(sched):
    return GaussianDiffusion(sched, dtype=torch.float64)


def _alpha_bar(betas, i):
    """alpha_bar for 0-based index i, by a plain product (independent of the schedule code)."""
    return float(np.prod([1.0 - b for b in betas[: i + 1]]))


def test_coefficients_live_on_device_in_dtype(sched):
    d32 = GaussianDiffusion(sched)
    d64 = GaussianDiffusion(sched, dtype=torch.float64)
    for name, a in d64.coefficients().items():
        assert a.dtype == torch.float64 and a.shape == (300,)
        assert d32.coefficients()[name].dtype == torch.float32
        torch.testing.assert_close(d32.coefficients()[name], a.float(), rtol=0, atol=0)
    assert d64.posterior_std[0] == 0.0
    assert_allclose(d64.eps_coef.numpy(), sched.betas / np.sqrt(1 - sched.alphas_cumprod), rtol=1e-15)


# ---- q_sample ------------------------------------------------------------------------------------
def test_q_sample_values(diff64, sched):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 17, 150, 299])
    xt = diff64.q_sample(x0, t, noise=noise)
    assert xt.shape == x0.shape and xt.dtype == torch.float64
    for k, i in enumerate(t.tolist()):
        ab = _alpha_bar(sched.betas, i)
        expected = math.sqrt(ab) * x0[k] + math.sqrt(1 - ab) * noise[k]
        torch.testing.assert_close(xt[k], expected, rtol=1e-13, atol=1e-14)


def test_q_sample_draws_noise_from_generator(diff64):
    x0 = torch.ones(3, 5, dtype=torch.float64)
    t = torch.tensor([2, 2, 250])
    a = diff64.q_sample(x0, t, generator=torch.Generator().manual_seed(7))
    z = torch.randn(3, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(a, diff64.q_sample(x0, t, noise=z), rtol=0, atol=0)
    b = diff64.q_sample(x0, t, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("kind,T", [("linear", 300), ("linear", 1000), ("cosine", 1000)])
def test_predict_x0_from_eps_inverts_q_sample(kind, T):
    s = make_schedule(kind, T=T)
    d = GaussianDiffusion(s, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x0 = 3 * torch.randn(T, 6, generator=g, dtype=torch.float64)  # one row per step, large x_0
    eps = torch.randn(T, 6, generator=g, dtype=torch.float64)
    t = torch.arange(T)
    back = d.predict_x0_from_eps(d.q_sample(x0, t, noise=eps), t, eps)
    # rounding in x_t (a few ulps of |x_t|) is amplified by 1/sqrt(alpha_bar_t)
    scale = (x0.abs() + eps.abs()) / torch.tensor(np.array(s.sqrt_alphas_cumprod))[:, None]
    assert torch.all((back - x0).abs() <= 8 * EPS64 * scale)


# ---- posterior and p_mean_variance ------------------------------------------------------------------
def test_q_posterior_mean_variance_values(diff64, sched):
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    xt = torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 200])
    mean, var, log_var = diff64.q_posterior_mean_variance(x0, xt, t)
    assert mean.shape == var.shape == log_var.shape == (3, 4)
    b = sched.betas
    for k, i in enumerate(t.tolist()):
        ab, abp = _alpha_bar(b, i), (_alpha_bar(b, i - 1) if i > 0 else 1.0)
        c1 = math.sqrt(abp) * b[i] / (1 - ab)  # multiplies x_0
        c2 = math.sqrt(1 - b[i]) * (1 - abp) / (1 - ab)  # multiplies x_t
        v = (1 - abp) / (1 - ab) * b[i]
        torch.testing.assert_close(mean[k], c1 * x0[k] + c2 * xt[k], rtol=1e-12, atol=1e-14)
        assert_allclose(var[k].numpy(), v, rtol=1e-12)
    # t = 1: the posterior is x_0 itself (coef1 = beta_1 / (1 - (1 - beta_1)) is 1 up to eps / beta_1)
    assert torch.all(var[0] == 0)
    torch.testing.assert_close(mean[0], x0[0], rtol=100 * EPS64 / b[0], atol=0)
    torch.testing.assert_close(log_var[0], log_var[1], rtol=0, atol=0)  # clipped log at index 0


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_p_mean_variance_with_true_eps_is_posterior_mean(kind):
    s = make_schedule(kind, T=200)
    d = GaussianDiffusion(s, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(200, 2, 3, generator=g, dtype=torch.float64).clamp(-1, 1)
    eps = torch.randn(200, 2, 3, generator=g, dtype=torch.float64)
    t = torch.arange(200)
    xt = d.q_sample(x0, t, noise=eps)
    post_mean, post_var, post_log_var = d.q_posterior_mean_variance(x0, xt, t)
    out = d.p_mean_variance(lambda x, tt: eps, xt, t)
    assert set(out) == {"mean", "variance", "log_variance", "pred_x0", "eps"}
    # eq. 11 and eq. 7 agree only through alpha_bar_t = alpha_t alpha_bar_{t-1}, which holds to
    # rounding; the coefficients divide by 1 - alpha_bar_t, so the error grows like eps / (1 - alpha_bar_t).
    ab = torch.tensor(np.array(s.alphas_cumprod))[:, None, None]
    scale = (xt.abs() + x0.abs() + eps.abs()) / ab.sqrt() / (1 - ab)
    assert torch.all((out["mean"] - post_mean).abs() <= 16 * EPS64 * scale)
    assert torch.all((out["pred_x0"] - x0).abs() <= 16 * EPS64 * scale)
    torch.testing.assert_close(out["variance"], post_var, rtol=0, atol=0)
    torch.testing.assert_close(out["log_variance"], post_log_var, rtol=0, atol=0)
    # with x_0 in [-1, 1], clipping changes nothing
    clipped = d.p_mean_variance(lambda x, tt: eps, xt, t, clip_denoised=True)
    assert torch.all((clipped["mean"] - post_mean).abs() <= 16 * EPS64 * scale)


def test_clip_denoised_clips_pred_x0(diff64):
    xt = torch.full((2, 3), 50.0, dtype=torch.float64)
    out = diff64.p_mean_variance(zeros_model, xt, torch.tensor([5, 100]), clip_denoised=True)
    assert torch.all(out["pred_x0"] == 1.0)


# ---- the reverse step -----------------------------------------------------------------------------
def test_p_sample_mixed_t_noise_exactly_where_t_positive(diff64, sched):
    x = torch.linspace(-2, 2, 6 * 4, dtype=torch.float64).reshape(6, 4)
    t = torch.tensor([0, 3, 0, 299, 1, 0])
    a = diff64.p_sample(zeros_model, x, t, generator=torch.Generator().manual_seed(5))
    b = diff64.p_sample(zeros_model, x, t, generator=torch.Generator().manual_seed(6))
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    first = t == 0
    assert torch.equal(a[first], b[first])  # no noise at all where t == 0
    assert torch.all(a[~first] != b[~first])  # noise in every element where t > 0
    for k, i in enumerate(t.tolist()):
        alpha = 1 - sched.betas[i]
        ab, abp = _alpha_bar(sched.betas, i), (_alpha_bar(sched.betas, i - 1) if i > 0 else 1.0)
        sigma = math.sqrt((1 - abp) / (1 - ab) * sched.betas[i])
        expected = x[k] / math.sqrt(alpha) + sigma * z[k]  # model = 0: mean = x_t / sqrt(alpha_t)
        torch.testing.assert_close(a[k], expected, rtol=1e-13, atol=1e-14)


def test_p_sample_uses_eq_11_mean(diff64, sched):
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    eps = torch.randn(3, 5, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    t = torch.tensor([0, 0, 0])  # no noise: the result is the mean itself
    out = diff64.p_sample(lambda xx, tt: eps, x, t)
    b = sched.betas[0]
    expected = (x - b / math.sqrt(1 - (1 - b)) * eps) / math.sqrt(1 - b)
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)


def test_p_sample_loop_equals_chain_of_p_samples():
    s = make_schedule("cosine", T=40)
    d = GaussianDiffusion(s, dtype=torch.float64)

    def model(x, t):
        return 0.5 * torch.tanh(x) + d.sqrt_alphas_cumprod[t].reshape(-1, 1, 1)

    calls = []
    x0, cap = d.p_sample_loop(model, (3, 2, 2), generator=torch.Generator().manual_seed(11),
                              progress=lambda done, total: calls.append((done, total)), capture=[39, 20, 0])
    assert calls == [(k, 40) for k in range(1, 41)]
    assert sorted(cap) == [0, 20, 39]
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(cap[39], x, rtol=0, atol=0)  # index T-1 holds x_T
    for i in reversed(range(40)):
        if i in cap:
            torch.testing.assert_close(cap[i], x, rtol=1e-12, atol=1e-12)
        x = d.p_sample(model, x, torch.full((3,), i), generator=g)
    torch.testing.assert_close(x0, x, rtol=1e-12, atol=1e-12)


def test_p_sample_loop_is_deterministic_and_takes_x_T(diff64):
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    a = diff64.p_sample_loop(zeros_model, (4, 3), generator=torch.Generator().manual_seed(13), x_T=x_T)
    b = diff64.p_sample_loop(zeros_model, (4, 3), generator=torch.Generator().manual_seed(13), x_T=x_T)
    assert torch.equal(a, b) and a.dtype == torch.float64
    c = diff64.p_sample_loop(zeros_model, (4, 3), generator=torch.Generator().manual_seed(13))
    assert not torch.allclose(a, c)


def test_p_sample_loop_float32_dtype(sched):
    d = GaussianDiffusion(sched)
    out = d.p_sample_loop(zeros_model, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (2, 1, 4, 4)


# ---- the loss ---------------------------------------------------------------------------------------
def test_loss_kinds(diff64):
    g = torch.Generator().manual_seed(14)
    x0 = torch.randn(8, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(8, 3, generator=g, dtype=torch.float64)
    t = torch.arange(8) * 30
    assert diff64.loss(lambda x, tt: noise, x0, t, noise) == 0.0  # the perfect predictor
    torch.testing.assert_close(diff64.loss(zeros_model, x0, t, noise), (noise**2).mean())
    torch.testing.assert_close(diff64.loss(zeros_model, x0, t, noise, kind="l1"), noise.abs().mean())
    per = diff64.loss(zeros_model, x0, t, noise, reduction="none")
    torch.testing.assert_close(per, (noise**2).mean(dim=1))
    # the model sees x_t = q_sample(x_0, t, noise) and the same t
    seen = {}

    def spy(x, tt):
        seen["x"], seen["t"] = x, tt
        return torch.zeros_like(x)

    diff64.loss(spy, x0, t, noise)
    torch.testing.assert_close(seen["x"], diff64.q_sample(x0, t, noise=noise), rtol=0, atol=0)
    assert torch.equal(seen["t"], t)


def test_loss_draws_t_and_noise_and_has_gradients(sched):
    d = GaussianDiffusion(sched)
    w = torch.nn.Parameter(torch.tensor(0.5))
    x0 = torch.randn(16, 2)
    loss = d.loss(lambda x, t: w * x, x0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and w.grad is not None and w.grad != 0


# ---- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("t,needle", [
    (torch.tensor([0, 300]), "300"),
    (torch.tensor([-1, 3]), "-1"),
    (torch.tensor([0.0, 1.0]), "dtype"),
    (torch.tensor([1, 2, 3]), "[2]"),
    (300, "300"),
])
def test_bad_t_raises_naming_value(diff64, t, needle):
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(DDPMCheckError) as exc:
        diff64.q_sample(x, t)
    assert needle in str(exc.value)
    with pytest.raises(DDPMCheckError):
        diff64.p_sample(zeros_model, x, t)


def test_other_bad_input(diff64):
    with pytest.raises(DDPMCheckError, match="huber"):
        diff64.loss(zeros_model, torch.zeros(2, 3, dtype=torch.float64), kind="huber")
    with pytest.raises(DDPMCheckError, match="300"):
        diff64.p_sample_loop(zeros_model, (2, 3), capture=[300])
    with pytest.raises(DDPMCheckError, match=r"\(2, 3\)"):
        diff64.p_mean_variance(lambda x, t: torch.zeros(2), torch.zeros(2, 3, dtype=torch.float64), 5)
    with pytest.raises(DDPMCheckError, match="noise"):
        diff64.q_sample(torch.zeros(2, 3), 1, noise=torch.zeros(2, 4))
    with pytest.raises(DDPMCheckError, match="dict"):
        GaussianDiffusion({"betas": [0.1]})


def test_loop_and_loss_run_with_simple_unet():
    from ddpm_check.unet import SimpleUnet, UNetConfig

    torch.manual_seed(0)
    model = SimpleUnet(UNetConfig(1, (4, 8, 16), 8))
    d = GaussianDiffusion(make_schedule("linear", T=10))
    loss = d.loss(model, torch.randn(4, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and model.conv0.weight.grad is not None
    model.eval()
    x0, cap = d.p_sample_loop(model, (2, 1, 8, 8), generator=torch.Generator().manual_seed(2), capture=[9, 0])
    assert x0.shape == (2, 1, 8, 8) and torch.isfinite(x0).all() and cap[0].shape == x0.shape


# ---- against the lambdified derivations (run once derivations/ lands) ---------------------------------
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_reverse_mean_and_x0_match_lambdified_derivations(kind):
    import derivations

    s = make_schedule(kind, T=300)
    d = GaussianDiffusion(s, dtype=torch.float64)
    g = torch.Generator().manual_seed(15)
    x0 = 3 * torch.randn(300, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(300, 4, generator=g, dtype=torch.float64)
    t = torch.arange(300)
    xt = d.q_sample(x0, t, noise=eps)
    col = lambda a: np.array(a)[:, None]  # noqa: E731
    kw = dict(alpha_t=col(s.alphas), beta_t=col(s.betas), alpha_bar_t=col(s.alphas_cumprod),
              alpha_bar_tm1=col(s.alphas_cumprod_prev), x_t=xt.numpy(), x_0=x0.numpy(), eps=eps.numpy())
    out = d.p_mean_variance(lambda x, tt: eps, xt, t)
    mu_eps = derivations.numeric("mean-eps", "mu_tilde_t_eps")(**kw)
    assert_allclose(out["mean"].numpy(), mu_eps, rtol=1e-12, atol=1e-12)
    x0_eps = derivations.numeric("mean-eps", "x_0_from_eps")(**kw)
    assert_allclose(d.predict_x0_from_eps(xt, t, eps).numpy(), x0_eps, rtol=1e-12, atol=1e-12)
    mu_post = derivations.numeric("posterior", "mu_tilde_t")(**kw)
    mean, _, _ = d.q_posterior_mean_variance(x0, xt, t)
    assert_allclose(mean.numpy(), mu_post, rtol=1e-12, atol=1e-12)
    x_t_mean = derivations.numeric("marginal", "x_t_mean_coef")(**kw) * x0.numpy()
    x_t_sd = np.sqrt(derivations.numeric("marginal", "x_t_variance")(**kw))
    assert_allclose(xt.numpy(), x_t_mean + x_t_sd * eps.numpy(), rtol=1e-12, atol=1e-12)


# ---- against diffusers (an independent implementation of the same steps, float32) ---------------
U32 = 2.0**-24  # float32 unit roundoff


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_reverse_step_and_forward_noising_equal_diffusers(kind):
    # DDPMScheduler over the same betas, fixed_small variance (sigma_t^2 = beta_tilde_t), no
    # clipping, eps prediction: its step must be p_sample's, its add_noise q_sample's, for the
    # same eps_theta and the same noise, at the first, the last and interior steps.
    # Tolerance: diffusers forms 1 - alpha_bar_t in float32 from a float32 cumprod, so its
    # coefficients carry a relative error of order U32 / (1 - alpha_bar_t) (largest at small t),
    # and it goes through x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), which
    # magnifies rounding by 1 / sqrt(alpha_bar_t) (largest at the cosine schedule's last step,
    # alpha_bar = 2.7e-8); ours come from float64.  The bound is 4 U32 times the sum of the two
    # factors, on the scale of the values (|x| <= 4 here).
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler

    T = 300
    s = make_schedule(kind, T=T)
    sch = DDPMScheduler(num_train_timesteps=T, trained_betas=[float(b) for b in s.betas],
                        variance_type="fixed_small", clip_sample=False, prediction_type="epsilon")
    sch.set_timesteps(T)
    d = GaussianDiffusion(s, dtype=torch.float32)

    def model(x, t):  # any fixed eps_theta will do; this one depends on x and t
        return torch.tanh(x) * 0.5 + (t.float() / T)[:, None, None, None]

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 4, 4, generator=g)
    x0 = torch.randn(6, 1, 4, 4, generator=g).clamp(-1, 1)
    scale = 4.0

    def tol(i: int) -> float:
        ab = s.alphas_cumprod[i]
        return 4 * U32 * scale * (1.0 / (1.0 - ab) + 1.0 / math.sqrt(ab))

    for i in (0, 1, 2, 3, 10, T // 2, T - 1):
        t = torch.full((6,), i, dtype=torch.long)
        # diffusers draws its noise as torch.randn(shape, generator=gen): the same draw on our side
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        theirs = sch.step(model(x, t), i, x, generator=torch.Generator().manual_seed(i)).prev_sample
        ours = d.p_sample(model, x, t, noise=noise)
        assert (ours - theirs).abs().max() <= tol(i), (kind, i, float((ours - theirs).abs().max()), tol(i))
        qs = d.q_sample(x0, t, noise=noise)
        assert (qs - sch.add_noise(x0, noise, t)).abs().max() <= tol(i), (kind, "add_noise", i)
    # the comparison sees an off-by-one step index: p_sample at i + 1 is far from diffusers' at i
    for i in (T // 2, T - 2):
        t = torch.full((6,), i + 1, dtype=torch.long)
        off = d.p_sample(model, x, t, noise=torch.randn(x.shape, generator=torch.Generator().manual_seed(i)))
        ref = sch.step(model(x, t), i, x, generator=torch.Generator().manual_seed(i)).prev_sample
        assert (off - ref).abs().max() > 10 * tol(i), (kind, i)
