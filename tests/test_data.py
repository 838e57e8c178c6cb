"""ddpm_check.data: the three offline data sets and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_check.data import DataConfig, ImageData, digits_images, folder_images, load_data
from ddpm_check.errors import DDPMCheckError


def test_digits_scaled_to_unit_interval_from_sklearn_values():
    from sklearn.datasets import load_digits

    raw = load_digits().images  # [1797, 8, 8], values 0..16
    x = digits_images(8)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    # 0 -> -1, 8 -> 0, 16 -> +1: x = v / 8 - 1, checked against the raw values
    np.testing.assert_allclose(x[:, 0].numpy(), raw / 8.0 - 1.0, atol=1e-6)
    assert x.min() == -1.0 and x.max() == 1.0


def test_digits_upsampled_keep_range_and_mean():
    x8, x16 = digits_images(8), digits_images(16)
    assert x16.shape == (1797, 1, 16, 16)
    assert x16.min() >= -1.0 and x16.max() <= 1.0
    # bilinear upsampling preserves the image mean up to border effects
    assert abs(float(x16.mean()) - float(x8.mean())) < 0.02


@pytest.mark.parametrize("size", [0, 12, -8])
def test_digits_bad_size(size):
    with pytest.raises(DDPMCheckError, match=str(size)):
        DataConfig(kind="digits", image_size=size)


def test_unknown_kind_names_value():
    with pytest.raises(DDPMCheckError, match="'faces'.*digits, folder, mixture"):
        DataConfig(kind="faces")


def test_batches_are_reproducible_from_generator_state():
    data = load_data(DataConfig())
    g1 = torch.Generator().manual_seed(3)
    a = data.batch(16, g1)
    state = g1.get_state()
    b = data.batch(16, g1)
    g2 = torch.Generator().manual_seed(0)
    g2.set_state(state)
    assert torch.equal(data.batch(16, g2), b)
    assert not torch.equal(a, b)
    assert a.shape == (16, 1, 8, 8)


def _png(path, size=(10, 6), color=(200, 10, 30)):
    Image.new("RGB", size, color).save(path)


def test_folder_resize_center_crop_and_scale(tmp_path):
    # a 12x6 image: left half black, right half white -> after resize to height 4 and a centre
    # crop of width 4, the left columns are dark and the right ones bright.
    im = Image.new("L", (12, 6), 0)
    im.paste(255, (6, 0, 12, 6))
    im.save(tmp_path / "a.png")
    _png(tmp_path / "b.jpg", size=(5, 9))
    x, files = folder_images(tmp_path, 4, channels=1)
    assert [f.name for f in files] == ["a.png", "b.jpg"]
    assert x.shape == (2, 1, 4, 4) and x.dtype == torch.uint8
    a = x[0, 0].float()
    assert a[:, 0].max() < 60 and a[:, -1].min() > 200
    data = load_data(DataConfig(kind="folder", path=str(tmp_path), image_size=4, channels=3))
    assert data.images.shape == (2, 3, 4, 4)
    batch = data.batch(8, torch.Generator().manual_seed(0))
    assert batch.dtype == torch.float32 and batch.min() >= -1 and batch.max() <= 1


def test_folder_flips_happen_and_keep_pixels(tmp_path):
    im = Image.new("L", (4, 4), 0)
    im.paste(255, (0, 0, 1, 4))  # white left column
    im.save(tmp_path / "edge.png")
    data = load_data(DataConfig(kind="folder", path=str(tmp_path), image_size=4, channels=1))
    b = data.batch(64, torch.Generator().manual_seed(0))  # [64, 1, 4, 4]
    left = b[:, 0, :, 0].mean(1) > 0
    right = b[:, 0, :, -1].mean(1) > 0
    assert left.any() and right.any()  # some flipped, some not
    assert torch.equal(left, ~right)


def test_folder_corrupt_file_named(tmp_path):
    _png(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DDPMCheckError, match="broken.png"):
        load_data(DataConfig(kind="folder", path=str(tmp_path), image_size=4, channels=3))


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DDPMCheckError, match="no image files"):
        load_data(DataConfig(kind="folder", path=str(tmp_path), image_size=4))


def test_parse_missing_folder_names_it(tmp_path):
    with pytest.raises(DDPMCheckError, match="nowhere"):
        DataConfig.parse(str(tmp_path / "nowhere"), image_size=8)


def test_mixture_data_matches_its_mixture_statistics():
    cfg = DataConfig(kind="mixture", image_size=4, channels=1, n=4000, n_components=2, std=0.1, seed=5)
    data = load_data(cfg)
    assert data.images.shape == (4000, 1, 4, 4)
    mix = data.mixture
    # each image is within a few std of one of the component means (it was drawn from one)
    x = data.all().reshape(4000, -1).double()
    d = torch.cdist(x, torch.as_tensor(mix.means))  # [N, K]
    dim = x.shape[1]
    nearest = d.min(1).values
    # ||x - m_k|| / std ~ chi(dim): mean sqrt(dim) roughly; none beyond 3 sqrt(dim)
    assert float(nearest.max()) < 3 * 0.1 * np.sqrt(dim)
    # same seed -> same data
    assert torch.equal(load_data(cfg).images, data.images)


def test_image_data_rejects_empty():
    with pytest.raises(DDPMCheckError):
        ImageData(torch.zeros(0, 1, 8, 8), DataConfig())
