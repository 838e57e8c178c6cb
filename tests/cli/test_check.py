"""`ddpm-check check`: the table, the JSON, exit codes (0 pass, 1 a failed check, 2 bad input)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import cli
from ddpm_check import stats
from ddpm_check.montecarlo import CHECKS

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(cli.app, ["check", *args])


@pytest.fixture(scope="module")
def all_json():
    res = _invoke("all", "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_list_names_every_check_and_its_variants():
    res = _invoke()
    assert res.exit_code == 0
    for name in ("marginal", "posterior", "mean-eps", "sampler", "network", "all"):
        assert name in res.stdout
    assert "beta_for_beta_tilde" in res.stdout and "wrong variants" in res.stdout


def test_listing_imports_no_torch():
    code = ("import sys; from typer.testing import CliRunner; import cli; "
            "r = CliRunner().invoke(cli.app, ['check']); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules and 'sympy' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_check_all_json_content(all_json):
    d = all_json
    assert d["passed"] is True and d["root_seed"] == stats.DEFAULT_ROOT_SEED
    assert d["alpha_fw"] == stats.ALPHA_FW and d["beta"] == stats.BETA
    assert [c["check"] for c in d["checks"]] == [n for n, e in CHECKS.items() if not e.slow]
    for c in d["checks"]:
        assert c["verdict"] == "pass" and c["seed"] == stats.seed_for(c["check"], stats.DEFAULT_ROOT_SEED)
        assert c["runtime_s"] >= 0 and c["n_tests"] == sum(r["role"] == "test" for r in c["rows"])
        for r in c["rows"]:
            for key in ("quantity", "expected", "estimate", "se", "statistic", "threshold", "alpha",
                        "delta", "n", "seed", "verdict", "role"):
                assert key in r
            assert r["verdict"] in ("pass", "info", "finding")
    sampler = d["checks"][3]
    assert any(r["verdict"] == "finding" and "T=300 (source)" in r["where"] for r in sampler["rows"])
    # the family-wise false-failure budget of `check all` (with room for the network check)
    assert sum(r["alpha"] for c in d["checks"] for r in c["rows"] if r["role"] == "test") <= stats.ALPHA_FW


def test_table_shows_columns_verdicts_and_findings():
    res = _invoke("sampler")
    assert res.exit_code == 0, res.output
    out = res.stdout
    for col in ("check", "quantity", "expected", "estimate", "SE", "statistic", "threshold",
                "detectable δ", "n", "verdict"):
        assert col in out
    assert "sampler: pass" in out and "pass (4)" in out and "finding 4/4" in out
    assert "T=300 (source)" in out and "TV(q(x_T), N(0,I))" in out
    assert "E[eps|x_t]" in out  # notes are printed verbatim (no markup eaten)
    assert f"seed {stats.seed_for('sampler', stats.DEFAULT_ROOT_SEED)}" in out


def test_full_table_has_one_row_per_statistic():
    res = _invoke("mean-eps", "--full")
    assert res.exit_code == 0
    assert res.stdout.count("all t") == 7 and "worst" not in res.stdout


def test_a_wrong_variant_fails_with_exit_1_and_prints_the_seed():
    res = _invoke("mean-eps", "--variant", "beta_for_beta_tilde", "--seed", "11")
    assert res.exit_code == 1
    assert "mean-eps: FAIL" in res.stdout and "FAIL" in res.stdout
    assert "FAILED: mean-eps (root seed 11; rerun with --seed 11 --variant beta_for_beta_tilde)" in res.stderr
    assert f"seed {stats.seed_for('mean-eps', 11)}" in res.stdout


def test_a_variant_that_changes_nothing_here_says_so():
    # at T = 2 the graph loop draws noise once: reusing its first draw is the correct loop
    res = _invoke("paths", "-T", "2", "--variant", "graph_noise_drawn_once")
    assert res.exit_code == 0
    assert "variant graph_noise_drawn_once was not rejected with this schedule and seed" in res.stdout


def test_variant_json_reports_failure():
    res = _invoke("posterior", "--variant", "beta_for_beta_tilde", "--json", "--schedule", "linear", "--T", "50")
    assert res.exit_code == 1
    d = json.loads(res.stdout)
    assert d["passed"] is False and d["checks"][0]["variant"] == "beta_for_beta_tilde"
    bad = [r for r in d["checks"][0]["rows"] if r["verdict"] == "FAIL"]
    assert bad and all(r["quantity"] == "resid var = beta_tilde" for r in bad)


def test_another_schedule_and_seed():
    res = _invoke("marginal", "--schedule", "cosine", "--T", "100", "--seed", "3", "--json")
    assert res.exit_code == 0, res.output
    c = json.loads(res.stdout)["checks"][0]
    assert c["schedule"]["kind"] == "cosine" and c["schedule"]["T"] == 100
    assert c["seed"] == stats.seed_for("marginal", 3) and c["root_seed"] == 3


@pytest.mark.parametrize("args, words", [
    (["all", "--samples", "0"], ["samples must be an integer from 1 to 10,000,000, got 0"]),
    (["nope"], ["unknown check 'nope'", "marginal", "all"]),
    (["marginal", "--samples", "100"], ["--samples 100 is too small", "use --samples >="]),
    (["marginal", "--variant", "nope"], ["unknown variant 'nope'"]),
    (["all", "--variant", "beta_for_beta_tilde"], ["--variant needs one check name"]),
    (["marginal", "--schedule", "cosine", "--beta-start", "0.1"], ["--beta-start/--beta-end apply to the linear"]),
    (["marginal", "--schedule", "sigmoid"], ["unknown --schedule 'sigmoid'"]),
    (["marginal", "--T", "0"], ["T must be an integer >= 1, got 0"]),
    (["network", "--steps", "0"], ["--steps must be >= 1"]),
    (["mean-eps", "--seed", "-1"], ["seed must be an integer from 0 to 2**63 - 1, got -1"]),
])
def test_bad_input_exits_2_with_one_red_line(args, words):
    res = _invoke(*args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    err = " ".join(res.stderr.split())  # rich may wrap the line
    for w in words:
        assert w in err
