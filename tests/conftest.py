import os

import pytest
from hypothesis import HealthCheck, settings

# Property tests are for exact identities only (docs/TESTING.md, section 1).  The CI profile is
# derandomized so a run is reproducible and cannot fail by luck.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder of `train --small` for 2 steps (T = 10): for tests that sample, score or
    resume it elsewhere.  Tests must not write into it."""
    from typer.testing import CliRunner

    from cli import app

    run = tmp_path_factory.mktemp("tiny") / "run"
    r = CliRunner().invoke(app, ["train", "--small", "--steps", "2", "-T", "10", "--eval-n", "0", "--n-samples", "1",
                                 "--checkpoint-every", "0", "--out", str(run)])
    assert r.exit_code == 0, r.output
    return run
