"""Tables for people: Markdown for reports, aligned plain text for the terminal. One place for both."""

from __future__ import annotations

import math
from collections.abc import Sequence


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """``align``: one letter per column, ``l`` or ``r`` (default: the first left, the rest right)."""
    align = align or "l" + "r" * (len(head) - 1)
    sep = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join(["| " + " | ".join(head) + " |", sep] + ["| " + " | ".join(r) + " |" for r in rows])


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The first column left-aligned, the others right-aligned, two spaces apart, a rule under the head."""
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(len(head))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))

    return "\n".join([line(head), "-" * (sum(widths) + 2 * (len(head) - 1))] + [line(r) for r in rows])


def finite(x) -> bool:
    """A real number that can go in a table (not None, not NaN or infinite, not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x, fmt: str = "{:.2f}", none: str = "—") -> str:
    """``x`` formatted, or ``none`` for a missing or non-finite value."""
    return fmt.format(x) if finite(x) else none


def p_value(p) -> str:
    return "—" if not finite(p) else "< 0.0001" if p < 1e-4 else f"{p:.4f}"
