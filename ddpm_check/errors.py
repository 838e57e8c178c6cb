"""The one exception type for bad user input.

Anything a user can get wrong (an unknown name, T < 1, a beta outside (0, 1), a missing or
corrupt file, an unreadable checkpoint) raises :class:`DDPMCheckError` with a message that
names the bad value and what is allowed.  ``cli.py`` prints it as one red line and exits 2.
This module imports nothing heavy, so the symbolic package may use it too.
"""


class DDPMCheckError(ValueError):
    """Bad input from a user: the message names the value and what is allowed."""
