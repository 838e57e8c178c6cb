"""The README's examples work: its Python blocks run, every option its commands and option
lists name is one the command has (an option renamed or dropped fails here), every registered
command has an example, and the listings it pastes are what the registries list now."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from cli import app
from ddpm_check.commands import COMMANDS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _options(command: str) -> set[str]:
    group = typer.main.get_command(app)
    cmd = group.commands[command] if command else group
    names = {"--help"}
    for p in cmd.params:  # typer's own click-like objects (not necessarily click's classes)
        if getattr(p, "param_type_name", "") == "option":
            names.update(p.opts)
            names.update(p.secondary_opts)
    return names


def _command_lines() -> list[list[str]]:
    """Each `ddpm-check ...` invocation in the README's code blocks, as words (up to a pipe)."""
    out = []
    for lang, body in FENCE.findall(README):
        body = body.replace("\\\n", " ")
        for line in body.splitlines():
            line = line.strip()
            if lang != "bash" and not line.startswith("$ "):
                continue  # a text block: only its prompt lines are commands, the rest is output
            line = line.removeprefix("$ ")
            for part in line.split("&&"):
                words = shlex.split(part.split("|")[0])
                if "ddpm-check" in words:
                    out.append(words[words.index("ddpm-check") + 1:])
    return out


def test_the_readme_has_examples_to_check():
    lines = _command_lines()
    assert len(lines) >= 10
    assert {w[0] for w in lines if w} >= set(COMMANDS)


@pytest.mark.parametrize("words", _command_lines(), ids=lambda w: " ".join(w)[:60])
def test_commands_in_code_blocks_use_real_options(words):
    group = typer.main.get_command(app)
    command = words[0] if words and words[0] in group.commands else ""
    if words and not command:
        assert words[0].startswith("-"), f"unknown command {words[0]!r}"
    known = _options(command)
    for w in words:
        if w.startswith("--") or re.fullmatch(r"-[A-Za-z]", w):
            assert w.split("=")[0] in known, f"`ddpm-check {command}` has no option {w}"


def _paragraph(start: str) -> str:
    i = README.index(start)
    return README[i:README.index("\n\n", i)]


@pytest.mark.parametrize("start, commands", [
    ("`ddpm-check train` options:", ["train"]),
    ("Both take `--seed`", ["sample", "evaluate"]),
])
def test_option_lists_in_prose_name_real_options(start, commands):
    text = _paragraph(start)
    named = set()
    for span in re.findall(r"`([^`]+)`", text):
        named.update(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[A-Za-z])\b", span))
    assert len(named) >= 5, named
    if start.startswith("Both"):  # "`sample` also ..." : the rest of the paragraph is sample's alone
        head, tail = text.split("`sample` also", 1)
        both = {o for s in re.findall(r"`([^`]+)`", head) for o in re.findall(r"--[a-z][a-z0-9-]*", s)}
        only_sample = {o for s in re.findall(r"`([^`]+)`", tail) for o in re.findall(r"--[a-z][a-z0-9-]*", s)}
        for c in commands:
            assert both <= _options(c), (c, both - _options(c))
        assert only_sample <= _options("sample"), only_sample - _options("sample")
        return
    for c in commands:
        assert named <= _options(c), (c, named - _options(c))


def test_python_blocks_run(tmp_path, monkeypatch):
    blocks = [body for lang, body in FENCE.findall(README) if lang == "python"]
    assert blocks
    monkeypatch.chdir(tmp_path)
    for body in blocks:
        exec(compile(body, "README.md", "exec"), {})


def _pasted(command: str) -> list[str]:
    """The output lines the README pastes under ``$ ddpm-check COMMAND`` (up to the fence)."""
    start = README.index(f"$ ddpm-check {command}\n") + len(f"$ ddpm-check {command}\n")
    return [line.rstrip() for line in README[start:README.index("```", start)].splitlines()]


@pytest.mark.parametrize("command", ["derive", "check", "derive nope"])
def test_pasted_listings_are_the_registries(command):
    """`ddpm-check derive` and `ddpm-check check` list the registries, and an unknown name lists the
    valid ones: a registered derivation or check (or variant) missing from the README fails here."""
    from typer.testing import CliRunner

    real = CliRunner().invoke(app, command.split(), env={"COLUMNS": "100"}).output
    assert _pasted(command) == [line.rstrip() for line in real.splitlines()]
