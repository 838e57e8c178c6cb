"""`ddpm-check sample` through typer's CliRunner, on a tiny trained run."""

from __future__ import annotations

import json
import pickle

import numpy as np
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


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


def test_missing_and_pickle_checkpoints(tmp_path, clean_error):
    r = runner.invoke(app, ["sample", "--checkpoint", str(tmp_path / "nope.safetensors")])
    clean_error(r, "nope.safetensors")
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(tmp_path)])
    clean_error(r, "checkpoint.safetensors")

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps(Evil()))
    for cmd in (["sample", "--checkpoint", str(bad)], ["train", "--resume", str(bad)]):
        clean_error(runner.invoke(app, cmd), "model.pt", "refused")
    assert not (tmp_path / "pwned").exists()


def test_sample_bad_n(trained, clean_error):
    clean_error(runner.invoke(app, ["sample", "--checkpoint", str(trained[0]), "-n", "0"]), "0")


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


def test_sample_and_evaluate_with_ddim(trained, tmp_path, clean_error):
    import torch

    from ddpm_check.ddim import DDIMConfig
    from ddpm_check.sample import load_sampler, sample

    out, _ = trained  # T = 20
    r = runner.invoke(app, ["sample", "--checkpoint", str(out), "-n", "3", "--sampler", "ddim", "--steps", "5",
                            "--eta", "0.5", "--spacing", "linspace", "--npy", "--out", str(tmp_path / "d"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["sampler"] == {"sampler": "ddim", "steps": 5, "eta": 0.5, "spacing": "linspace", "prediction": "eps",
                              "zero_snr": False}
    s = load_sampler(out, device="cpu")
    assert torch.equal(torch.from_numpy(np.load(doc["npy"])), sample(s, 3, seed=0, ddim=DDIMConfig(5, 0.5, "linspace")))
    r = runner.invoke(app, ["sample", "--checkpoint", str(out), "-n", "2", "--out", str(tmp_path / "p"), "--json"])
    assert json.loads(r.stdout)["sampler"] == {"sampler": "ddpm", "steps": 20, "prediction": "eps", "zero_snr": False}
    r = runner.invoke(app, ["sample", "--checkpoint", str(out), "-n", "2", "--sampler", "ddim", "--out", str(tmp_path / "t")])
    assert r.exit_code == 0 and "DDIM, 20 steps, eta 0, trailing spacing" in r.output  # default steps: min(50, T)
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(out), "-n", "8", "--sampler", "ddim", "--steps", "4", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["sampler"]["steps"] == 4 and doc["sampling_seconds"] >= 0
    for args, words in ((["--steps", "5"], "--steps applies only to --sampler ddim"),
                        (["--sampler", "ddim", "--steps", "21"], "--steps 21 is more than the model's T = 20"),
                        (["--sampler", "ddim", "--eta", "1.5"], "--eta must be in [0, 1]"),
                        (["--sampler", "ddim", "--spacing", "uniform"], "unknown --spacing 'uniform'"),
                        (["--sampler", "plms"], "unknown --sampler 'plms'")):
        for cmd in ("sample", "evaluate"):
            clean_error(runner.invoke(app, [cmd, "--checkpoint", str(out), *args]), words)
