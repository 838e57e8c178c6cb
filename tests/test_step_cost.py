"""benchmarks/step_cost.py counts what the BENCHMARKS.md floors rest on: check its counts against
figures obtained independently (the issue's FLOPs per image, activation sizes by hand)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
step_cost = pytest.importorskip("step_cost")


@pytest.fixture(scope="module")
def sampling():
    return step_cost.measure(batch=4, size=64, train=False, cache_bytes=50_000_000)


def test_flops_per_image_match_the_issue():
    # The issue measured 34.4 GFLOP per training image and 11.5 GFLOP per image and sampling step
    # for the source's full SimpleUnet at 64x64 (forward + backward = 3x forward, convolutions).
    train = step_cost.measure(batch=2, size=64, train=True, cache_bytes=50_000_000)
    assert train["flops"] / 2 / 1e9 == pytest.approx(34.4, rel=2e-3)
    assert train["params"] == 62_438_883


def test_sampling_flops_per_image(sampling):
    assert sampling["flops"] / 4 / 1e9 == pytest.approx(11.5, rel=5e-3)


# Each Block has two ReLUs on [N, out, r, r] (r: the side its 3x3 convolutions work at) and one on
# the time projection [N, out]; plus the time MLP's ReLU on [N, 32].  bf16: 2 bytes, in + out.
BLOCKS = [(128, 64), (256, 32), (512, 16), (1024, 8),  # down: out channels, side
          (512, 4), (256, 8), (128, 16), (64, 32)]      # up


def test_relu_bytes_equal_the_activation_sizes_by_hand(sampling):
    per_image = sum(2 * c * r * r + c for c, r in BLOCKS) + 32
    assert sampling["bytes"]["ReLU"] == 4 * per_image * 2 * 2


def test_only_tensors_larger_than_the_cache_count_for_the_floor():
    n, cache = 4, 1_000_000  # 1 MB: the feature maps at 64, 32 and 16 px are larger, 8 and 4 px not
    m = step_cost.measure(batch=n, size=64, train=False, cache_bytes=cache)
    big = sum(2 * 2 * (n * c * r * r * 2) for c, r in BLOCKS if n * c * r * r * 2 > cache)
    assert m["big"]["ReLU"] == big
    assert 0 < big < m["bytes"]["ReLU"]
