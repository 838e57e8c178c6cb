import json

import pytest
from typer.testing import CliRunner

from cli import app

# a tiny but real `train --small`: 5 steps, T = 20, few samples
QUICK = ["--small", "--steps", "5", "-T", "20", "--eval-n", "16", "--n-samples", "4", "--checkpoint-every", "0"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(run folder, train's --json summary) of a tiny `train --small`; tests must not write into it."""
    out = tmp_path_factory.mktemp("cli") / "run"
    r = CliRunner().invoke(app, ["train", *QUICK, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def _clean_error(r, *words):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for w in words:
        assert w in r.output, (w, r.output)


@pytest.fixture(scope="session")
def clean_error():
    """clean_error(result, *words): exit code 2, no traceback, and each word in the output."""
    return _clean_error
