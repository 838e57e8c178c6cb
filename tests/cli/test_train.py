"""`ddpm-check train` through typer's CliRunner: the files, the output, resume, and bad values."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
# a tiny but real `train --small`: 5 steps, T = 20, few samples (as the `trained` fixture's run)
QUICK = ["--small", "--steps", "5", "-T", "20", "--eval-n", "16", "--n-samples", "4", "--checkpoint-every", "0"]


def test_train_small_writes_all_files(trained):
    out, summary = trained
    for name in ("checkpoint.safetensors", "config.json", "samples.png", "reverse_process.png", "loss.png"):
        assert (out / name).is_file(), name
    assert summary["step"] == 5 and summary["samples_png"] == str(out / "samples.png")
    m = summary["metric"]
    assert m["n"] == 16 and m["fd_floor"] < m["fd_ceiling"]
    assert 0.0 <= m["rows"]["samples"]["confidence"] <= 1.0 and m["reference"] == "held-out split"
    assert set(m["rows"]) == {"samples", "real", "gaussian", "class_gaussians", "noise"}
    assert summary["metric_skipped"] is None
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["schedule"]["T"] == 20 and cfg["data"]["kind"] == "digits" and cfg["train"]["loss"] == "l2"


def test_train_human_output_names_files_and_metric(tmp_path):
    r = runner.invoke(app, ["train", *QUICK, "--steps", "2", "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    assert "samples.png" in r.output and "reverse_process.png" in r.output and "loss.png" in r.output
    assert "noise (ceiling)" in r.output and "train digits (floor)" in r.output
    assert "929,409 params" in r.output  # the small SimpleUnet


def test_a_cosine_learning_rate_is_announced_and_saved(tmp_path):
    out = tmp_path / "c"
    r = runner.invoke(app, ["train", *QUICK, "--steps", "3", "--eval-n", "0", "--lr-schedule", "cosine",
                            "--lr-warmup", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "(cosine, warm-up 1)" in r.output
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert cfg["lr_schedule"] == "cosine" and cfg["lr_warmup"] == 1


def test_resume_continues_to_new_total(trained, tmp_path):
    out, _ = trained
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    r = runner.invoke(app, ["train", "--resume", str(copy), "--steps", "7", "--eval-n", "0",
                            "--n-samples", "2", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["step"] == 7 and s["steps_this_run"] == 2 and s["metric"] is None


def test_resume_to_fewer_steps_than_done_is_refused_before_training(trained):
    out, _ = trained
    before = (out / "checkpoint.safetensors").read_bytes()
    r = runner.invoke(app, ["train", "--resume", str(out), "--steps", "3"])
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot train to step 3" in lines[0] and "already at step 5" in lines[0]
    assert "training" not in r.stdout  # no banner, no progress bar before the error
    assert (out / "checkpoint.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "args, words",
    [
        (["--steps", "-3"], ["-3"]),
        (["--image-size", "12"], ["12"]),
        (["--channels-list", "8,16,32", "--image-size", "6", "--data", "mixture"], ["6", "2**depth = 4"]),
        (["--schedule", "quadratic"], ["quadratic", "linear, cosine"]),
        (["--loss", "huber"], ["huber"]),
        (["--model", "medium"], ["medium", "small, full"]),
        (["--data", "no/such/folder"], ["no/such/folder"]),
        (["--device", "tpu"], ["tpu"]),
        (["--ema-decay", "1.5"], ["1.5"]),
        (["--channels-list", "8,x"], ["8,x"]),
        (["--prediction", "epsilon"], ["--prediction", "'epsilon'", "eps, x0, v"]),
        (["--zero-snr"], ["--zero-snr needs --prediction v", "got eps"]),
        (["--zero-snr", "--prediction", "x0"], ["--zero-snr needs --prediction v", "got x0"]),
        (["--zero-snr", "--prediction", "v", "-T", "1"], ["T >= 2", "T = 1"]),
        (["--lr-schedule", "step"], ["--lr-schedule", "'step'", "constant, cosine"]),
        (["--lr-warmup", "-5"], ["--lr-warmup", "-5"]),
        (["--steps", "5", "--lr-warmup", "100"], ["--lr-warmup 100", "--steps 5"]),
    ],
)
def test_train_bad_values(tmp_path, args, words, clean_error):
    r = runner.invoke(app, ["train", "--small", "--out", str(tmp_path / "o"), *args])
    clean_error(r, *words)
    assert not (tmp_path / "o" / "checkpoint.safetensors").exists()


def test_train_refuses_to_overwrite_a_run(trained, clean_error):
    out, _ = trained
    r = runner.invoke(app, ["train", *QUICK, "--out", str(out)])
    clean_error(r, str(out), "--resume")


def test_train_on_an_image_folder_and_a_corrupt_one(tmp_path, clean_error):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (12, 10), (40 * k, 100, 200)).save(folder / f"im{k}.png")
    r = runner.invoke(app, ["train", "--data", str(folder), "--image-size", "8", "--channels-list", "8,16",
                            "--steps", "2", "-T", "5", "--batch-size", "4", "--n-samples", "2",
                            "--out", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["kind"] == "folder" and cfg["model"]["image_channels"] == 3
    (folder / "zz_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    r = runner.invoke(app, ["train", "--data", str(folder), "--image-size", "8", "--out", str(tmp_path / "run2")])
    clean_error(r, "zz_bad.jpg")


def test_two_runs_into_one_folder_the_second_is_refused(tmp_path):
    """Two `train` processes on one --out: before, both exited 0 and one run was silently lost."""
    import os
    import subprocess
    import sys
    import time

    from ddpm_check.train import LOCK_NAME

    out = tmp_path / "conc"
    cmd = [sys.executable, "-m", "cli", "train", "--small", "-T", "20", "--eval-n", "0", "--n-samples", "1",
           "--checkpoint-every", "0", "--out", str(out), "--json"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    first = subprocess.Popen([*cmd, "--steps", "400", "--seed", "1"], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_NAME).exists():  # the first run holds the folder
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never took the folder"
            time.sleep(0.05)
        second = subprocess.run([*cmd, "--steps", "5", "--seed", "2"], cwd=root, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert f"output folder {str(out)!r} is in use by ddpm-check run pid {first.pid}" in second.stderr
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    assert json.loads(stdout)["step"] == 400
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["seed"] == 1 and config["step"] == 400  # the first run's, whole


def test_train_v_prediction_on_a_zero_snr_schedule_trains_samples_and_resumes(tmp_path):
    out = tmp_path / "v"
    r = runner.invoke(app, ["train", *QUICK, "--prediction", "v", "--zero-snr", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["non_finite_samples"] == 0 and summary["metric"] is not None
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["prediction"] == "v" and cfg["schedule"]["zero_snr"] is True
    for args in ([], ["--sampler", "ddim", "--steps", "5", "--eta", "1"]):
        r = runner.invoke(app, ["sample", "--checkpoint", str(out), "-n", "6", "--out", str(tmp_path / "s"),
                                "--json", *args])
        assert r.exit_code == 0, r.output
        s = json.loads(r.stdout)
        assert s["sampler"]["prediction"] == "v" and s["sampler"]["zero_snr"] is True
        assert s["non_finite_samples"] == 0
    r = runner.invoke(app, ["sample", "--checkpoint", str(out), "-n", "2", "--out", str(tmp_path / "h")])
    assert r.exit_code == 0 and "v-prediction, zero-SNR schedule" in r.output, r.output
    r = runner.invoke(app, ["train", "--resume", str(out), "--steps", "7", "--eval-n", "0", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["train"]["prediction"] == "v"


def test_a_checkpoint_claiming_eps_on_a_zero_snr_schedule_is_refused(trained, tmp_path, clean_error):
    from ddpm_check import checkpoint as ckpt

    out, _ = trained
    tensors, meta = ckpt.load(out / "checkpoint.safetensors")
    meta["schedule"]["zero_snr"] = True  # eps-prediction on abar_T = 0: undefined at t = T
    bad = ckpt.save(tmp_path / "bad.safetensors", tensors, meta)
    r = runner.invoke(app, ["sample", "--checkpoint", str(bad), "-n", "2", "--out", str(tmp_path / "s")])
    clean_error(r, "bad.safetensors", "eps-prediction is undefined on a zero-terminal-SNR schedule")
