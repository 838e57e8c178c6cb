"""The public API checks its inputs: a library call with bad input fails at once with one
DDPMCheckError naming the value, instead of a silent wrong result, an obscure torch error or a
failure after the work.

Tensor API: p_sample_loop's model output and shape, loss on an empty batch, Schedule.to_torch's
dtype, SimpleUnet's t, non-tensor x into q_sample / p_sample / loss, GaussianDiffusion's device.
Configurations and runs: numbers in TrainConfig, run()'s arguments, checkpoint names, data of
another size than its config, configs from JSON, picture names, text widths.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_check.data import DataConfig, ImageData
from ddpm_check.diffusion import GaussianDiffusion
from ddpm_check.errors import DDPMCheckError
from ddpm_check.schedules import ScheduleConfig, make_schedule
from ddpm_check.train import Trainer, TrainConfig
from ddpm_check.unet import SimpleUnet, UNetConfig

TINY = UNetConfig(image_channels=1, down_channels=(8, 16), time_emb_dim=8)


# ---- the tensor API ---------------------------------------------------------------------------
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


# ---- configurations and runs ------------------------------------------------------------------
def _trainer(**train) -> Trainer:
    return Trainer(TINY, ScheduleConfig(T=10), DataConfig(), TrainConfig(steps=3, batch_size=8, **train),
                   distributed=False)


def test_numpy_numbers_in_the_train_config_become_python_ones(tmp_path):
    # the final save failed with "Object of type int64 is not JSON serializable" after training
    tr = _trainer(seed=np.int64(3), lr=np.float32(1e-3))
    assert type(tr.train_cfg.seed) is int and type(tr.train_cfg.lr) is float
    tr.run(checkpoint_path=tmp_path / "c.safetensors")
    assert Trainer.from_checkpoint(tmp_path / "c.safetensors", distributed=False).step == 3


@pytest.mark.parametrize("kw, expected", [
    ({"lr": True}, "learning rate must be a finite number > 0, got True"),
    ({"ema_decay": False}, "EMA decay must be in [0, 1), got False"),
])
def test_bools_are_not_numbers_in_the_train_config(kw, expected):
    with pytest.raises(DDPMCheckError) as e:
        TrainConfig(**kw)
    assert str(e.value) == expected


@pytest.mark.parametrize("kw, expected", [
    ({"report_every": 0}, "report_every must be an integer >= 1, got 0"),  # ZeroDivisionError after a step
    ({"checkpoint_every": -1}, "checkpoint_every must be an integer >= 0, got -1"),
    ({"until": "2"}, "until must be an integer >= 0, got '2'"),
    ({"progress": 5}, "progress must be a function of TrainProgress, got int"),
])
def test_run_checks_its_arguments_before_any_step(kw, expected):
    tr = _trainer()
    with pytest.raises(DDPMCheckError) as e:
        tr.run(**kw)
    assert str(e.value) == expected and tr.step == 0 and tr.loss_history == []


@pytest.mark.parametrize("name", ["run.pt", "run.ckpt", "run"])
def test_save_refuses_a_name_load_would_refuse(name, tmp_path):
    tr = _trainer()
    with pytest.raises(DDPMCheckError, match=r"must end in \.safetensors"):
        tr.save(tmp_path / name)
    assert not any(tmp_path.iterdir())


def test_data_of_another_size_than_its_config_is_refused():
    # trained on 16x16 while the checkpoint said 8x8; the sampler then drew 8x8 images
    data = ImageData(torch.zeros(4, 1, 16, 16), DataConfig())
    with pytest.raises(DDPMCheckError, match=r"the data's images are \[1, 16, 16\] but the data config says \[1, 8, 8\]"):
        Trainer(TINY, ScheduleConfig(T=10), DataConfig(image_size=8), TrainConfig(steps=1, batch_size=2),
                data=data, distributed=False)


@pytest.mark.parametrize("cls", [TrainConfig, DataConfig])
def test_configs_from_json_must_be_objects(cls):
    with pytest.raises(DDPMCheckError, match="must be a JSON object, got list"):
        cls.from_dict([1])


def test_pictures_need_a_png_name(tmp_path):
    from ddpm_check.sample import save_grid, save_loss_curve

    imgs = torch.zeros(4, 1, 8, 8)
    with pytest.raises(DDPMCheckError, match=r"must end in \.png, got '.*grid'"):
        save_grid(imgs, tmp_path / "grid")  # wrote grid.png and returned 'grid'
    with pytest.raises(DDPMCheckError, match=r"needs images \[N >= 1, 1 or 3, H, W\], got \[0, 1, 8, 8\]"):
        save_grid(imgs[:0], tmp_path / "g.png")
    with pytest.raises(DDPMCheckError, match="nrow must be an integer >= 1, got 0"):
        save_grid(imgs, tmp_path / "g.png", nrow=0)
    with pytest.raises(DDPMCheckError, match=r"must end in \.png"):
        save_loss_curve([1.0, 0.5], tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("width", [0, -5, 19, 80.5, "80"])
def test_text_rendering_needs_a_real_width(width):
    import derivations
    from derivations.render import render

    with pytest.raises(DDPMCheckError, match="width must be an integer of at least 20 columns"):
        render(derivations.get("marginal"), "text", width=width)  # returned '' for 0


@pytest.mark.parametrize("device, expected", [
    ("gpu", "unknown device 'gpu'; e.g. 'cpu', 'cuda' or 'cuda:0'"),
    (None, "unknown device None; e.g. 'cpu', 'cuda' or 'cuda:0'"),
])
def test_diffusion_device_is_checked(device, expected):
    from ddpm_check.diffusion import GaussianDiffusion
    from ddpm_check.schedules import make_schedule

    with pytest.raises(DDPMCheckError) as e:
        GaussianDiffusion(make_schedule(T=10), device=device)
    assert str(e.value) == expected


def test_resolve_device_takes_names_and_devices():
    from ddpm_check.train import resolve_device

    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(DDPMCheckError, match="device must be one of auto, cpu, cuda .or cuda:N., got None"):
        resolve_device(None)
    if not torch.cuda.is_available():
        with pytest.raises(DDPMCheckError, match="CUDA is not available"):
            resolve_device(torch.device("cuda"))
