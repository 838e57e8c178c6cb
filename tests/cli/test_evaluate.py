"""`ddpm-check evaluate` through typer's CliRunner, on a tiny trained run."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def test_sample_and_evaluate(trained, tmp_path):
    out, _ = trained
    r = runner.invoke(app, ["sample", "--checkpoint", str(out), "-n", "3", "--npy", "--out", str(tmp_path / "s"), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    arr = np.load(s["npy"])
    assert arr.shape == (3, 1, 8, 8) and s["shape"] == [3, 1, 8, 8]
    assert (tmp_path / "s" / "samples.png").is_file() and (tmp_path / "s" / "reverse_process.png").is_file()
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(out / "checkpoint.safetensors"), "-n", "12", "--json"])
    assert r.exit_code == 0, r.output
    e = json.loads(r.stdout)
    assert e["n"] == 12 and e["step"] == 5 and e["fd_floor"] < e["fd_ceiling"]
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(out), "-n", "12"])
    assert r.exit_code == 0 and "FD" in r.output and "samples" in r.output


def test_evaluate_needs_a_digits_model(tmp_path, clean_error):
    out = tmp_path / "mix"
    r = runner.invoke(app, ["train", "--data", "mixture", "--steps", "1", "-T", "5", "--n-samples", "2",
                            "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["metric"] is None
    clean_error(runner.invoke(app, ["evaluate", "--checkpoint", str(out)]), "mixture")
