"""Bad inputs to the public tensor API raise DDPMCheckError naming the value (not a silent wrong
result or an obscure torch error): p_sample_loop's model output and shape, loss on an empty batch,
Schedule.to_torch's dtype, SimpleUnet's t, and non-tensor x into q_sample / p_sample / loss."""

import numpy as np
import pytest
import torch

from ddpm_check.diffusion import GaussianDiffusion
from ddpm_check.errors import DDPMCheckError
from ddpm_check.schedules import make_schedule
from ddpm_check.unet import SimpleUnet, UNetConfig

TINY = UNetConfig(image_channels=1, down_channels=(8, 16), time_emb_dim=8)


@pytest.fixture(scope="module")
def d():
    return GaussianDiffusion(make_schedule("linear", T=10))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SimpleUnet(TINY).eval()


@pytest.fixture
def x():
    return torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def zeros_model(x, t):
    return torch.zeros_like(x)


# ---- 1. p_sample_loop checks the model's output shape ----------------------------------------
def test_p_sample_loop_refuses_a_model_output_that_would_broadcast(d):
    with pytest.raises(DDPMCheckError, match=r"shape of x_t \(4, 1, 8, 8\), got \(1, 1, 8, 8\)"):
        d.p_sample_loop(lambda x, t: x[:1], (4, 1, 8, 8), generator=torch.Generator().manual_seed(0))


def test_p_sample_loop_refuses_a_model_returning_a_non_tensor(d):
    with pytest.raises(DDPMCheckError, match="got ndarray"):
        d.p_sample_loop(lambda x, t: x.numpy(), (2, 3), generator=torch.Generator().manual_seed(0))


def test_graph_step_refuses_a_model_output_that_would_broadcast(d):
    x = torch.randn(4, 1, 8, 8)
    i_dev = torch.full((1,), 5, dtype=torch.long)
    with pytest.raises(DDPMCheckError, match=r"shape of x_t \(4, 1, 8, 8\), got \(1, 1, 8, 8\)"):
        d._graph_step(lambda x, t: x[:1], x, torch.zeros_like(x), i_dev)


# ---- 2. p_sample_loop's shape is a sequence of positive ints ----------------------------------
@pytest.mark.parametrize("shape", [(8.7, 1, 8, 8), (True, 1, 8, 8), "8118", 8, (8, None), (8, "1"), None,
                                   (0, 3), (-1, 3), ()])
def test_p_sample_loop_refuses_a_bad_shape(d, shape):
    with pytest.raises(DDPMCheckError, match="shape"):
        d.p_sample_loop(zeros_model, shape)


@pytest.mark.parametrize("shape", [(2, 3), [2, 3], torch.Size([2, 3]), (np.int64(2), np.int32(3))])
def test_p_sample_loop_accepts_sequences_of_ints(d, shape):
    out = d.p_sample_loop(zeros_model, shape, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3)


# ---- 3. loss refuses an empty batch ----------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_loss_refuses_an_empty_batch(d, net, x, reduction):
    with pytest.raises(DDPMCheckError, match="empty batch"):
        d.loss(net, x[:0], reduction=reduction)


# ---- 4. Schedule.to_torch refuses non-floating dtypes ------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64, "float32"])
def test_to_torch_refuses_non_floating_dtypes(dtype):
    with pytest.raises(DDPMCheckError, match="dtype"):
        make_schedule("linear", T=5).to_torch(dtype=dtype)


def test_to_torch_still_takes_floating_dtypes():
    s = make_schedule("linear", T=5)
    assert s.to_torch(dtype=torch.float64)["betas"].dtype == torch.float64
    assert s.to_torch()["betas"].dtype == torch.float32


# ---- 5. SimpleUnet requires t of shape [N] ---------------------------------------------------
@pytest.mark.parametrize("make_t", [
    lambda n: torch.zeros(1, dtype=torch.long),  # one step for a batch of 8: would broadcast
    lambda n: torch.zeros(n + 1, dtype=torch.long),
    lambda n: torch.tensor(3),  # 0-d
    lambda n: torch.zeros(n, 1, dtype=torch.long),
    lambda n: 3,  # python int
    lambda n: np.zeros(n, dtype=np.int64),
    lambda n: torch.zeros(n, dtype=torch.bool),
    lambda n: torch.zeros(n, dtype=torch.complex64),
])
def test_unet_refuses_a_bad_t(net, x, make_t):
    with pytest.raises(DDPMCheckError, match=r"^t must"):
        net(x, make_t(x.shape[0]))


def test_unet_accepts_long_float_and_expanded_t(net, x):
    n = x.shape[0]
    steps = torch.arange(10)
    with torch.no_grad():
        a = net(x, steps[4].expand(n))  # stride-0 view, as the sampling loops pass
        b = net(x, torch.full((n,), 4, dtype=torch.long))
        c = net(x, torch.full((n,), 4.0))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_unet_refuses_a_non_tensor_x(net):
    with pytest.raises(DDPMCheckError, match="x must be a torch.Tensor"):
        net(np.zeros((2, 1, 8, 8), dtype=np.float32), torch.zeros(2, dtype=torch.long))


# ---- 6. q_sample / p_sample / loss check x -----------------------------------------------------
BAD_X = [
    np.zeros((8, 1, 8, 8), dtype=np.float32),
    [[0.0, 1.0]],
    torch.tensor(1.0),  # 0-d
    torch.zeros(8, 1, 8, 8, dtype=torch.long),
    torch.zeros(8, 1, 8, 8, dtype=torch.bool),
]


@pytest.mark.parametrize("bad", BAD_X, ids=["ndarray", "list", "0-d", "long", "bool"])
def test_q_sample_checks_x(d, bad):
    with pytest.raises(DDPMCheckError, match="x_0 must be a floating torch.Tensor"):
        d.q_sample(bad, 3)


@pytest.mark.parametrize("bad", BAD_X, ids=["ndarray", "list", "0-d", "long", "bool"])
def test_p_sample_checks_x(d, bad):
    with pytest.raises(DDPMCheckError, match="x_t must be a floating torch.Tensor"):
        d.p_sample(zeros_model, bad, 3)


@pytest.mark.parametrize("bad", BAD_X, ids=["ndarray", "list", "0-d", "long", "bool"])
def test_loss_checks_x(d, bad):
    with pytest.raises(DDPMCheckError, match="x_0 must be a floating torch.Tensor"):
        d.loss(zeros_model, bad)


def test_checked_methods_still_work_on_good_x(d, net, x):
    assert d.q_sample(x, 3).shape == x.shape
    assert d.p_sample(zeros_model, x, 3).shape == x.shape
    assert d.loss(net, x).ndim == 0
    assert d.loss(net, x, reduction="none").shape == (8,)
