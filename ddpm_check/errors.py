"""The one exception type for bad user input.

Anything a user can get wrong (an unknown name, T < 1, a beta outside (0, 1), a missing or
corrupt file, an unreadable checkpoint) raises :class:`DDPMCheckError` with a message that
names the bad value and what is allowed.  ``cli.py`` prints it as one red line and exits 2.
This module imports nothing heavy, so the symbolic package may use it too.
"""


class DDPMCheckError(ValueError):
    """Bad input from a user: the message names the value and what is allowed."""


#: Seeds are 0 .. 2**63 - 1: what torch.Generator.manual_seed and numpy's SeedSequence both take.
MAX_SEED = 2**63 - 1


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int, or DDPMCheckError unless it is an integer in 0 .. MAX_SEED."""
    import numbers

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise DDPMCheckError(f"{name} must be an integer from 0 to 2**63 - 1, got {seed!r}")
    return int(seed)


def first_line(exc: BaseException, typed: bool = False) -> str:
    """The first line of ``exc``'s message (prefixed by its type name if ``typed``), or the type
    name alone when the message is empty: what a one-line report of a caught error shows."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return f"{type(exc).__name__}: {line}" if typed else line
