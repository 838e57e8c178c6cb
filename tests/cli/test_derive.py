"""`ddpm-check derive`: printed content of every format, listing, and bad input."""

from __future__ import annotations

import json
import re

import pytest
import sympy as sp
import typer.main
from typer.testing import CliRunner

import derivations
from cli import app

runner = CliRunner()


def invoke(*args: str):
    """Run `ddpm-check derive ARGS` (Typer collapses a one-command app: then omit 'derive')."""
    is_group = hasattr(typer.main.get_command(app), "commands")
    return runner.invoke(app, (["derive"] if is_group else []) + list(args))


def test_list_without_name():
    r = invoke()
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == list(derivations.NAMES) + ["all"]
    assert "Bayes" in r.output and "eq. 4" in r.output


def test_list_json():
    r = invoke("--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert [d["name"] for d in data["derivations"]] == list(derivations.NAMES)


@pytest.mark.parametrize("name", derivations.NAMES)
def test_text(name):
    r = invoke(name, "--width", "110")
    assert r.exit_code == 0, r.output
    n = len(derivations.get(name).steps)
    for i in range(1, n + 1):
        assert re.search(rf"^\s*{i}\. ✓ ", r.output, re.M), f"step {i} missing"
    assert "results" in r.output and "╭" in r.output
    for key in derivations.get(name).results:
        assert f"{key} =" in r.output


def test_text_posterior_content():
    r = invoke("posterior", "--width", "120")
    assert "Bayes' rule" in r.output and "complete the square" in r.output
    assert "[eq. 7]" in r.output and "[eq. 6]" in r.output
    assert "q(xₜ₋₁ | xₜ, x₀)" in r.output and "𝒩(xₜ₋₁; μ̃ₜ, β̃ₜ)" in r.output
    assert "β̃_1 = 0" in r.output  # the t = 1 note


@pytest.mark.parametrize("name", ["marginal", "posterior", "mean-eps", "elbo"])
def test_latex(name):
    r = invoke(name, "--format", "latex")
    assert r.exit_code == 0, r.output
    assert r"\begin{enumerate}" in r.output and r"\begin{equation*}" in r.output
    assert r"\frac" in r.output and r"\boxed" in r.output and r"\sqrt" in r.output


def test_markdown():
    r = invoke("mean-eps", "-f", "markdown")
    assert r.exit_code == 0
    assert r.output.startswith("## mean-eps")
    assert "### Results" in r.output and "$$" in r.output and r"\tilde{\beta}_{t}" in r.output
    assert "**8.** ✓" in r.output


@pytest.mark.parametrize("name", derivations.NAMES)
def test_json_parses_back_to_the_results(name):
    r = invoke(name, "--format", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    d = derivations.get(name)
    assert data["verified"] is True and len(data["steps"]) == len(d.steps)
    for key, expr in d.results.items():
        assert sp.parse_expr(data["results"][key]["srepr"]) == expr
        assert sp.simplify(derivations.parse(data["results"][key]["str"]) - expr) == 0
    step = data["steps"][0]
    assert sp.parse_expr(step["lhs"]["srepr"]) == d.steps[0].lhs


def test_json_flag_and_all():
    r = invoke("all", "--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert [d["name"] for d in data["derivations"]] == list(derivations.NAMES)
    assert all(d["verified"] for d in data["derivations"])


def test_all_text():
    r = invoke("all", "--width", "120")
    assert r.exit_code == 0
    for name in derivations.NAMES:
        assert f"{name}: " in r.output
    assert r.output.count("✓") >= sum(len(derivations.get(n).steps) for n in derivations.NAMES)


def test_unknown_name_is_one_line_exit_2():
    r = invoke("posteriour")
    assert r.exit_code == 2
    out = r.output.strip()
    assert "Traceback" not in out
    assert "'posteriour'" in out
    for name in list(derivations.NAMES) + ["all"]:
        assert name in out
    assert len(out.splitlines()) == 1


def test_unknown_format_exit_2():
    r = invoke("posterior", "--format", "html")
    assert r.exit_code == 2
    assert "'html'" in r.output and "latex" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("width", ["-1", "0", "19"])
def test_a_width_too_narrow_is_one_line(width):
    # --width -1 printed nothing and exited 0; 0 fell back to the terminal's width silently
    r = invoke("posterior", "--width", width)
    assert r.exit_code == 2
    assert r.output.strip() == f"error: --width must be at least 20 columns, got {width}"


def test_the_narrowest_width_still_prints_every_step():
    r = invoke("posterior", "--width", "20")
    assert r.exit_code == 0
    assert r.output.count("✓") >= len(derivations.get("posterior").steps)
    from rich.cells import cell_len  # terminal columns: a combining tilde takes none

    assert max(cell_len(line.rstrip()) for line in r.output.splitlines()) <= 20


def test_a_step_that_fails_to_verify_exits_1(monkeypatch):
    from derivations.step import DerivationError

    def broken(name):
        raise DerivationError(f"{name}: step 3 (two-step) does not hold")

    monkeypatch.setattr(derivations, "get", broken)
    r = invoke("marginal")
    assert r.exit_code == 1
    assert "step 3 (two-step) does not hold" in r.output and "Traceback" not in r.output
