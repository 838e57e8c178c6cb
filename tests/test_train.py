"""ddpm_check.train and ddpm_check.checkpoint: learning, EMA, exact resume, safe checkpoints."""

from __future__ import annotations

import io
import math
import pickle
import zipfile

import pytest
import torch

from ddpm_check import checkpoint as ckpt
from ddpm_check.data import DataConfig, ImageData, digits_images
from ddpm_check.errors import DDPMCheckError
from ddpm_check.schedules import ScheduleConfig
from ddpm_check.train import Trainer, TrainConfig, resolve_device
from ddpm_check.unet import UNetConfig

TINY = UNetConfig(image_channels=1, down_channels=(8, 16), time_emb_dim=8)
SCHED = ScheduleConfig(kind="linear", T=50)


def tiny_trainer(steps=6, batch_size=8, seed=0, **kw) -> Trainer:
    cfg = TrainConfig(steps=steps, batch_size=batch_size, seed=seed, **kw)
    return Trainer(TINY, SCHED, DataConfig(), cfg, device="cpu")


def test_steps_lower_the_loss_on_a_fixed_batch():
    x8 = digits_images(8)[:8]
    data = ImageData(x8.clone(), DataConfig())
    model = UNetConfig(image_channels=1, down_channels=(16, 32), time_emb_dim=8)
    tr = Trainer(model, SCHED, DataConfig(), TrainConfig(steps=80, batch_size=8, lr=3e-3), data=data)
    # the fixed evaluation batch: those 8 images, each at 32 fixed (t, eps) pairs
    x_eval = x8.repeat(32, 1, 1, 1)  # [256, 1, 8, 8]
    g = torch.Generator().manual_seed(123)
    t = torch.randint(0, SCHED.T, (256,), generator=g)
    noise = torch.randn(x_eval.shape, generator=g)

    def fixed_loss():
        tr.model.train()
        with torch.no_grad():
            return float(tr.diffusion.loss(tr.model, x_eval, t=t, noise=noise))

    before = fixed_loss()
    tr.run()
    after = fixed_loss()
    assert len(tr.loss_history) == 80
    # eps_pred = 0 scores E||eps||^2 / D = 1: the trained net must beat it and its own start clearly
    assert after < 0.8 * before and after < 0.9, (before, after)


def test_ema_update_matches_formula():
    tr = tiny_trainer(steps=1)
    ema0 = {k: v.clone() for k, v in tr.ema.named_parameters()}
    tr.run()
    # step k = 0: d = min(decay, (1 + 0) / (10 + 0)) = 0.1
    for name, p in tr.model.named_parameters():
        expected = 0.1 * ema0[name] + 0.9 * p.detach()
        torch.testing.assert_close(dict(tr.ema.named_parameters())[name], expected, rtol=1e-6, atol=1e-7)
    for (name, b), (_, eb) in zip(tr.model.named_buffers(), tr.ema.named_buffers()):
        assert torch.equal(b, eb), name  # BatchNorm statistics are copied


def _all_state(tr: Trainer) -> dict[str, torch.Tensor]:
    return tr.state_tensors()


