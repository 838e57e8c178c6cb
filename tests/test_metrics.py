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
    assert c.held_accuracy > 0.93  # on the held-out split, which it was not fitted on
    coefs = [w.copy() for w in c.clf.coefs_]
    digit_classifier.cache_clear()
    try:
        c2 = digit_classifier()
        for w, w2 in zip(coefs, c2.clf.coefs_):
            assert np.array_equal(w, w2)
    finally:
        digit_classifier.cache_clear()


def test_new_real_digits_near_floor_noise_near_ceiling():
    # "samples" that are new real digits (held-out ones: a perfect generator, never trained on)
    real = digits_images(8, "held-out")[-300:]
    s_real = evaluate_digits(real, seed=1)
    assert s_real.fd_floor < 0.2 * s_real.fd_ceiling
    assert s_real.relative < 0.1
    rows = s_real.rows
    assert rows["samples"].confidence > 0.8 and rows["noise"].confidence < rows["real"].confidence - 0.2
    noise = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    s_noise = evaluate_digits(noise, seed=1)
    assert s_noise.fd_samples > 0.8 * s_noise.fd_ceiling
    assert s_noise.relative > 0.8
    # more added noise, larger distance (the ceiling is a reference point, not a bound: a
    # blank or dimmed set can score worse than noise)
    z = torch.randn(real.shape, generator=torch.Generator().manual_seed(8))
    fds = [evaluate_digits((real + s * z).clamp(-1, 1), seed=1) for s in (0.0, 0.4, 0.8)]
    for key in ("fd", "fd_pixels"):
        v = [getattr(f.rows["samples"], key) for f in fds]
        assert v[0] < v[1] < v[2] < getattr(s_noise.rows["samples"], key), (key, v)


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


def _score(**over):
    """A DigitsScore with chosen feature FDs (samples, real range, baselines, noise)."""
    from ddpm_check.metrics import DigitsScore, RowScore

    def row(fd, rng=None, fdp=None, prng=None):
        return RowScore(fd=fd, fd_pixels=fd if fdp is None else fdp, confidence=0.9, entropy=3.3, memorised=0.1,
                        draws=3 if rng else 1, n=400, fd_range=rng, fd_pixels_range=prng if prng else rng)

    rows = {"samples": row(0.20), "real": row(0.14, (0.12, 0.18)), "gaussian": row(0.8, (0.7, 0.9)),
            "class_gaussians": row(0.30, (0.28, 0.32)), "noise": row(5.0, (4.9, 5.1))}
    rows.update(over)
    return DigitsScore(n=400, image_size=8, rows=rows, memorised_real=0.1, tau=0.8, classifier_accuracy=0.95,
                       train_size=1201, held_out_size=596)


def test_relative_is_undefined_when_the_ceiling_is_not_above_the_floor():
    # at very small n the noise FD can fall below the real-digit FD; the scale (ceiling - floor)
    # then has no length, and an old clamp divided by 1e-12 (relative = -6.5e12 at n = 2)
    import json

    from ddpm_check.metrics import RowScore

    low_noise = RowScore(fd=0.1, fd_pixels=0.1, confidence=0.5, entropy=2.0, memorised=0.0, draws=3, n=400)
    s = _score(noise=low_noise)
    assert s.relative is None and json.loads(json.dumps(s.to_dict()))["relative"] is None
    assert _score().relative == pytest.approx((0.20 - 0.14) / (5.0 - 0.14))
    two = evaluate_digits(digits_images(8, "held-out")[:2])  # the case that showed the bug: n = 2
    if two.fd_ceiling <= two.fd_floor:
        assert two.relative is None
    else:
        assert two.relative == pytest.approx((two.fd_samples - two.fd_floor) / (two.fd_ceiling - two.fd_floor))


def test_a_difference_within_the_real_spread_is_no_verdict():
    from ddpm_check.metrics import RowScore

    s = _score()  # class Gaussians 0.30 vs samples 0.20: margin 0.10 > spread 0.06
    assert s.versus("class_gaussians", "fd") == pytest.approx({"margin": 0.10, "spread": 0.06, "verdict": "better"})
    near = RowScore(fd=0.25, fd_pixels=0.25, confidence=0.9, entropy=3.3, memorised=0.1, draws=1, n=400)
    assert s.__class__(**{**s.__dict__, "rows": {**s.rows, "samples": near}}).versus(
        "class_gaussians", "fd")["verdict"] == "within the spread"  # margin 0.05 <= 0.06
    far = RowScore(fd=0.40, fd_pixels=0.40, confidence=0.9, entropy=3.3, memorised=0.1, draws=1, n=400)
    assert s.__class__(**{**s.__dict__, "rows": {**s.rows, "samples": far}}).versus(
        "class_gaussians", "fd")["verdict"] == "worse"
    one = RowScore(fd=0.14, fd_pixels=0.14, confidence=0.9, entropy=3.3, memorised=None, draws=1, n=400)
    assert _score(real=one).versus("gaussian", "fd")["verdict"] == "no spread (one real subset)"


