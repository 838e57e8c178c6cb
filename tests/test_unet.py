"""SimpleUnet: the source's parameter count, shapes, the time embedding, configs and bad input."""

import json
import math

import pytest
import torch

from ddpm_check.errors import DDPMCheckError
from ddpm_check.unet import Block, SimpleUnet, SinusoidalPositionEmbeddings, UNetConfig, count_parameters


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def _hand_count(c, down, d):
    """Parameters of the source's SimpleUnet, counted layer by layer from its description."""
    n = d * d + d  # time MLP Linear(d, d)
    n += _conv(c, down[0], 3)  # conv0
    for cin, cout in zip(down[:-1], down[1:]):  # down Blocks
        n += d * cout + cout  # time_mlp Linear(d, out)
        n += _conv(cin, cout, 3) + _conv(cout, cout, 3) + _conv(cout, cout, 4)
        n += 2 * 2 * cout  # two BatchNorms (weight, bias)
    up = down[::-1]
    for cin, cout in zip(up[:-1], up[1:]):  # up Blocks: first conv takes 2 in channels
        n += d * cout + cout
        n += _conv(2 * cin, cout, 3) + _conv(cout, cout, 3) + _conv(cout, cout, 4)  # ConvT has out*out*16 + out
        n += 2 * 2 * cout
    n += _conv(up[-1], c, 1)  # output 1x1
    return n


def test_full_source_model_has_62438883_parameters():
    assert _hand_count(3, (64, 128, 256, 512, 1024), 32) == 62_438_883
    with torch.device("meta"):
        model = SimpleUnet()  # defaults = the source's config
    assert count_parameters(model) == 62_438_883
    assert model.config == UNetConfig.source()


def test_full_model_shapes_on_meta_device():
    with torch.device("meta"):
        model = SimpleUnet()
        x = torch.empty(2, 3, 64, 64)
        t = torch.zeros(2, dtype=torch.long)
        out = model(x, t)
    assert out.shape == (2, 3, 64, 64)


def test_state_dict_keys_follow_the_source():
    with torch.device("meta"):
        sd = SimpleUnet().state_dict()
    for key in ["time_mlp.1.weight", "conv0.weight", "downs.0.conv1.weight", "downs.3.transform.weight",
                "ups.0.conv1.weight", "ups.3.transform.weight", "downs.0.bnorm1.running_mean",
                "ups.0.time_mlp.weight", "output.weight"]:
        assert key in sd
    assert not any("freqs" in k for k in sd)  # the embedding's frequencies are not saved
    assert tuple(sd["ups.0.conv1.weight"].shape) == (512, 2048, 3, 3)  # 2 * in channels
    assert tuple(sd["output.weight"].shape) == (3, 64, 1, 1)


def test_small_config():
    cfg = UNetConfig.small(image_channels=1)
    assert cfg.down_channels == (32, 64, 128) and cfg.time_emb_dim == 32 and cfg.depth == 2
    model = SimpleUnet(cfg)
    n = count_parameters(model)
    assert n == _hand_count(1, (32, 64, 128), 32) == 929_409
    for size in (8, 16):
        x = torch.randn(3, 1, size, size)
        out = model(x, torch.tensor([0, 5, 299]))
        assert out.shape == x.shape


def test_block_shapes():
    t = torch.randn(2, 32)
    down = Block(8, 16, 32)
    assert down(torch.randn(2, 8, 8, 8), t).shape == (2, 16, 4, 4)
    up = Block(16, 8, 32, up=True)
    assert up(torch.randn(2, 32, 4, 4), t).shape == (2, 8, 8, 8)


def test_sinusoidal_embedding_values():
    emb = SinusoidalPositionEmbeddings(4)  # half = 2: frequencies 1 and 10000^(-1)
    out = emb(torch.tensor([0.0, 1.0, 7.0]))
    expected = torch.tensor([
        [0.0, 0.0, 1.0, 1.0],
        [math.sin(1.0), math.sin(1e-4), math.cos(1.0), math.cos(1e-4)],
        [math.sin(7.0), math.sin(7e-4), math.cos(7.0), math.cos(7e-4)],
    ])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    e32 = SinusoidalPositionEmbeddings(32)(torch.tensor([3.0]))[0]
    i = 5
    w = math.exp(-math.log(10000) * i / 15)
    torch.testing.assert_close(e32[i], torch.tensor(math.sin(3 * w)))  # sines first ...
    torch.testing.assert_close(e32[16 + i], torch.tensor(math.cos(3 * w)))  # ... then cosines


def test_long_t_is_used_as_float():
    torch.manual_seed(0)
    model = SimpleUnet(UNetConfig(1, (8, 16), 8)).eval()
    x = torch.randn(2, 1, 4, 4)
    a = model(x, torch.tensor([3, 11]))
    b = model(x, torch.tensor([3.0, 11.0]))
    assert torch.equal(a, b)
    assert not torch.allclose(a, model(x, torch.tensor([4, 11])))  # t matters


def test_config_json_round_trip():
    for cfg in [UNetConfig(), UNetConfig.small(3), UNetConfig(2, (4, 8, 16, 32), 8)]:
        back = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg
    assert UNetConfig().up_channels == (1024, 512, 256, 128, 64)


@pytest.mark.parametrize("size,ok", [(8, True), (16, True), (12, True), (10, False), (6, False), (0, False)])
def test_check_image_size(size, ok):
    cfg = UNetConfig.small()  # depth 2 -> multiples of 4
    if ok:
        assert cfg.check_image_size(size) == size
    else:
        with pytest.raises(DDPMCheckError, match=rf"\b{size}\b"):
            cfg.check_image_size(size)


def test_forward_rejects_bad_image_size_and_channels():
    model = SimpleUnet(UNetConfig(1, (4, 8, 16), 8))
    with pytest.raises(DDPMCheckError, match="10x10"):
        model(torch.randn(1, 1, 10, 10), torch.zeros(1, dtype=torch.long))
    with pytest.raises(DDPMCheckError, match=r"\[N, 1, H, W\].*\(1, 3, 8, 8\)"):
        model(torch.randn(1, 3, 8, 8), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("kwargs,needle", [
    (dict(image_channels=0), "0"),
    (dict(down_channels=(64,)), "(64,)"),
    (dict(down_channels=(64, -2)), "-2"),
    (dict(time_emb_dim=7), "7"),
    (dict(time_emb_dim=2), "2"),
])
def test_bad_config_raises(kwargs, needle):
    with pytest.raises(DDPMCheckError) as exc:
        UNetConfig(**kwargs)
    assert needle in str(exc.value)


def test_from_dict_unknown_key():
    with pytest.raises(DDPMCheckError, match="widths"):
        UNetConfig.from_dict({"widths": [1, 2]})