def test_resume_is_bit_exact_on_cpu(tmp_path):
    full = tiny_trainer(steps=6)
    full.run()

    half = tiny_trainer(steps=3)
    half.run(checkpoint_path=tmp_path / "checkpoint.safetensors")
    resumed = Trainer.from_checkpoint(tmp_path, device="cpu", steps=6)
    assert resumed.step == 3 and len(resumed.loss_history) == 3
    resumed.run()

    a, b = _all_state(full), _all_state(resumed)
    assert set(a) == set(b)
    assert any(k.startswith("ema/") for k in a) and any(k.startswith("optim/") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.loss_history == resumed.loss_history


def test_cosine_learning_rate_follows_its_definition():
    # warm-up: lr (k + 1)/w for k < w; then lr (1 + cos(pi (k - w)/(steps - w)))/2, so lr at the
    # start of the decay, lr/2 halfway, 0 at the last step's end (values from the formula by hand)
    cfg = TrainConfig(steps=110, lr=0.004, lr_schedule="cosine", lr_warmup=10)
    assert cfg.lr_at(0) == pytest.approx(0.0004) and cfg.lr_at(9) == pytest.approx(0.004)
    assert cfg.lr_at(10) == pytest.approx(0.004)
    assert cfg.lr_at(60) == pytest.approx(0.002)
    assert cfg.lr_at(85) == pytest.approx(0.004 * (1 - 2 ** -0.5) / 2)  # cos(3 pi/4)
    assert cfg.lr_at(109) == pytest.approx(0.004 * (1 + math.cos(math.pi * 99 / 100)) / 2)
    const = TrainConfig(steps=50, lr=0.01, lr_warmup=4)
    assert [const.lr_at(k) for k in (0, 1, 3, 4, 49)] == pytest.approx([0.0025, 0.005, 0.01, 0.01, 0.01])
    assert TrainConfig(lr=0.01).lr_at(0) == 0.01


def test_the_trainer_steps_with_the_scheduled_learning_rate():
    tr = tiny_trainer(steps=8, lr=0.002, lr_schedule="cosine", lr_warmup=2)
    seen = []
    real_step = tr.optimizer.step

    def spy(*a, **k):
        seen.append(tr.optimizer.param_groups[0]["lr"])
        return real_step(*a, **k)

    tr.optimizer.step = spy
    tr.run()
    assert seen == pytest.approx([0.001, 0.002] + [0.001 * (1 + math.cos(math.pi * j / 6)) for j in range(6)])


def test_the_small_presets_warm_up_keeps_its_share_of_other_step_counts():
    from ddpm_check.train import PRESETS, configs_from_options

    p = PRESETS["small"]
    assert configs_from_options(small=True)[3].lr_warmup == p["lr_warmup"]
    assert configs_from_options(small=True, steps=2 * p["steps"])[3].lr_warmup == 2 * p["lr_warmup"]
    assert configs_from_options(small=True, steps=5)[3].lr_warmup == 5 * p["lr_warmup"] // p["steps"]
    assert configs_from_options(small=True, steps=5, lr_warmup=3)[3].lr_warmup == 3  # given: kept


def test_resume_mid_cosine_is_bit_exact_and_old_configs_are_constant(tmp_path):
    kw = dict(lr_schedule="cosine", lr_warmup=2)
    full = tiny_trainer(steps=6, **kw)
    full.run()
    half = tiny_trainer(steps=6, **kw)
    half.run(until=3, checkpoint_path=tmp_path / "checkpoint.safetensors")
    resumed = Trainer.from_checkpoint(tmp_path, device="cpu")
    assert resumed.train_cfg.lr_schedule == "cosine" and resumed.step == 3
    resumed.run()
    a, b = _all_state(full), _all_state(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("lr_schedule", "lr_warmup")}
    assert TrainConfig.from_dict(old).lr_schedule == "constant" and TrainConfig.from_dict(old).lr_warmup == 0


@pytest.mark.parametrize("kw, words", [
    (dict(lr_schedule="linear"), "unknown learning-rate schedule 'linear'"),
    (dict(lr_warmup=-1), "got -1"),
    (dict(lr_warmup=2.5), "got 2.5"),
    (dict(steps=5, lr_warmup=6), "warm-up of 6 steps is longer than the run"),
])
def test_bad_learning_rate_schedules_are_refused(kw, words):
    with pytest.raises(DDPMCheckError, match=words):
        TrainConfig(**kw)


def test_checkpoint_round_trip_and_config_json(tmp_path):
    tr = tiny_trainer(steps=2)
    tr.run()
    path = tr.save(tmp_path / "run" / "checkpoint.safetensors")
    tensors, meta = ckpt.load(path.parent)  # a folder resolves to its checkpoint
    for k, v in tr.state_tensors().items():
        assert torch.equal(tensors[k], v.cpu()), k
    assert meta["step"] == 2 and meta["seed"] == 0
    assert meta["model"] == TINY.to_dict() and meta["schedule"] == SCHED.to_dict()
    import json

    assert json.loads((path.parent / "config.json").read_text()) == meta
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.safetensors", "config.json"]


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    tr = tiny_trainer(steps=1)
    tr.run()
    path = tr.save(tmp_path / "checkpoint.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "fsync", boom)
    tr.run(until=2)
    with pytest.raises(DDPMCheckError, match="cannot write checkpoint.safetensors in folder .*disk full"):
        tr.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "config.json"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this runs open(marker, "w")
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["evil.pt", "evil.safetensors", "checkpoint.safetensors"])
@pytest.mark.parametrize("kind", ["pickle", "torch-zip"])
def test_pickle_checkpoint_refused_without_running_code(tmp_path, name, kind):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": _Evil(marker)})
    if kind == "torch-zip":  # the layout torch.save writes: a zip holding data.pkl
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", payload)
        payload = buf.getvalue()
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(DDPMCheckError, match="pickle.*refused"):
        ckpt.load(path)
    with pytest.raises(DDPMCheckError):
        Trainer.from_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_foreign_files_refused(tmp_path):
    tr = tiny_trainer(steps=1)
    tr.run()
    good = tr.save(tmp_path / "a" / "checkpoint.safetensors").read_bytes()
    bad = tmp_path / "b.safetensors"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DDPMCheckError, match="b.safetensors"):
        ckpt.load(bad)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(DDPMCheckError, match="not a ddpm-check checkpoint"):
        ckpt.load(foreign)
    with pytest.raises(DDPMCheckError, match="does not exist"):
        ckpt.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    "kw, word",
    [
        (dict(steps=-1), "-1"),
        (dict(batch_size=0), "batch size"),
        (dict(lr=0.0), "learning rate"),
        (dict(ema_decay=1.0), "EMA decay"),
        (dict(loss="huber"), "'huber'"),
    ],
)
def test_bad_train_config(kw, word):
    with pytest.raises(DDPMCheckError, match=word):
        TrainConfig(**kw)


