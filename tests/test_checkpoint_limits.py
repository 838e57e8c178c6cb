"""A checkpoint's JSON configuration is checked against limits and against its own tensors.

The configuration in a checkpoint's metadata sizes everything built from it: the schedule (T
floats), the model (its widths), every sampled batch (image size).  A corrupt or crafted file
that says T = 10**9 or image_size = 10**6 must fail with one line naming the value and the file
-- fast, not after allocating gigabytes or sampling for days -- and so must a file whose weights
are not those of the SimpleUnet its configuration describes.

The files are made from a real tiny checkpoint (written by Trainer.run) whose metadata JSON is
rewritten with safetensors' own save_file, so only the edited value differs.  Each command runs
under a deadline (SIGALRM where available): if a check regresses, the test fails at the deadline
instead of hanging.  The values are chosen so that an unchecked one fails safely too: sizes whose
allocation the operating system refuses at once (terabytes), or loops the deadline stops
(T = 10**6 sampling steps).  T = 10**9, whose schedule alone would take 8 GB per array before
sampling for ever, is only given to the limit check itself.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli import app
from ddpm_check import checkpoint as ckpt
from ddpm_check.data import DataConfig
from ddpm_check.errors import DDPMCheckError
from ddpm_check.schedules import ScheduleConfig
from ddpm_check.train import Trainer, TrainConfig
from ddpm_check.unet import UNetConfig

runner = CliRunner()
META_KEY = "ddpm_check"  # the documented metadata key of a ddpm-check checkpoint
FAST_S = 10.0  # a refused file is refused in well under a second; 10 s allows a loaded machine
DEADLINE_S = 60


class _Deadline(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise _Deadline in this (main) thread after ``seconds`` (no-op without SIGALRM)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise _Deadline(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def tiny_checkpoint(folder: Path, down=(8, 16), data: DataConfig | None = None) -> Path:
    tr = Trainer(UNetConfig(1, tuple(down), 8), ScheduleConfig(T=10), data or DataConfig(),
                 TrainConfig(steps=1, batch_size=4), device="cpu")
    path = folder / "checkpoint.safetensors"
    tr.run(checkpoint_path=path)
    return path


def read_meta(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()[META_KEY])


def rewrite(src: Path, dst_folder: Path, edit=None, tensors_from: Path | None = None) -> Path:
    """A copy of checkpoint ``src`` in ``dst_folder`` with its metadata JSON passed through
    ``edit`` (a function changing the dict in place) and, optionally, another file's tensors."""
    meta = read_meta(src)
    if edit is not None:
        edit(meta)
    tensors = load_file(str(tensors_from or src))
    dst_folder.mkdir(parents=True, exist_ok=True)
    dst = dst_folder / "checkpoint.safetensors"
    save_file(tensors, str(dst), metadata={META_KEY: json.dumps(meta)})
    return dst


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def good_mixture(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("mix"), data=DataConfig(kind="mixture", image_size=8, n=16))


def invoke(args: list[str]):
    t0 = time.perf_counter()
    with deadline(DEADLINE_S):
        r = runner.invoke(app, args)
    return r, time.perf_counter() - t0


def assert_one_line_error(r, elapsed: float, *words: str) -> str:
    assert not isinstance(r.exception, _Deadline), f"no answer within {DEADLINE_S} s"
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert elapsed < FAST_S, f"took {elapsed:.1f} s"
    return lines[0]


def command(name: str, path: Path, tmp: Path) -> list[str]:
    if name == "sample":
        return ["sample", "--checkpoint", str(path), "-n", "2", "--out", str(tmp / "s"), "--device", "cpu"]
    if name == "evaluate":
        return ["evaluate", "--checkpoint", str(path), "-n", "4", "--device", "cpu"]
    return ["train", "--resume", str(path), "--steps", "2", "--device", "cpu", "--eval-n", "0",
            "--n-samples", "1", "--out", str(tmp / "r")]


