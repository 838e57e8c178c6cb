"""Running the registered checks: ``run_check``, ``run_all``, the names of ``check all``, the
variants and options of a check, and each check's share of the false-failure budget.

See :mod:`ddpm_check.montecarlo` for the registry and what a check module provides.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ddpm_check import montecarlo
from ddpm_check import stats
from ddpm_check.errors import DDPMCheckError, check_seed
from ddpm_check.montecarlo import CheckEntry
from ddpm_check.montecarlo.context import CheckContext
from ddpm_check.montecarlo.results import CheckResult
from ddpm_check.montecarlo.variants import Variant
from ddpm_check.schedules import Schedule, ScheduleConfig


def alpha_per_check() -> float:
    """Each registered check's share of the family-wise false-failure level ``stats.ALPHA_FW``."""
    return stats.alpha_per_check(len(montecarlo.CHECKS))


def get_variant(name: str, variant_name: str) -> Variant:
    """The known-wrong variant ``variant_name`` of check ``name``."""
    known = montecarlo.CHECKS.entry(name, also="all").variants
    if variant_name not in known:
        raise DDPMCheckError(f"unknown variant {variant_name!r} of check {name!r}; valid: "
                             f"{', '.join(known) or 'none'}")
    return known[variant_name]


def option_owners(option: str) -> list[str]:
    """The checks that take ``option`` (e.g. "steps": ["network"])."""
    return [n for n, e in montecarlo.CHECKS.items() if option in e.options]


def options_for(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The part of ``options`` that check ``name`` takes (each option goes to the checks that take it)."""
    return {k: v for k, v in options.items() if name in option_owners(k)}


def _as_schedule(schedule: Schedule | ScheduleConfig | None) -> Schedule | None:
    """The schedule to check; DDPMCheckError for one whose alpha_bar_t underflows to 0, where x_t
    keeps nothing of x_0 and the formulas under test divide by alpha_bar_t (the checks would
    report a failure of the formulas instead; down to alpha_bar_T ~ 1e-105 they still pass)."""
    if schedule is None:
        return None
    if isinstance(schedule, ScheduleConfig):
        schedule = Schedule.from_config(schedule)
    if not isinstance(schedule, Schedule):
        raise DDPMCheckError(f"schedule must be a Schedule or ScheduleConfig, got {type(schedule).__name__}")
    zero = np.flatnonzero(np.asarray(schedule.alphas_cumprod) <= 0.0)
    if zero.size:
        c = schedule.config
        desc = (f"{c.kind}, T = {c.T}" + (f", betas {c.beta_start:g} to {c.beta_end:g}" if c.kind == "linear" else ""))
        raise DDPMCheckError(
            f"alpha_bar_t underflows to 0 from t = {int(zero[0]) + 1} on ({desc}): x_t keeps nothing of x_0 "
            f"there and the formulas under test divide by alpha_bar_t; choose smaller betas or a smaller T"
        )
    return schedule


def _schedule_info(module, sched: Schedule | None) -> dict:
    """What the check ran on, for its result (a custom schedule's betas abbreviated)."""
    if sched is not None:
        info = sched.config.to_dict()
        if info.get("betas") is not None:
            info["betas"] = f"<{sched.T} values>"
        return info
    if hasattr(module, "default_schedule_info"):
        return module.default_schedule_info()
    return ScheduleConfig().to_dict()


def _check_options(entry: CheckEntry, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` validated by the check's own validators; DDPMCheckError for one it does not take."""
    own = entry.options
    unknown = sorted(set(options) - set(own))
    if unknown:
        owners = {o: option_owners(o) for o in unknown}
        hint = "; ".join(f"only the {', '.join(w)} check takes {o}" for o, w in owners.items() if w)
        raise DDPMCheckError(f"check {entry.name!r} takes no option {', '.join(unknown)}"
                             + (f" ({hint})" if hint else ""))
    return {k: own[k](v) for k, v in options.items()}


def run_check(name: str, *, samples: int | None = None, seed: int = stats.DEFAULT_ROOT_SEED,
              schedule: Schedule | ScheduleConfig | None = None, variant: str | None = None,
              progress: Callable[[str], Any] | None = None, **options: Any) -> CheckResult:
    """Run the check ``name`` and return its result (it never raises for a failed test).

    Args:
        samples: chains / samples per probe (default: the check's own, ``CHECKS[name].default_samples``).
        seed: the root seed; the check's seed is ``stats.seed_for(name, seed)``.
        schedule: the beta schedule to check (default: linear T = 300 from 1e-4 to 0.02, the
            source's; the sampler check's default is its own set of configurations).
        variant: a known-wrong variant from ``CHECKS[name].variants`` (the check should fail).
        options: the check's own (its module's ``OPTIONS``; network: ``steps``).
    Raises:
        DDPMCheckError: unknown name or variant, samples < 1, a sample size too small for the
            declared power, a bad schedule, an option the check does not take.
        CheckDefect: the check broke the testing standard (spent more than its alpha share, or
            used a derivation it does not declare): a bug in the check.
    """
    entry = montecarlo.CHECKS.entry(name, also="all")
    module = entry.load()
    if samples is None:
        samples = entry.default_samples
    samples = stats.check_samples(samples)
    check_seed(seed)
    var = None if variant is None else get_variant(name, variant)
    options = _check_options(entry, options)
    sched = _as_schedule(schedule)
    ctx = CheckContext(name, entry.summary, int(samples), int(seed), sched, var, n_checks=len(montecarlo.CHECKS),
                       needs=entry.needs, progress=progress)
    t0 = time.perf_counter()
    if entry.single_thread:
        from ddpm_check.runtime import single_thread

        with single_thread():
            module.run(ctx, **options)
    else:
        module.run(ctx, **options)
    runtime = time.perf_counter() - t0
    ctx.verify_budget()
    return CheckResult(name, entry.summary, ctx.seed, int(seed), variant, _schedule_info(module, sched), int(samples),
                       ctx.rows, runtime, ctx.notes, alpha_check=ctx.share, derivations=tuple(ctx.used))


def resolve_names(name: str, network: bool = False) -> list[str]:
    """``"all"`` -> the checks in ``check all`` (the slow ones too with ``network``); a check
    name -> [name]; else DDPMCheckError."""
    if name == "all":
        return [n for n, e in montecarlo.CHECKS.items() if e.in_all or network]
    return [montecarlo.CHECKS.entry(name, also="all").name]


def run_all(*, network: bool = False, samples: int | None = None, seed: int = stats.DEFAULT_ROOT_SEED,
            schedule: Schedule | ScheduleConfig | None = None,
            progress: Callable[[str], Any] | None = None, **options: Any) -> list[CheckResult]:
    """Run every check of ``check all`` (the slow ones only with ``network=True``); each option
    goes to the checks that take it."""
    names = resolve_names("all", network=network)
    for o in sorted(options):
        owners = option_owners(o)
        if not set(owners) & set(names):
            raise DDPMCheckError(f"options {o} are the {', '.join(owners)} check's: pass network=True" if owners
                                 else f"no check takes option {o}")
    return [run_check(n, samples=samples, seed=seed, schedule=schedule, progress=progress,
                      **options_for(n, options))
            for n in names]