def test_image_size_must_fit_depth():
    with pytest.raises(DDPMCheckError, match="6"):
        Trainer(UNetConfig(1, (8, 16, 32), 8), SCHED, DataConfig(kind="mixture", image_size=6), TrainConfig())


def test_channel_mismatch():
    with pytest.raises(DDPMCheckError, match="channels"):
        Trainer(UNetConfig(3, (8, 16), 8), SCHED, DataConfig(), TrainConfig())


def test_mixture_data_trains():
    tr = Trainer(TINY, SCHED, DataConfig(kind="mixture", image_size=4, n=64), TrainConfig(steps=2, batch_size=4))
    tr.run()
    assert tr.step == 2 and all(v == v for v in tr.loss_history)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_requested_without_cuda():
    with pytest.raises(DDPMCheckError, match="'cuda'"):
        resolve_device("cuda")


def test_unknown_device():
    with pytest.raises(DDPMCheckError, match="'tpu'"):
        resolve_device("tpu")


def test_checkpoint_whose_config_does_not_match_its_weights(tmp_path):
    tr = tiny_trainer(steps=1)
    tr.run()
    meta = tr.config_dict()
    meta["model"] = {**meta["model"], "down_channels": [8, 32]}  # weights are (8, 16)
    path = ckpt.save(tmp_path / "checkpoint.safetensors", tr.state_tensors(), meta)
    with pytest.raises(DDPMCheckError, match="do not match"):  # checked before a model is built
        Trainer.from_checkpoint(path)
    from ddpm_check.sample import load_sampler

    with pytest.raises(DDPMCheckError, match="do not match"):
        load_sampler(path, device="cpu")


# ---- the run folder: one run at a time, writable, proven before the work -------------------------
def test_a_run_folder_is_held_by_one_run(tmp_path):
    from ddpm_check.train import LOCK_NAME, run_folder

    out = tmp_path / "a" / "run"
    with run_folder(out):
        assert (out / LOCK_NAME).is_file()
        with pytest.raises(DDPMCheckError, match=r"is in use by ddpm-check run pid \d+ on .*, started "):
            with run_folder(out):
                pass
    assert not (out / LOCK_NAME).exists()  # released and gone: the folder is free again
    with run_folder(out):
        pass


def test_a_folder_that_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch):
    import os as _os

    from ddpm_check import train as T

    real_open = _os.open

    def refuse(path, *a, **k):
        if str(path).endswith(T.LOCK_NAME):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(T.os, "open", refuse)
    out = tmp_path / "ro"
    out.mkdir()
    with pytest.raises(DDPMCheckError, match=r"output folder '.*ro' cannot be written \(Permission denied\)"):
        with T.run_folder(out):
            raise AssertionError("the block must not run")


def test_a_failed_run_leaves_no_folder_it_made(tmp_path):
    from ddpm_check.train import run_folder

    with pytest.raises(RuntimeError):
        with run_folder(tmp_path / "new" / "run"):
            raise RuntimeError("the loss became nan")
    assert not (tmp_path / "new").exists()
