"""Registries: one table of entries per extension point (derivations, checks, commands).

An entry names a thing, says in one line what it is, names the module that implements it and
what it needs; everything that lists, chooses or counts such things (the CLI's help and
choices, ``check all``, the false-failure budget, the tests' parametrisation, the README's
lists) reads the registry instead of keeping its own list.  The module is imported only when
the entry is loaded, so listing costs nothing (``ddpm-check --help`` stays light).

This module imports nothing heavy: the symbolic package uses it too.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Generic, Iterable, Iterator, Mapping, TypeVar

from ddpm_check.errors import DDPMCheckError

#: what a registered name may look like: it is typed on the command line
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@dataclass(frozen=True)
class Entry:
    """One registered thing: its ``name``, a one-line ``summary`` and the ``module`` implementing it."""

    name: str
    summary: str
    module: str

    def load(self) -> ModuleType:
        """The implementing module (imported on first use)."""
        return importlib.import_module(self.module)


E = TypeVar("E", bound=Entry)


class Registry(Mapping[str, E], Generic[E]):
    """Entries by name, in registration order (the order listings and ``all`` follow).

    Refuses, when built, a duplicate name, a name that is not lower-case words joined by '-' and
    a summary that is empty or more than one line.
    """

    def __init__(self, kind: str, entries: Iterable[E]) -> None:
        self.kind = kind
        self._entries: dict[str, E] = {}
        for e in entries:
            if not NAME_PATTERN.fullmatch(e.name):
                raise ValueError(f"{kind} name {e.name!r} must be lower-case words joined by '-'")
            if e.name in self._entries or e.name == "all":
                raise ValueError(f"{kind} name {e.name!r} is registered twice or reserved")
            if not e.summary.strip() or "\n" in e.summary:
                raise ValueError(f"{kind} {e.name!r}: the summary must be one non-empty line")
            self._entries[e.name] = e

    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entry(self, name: str, *, also: str = "") -> E:
        """The entry ``name``, or DDPMCheckError listing the valid names (and ``also``, e.g. "all")."""
        if name not in self._entries:
            valid = ", ".join(self.names + ((also,) if also else ()))
            raise DDPMCheckError(f"unknown {self.kind} {name!r}; valid names: {valid}")
        return self._entries[name]
