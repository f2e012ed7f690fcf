"""User-facing errors.

An ``AletheiaError`` is a problem with what the user asked for (a wrong path, a malformed row, an
impossible setting). The CLI prints its message as one line and exits non-zero, without a traceback.
Anything else is a bug and keeps its traceback.
"""


class AletheiaError(Exception):
    """A problem with the user's input: the message names it and says how to fix it."""


class ConfigError(AletheiaError):
    """A configuration value is missing, unknown or out of range."""
