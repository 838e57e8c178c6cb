import functools
import warnings

import pytest

from ddpm_check import montecarlo as mc


@functools.lru_cache(maxsize=None)
def _run(name: str, variant: str | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mc.run_check(name, variant=variant)


@pytest.fixture(scope="session")
def checked():
    """checked(name, variant=None): the check's result at its defaults, run once per session."""
    return _run