def test_real_rows_are_disjoint_subsets_of_the_train_split():
    x = digits_images(8, "held-out")
    assert evaluate_digits(x[:400]).rows["real"].draws == 3  # 3 x 400 <= 1,201
    assert evaluate_digits(x[:500]).rows["real"].draws == 2
    s = evaluate_digits(x[:596].repeat(2, 1, 1, 1)[:700])
    assert s.rows["real"].draws == 1 and s.rows["real"].fd_range is None
    assert any("one real subset" in n for n in s.notes)
    assert s.versus("gaussian", "fd")["verdict"] == "no spread (one real subset)"
    big = evaluate_digits(x.repeat(3, 1, 1, 1)[:1300])
    assert big.rows["real"].n == 1201 and any("above the 1,201" in n for n in big.notes)


def test_baselines_sit_between_real_digits_and_noise():
    s = evaluate_digits(digits_images(8, "held-out")[:400], seed=3)
    r = s.rows
    for key in ("fd", "fd_pixels"):
        v = {k: getattr(r[k], key) for k in ("real", "class_gaussians", "gaussian", "noise")}
        assert v["real"] < v["class_gaussians"] < v["gaussian"] < v["noise"], (key, v)
    # ten class Gaussians make every digit; one Gaussian's blurs are read with low confidence
    assert r["class_gaussians"].entropy > 3.2 and r["gaussian"].confidence < r["class_gaussians"].confidence - 0.2


def test_memorisation_catches_a_copy_machine():
    train = digits_images(8, "train")
    held = digits_images(8, "held-out")
    copy = evaluate_digits(train[:400])
    assert copy.rows["samples"].memorised == 1.0
    # copies with a little pixel noise are still copies
    z = torch.randn(400, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert evaluate_digits((train[400:800] + 0.1 * z).clamp(-1, 1)).rows["samples"].memorised > 0.9
    # new real digits sit where the held-out check half does: about TAU_QUANTILE
    new = evaluate_digits(held[:400])
    assert 0.03 < new.memorised_real < 0.2 and abs(new.rows["samples"].memorised - 0.1) < 0.06
    # the FD alone does not catch the copy machine: it scores near the real floor
    assert copy.versus("gaussian", "fd")["verdict"] == "better"


def test_the_reference_is_the_held_out_split_and_disjoint_from_training_by_content():
    from ddpm_check.metrics import digits_reference, nearest_distances

    ref = digits_reference(8)
    assert len(ref.train) == 1201 and len(ref.held) == 596
    assert nearest_distances(ref.held, ref.train).min() > 0.1  # no held-out digit is a training digit
    # what `--data digits` trains on is exactly the train split
    from ddpm_check.data import DataConfig, load_data

    data = load_data(DataConfig.parse("digits", image_size=8))
    assert torch.equal(data.all(), digits_images(8, "train"))
    assert nearest_distances(to_classifier_input(data.all()), ref.held).min() > 0.1


def test_score_refusal_names_why():
    from ddpm_check.data import DataConfig
    from ddpm_check.metrics import score_refusal

    assert score_refusal(DataConfig.parse("digits", 8)) is None
    assert "all 1,797 digits" in score_refusal(DataConfig.parse("digits-all", 8))
    # a checkpoint written before the split trained on every digit
    assert "all 1,797 digits" in score_refusal(DataConfig.from_dict({"kind": "digits", "image_size": 8}))
    assert "'mixture'" in score_refusal(DataConfig.parse("mixture", 8))


def test_cli_table_says_what_each_number_is():
    from rich.console import Console

    from ddpm_check.commands.evaluate import render_score

    con = Console(width=200, record=True)
    render_score(con, _score().to_dict())
    out = con.export_text()
    for text in ("against the 596 held-out digits (never trained on)", "train digits (floor)",
                 "10 class Gaussians", "one Gaussian", "noise (ceiling)", "0.140 │ ±0.030",
                 "samples vs 10 class Gaussians: features better by 0.100 (spread 0.060)",
                 "memorised: 10.0% of samples", "relative = (FD - floor)/(ceiling - floor) = 0.012"):
        assert text in out, (text, out)
    d = _score().to_dict()
    d["notes"] = ["n = 2 is below the 64 features: every FD here is rough (use 400 or more)"]
    con = Console(width=200, record=True)
    render_score(con, d)
    assert "every FD here is rough" in con.export_text()


def test_cli_gives_no_verdict_without_a_spread():
    from rich.console import Console

    from ddpm_check.commands.evaluate import render_score
    from ddpm_check.metrics import RowScore

    one = RowScore(fd=0.14, fd_pixels=0.14, confidence=0.9, entropy=3.3, memorised=None, draws=1, n=400)
    con = Console(width=200, record=True)
    render_score(con, _score(real=one).to_dict())
    out = con.export_text()
    assert "train digits: 1 subset of the 1,201" in out
    assert "samples vs 10 class Gaussians: features +0.100 (no verdict: one real subset, no spread)" in out
    assert "better by" not in out and "worse by" not in out and "within the spread" not in out
