"""Every command that takes the number of diffusion steps spells it the same three ways."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["train", "check", "schedule"])
def test_T_has_the_same_three_spellings_everywhere(command):
    cmd = typer.main.get_command(app).commands[command]
    opts = next(p.opts for p in cmd.params if "-T" in p.opts)
    assert set(opts) == {"-T", "--T", "--timesteps"}


@pytest.mark.parametrize("spelling", ["-T", "--T", "--timesteps"])
def test_each_spelling_sets_T(spelling):
    r = runner.invoke(app, ["schedule", "--no-plot", "--json", spelling, "40"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["schedules"][0]["T"] == 40
    r = runner.invoke(app, ["check", "marginal", "--json", spelling, "40"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["checks"][0]["schedule"]["T"] == 40