def test_rewritten_but_unchanged_checkpoint_still_works(good, tmp_path):
    """The control: rewriting the metadata as such breaks nothing, so the failures below are the edits'."""
    same = rewrite(good, tmp_path / "same")
    r, _ = invoke(["sample", "--checkpoint", str(same), "-n", "2", "--out", str(tmp_path / "s"), "--json",
                   "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shape"] == [2, 1, 8, 8]


def _set(section: str, key: str, value):
    def edit(meta):
        meta[section][key] = value
    return edit


OVER_LIMIT = [
    ("image_size 10**6", _set("data", "image_size", 10**6), ["image_size", "1000000"]),
    ("T 10**6", _set("schedule", "T", 10**6), ["T", "1000000"]),
    ("down_channels huge", _set("model", "down_channels", [100000, 200000]), ["down_channels", "100000"]),
    ("down_channels deep", _set("model", "down_channels", [8] * 40), ["down_channels", "40"]),
    ("time_emb_dim huge", _set("model", "time_emb_dim", 10**7), ["time_emb_dim", "10000000"]),
    ("image_channels huge", _set("model", "image_channels", 10**6), ["image_channels", "1000000"]),
    ("step not a number", lambda m: m.__setitem__("step", "abc"), ["step", "'abc'"]),
    ("T NaN", _set("schedule", "T", float("nan")), ["schedule T must be an integer, got nan"]),
    ("image_size 8.5", _set("data", "image_size", 8.5), ["data image_size must be an integer, got 8.5"]),
]


@pytest.mark.parametrize("edit, words", [c[1:] for c in OVER_LIMIT], ids=[c[0] for c in OVER_LIMIT])
def test_sample_refuses_sizes_over_the_limits(good, tmp_path, edit, words):
    bad = rewrite(good, tmp_path / "bad", edit)
    r, elapsed = invoke(command("sample", bad, tmp_path))
    assert_one_line_error(r, elapsed, str(bad), *words)
    assert not (tmp_path / "s").exists()  # refused before any output


@pytest.mark.parametrize("cmd", ["evaluate", "train --resume"])
@pytest.mark.parametrize("edit, words", [c[1:] for c in OVER_LIMIT[:2]], ids=[c[0] for c in OVER_LIMIT[:2]])
def test_every_load_path_refuses_them(good, tmp_path, cmd, edit, words):
    bad = rewrite(good, tmp_path / "bad", edit)
    r, elapsed = invoke(command(cmd.split()[0], bad, tmp_path))
    assert_one_line_error(r, elapsed, str(bad), *words)


@pytest.mark.parametrize(
    "edit, words",
    [
        (_set("train", "batch_size", 10**12), ["batch_size", "1000000000000"]),
        (_set("data", "n", 10**12), ["1000000000000"]),
        (_set("data", "n_components", 10**9), ["n_components", "1000000000"]),
    ],
    ids=["batch_size", "mixture n", "mixture components"],
)
def test_resume_refuses_training_sizes_over_the_limits(good_mixture, tmp_path, edit, words):
    bad = rewrite(good_mixture, tmp_path / "bad", edit)
    r, elapsed = invoke(command("train", bad, tmp_path))
    assert_one_line_error(r, elapsed, str(bad), *words)


@pytest.mark.parametrize("cmd", ["sample", "evaluate", "train --resume"])
def test_weights_of_another_width_are_refused(good, tmp_path, cmd):
    """(8, 32) weights under the (8, 16) configuration: every size is sane, the shapes disagree."""
    other = tiny_checkpoint(tmp_path / "other", down=(8, 32))
    bad = rewrite(good, tmp_path / "bad", tensors_from=other)
    assert read_meta(bad)["model"]["down_channels"] == [8, 16]
    r, elapsed = invoke(command(cmd.split()[0], bad, tmp_path))
    line = assert_one_line_error(r, elapsed, str(bad), "do not match", "[8, 16]")
    assert "32" in line  # the stored width that disagrees is named


def test_config_shapes_that_imply_more_weights_than_stored(good, tmp_path):
    """A config describing a deeper model than the stored weights: refused, the missing weight named."""
    bad = rewrite(good, tmp_path / "bad", _set("model", "down_channels", [8, 16, 32]))
    r, elapsed = invoke(command("sample", bad, tmp_path))
    assert_one_line_error(r, elapsed, str(bad), "do not match", "missing")


def test_train_refuses_what_a_checkpoint_may_not_hold(tmp_path):
    """The same limits hold when a run starts, so every checkpoint ddpm-check writes loads again."""
    for args, word in ((["-T", "1000000"], "1000000"), (["--image-size", "4096"], "4096"),
                       (["--batch-size", "2000000"], "2000000")):
        r, elapsed = invoke(["train", "--small", "--out", str(tmp_path / "o"), *args])
        assert_one_line_error(r, elapsed, word)
        assert not (tmp_path / "o" / "checkpoint.safetensors").exists()


def test_the_limit_check_itself_names_a_huge_T(good):
    meta = read_meta(good)
    meta["schedule"]["T"] = 10**9
    with pytest.raises(DDPMCheckError, match=r"^checkpoint 'x\.safetensors': .*T.*1000000000"):
        ckpt.check_limits(meta, "checkpoint 'x.safetensors'")
    meta["schedule"] = {"kind": "custom", "T": 3, "betas": [0.1] * 200_000}
    with pytest.raises(DDPMCheckError, match="200000"):
        ckpt.check_limits(meta, "checkpoint 'x.safetensors'")
    ckpt.check_limits(read_meta(good), "checkpoint 'x.safetensors'")  # the real file is within them


@pytest.mark.parametrize("cmd", ["sample", "evaluate", "train"])
def test_non_finite_weights_are_refused_naming_the_tensor(good, tmp_path, cmd):
    """NaN EMA weights sampled NaN images with exit 0, and --resume trained on silently."""
    tensors = load_file(str(good))
    name = next(k for k in tensors if k.startswith("ema/") and tensors[k].is_floating_point() and tensors[k].numel() > 4)
    tensors[name][:2] = float("nan")
    tmp = tmp_path / "w"
    tmp.mkdir()
    save_file(tensors, str(tmp / "nan.safetensors"))
    bad = rewrite(good, tmp_path / "bad", tensors_from=tmp / "nan.safetensors")
    r, elapsed = invoke(command(cmd, bad, tmp_path))
    assert_one_line_error(r, elapsed, "weights are not finite", name, "2 NaN or inf")
