"""ddpm_check.sample: batched ancestral sampling, the reverse-process strip, the pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_check.data import DataConfig
from ddpm_check.errors import DDPMCheckError
from ddpm_check.sample import (load_sampler, reverse_process, sample, sample_with_strip, save_grid,
                               save_loss_curve, save_reverse_strip, strip_steps)
from ddpm_check.schedules import ScheduleConfig
from ddpm_check.train import Trainer, TrainConfig
from ddpm_check.unet import UNetConfig

TINY = UNetConfig(image_channels=1, down_channels=(8, 16), time_emb_dim=8)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    tr = Trainer(TINY, ScheduleConfig(T=20), DataConfig(), TrainConfig(steps=3, batch_size=8))
    tr.run(checkpoint_path=d / "checkpoint.safetensors")
    return d, tr


def test_load_sampler_uses_the_ema_weights(run_dir):
    d, tr = run_dir
    s = load_sampler(d, device="cpu")
    assert not s.model.training and s.step == 3 and s.shape == (1, 8, 8)
    for (k, v), (k2, v2) in zip(s.model.state_dict().items(), tr.ema.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # the raw weights differ from the EMA ones after 3 steps, so this is a real check
    assert any(not torch.equal(a, b) for a, b in zip(tr.model.parameters(), tr.ema.parameters()))


def test_sampling_is_seeded_and_batched(run_dir):
    s = load_sampler(run_dir[0], device="cpu")
    a = sample(s, 5, seed=1)
    assert a.shape == (5, 1, 8, 8) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, sample(s, 5, seed=1))
    assert not torch.equal(a, sample(s, 5, seed=2))
    calls = []
    b = sample(s, 5, seed=1, batch_size=2, progress=lambda k, tot: calls.append((k, tot)))
    assert b.shape == (5, 1, 8, 8)
    assert calls[-1] == (60, 60) and len(calls) == 60  # 3 batches x T = 20 steps


def test_sample_loop_matches_manual_reverse_steps(run_dir):
    """The batched loop equals Algorithm 2 written out with p_sample, one step at a time."""
    s = load_sampler(run_dir[0], device="cpu")
    got = sample(s, 3, seed=4)
    g = torch.Generator().manual_seed(4)
    x = torch.randn((3, 1, 8, 8), generator=g)
    with torch.no_grad():
        for i in reversed(range(s.diffusion.T)):
            z = torch.randn(x.shape, generator=g) if i > 0 else torch.zeros_like(x)
            ab, a, b = (torch.tensor(v[i], dtype=torch.float64) for v in
                        (s.diffusion.schedule.alphas_cumprod, s.diffusion.schedule.alphas, s.diffusion.schedule.betas))
            eps = s.model(x, torch.full((3,), i, dtype=torch.long)).double()
            ab_prev = torch.tensor(s.diffusion.schedule.alphas_cumprod_prev[i], dtype=torch.float64)
            var = (1 - ab_prev) / (1 - ab) * b
            x = ((x.double() - b / torch.sqrt(1 - ab) * eps) / torch.sqrt(a) + torch.sqrt(var) * z).float()
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-4)


def test_strip_steps_are_evenly_spaced():
    assert strip_steps(300) == [300, 267, 233, 200, 167, 133, 100, 67, 33, 0]
    assert strip_steps(9, n_cols=10) == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    with pytest.raises(DDPMCheckError):
        strip_steps(10, n_cols=1)


def test_strip_starts_at_noise_and_ends_at_the_samples(run_dir):
    s = load_sampler(run_dir[0], device="cpu")
    x, ts, frames = sample_with_strip(s, 6, seed=3, strip_rows=2)
    assert torch.equal(x, sample(s, 6, seed=3))  # capturing does not change the samples
    assert frames.shape == (2, len(ts), 1, 8, 8) and ts[0] == 20 and ts[-1] == 0
    x_T = torch.randn((6, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(frames[:, 0], x_T[:2])
    assert torch.equal(frames[:, -1], x[:2])
    ts2, frames2 = reverse_process(s, n_rows=2, seed=3)
    assert ts2 == ts and torch.equal(frames2[:, -1], sample(s, 2, seed=3))


def test_pictures_are_written(tmp_path):
    imgs = torch.linspace(-1, 1, 9 * 64).reshape(9, 1, 8, 8)
    p = save_grid(imgs, tmp_path / "g.png", title="t")
    a = np.asarray(Image.open(p).convert("L"), dtype=float)
    assert a.shape[0] > 50 and a.std() > 10  # not blank
    frames = torch.rand(2, 10, 1, 8, 8) * 2 - 1
    p2 = save_reverse_strip(list(range(9, -1, -1)), frames, tmp_path / "r.png")
    w, h = Image.open(p2).size
    assert w > 2 * h  # a wide strip: 10 columns, 2 rows
    p3 = save_loss_curve([1.0 / (k + 1) for k in range(200)], tmp_path / "loss.png")
    assert Image.open(p3).size[0] > 100
    rgb = save_grid(torch.rand(4, 3, 8, 8) * 2 - 1, tmp_path / "rgb.png")
    assert Image.open(rgb).mode in ("RGB", "RGBA")


def test_bad_sample_counts(run_dir):
    s = load_sampler(run_dir[0], device="cpu")
    for bad in (0, -3):
        with pytest.raises(DDPMCheckError, match=str(bad)):
            sample(s, bad)


def test_a_result_too_big_for_memory_is_refused_before_sampling(run_dir, monkeypatch):
    import time

    from typer.testing import CliRunner

    import ddpm_check.sample as sample_mod
    from cli import app

    s = load_sampler(run_dir[0], device="cpu")
    # 10**12 images of 1x8x8 float32 = 256 TB: no machine has that; it must fail before step one
    t = time.perf_counter()
    with pytest.raises(DDPMCheckError, match=r"1,000,000,000,000 samples of shape \[1, 8, 8\] need .* GiB.*-n"):
        sample(s, 10**12, progress=lambda k, tot: pytest.fail("sampling started"))
    assert time.perf_counter() - t < 5
    # with the available memory pinned, the limit is exact: 4 bytes x 64 values per image
    monkeypatch.setattr(sample_mod, "available_memory", lambda: 4 * 64 * 10)
    assert sample(s, 10).shape == (10, 1, 8, 8)
    with pytest.raises(DDPMCheckError, match="11 samples"):
        sample(s, 11)
    r = CliRunner().invoke(app, ["sample", "--checkpoint", str(run_dir[0]), "-n", "11",
                                 "--out", str(run_dir[0] / "too-many")])
    assert r.exit_code == 2 and "ask for fewer samples (-n)" in r.stderr and "Traceback" not in r.stderr
