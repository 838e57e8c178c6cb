"""What a check returns: one :class:`CheckRow` per test statistic, gathered in a :class:`CheckResult`.

A row *is* a :class:`ddpm_check.stats.TestOutcome` (kind, estimate, expected, standard error,
statistic, threshold, alpha, detectable delta, n) with what it tested and where: the check, the
quantity, the probe, the source of the expected value or of the samples, the seed, and its role.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ddpm_check.jsonable import jsonable
from ddpm_check.stats import TestOutcome

ROLE_TEST = "test"
ROLE_DIAGNOSTIC = "diagnostic"

#: the order of a row's keys in JSON (the outcome's fields sit among the row's own)
_JSON_KEYS = ("check", "quantity", "where", "source", "kind", "expected", "estimate", "se", "statistic",
              "threshold", "alpha", "delta", "n", "seed", "role", "note", "group")


@dataclass(frozen=True)
class CheckRow(TestOutcome):
    """One test statistic of a check: a :class:`TestOutcome` and what it tested.

    ``quantity`` names what is tested (e.g. ``"var x_t"``), ``where`` the probe
    (``"t=144 x0=10"``), ``source`` where the expected value or the samples come from
    (``"derivation"``, ``"schedule"``, ``"q_sample"``, ...).  ``role`` is ``"test"`` (counts
    for the verdict and for the false-failure budget) or ``"diagnostic"`` (reported only).
    Verdicts: "pass", "FAIL" (a test rejected), "finding" (a diagnostic rejected), "info" (a
    diagnostic within its threshold).  ``group`` gathers like rows for the summary table.
    """

    check: str = ""
    quantity: str = ""
    where: str = ""
    source: str = ""
    seed: int = 0
    role: str = ROLE_TEST
    note: str = ""
    group: str = ""

    @classmethod
    def of(cls, outcome: TestOutcome, **about) -> "CheckRow":
        """The row of ``outcome`` (numbers as Python floats and ints) with the fields ``about``."""
        return cls(kind=outcome.kind, estimate=float(outcome.estimate), expected=float(outcome.expected),
                   se=None if outcome.se is None else float(outcome.se), statistic=float(outcome.statistic),
                   threshold=float(outcome.threshold), alpha=float(outcome.alpha), delta=float(outcome.delta),
                   n=int(outcome.n), **about)

    @property
    def group_key(self) -> tuple:
        """Rows with the same key are summarised together (the worst one shown)."""
        return (self.check, self.role, self.quantity, self.source, self.group)

    @property
    def verdict(self) -> str:
        if self.role == ROLE_TEST:
            return "pass" if self.passed else "FAIL"
        return "info" if self.passed else "finding"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        out = {k: jsonable(d[k]) for k in _JSON_KEYS}
        out["verdict"] = self.verdict
        out["margin"] = jsonable(self.margin)
        return out


@dataclass
class CheckResult:
    """The result of one check: its rows, what it ran with, and the false-failure share it spent.

    ``alpha_check`` is the check's share of the family-wise level (``stats.ALPHA_FW`` divided
    among the registered checks); the test rows' alphas add up to at most that share (the runner
    verifies it).  ``derivations`` are the derivations whose results the check held the code to.
    """

    name: str
    title: str
    seed: int
    root_seed: int
    variant: str | None
    schedule: dict
    samples: int
    rows: list[CheckRow]
    runtime_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    alpha_check: float = 0.0
    derivations: tuple[str, ...] = ()

    @property
    def tests(self) -> list[CheckRow]:
        return [r for r in self.rows if r.role == ROLE_TEST]

    @property
    def alpha_spent(self) -> float:
        """The false-failure probability this run's test rows spend (Bonferroni: their alphas' sum)."""
        return math.fsum(r.alpha for r in self.tests)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.tests)

    @property
    def failures(self) -> list[CheckRow]:
        return [r for r in self.tests if not r.passed]

    @property
    def worst(self) -> CheckRow | None:
        """The test row with the largest statistic / threshold."""
        tests = self.tests
        return max(tests, key=lambda r: r.margin) if tests else None

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "FAIL"

    def summary(self) -> list[tuple[CheckRow, int, int]]:
        """One entry per group of like rows: (the row with the largest statistic/threshold,
        rows in the group, rows rejected).  Groups keep the order of their first row."""
        groups: dict[tuple, list[CheckRow]] = {}
        for r in self.rows:
            groups.setdefault(r.group_key, []).append(r)
        return [(max(rs, key=lambda r: r.margin), len(rs), sum(not r.passed for r in rs))
                for rs in groups.values()]

    def to_dict(self) -> dict:
        return {
            "check": self.name,
            "title": self.title,
            "verdict": self.verdict,
            "passed": self.passed,
            "seed": self.seed,
            "root_seed": self.root_seed,
            "variant": self.variant,
            "schedule": self.schedule,
            "samples": self.samples,
            "runtime_s": round(self.runtime_s, 3),
            "alpha_check": self.alpha_check,
            "alpha_spent": self.alpha_spent,
            "n_tests": len(self.tests),
            "derivations": list(self.derivations),
            "notes": list(self.notes),
            "rows": [r.to_dict() for r in self.rows],
        }
