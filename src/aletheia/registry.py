"""One registry helper for the pluggable parts: architectures, selectors, executors, benchmarks.

A ``Registry`` maps names to entries and keeps them in the order they were registered (the README's
family table follows it). Two ways in, one mechanism:

    SELECTORS = Registry("selector")

    @SELECTORS.register("random")               # above a function or class
    def random_layers(ctx): ...

    SELECTORS.register("mine", my_selector)      # a value, or one defined elsewhere

``get(name)`` returns the entry; an unknown name raises an ``AletheiaError`` that lists every
registered name, so a typo on the command line is answered with what exists. Registering a name
again replaces its entry. A registry is a dict, so ``name in REG``, ``REG[name]``, ``REG.values()``
and iteration (names, in registration order) work as on any other.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .errors import AletheiaError

T = TypeVar("T")
_MISSING: Any = object()


class Registry(dict[str, T]):
    """Named entries of one kind (``kind`` names them in error messages: "unknown selector")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def register(self, name: str, entry: T = _MISSING) -> Any:
        """Add ``entry`` under ``name`` and return it; without ``entry``, a decorator that does."""
        if entry is _MISSING:
            return lambda obj: self.register(name, obj)
        self[name] = entry
        return entry

    def get(self, name: str, default: Any = _MISSING) -> Any:
        """The entry called ``name``. An unknown name raises an error listing the registered ones,
        unless a ``default`` is given, which is then returned as ``dict.get`` would."""
        if name in self:
            return self[name]
        if default is not _MISSING:
            return default
        raise AletheiaError(f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}")

    def names(self) -> list[str]:
        """The registered names, sorted (for messages; iteration keeps registration order)."""
        return sorted(self)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"

