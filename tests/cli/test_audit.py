"""`ddpm-check audit`: the full audit (JSON and text), a subset, and bad input.

The full audit runs the toolkit's Monte Carlo checks it cites (marginal, posterior, mean-eps,
sampler); their results are cached per process, so the second full run here is cheap.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "200"}

EXPECTED = {
    "forward-step-index": "erratum",
    "alpha-to-zero": "erratum",
    "gaussian-merge": "holds",
    "closed-form": "holds",
    "alpha-bar-recursion": "holds",
    "posterior": "holds",
    "sampling-step": "holds",
    "training-loss": "caveat",
    "if-t-equals-0": "erratum",
    "embedding-order": "holds",
    "positional-formula": "caveat",
    "terminal-prior": "caveat",
    "zero-snr-start": "holds",
    "sample-plot-index": "caveat",
}


@pytest.fixture(scope="module")
def audit_json():
    r = runner.invoke(app, ["audit", "--json", "--samples", "5000"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_every_claim_has_its_verdict(audit_json):
    claims = {c["id"]: c for c in audit_json["claims"]}
    assert {k: c["verdict"] for k, c in claims.items()} == EXPECTED
    assert audit_json["summary"] == {"holds": 7, "erratum": 3, "caveat": 4}
    for c in claims.values():
        assert c["source"] and c["lines"] and c["explanation"]


def test_evidence_numbers(audit_json):
    claims = {c["id"]: c for c in audit_json["claims"]}
    ab = 1.0
    for s in range(300):
        ab *= 1.0 - (1e-4 + (0.02 - 1e-4) * s / 299)
    diag = claims["terminal-prior"]["evidence"]["diagnostics"]
    assert diag["sqrt_alpha_bar_T"] == pytest.approx(math.sqrt(ab), rel=1e-12)
    ks = claims["terminal-prior"]["evidence"]["sampler_check"]["ks"]
    # the sampler check: starting from N(0, I) at T = 300 is visibly off; exact start or T = 1000 are not
    assert ks["T=300 x_T~N(0,I)"]["max_ks"] > ks["T=300 x_T~N(0,I)"]["dkwm_threshold"]
    assert ks["T=300 x_T~q(x_T)"]["max_ks"] < ks["T=300 x_T~q(x_T)"]["dkwm_threshold"]
    assert ks["T=1000 x_T~N(0,I)"]["max_ks"] < ks["T=1000 x_T~N(0,I)"]["dkwm_threshold"]
    fwd = claims["forward-step-index"]["evidence"]
    assert fwd["toolkit_check"]["failed"] > 0  # the marginal check rejects the as-written indexing
    for cid in ("gaussian-merge", "closed-form", "posterior", "sampling-step"):
        chk = claims[cid]["evidence"]["toolkit_check"]
        assert chk["failed"] == 0 and chk["tests"] > 0
    assert "ambiguous" in claims["if-t-equals-0"]["evidence"]["source_error"]


def test_text_output(audit_json):
    r = runner.invoke(app, ["audit", "--samples", "5000"], env=WIDE)
    assert r.exit_code == 0, r.output
    out = r.stdout
    for cid, verdict in EXPECTED.items():
        assert cid in out
    for word in ("ERRATUM", "HOLDS", "CAVEAT"):
        assert word in out
    assert "Boolean value of Tensor with more than one value is ambiguous" in out
    assert "sqrt(alpha_bar_T) = 0.2192" in out
    assert "14 claims: 7 hold, 3 errata, 4 caveats" in out
    assert "source: x_t = sqrt(alpha_{t-1}) x_{t-1}" in out


def test_only_subset():
    r = runner.invoke(app, ["audit", "--only", "alpha-to-zero,sample-plot-index"], env=WIDE)
    assert r.exit_code == 0, r.output
    assert "alpha-to-zero" in r.stdout and "sample-plot-index" in r.stdout and "posterior" not in r.stdout
    assert "2 claims: 0 hold, 1 erratum, 1 caveat" in r.stdout


@pytest.mark.parametrize("args, words", [
    (["--samples", "0"], ["--samples", "0"]),
    (["--seed", "-3"], ["--seed", "-3"]),
    (["--only", "nope"], ["'nope'", "forward-step-index"]),
])
def test_bad_input(args, words):
    r = runner.invoke(app, ["audit", *args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for w in words:
        assert w in r.stderr
