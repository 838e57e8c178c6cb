"""--json is strict JSON (no NaN or Infinity tokens), and samples that are not finite are said,
not scored and not hidden."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import ddpm_check.sample as sample_mod
from cli import app

runner = CliRunner()


def strict(text: str):
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_schedule_json_with_an_infinite_value_is_strict():
    # alpha_bar_T underflows to 0 here: log SNR(T) = -inf, which json.dumps wrote as -Infinity
    r = runner.invoke(app, ["schedule", "--json", "--no-plot", "--spec", "linear:300:0.9:0.99"])
    assert r.exit_code == 0, r.output
    assert strict(r.stdout)["schedules"][0]["log_snr_T"] == "-inf"


@pytest.fixture
def one_nan_sample(monkeypatch):
    """Sampling as usual, but the first sample gets a NaN (as from diverged weights)."""
    real_strip, real_sample = sample_mod.sample_with_strip, sample_mod.sample

    def strip(*a, **k):
        x, ts, frames = real_strip(*a, **k)
        x[0, 0, 0, 0] = float("nan")
        return x, ts, frames

    def plain(*a, **k):
        x = real_sample(*a, **k)
        x[0, 0, 0, 0] = float("nan")
        return x

    monkeypatch.setattr(sample_mod, "sample_with_strip", strip)
    monkeypatch.setattr(sample_mod, "sample", plain)


def test_sample_reports_non_finite_samples(tiny_run, tmp_path, one_nan_sample):
    r = runner.invoke(app, ["sample", "--checkpoint", str(tiny_run), "-n", "3", "--json", "--out", str(tmp_path / "j")])
    assert r.exit_code == 0, r.output
    s = strict(r.stdout)
    assert s["non_finite_samples"] == 1 and s["mean"] == "nan" and s["fraction_outside_unit"] > 0
    r = runner.invoke(app, ["sample", "--checkpoint", str(tiny_run), "-n", "3", "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    assert "1 of 3 images contain NaN or inf" in r.stdout


def test_evaluate_names_how_many_samples_are_not_finite(tiny_run, one_nan_sample):
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(tiny_run), "-n", "4"])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error: 1 of 4 images contain NaN or inf, so they cannot be scored")


def test_train_with_non_finite_samples_finishes_without_a_score(tmp_path, one_nan_sample):
    args = ["train", "--small", "--steps", "2", "-T", "10", "--eval-n", "8", "--n-samples", "1",
            "--checkpoint-every", "0"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--json"])
    assert r.exit_code == 0, r.output
    s = strict(r.stdout)
    assert s["metric"] is None and s["non_finite_samples"] == 1 and s["step"] == 2
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "1 of 8 images contain NaN or inf" in r.stdout
    assert "the quality metric was not computed: the samples are not finite" in r.stdout
