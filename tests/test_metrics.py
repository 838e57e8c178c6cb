"""ddpm_check.metrics: the Frechet distance and the digits quality score."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ddpm_check.data import digits_images
from ddpm_check.errors import DDPMCheckError
from ddpm_check.metrics import digit_classifier, evaluate_digits, frechet_distance, to_classifier_input


def _fd_scipy(f1, f2):
    """An independent FD: scipy's general matrix square root of S1 S2."""
    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    cross = scipy.linalg.sqrtm(s1 @ s2)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(cross)))


def test_frechet_matches_scipy_and_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) * 2.0 + 1.0
    assert frechet_distance(a, b) == pytest.approx(_fd_scipy(a, b), rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # a pure shift by c moves only the mean term: FD = ||c||^2
    c = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert frechet_distance(a, a + c) == pytest.approx(float(c @ c), rel=1e-9)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(DDPMCheckError, match=r"\(4, 3\).*\(4, 2\)"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))


def test_classifier_is_accurate_and_deterministic():
    c = digit_classifier()
    assert c.held_accuracy > 0.93
    assert len(set(c.ref_idx) & set(c.held_idx)) == 0 and len(c.ref_idx) + len(c.held_idx) == 1797
    coefs = [w.copy() for w in c.clf.coefs_]
    digit_classifier.cache_clear()
    try:
        c2 = digit_classifier()
        for w, w2 in zip(coefs, c2.clf.coefs_):
            assert np.array_equal(w, w2)
    finally:
        digit_classifier.cache_clear()


def test_real_digits_near_floor_noise_near_ceiling():
    real = digits_images(8)[torch.as_tensor(digit_classifier().held_idx[-300:])]
    s_real = evaluate_digits(real, seed=1)
    assert s_real.fd_floor < 0.2 * s_real.fd_ceiling
    assert s_real.relative < 0.1
    assert s_real.confidence > 0.8 and s_real.confidence_noise < s_real.confidence_real - 0.2
    noise = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    s_noise = evaluate_digits(noise, seed=1)
    assert s_noise.fd_samples > 0.8 * s_noise.fd_ceiling
    assert s_noise.relative > 0.8
    # more added noise, larger distance (the ceiling is a reference point, not a bound: a
    # blank or dimmed set can score worse than noise)
    z = torch.randn(real.shape, generator=torch.Generator().manual_seed(8))
    fds = [evaluate_digits((real + s * z).clamp(-1, 1), seed=1).fd_samples for s in (0.0, 0.4, 0.8)]
    assert fds[0] < fds[1] < fds[2] < s_noise.fd_samples


def test_sixteen_pixel_images_are_brought_to_eight():
    x16 = digits_images(16)[:200]
    assert to_classifier_input(x16).shape == (200, 64)
    s = evaluate_digits(x16)
    assert s.image_size == 16 and s.relative < 0.15


@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (5, 1, 8, 4), (5, 1, 12, 12)])
def test_bad_image_shapes(shape):
    with pytest.raises(DDPMCheckError):
        evaluate_digits(torch.zeros(shape))


def test_nan_samples_refused():
    x = torch.zeros(4, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(DDPMCheckError, match="NaN"):
        evaluate_digits(x)


def test_relative_is_undefined_when_the_ceiling_is_not_above_the_floor():
    # at very small n the noise FD can fall below the real-digit FD; the scale (ceiling - floor)
    # then has no length, and the old clamp divided by 1e-12 (relative = -6.5e12 at n = 2)
    import json

    from ddpm_check.metrics import DigitsScore

    kw = dict(n=2, image_size=8, confidence=0.9, confidence_real=0.9, confidence_noise=0.5,
              classifier_accuracy=0.97, n_floor=2)
    s = DigitsScore(fd_samples=18.5, fd_floor=25.0, fd_ceiling=20.6, **kw)
    assert s.relative is None and json.loads(json.dumps(s.to_dict()))["relative"] is None
    assert DigitsScore(fd_samples=3.0, fd_floor=3.0, fd_ceiling=3.0, **kw).relative is None
    assert DigitsScore(fd_samples=3.0, fd_floor=1.0, fd_ceiling=5.0, **kw).relative == pytest.approx(0.5)
    real = digits_images(8)
    two = evaluate_digits(real[:2])  # the case that showed the bug: n = 2 real digits
    if two.fd_ceiling <= two.fd_floor:
        assert two.relative is None
    else:
        assert two.relative == pytest.approx((two.fd_samples - two.fd_floor) / (two.fd_ceiling - two.fd_floor))


def test_cli_says_when_the_score_is_rough_or_undefined():
    from rich.console import Console

    from ddpm_check.commands.evaluate import render_score

    base = dict(n=2, fd_samples=18.5, fd_floor=25.0, fd_ceiling=20.6, confidence=0.9, confidence_real=0.9,
                confidence_noise=0.5, relative=None)
    con = Console(width=200, record=True)
    render_score(con, base)
    out = con.export_text()
    assert "relative: undefined, the noise ceiling is not above the real-digit floor at n = 2" in out
    assert "n = 2 is below the 64 classifier features" in out and "e+" not in out
    con = Console(width=200, record=True)
    render_score(con, {**base, "n": 400, "fd_samples": 0.167, "fd_floor": 0.253, "fd_ceiling": 4.262,
                        "relative": -0.022})
    out = con.export_text()
    assert "relative = (FD - floor)/(ceiling - floor) = -0.022" in out and "rough" not in out
