"""The train / sample / evaluate commands through typer's CliRunner."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
# a tiny but real `train --small`: 5 steps, T = 20, few samples
QUICK = ["--small", "--steps", "5", "-T", "20", "--eval-n", "16", "--n-samples", "4", "--checkpoint-every", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    r = runner.invoke(app, ["train", *QUICK, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def test_train_small_writes_all_files(trained):
    out, summary = trained
    for name in ("checkpoint.safetensors", "config.json", "samples.png", "reverse_process.png", "loss.png"):
        assert (out / name).is_file(), name
    assert summary["step"] == 5 and summary["samples_png"] == str(out / "samples.png")
    m = summary["metric"]
    assert m["n"] == 16 and m["fd_floor"] < m["fd_ceiling"]
    assert 0.0 <= m["confidence"] <= 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["schedule"]["T"] == 20 and cfg["data"]["kind"] == "digits" and cfg["train"]["loss"] == "l2"


def test_train_human_output_names_files_and_metric(tmp_path):
    r = runner.invoke(app, ["train", *QUICK, "--steps", "2", "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    assert "samples.png" in r.output and "reverse_process.png" in r.output and "loss.png" in r.output
    assert "noise (ceiling)" in r.output and "real digits (floor)" in r.output
    assert "929,409 params" in r.output  # the small SimpleUnet


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


def test_sample_batch_size_is_passed_through(trained, tmp_path):
    import torch

    from ddpm_check.sample import load_sampler, sample

    out, _ = trained
    r = runner.invoke(app, ["sample", "--checkpoint", str(out), "-n", "5", "--batch-size", "2", "--npy",
                            "--seed", "4", "--device", "cpu", "--out", str(tmp_path / "b2"), "--json"])
    assert r.exit_code == 0, r.output
    got = torch.from_numpy(np.load(json.loads(r.stdout)["npy"]))
    s = load_sampler(out, device="cpu")
    assert torch.equal(got, sample(s, 5, seed=4, batch_size=2))  # three batches: 2, 2, 1
    assert not torch.equal(got, sample(s, 5, seed=4))  # one batch of 5 draws differently
    for cmd in (["sample", "--checkpoint", str(out)], ["evaluate", "--checkpoint", str(out)]):
        r = runner.invoke(app, [*cmd, "--batch-size", "0"])
        assert r.exit_code == 2 and r.stderr.strip() == "error: --batch-size must be >= 1, got 0"


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


def _assert_clean_error(r, *words):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for w in words:
        assert w in r.output, (w, r.output)


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
    ],
)
def test_train_bad_values(tmp_path, args, words):
    r = runner.invoke(app, ["train", "--small", "--out", str(tmp_path / "o"), *args])
    _assert_clean_error(r, *words)
    assert not (tmp_path / "o" / "checkpoint.safetensors").exists()


def test_train_refuses_to_overwrite_a_run(trained):
    out, _ = trained
    r = runner.invoke(app, ["train", *QUICK, "--out", str(out)])
    _assert_clean_error(r, str(out), "--resume")


def test_missing_and_pickle_checkpoints(tmp_path):
    r = runner.invoke(app, ["sample", "--checkpoint", str(tmp_path / "nope.safetensors")])
    _assert_clean_error(r, "nope.safetensors")
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(tmp_path)])
    _assert_clean_error(r, "checkpoint.safetensors")

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps(Evil()))
    for cmd in (["sample", "--checkpoint", str(bad)], ["train", "--resume", str(bad)]):
        _assert_clean_error(runner.invoke(app, cmd), "model.pt", "refused")
    assert not (tmp_path / "pwned").exists()


def test_evaluate_needs_a_digits_model(tmp_path):
    out = tmp_path / "mix"
    r = runner.invoke(app, ["train", "--data", "mixture", "--steps", "1", "-T", "5", "--n-samples", "2",
                            "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["metric"] is None
    _assert_clean_error(runner.invoke(app, ["evaluate", "--checkpoint", str(out)]), "mixture")


def test_sample_bad_n(trained):
    _assert_clean_error(runner.invoke(app, ["sample", "--checkpoint", str(trained[0]), "-n", "0"]), "0")


def test_train_on_an_image_folder_and_a_corrupt_one(tmp_path):
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
    _assert_clean_error(r, "zz_bad.jpg")


def test_sample_output_off_a_terminal_has_no_empty_bar_line(trained, tmp_path):
    # the transient sampling bar left an empty first line when stdout was not a terminal
    out, _ = trained
    r = runner.invoke(app, ["sample", "--checkpoint", str(out), "-n", "1", "--strip-rows", "1",
                            "--out", str(tmp_path / "one")])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("sampled 1 image [1, 8, 8] from ")
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(out), "-n", "64"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(str(out / "checkpoint.safetensors")) and "rough" not in r.stdout
