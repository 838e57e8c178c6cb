"""Library calls with bad input fail at once with one DDPMCheckError naming the value, instead
of a silent wrong result or a failure after the work (each found by an audit of the API)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_check.data import DataConfig, ImageData
from ddpm_check.errors import DDPMCheckError
from ddpm_check.schedules import ScheduleConfig
from ddpm_check.train import Trainer, TrainConfig
from ddpm_check.unet import UNetConfig

TINY = UNetConfig(image_channels=1, down_channels=(8, 16), time_emb_dim=8)


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
