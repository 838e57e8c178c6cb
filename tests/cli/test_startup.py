"""Start-up: `--help` imports neither torch, sympy nor numpy; `derive` never imports torch.

Each case runs the CLI in a fresh interpreter and reports which heavy modules ended up in
sys.modules.  Only the imports are asserted; the times are measured by benchmarks/startup.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import typer.main
from cli import app
args = sys.argv[1:]
if args[:1] == ["derive"] and not hasattr(typer.main.get_command(app), "commands"):
    args = args[1:]  # a one-command Typer app has no subcommand names
code = 0
try:
    app(args, prog_name="ddpm-check")
except SystemExit as exc:
    code = exc.code or 0
print("\n" + json.dumps({"code": code, **{m: m in sys.modules for m in ("torch", "sympy", "numpy")}}))
"""


def _modules_after(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_imports_neither_torch_nor_sympy_nor_numpy():
    mods = _modules_after("--help")
    assert mods == {"code": 0, "torch": False, "sympy": False, "numpy": False}


def test_derive_list_needs_no_sympy():
    mods = _modules_after("derive")
    assert mods == {"code": 0, "torch": False, "sympy": False, "numpy": False}


@pytest.mark.parametrize("args", [("derive", "posterior"), ("derive", "all", "--json")])
def test_derive_does_not_import_torch(args):
    mods = _modules_after(*args)
    assert mods["code"] == 0
    assert mods["sympy"] is True  # the check can fail: the derivation really ran
    assert mods["torch"] is False


def test_version_is_the_installed_one_and_light():
    mods = _modules_after("--version")
    assert mods == {"code": 0, "torch": False, "sympy": False, "numpy": False}
    out = subprocess.run([sys.executable, "-m", "cli", "--version"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    text = (ROOT / "pyproject.toml").read_text()
    declared = text.split("[project]", 1)[1].split("version = ", 1)[1].split("\n", 1)[0].strip('"')
    assert out.returncode == 0 and out.stdout == f"ddpm-check {declared}\n"
