"""Monte Carlo checks of the derivations (``derivations/``) against the torch DDPM (``ddpm_check``).

Every check is a set of real statistical tests with declared error rates (docs/TESTING.md):
its rows say what was tested, the expected value, the estimate, its standard error, the
statistic, the threshold, alpha, the detectable error delta, n and the seed.  Expected values
come from the sympy results, lambdified (``derivations.numeric``): no formula under test is
retyped in a check.

**The registry** :data:`CHECKS` lists the checks, in the order ``check all`` runs them; each
entry (:class:`CheckEntry`) names the check, says in one line what it verifies, names its module
and what it needs: the derivations whose results it lambdifies, its default sample size, whether
it takes minutes (it trains a network: then ``check all`` runs it only with ``--network``), and
whether it runs torch single-threaded.  The number of registered checks sets each check's share
of the family-wise false-failure level (``stats.ALPHA_FW / len(CHECKS)``), so any set of them
run together stays within it; after a run :meth:`CheckContext.verify_budget` verifies that the
test rows actually produced spent no more than that share.

**A check module** (one per check, e.g. :mod:`ddpm_check.montecarlo.posterior`) defines

* ``run(ctx: CheckContext, **options) -> None``: declare the number of tests
  (``ctx.set_tests``), assert the power before sampling (``ctx.require_*``), simulate, and add
  one row per test statistic (``ctx.add``);
* ``VARIANTS``: a tuple of :class:`Variant`, the known-wrong formulas or code it must reject;
* optionally ``OPTIONS`` ({option name: validator}) for options of its own (network: ``steps``),
  and ``default_schedule_info()`` when its default is not ScheduleConfig's.

Adding a check is that module plus one :class:`CheckEntry` below; the contract tests in
``tests/montecarlo/test_contract.py`` then run it, its variants and its budget (CONTRIBUTING.md).

This module holds the registry and imports nothing heavy (the CLI lists the checks in its help);
the runner (:mod:`ddpm_check.montecarlo.runner`: ``run_check``, ``run_all``, ...) and the result
types are imported from here on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ddpm_check.registry import Entry, Registry

if TYPE_CHECKING:  # pragma: no cover
    from ddpm_check.montecarlo.variants import Variant


@dataclass(frozen=True)
class CheckEntry(Entry):
    """A registered check.

    ``summary`` is its one-line title (the formula it verifies and the paper's equation);
    ``needs`` the derivations whose results it may lambdify (``CheckContext.formulas`` refuses
    any other); ``default_samples`` its sample size when ``--samples`` is not given; ``slow``
    that it takes minutes (it trains a network): ``check all`` runs it only with ``--network``
    and its contract tests are marked slow; ``single_thread`` that torch runs on one thread
    (small tensors: threads cost more than they give).
    """

    default_samples: int = 10_000
    needs: tuple[str, ...] = ()
    slow: bool = False
    single_thread: bool = True

    @property
    def in_all(self) -> bool:
        """Whether plain ``check all`` runs it."""
        return not self.slow

    @property
    def variants(self) -> dict[str, "Variant"]:
        """The check's known-wrong variants by name (from its module's ``VARIANTS``)."""
        from ddpm_check.montecarlo.variants import by_name

        return by_name(self.load().VARIANTS)

    @property
    def options(self) -> dict[str, Callable[[Any], Any]]:
        """The check's own options and their validators (from its module's ``OPTIONS``)."""
        return dict(getattr(self.load(), "OPTIONS", {}))


CHECKS: Registry[CheckEntry] = Registry("check", (
    CheckEntry("marginal", "q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t)  (eq. 4)",
               "ddpm_check.montecarlo.marginal", default_samples=25_000, needs=("marginal",)),
    CheckEntry("posterior", "q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t)  (eqs. 6-7)",
               "ddpm_check.montecarlo.posterior", default_samples=100_000, needs=("posterior",)),
    CheckEntry("mean-eps", "mu_tilde_t in terms of eps; p_mean_variance with the true eps  (eq. 11)",
               "ddpm_check.montecarlo.mean_eps", default_samples=20_000,
               needs=("marginal", "posterior", "mean-eps")),
    CheckEntry("sampler", "p_sample_loop with the exact denoiser samples the data  (Alg. 2)",
               "ddpm_check.montecarlo.sampler", default_samples=4_000),
    CheckEntry("ddim", "DDIM keeps q(x_t | x_0) at every visited step; eta = 1, S = T is DDPM  "
               "(Song et al. eqs. 12, 16)", "ddpm_check.montecarlo.ddim", default_samples=50_000,
               needs=("marginal", "ddim")),
    CheckEntry("score", "score = -E[eps | x_t]/sqrt(1 - alpha_bar_t); Tweedie E[x_0 | x_t] = (x_t + (1 - alpha_bar_t) "
               "score)/sqrt(alpha_bar_t)  (Efron 2011)", "ddpm_check.montecarlo.score", default_samples=200_000,
               needs=("score",)),
    CheckEntry("parametrizations", "eps-, x_0- and v-prediction convert exactly; each, trained, reaches its own "
               "Bayes floor  (Salimans & Ho 2022, App. D)", "ddpm_check.montecarlo.parametrizations",
               default_samples=8_192, needs=("parametrizations",), slow=True, single_thread=False),
    CheckEntry("paths", "the code train and sample run (q_sample, p_sample, p_sample_loop, loss) held to the "
               "derivations by verify's engine  (eqs. 4, 11, 14; Alg. 2)", "ddpm_check.montecarlo.paths",
               default_samples=4_096, needs=("marginal", "mean-eps", "posterior"), single_thread=False),
    CheckEntry("network", "a trained SimpleUnet approaches the Bayes floor  (eq. 14)",
               "ddpm_check.montecarlo.network", default_samples=8_192, slow=True, single_thread=False),
))
CHECK_NAMES: tuple[str, ...] = CHECKS.names

#: names importable from here, and the module each lives in (imported on first use: numpy, scipy)
_LAZY = {
    **dict.fromkeys(("run_check", "run_all", "resolve_names", "get_variant", "option_owners", "options_for",
                     "alpha_per_check"), "ddpm_check.montecarlo.runner"),
    **dict.fromkeys(("CheckContext", "CheckDefect"), "ddpm_check.montecarlo.context"),
    **dict.fromkeys(("CheckResult", "CheckRow", "ROLE_TEST", "ROLE_DIAGNOSTIC"), "ddpm_check.montecarlo.results"),
    "Variant": "ddpm_check.montecarlo.variants",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CHECKS", "CHECK_NAMES", "CheckEntry", *_LAZY]
