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


def test_a_model_trained_on_every_digit_gets_no_score(tmp_path, clean_error):
    # --data digits-all trains on the held-out split too: any score would compare the model with
    # images it trained on, so none is printed or written, and the reason is given instead
    out = tmp_path / "all"
    r = runner.invoke(app, ["train", "--data", "digits-all", "--steps", "1", "-T", "5", "--n-samples", "2",
                            "--eval-n", "16", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["metric"] is None and "all 1,797 digits" in summary["metric_skipped"]
    assert json.loads((out / "config.json").read_text())["data"]["split"] == "all"
    r = runner.invoke(app, ["train", "--data", "digits-all", "--steps", "1", "-T", "5", "--n-samples", "2",
                            "--eval-n", "16", "--out", str(tmp_path / "all2")])
    assert r.exit_code == 0 and "no honest quality score" in r.output and "FD" not in r.output, r.output
    clean_error(runner.invoke(app, ["evaluate", "--checkpoint", str(out)]), "all 1,797 digits")
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(out), "--json"])
    assert r.exit_code == 2 and "fd" not in r.stdout and "all 1,797 digits" in json.loads(r.stdout)["error"]


def test_flips_are_for_folders_only(tmp_path, clean_error):
    clean_error(runner.invoke(app, ["train", "--data", "digits", "--flip", "--out", str(tmp_path / "f")]),
                "--flip (random left-right flips) is for a folder of images only, not for --data digits")
    assert not (tmp_path / "f").exists()
    folder = tmp_path / "pngs"
    folder.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    for opt, want in (("--no-flip", False), ("--flip", True)):
        out = tmp_path / opt.strip("-")
        r = runner.invoke(app, ["train", "--data", str(folder), "--channels", "1", opt, "--steps", "1", "-T", "5",
                                "--n-samples", "1", "--out", str(out), "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads((out / "config.json").read_text())["data"]["flip"] is want
