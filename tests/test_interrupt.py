"""Ctrl-C during `ddpm-check train`: the real CLI in a subprocess, interrupted with SIGINT.

What a user must get: exit code 130, one line on stderr naming the step and how to continue
(`--resume DIR`), no traceback, and a checkpoint at exactly that step; `--resume DIR --steps K`
then continues to K.  The continued run is compared with an uninterrupted run of the same
configuration to the same total: they must agree bit for bit (one CPU thread in both, so the
floating-point sums are the same).  Before the fix in Trainer.run (Ctrl-C takes effect at the end
of the current step), a SIGINT that landed inside a step saved the generators, BatchNorm
statistics and sometimes the weights part-way into the next step under the previous step's
number, and this comparison failed (5 runs of 5 with these settings).

Timing: the run is tiny (SimpleUnet (8, 16), 8x8 digits, T = 20, batch 8) but asks for a
million steps, so it cannot finish; the test waits, by polling, for the first checkpoint
(--checkpoint-every 20) before it sends SIGINT, so training has really started; the periodic
saves are rare enough that the signal almost always lands inside a training step, the case that
matters.  Timeouts are generous for a loaded 2-core machine; each test takes about 5-10 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ddpm_check import checkpoint as ckpt

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT, a POSIX signal")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _python_sigint():
    """Python's own SIGINT handler in this process, as in a terminal: a shell that starts pytest in
    the background (`cmd &`, nohup) leaves SIGINT ignored, and then no Ctrl-C exists to test."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)
TINY = ["--data", "digits", "--image-size", "8", "--channels-list", "8,16", "-T", "20",
        "--batch-size", "8", "--seed", "3", "--eval-n", "0", "--n-samples", "2"]
FOREVER = ["--steps", "1000000", "--checkpoint-every", "20"]
START_TIMEOUT = 180.0  # s until the first checkpoint (importing torch on a loaded machine is slow)
STOP_TIMEOUT = 120.0  # s from SIGINT to exit
MESSAGE = re.compile(r"error: interrupted at step (\d+); checkpoint saved, continue with --resume (.+)")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in TORCHRUN_ENV and k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    env["OMP_NUM_THREADS"] = "1"  # one thread: the reference run below repeats the same sums
    return env


