"""What every command does with a failure: one line on stderr, exit code 2, no traceback, and
the user's own text (paths with brackets) printed as given."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def _one_error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert lines[0].startswith("error:")
    return lines[0]


@pytest.mark.parametrize("name", ["imgs[/x]", "imgs[bold]", "a[link=b]c"])
def test_a_bracketed_path_is_printed_as_given(tmp_path, name):
    # rich would read "[/x]" as a closing tag (a MarkupError traceback) and "[bold]" as a style
    missing = tmp_path / name
    r = runner.invoke(app, ["train", "--data", str(missing), "--steps", "1", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert str(missing) in _one_error_line(r)


@pytest.mark.parametrize("message", [
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 491520000000 bytes. Error code 12 (Cannot allocate memory)",
    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 139.8 GiB\nmore detail",
])
def test_out_of_memory_is_one_line_that_says_what_to_do(monkeypatch, message):
    from ddpm_check import schedules

    def boom(*a, **k):
        raise RuntimeError(message)

    monkeypatch.setattr(schedules.Schedule, "from_config", boom)
    r = runner.invoke(app, ["schedule", "--no-plot"])
    assert r.exit_code == 2
    line = _one_error_line(r)
    assert "out of memory" in line and "smaller --batch-size" in line
    assert message.splitlines()[0][:60] in line  # the allocator's own words, brackets kept


def test_out_of_memory_as_memoryerror(monkeypatch):
    from ddpm_check import schedules

    def boom(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(schedules.Schedule, "from_config", boom)
    r = runner.invoke(app, ["schedule", "--no-plot"])
    assert r.exit_code == 2
    assert "out of memory (MemoryError)" in _one_error_line(r)


def test_other_runtime_errors_are_not_disguised(monkeypatch):
    # a bug must stay a bug: only out-of-memory errors become a one-line message
    from ddpm_check import schedules

    def boom(*a, **k):
        raise RuntimeError("shape mismatch in some kernel")

    monkeypatch.setattr(schedules.Schedule, "from_config", boom)
    r = runner.invoke(app, ["schedule", "--no-plot"])
    assert r.exit_code != 0 and r.exit_code != 2
    assert isinstance(r.exception, RuntimeError) and "shape mismatch" in str(r.exception)


@pytest.mark.parametrize("command", [
    ["train", "--small", "--steps", "1", "--out"],
    ["schedule", "--plot"],
])
def test_an_output_path_that_cannot_be_made_is_one_line(tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "sub" / ("plot.png" if command[0] == "schedule" else "run")
    r = runner.invoke(app, [*command, str(target)])
    assert r.exit_code == 2, r.output
    line = _one_error_line(r)
    assert "cannot use" in line and str(blocker) in line and "a part of the path is a file, not a folder" in line
    assert blocker.read_text() == "not a folder"  # nothing of the user's was touched


@pytest.mark.parametrize("args, expected", [
    # 2 channels trained, then failed to draw the pictures with a matplotlib traceback
    (["train", "--data", "mixture", "--channels", "2", "--image-size", "8", "--steps", "1"],
     "mixture images have 1 (grey) or 3 (RGB) channels, got 2"),
    # seeds past 2**63 - 1 overflowed torch.Generator.manual_seed after training
    (["train", "--small", "--steps", "1", "--seed", str(2**64)], f"seed must be an integer from 0 to 2**63 - 1, got {2**64}"),
    (["sample", "--checkpoint", "nowhere", "--seed", str(2**63)], f"--seed must be an integer from 0 to 2**63 - 1, got {2**63}"),
    (["evaluate", "--checkpoint", "nowhere", "--seed", "-1"], "--seed must be an integer from 0 to 2**63 - 1, got -1"),
    # each of these was accepted and did something else than asked (found by an audit of the CLI)
    (["train", "--small", "--steps", "1", "--eval-n", "1"],  # skipped the score without a word
     "--eval-n must be 0 (no score) or at least 2 (a Frechet distance needs 2 samples), got 1"),
    (["train", "--small", "--steps", "1", "--n-samples", "0"],  # drew 1 image all the same
     "--n-samples must be >= 1 (the images in samples.png), got 0"),
    (["train", "--small", "--steps", "1", "--channels-list", "32,,64"],  # became [32, 64]
     "--channels-list '32,,64' is not a comma-separated list of integers, e.g. 64,128,256"),
    (["check", "--variant", "no_noise"],  # listed the checks, exit 0
     "--variant needs a check name: ddpm-check check NAME ... (ddpm-check check lists them)"),
    (["check", "marginal", "--steps", "10"],  # ignored --steps
     "--steps applies to the network check only (check network, or check all --network)"),
    (["check", "all", "--steps", "10"], "--steps applies to the network check only (check network, or check all --network)"),
    (["derive", "posterior", "--format", "latex", "--json"],  # printed JSON
     "--json is --format json; it cannot go with --format latex"),
])
def test_bad_values_fail_before_any_work(tmp_path, args, expected):
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "o")] if args[0] == "train" else args)
    assert r.exit_code == 2, r.output
    assert _one_error_line(r) == f"error: {expected}"
    assert not (tmp_path / "o").exists()  # nothing written


def test_the_largest_seed_works(tmp_path):
    from ddpm_check.errors import MAX_SEED, check_seed

    assert check_seed(MAX_SEED) == 2**63 - 1
    r = runner.invoke(app, ["train", "--small", "--steps", "1", "-T", "5", "--eval-n", "0", "--n-samples", "1",
                            "--seed", str(MAX_SEED), "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output


HUGE = "99999999999999999999999"


@pytest.mark.parametrize("args, expected", [
    # each raised a numpy or scipy traceback ("Maximum allowed size exceeded", a gammaincinv TypeError)
    (["check", "marginal", "--samples", HUGE], f"samples must be an integer from 1 to 10,000,000, got {HUGE}"),
    (["check", "marginal", "--T", HUGE], f"T must be at most 100,000, got {HUGE}"),
    (["schedule", "--no-plot", "--T", HUGE], f"T must be at most 100,000, got {HUGE}"),
    (["audit", "--samples", HUGE], f"--samples must be an integer from 100 to 10,000,000, got {HUGE}"),
    (["audit", "--samples", "99"], "--samples must be an integer from 100 to 10,000,000, got 99"),
    # alpha_bar_t underflows to 0: mean-eps reported a false FAIL, the network check a ZeroDivisionError
    (["check", "mean-eps", "--beta-start", "0.9", "--beta-end", "0.99"],
     "alpha_bar_t underflows to 0 from t = 260 on (linear, T = 300, betas 0.9 to 0.99): x_t keeps nothing of "
     "x_0 there and the formulas under test divide by alpha_bar_t; choose smaller betas or a smaller T"),
    (["check", "network", "--steps", "3", "--beta-start", "0.9", "--beta-end", "0.99"],
     "alpha_bar_t underflows to 0 from t = 260 on (linear, T = 300, betas 0.9 to 0.99): x_t keeps nothing of "
     "x_0 there and the formulas under test divide by alpha_bar_t; choose smaller betas or a smaller T"),
])
def test_sizes_beyond_the_limits_are_one_line(args, expected):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert _one_error_line(r) == f"error: {expected}"


def test_the_limits_themselves_are_allowed():
    from ddpm_check.schedules import MAX_T, make_schedule
    from ddpm_check.stats import MAX_SAMPLES, check_samples

    assert make_schedule("linear", T=MAX_T).T == 100_000
    assert check_samples(MAX_SAMPLES) == 10_000_000


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_too_many_samples_is_refused_before_the_progress_bar(tiny_run, command):
    # the refusal came from inside the (transient) progress bar, which left a blank line on stdout
    r = runner.invoke(app, [command, "--checkpoint", str(tiny_run), "-n", "1000000000000"])
    assert r.exit_code == 2
    line = _one_error_line(r)
    assert "1,000,000,000,000 samples of shape [1, 8, 8] need" in line and "(-n)" in line
    assert r.stdout == ""


QUICK = ["--small", "--steps", "2", "-T", "10", "--eval-n", "0", "--n-samples", "1", "--checkpoint-every", "0"]


def test_resume_never_overwrites_another_run(tiny_run, tmp_path):
    other = tmp_path / "other"
    r = runner.invoke(app, ["train", *QUICK, "--seed", "7", "--out", str(other)])
    assert r.exit_code == 0, r.output
    before = {f: (other / f).read_bytes() for f in ("checkpoint.safetensors", "config.json")}
    r = runner.invoke(app, ["train", "--resume", str(tiny_run), "--steps", "4", "--out", str(other)])
    assert r.exit_code == 2
    assert _one_error_line(r) == (f"error: output folder {str(other)!r} already holds another run's checkpoint; "
                                  f"choose another --out (without --out the run goes on in {str(tiny_run)!r})")
    assert {f: (other / f).read_bytes() for f in before} == before
    # into a new folder, or on in its own, it goes
    r = runner.invoke(app, ["train", "--resume", str(tiny_run), "--steps", "3", "--out", str(tmp_path / "new"),
                            "--eval-n", "0", "--n-samples", "1", "--json"])
    assert r.exit_code == 0, r.output


def test_a_fresh_run_does_not_overwrite_run_files(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "samples.png").write_bytes(b"mine")
    r = runner.invoke(app, ["train", *QUICK, "--out", str(folder)])
    assert r.exit_code == 2
    assert _one_error_line(r) == (f"error: output folder {str(folder)!r} already holds samples.png, which this "
                                  f"run would overwrite; choose another --out or move them")
    assert (folder / "samples.png").read_bytes() == b"mine"


@pytest.mark.parametrize("name", ["/abs", "../escape", ".", "..", "a/b", " "])
def test_name_is_a_folder_name_not_a_path(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", *QUICK, "--name", name])
    assert r.exit_code == 2
    assert _one_error_line(r) == (f"error: --name must be a plain folder name (no '/', not '.' or '..'), "
                                  f"got {name!r}; --out takes a path")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("extra, expected", [
    (["--name", "a", "--out", "b"], "--name and --out both choose the output folder; give one of them"),
    (["--schedule", "cosine", "--beta-end", "0.1"], "--beta-start/--beta-end apply to the linear schedule only, not 'cosine'"),
])
def test_conflicting_train_options(extra, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", *QUICK, *extra])
    assert r.exit_code == 2 and _one_error_line(r) == f"error: {expected}"


def test_resume_names_the_options_it_ignores(tiny_run, tmp_path):
    import json
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    args = ["train", "--resume", str(run), "--steps", "2", "--image-size", "16", "--lr", "0.5",
            "--eval-n", "0", "--n-samples", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "ignored with --resume, the checkpoint's settings hold: --image-size, --lr" in r.stdout
    r = runner.invoke(app, [*args, "--steps", "3", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["ignored_options"] == ["--image-size", "--lr"]


@pytest.mark.parametrize("target, expected", [
    ("afile", "cannot use {afile!r}: a file of that name is in the way (a folder is needed)"),
    ("afile/x", "cannot use {sub!r}: a part of the path is a file, not a folder"),
])
def test_a_file_in_the_way_of_an_output_folder(target, expected, tmp_path):
    (tmp_path / "afile").write_text("keep")
    path = tmp_path / target
    r = runner.invoke(app, ["train", *QUICK, "--out", str(path)])
    assert r.exit_code == 2
    assert _one_error_line(r) == "error: " + expected.format(afile=str(tmp_path / "afile"), sub=str(path))
    assert (tmp_path / "afile").read_text() == "keep"


def test_a_failed_training_leaves_no_empty_folders(tmp_path):
    # the loss becomes nan: the folders this run made (runs/x and its parents) go again;
    # a folder the user made stays
    args = ["train", "--small", "--steps", "30", "-T", "20", "--eval-n", "0", "--n-samples", "1", "--lr", "1e6"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "new" / "run")])
    assert r.exit_code == 2 and "the loss became nan" in _one_error_line(r)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "mine")])
    assert r.exit_code == 2 and (tmp_path / "mine").is_dir()


@pytest.mark.parametrize("args, code, words", [
    (["derive", "nope", "--json"], 2, "no derivation 'nope'"),
    (["derive", "nope", "--format", "json"], 2, "no derivation 'nope'"),
    (["check", "nope", "--json"], 2, "unknown check 'nope'"),
    (["schedule", "--kind", "sigmoid", "--json", "--no-plot"], 2, "unknown --kind 'sigmoid'"),
    (["sample", "--checkpoint", "no/such/run", "--json"], 2, "no/such/run"),
    (["evaluate", "--checkpoint", "no/such/run", "--json"], 2, "no/such/run"),
    (["train", "--small", "--steps", "-3", "--json"], 2, "-3"),
    (["audit", "--only", "nope", "--json"], 2, "unknown claim 'nope'"),
])
def test_with_json_a_failure_is_a_json_object_on_stdout(args, code, words):
    """Scripts parse stdout: with --json a failure is {"error", "exit_code"} there, and still one
    red line on stderr."""
    r = runner.invoke(app, args)
    assert r.exit_code == code, r.output
    doc = json.loads(r.stdout)
    assert set(doc) == {"error", "exit_code"} and doc["exit_code"] == code and words in doc["error"]
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("target, args", [
    ("ddpm_check.montecarlo.runner.run_check", ["check", "marginal"]),
    ("ddpm_check.diagnostics.diagnose", ["schedule", "--no-plot"]),
])
def test_ctrl_c_in_any_command_is_one_line_and_130(monkeypatch, target, args, as_json):
    """Ctrl-C during `check` or `schedule` exited 130 with no output at all."""
    import importlib

    module, name = target.rsplit(".", 1)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    r = runner.invoke(app, args + (["--json"] if as_json else []))
    assert r.exit_code == 130, r.output
    assert r.stderr == "error: interrupted\n"
    assert (json.loads(r.stdout) == {"error": "interrupted", "exit_code": 130}) if as_json else r.stdout == ""


def test_ctrl_c_while_sampling_is_one_line_and_130(monkeypatch, tiny_run):
    import ddpm_check.sample as sample_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_mod, "sample_with_strip", interrupted)
    r = runner.invoke(app, ["sample", "--checkpoint", str(tiny_run), "-n", "2", "--out", str(tiny_run.parent / "x")])
    assert r.exit_code == 130 and r.stderr == "error: interrupted\n", r.output


@pytest.mark.parametrize("args, words", [
    (["train", "--steps", "1.5"], ["'--steps'", "'1.5'", "ddpm-check train --help"]),
    (["train", "--lr-warmup=abc"], ["'--lr-warmup'", "'abc'"]),
    (["check", "paths", "-T", "abc"], ["'abc'", "-T"]),
    (["train", "--bogus"], ["No such option: --bogus"]),
    (["evaluate"], ["Missing option '--checkpoint'", "ddpm-check evaluate --help"]),
    (["nosuch"], ["No such command 'nosuch'"]),
])
def test_a_value_the_parser_refuses_is_one_line_naming_it(args, words):
    # not Typer's boxed panel: the same one red line as every other bad input, and JSON for scripts
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    line = _one_error_line(r)
    for w in words:
        assert w in line, (w, line)
    j = runner.invoke(app, [*args, "--json"] if args[0] != "nosuch" else args)
    assert j.exit_code == 2
    if args[0] != "nosuch":
        assert json.loads(j.stdout) == {"error": line.removeprefix("error: "), "exit_code": 2}


def test_no_arguments_still_shows_the_help():
    r = runner.invoke(app, [])
    assert r.exit_code == 2 and "Usage: ddpm-check" in r.output and "error:" not in r.output
