"""The contract every registered command meets (``ddpm_check.commands.COMMANDS``): a command is
tested by being registered.  cli.py registers exactly the registry, in its order; each command's
help starts with its summary; every option has help text; every command has --json."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from cli import app
from ddpm_check.commands import COMMANDS

runner = CliRunner()
GROUP = typer.main.get_command(app)


def test_the_app_registers_the_registry_in_order():
    assert list(GROUP.commands) == list(COMMANDS)
    listing = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    for name, entry in COMMANDS.items():
        assert f"{name}  " in listing and entry.summary in listing, name


@pytest.mark.parametrize("name", COMMANDS.names)
def test_command_help_starts_with_its_summary(name):
    r = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert COMMANDS[name].summary in r.output
    assert callable(COMMANDS[name].load().command)


@pytest.mark.parametrize("name", COMMANDS.names)
def test_every_option_is_explained_and_json_is_offered(name):
    cmd = GROUP.commands[name]
    flags = {f for p in cmd.params for f in p.opts}
    assert "--json" in flags
    for p in cmd.params:
        assert (p.help or "").strip(), f"{name}: {p.opts} has no help text"


def test_audit_help_names_every_claim():
    """The --only help lists the claim ids by hand (audit.py is heavy to import at --help)."""
    from ddpm_check.audit import CLAIM_IDS

    only = next(p for p in GROUP.commands["audit"].params if "--only" in p.opts)
    named = only.help.split("Ids:", 1)[1].replace(" ", "").rstrip(".").split(",")
    assert named == list(CLAIM_IDS)