def sigint_default() -> None:
    """In the child before exec: SIGINT at its default.  A shell starts background jobs with SIGINT
    ignored, children inherit that, and Python then installs no KeyboardInterrupt handler: the
    test's Ctrl-C would be ignored (as it would be for a user's backgrounded run)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_training(out: Path, *extra: str) -> tuple[int, str, str]:
    """Start `train` into ``out``, wait for its first checkpoint, send SIGINT; (rc, stdout, stderr)."""
    log_out, log_err = out.parent / f"{out.name}.stdout", out.parent / f"{out.name}.stderr"
    cmd = [sys.executable, "-m", "cli", "train", *TINY, *FOREVER, "--out", str(out), *extra]
    with open(log_out, "w") as fo, open(log_err, "w") as fe:  # files, not pipes: nothing can block
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=fo, stderr=fe, text=True,
                                preexec_fn=sigint_default)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not (out / ckpt.FILENAME).exists():  # written atomically: complete once it exists
                if proc.poll() is not None:
                    pytest.fail(f"train exited early ({proc.returncode}):\n{log_err.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no checkpoint after {START_TIMEOUT} s:\n{log_err.read_text()}")
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=STOP_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return rc, ANSI.sub("", log_out.read_text()), ANSI.sub("", log_err.read_text())


def assert_clean_interrupt(out: Path, rc: int, stderr: str) -> int:
    """Exit 130, one error line naming the step and --resume DIR, no traceback; returns the step."""
    assert rc == 130, f"exit code {rc}\n{stderr}"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.rstrip().splitlines()[-1] == errors[0], stderr
    m = MESSAGE.fullmatch(errors[0].rstrip())
    assert m, errors[0]
    step = int(m.group(1))
    assert Path(m.group(2)) == out, m.group(2)
    assert step > 0
    tensors, meta = ckpt.load(out)  # the file the message points to loads
    assert meta["step"] == step, (meta["step"], step)
    assert tensors["loss_history"].numel() == step
    assert json.loads((out / "config.json").read_text())["step"] == step  # the readable copy agrees
    return step


@pytest.fixture(scope="module")
def interrupted_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("interrupt") / "run"
    rc, stdout, stderr = interrupt_training(out, "--json")
    return out, rc, stdout, stderr


def test_ctrl_c_json_mode(interrupted_json):
    out, rc, stdout, stderr = interrupted_json
    assert_clean_interrupt(out, rc, stderr)
    # no summary (the run did not finish), but the failure, as JSON, for scripts that parse stdout
    doc = json.loads(stdout)
    assert doc["exit_code"] == 130 and doc["error"].startswith("interrupted at step ")
    assert f"--resume {out}" in doc["error"] and set(doc) == {"error", "exit_code"}


def test_ctrl_c_with_progress_bar(tmp_path):
    out = tmp_path / "run"
    rc, stdout, stderr = interrupt_training(out)
    assert_clean_interrupt(out, rc, stderr)
    assert "training SimpleUnet [8, 16]" in stdout


def test_resume_after_ctrl_c_continues_the_same_run(interrupted_json, tmp_path):
    out, rc, _, stderr = interrupted_json
    step = assert_clean_interrupt(out, rc, stderr)
    before, _ = ckpt.load(out)
    run = tmp_path / "run"
    shutil.copytree(out, run)
    total = step + 3

    from cli import app
    from ddpm_check.train import Trainer, TrainConfig, configs_from_meta

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the interrupted subprocess (OMP_NUM_THREADS=1)
    try:
        r = CliRunner().invoke(app, ["train", "--resume", str(run), "--steps", str(total), "--eval-n", "0",
                                     "--n-samples", "2", "--device", "cpu", "--json"])
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)
        assert summary["step"] == total and summary["steps_this_run"] == 3

        after, meta = ckpt.load(run)
        assert meta["step"] == total
        hist = after["loss_history"]
        assert hist.numel() == total and torch.equal(hist[:step], before["loss_history"])

        # The same configuration trained to `total` without a break.
        cfgs = configs_from_meta(meta)
        train_cfg = TrainConfig(**{**cfgs["train"].to_dict(), "steps": total})
        ref = Trainer(cfgs["model"], cfgs["schedule"], cfgs["data"], train_cfg, device="cpu")
        ref.run()
    finally:
        torch.set_num_threads(threads)
    expected = ref.state_tensors()
    assert set(expected) == set(after)
    differ = [k for k in expected if not torch.equal(expected[k], after[k])]
    assert not differ, f"{len(differ)} tensors differ from an uninterrupted run, e.g. {differ[:4]}"


# ---- Ctrl-C during a checkpoint write (in-process: the signal is sent from inside the write) ----
def _tiny_trainer():
    from ddpm_check.data import DataConfig
    from ddpm_check.schedules import ScheduleConfig
    from ddpm_check.train import TrainConfig, Trainer
    from ddpm_check.unet import UNetConfig

    return Trainer(UNetConfig(image_channels=1, down_channels=(8, 16), time_emb_dim=8), ScheduleConfig(T=20),
                   DataConfig(), TrainConfig(steps=1000, batch_size=8, seed=4), device="cpu")


def test_ctrl_c_during_a_checkpoint_write_finishes_the_file_then_stops(tmp_path, monkeypatch):
    # The terminal's Ctrl-C lands while the periodic checkpoint of step 4 is being written.  The
    # write must complete (not leave a torn or missing file), and the run must stop right after
    # it, at step 4, with a checkpoint equal to an uninterrupted run's state at step 4.
    real_write = ckpt._atomic_write_bytes
    writes = []

    def write_hit_by_ctrl_c(path, data):
        writes.append(path.name)
        if len(writes) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread, here, mid-write
            time.sleep(0.01)  # Python runs the handler at the next bytecode boundary
        real_write(path, data)

    monkeypatch.setattr(ckpt, "_atomic_write_bytes", write_hit_by_ctrl_c)
    path = tmp_path / "checkpoint.safetensors"
    tr = _tiny_trainer()
    with pytest.raises(KeyboardInterrupt):
        tr.run(checkpoint_path=path, checkpoint_every=4)
    assert tr.step == 4 and writes[:2] == ["checkpoint.safetensors", "config.json"]
    got, meta = ckpt.load(path)
    assert meta["step"] == 4
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind
    ref = _tiny_trainer()
    ref.run(until=4)
    expected = ref.state_tensors()
    assert set(got) == set(expected)
    assert not [k for k in expected if not torch.equal(expected[k], got[k])]


def test_an_interrupt_inside_the_write_keeps_the_previous_file(tmp_path, monkeypatch):
    # Outside a training run nothing defers Ctrl-C: a KeyboardInterrupt can come through in the
    # middle of a write.  The previous checkpoint must survive whole, with no temporary file left.
    path = tmp_path / "checkpoint.safetensors"
    tr = _tiny_trainer()
    tr.run(until=2)
    tr.save(path)
    before = path.read_bytes()
    tr.run(until=3)

    def fsync_interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", fsync_interrupted)
    with pytest.raises(KeyboardInterrupt):
        tr.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and ckpt.load(path)[1]["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "config.json"]
