"""A plain-text table that wraps cells to a width instead of cutting them (pure).

Operators paste scan output into tickets and grep CI logs for it: a cut title loses the
part that says what is wrong. So a cell is wrapped at word boundaries (a word longer than
its column stays whole and the line runs long), and with no width nothing wraps at all.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..model import Severity

#: ANSI SGR codes per severity: the usual red/yellow/cyan scale, bold for critical.
SGR = {Severity.CRITICAL: "1;31", Severity.HIGH: "31", Severity.MEDIUM: "33",
       Severity.LOW: "36", Severity.INFO: "2"}
GAP = "  "
CONTINUATION = "  "  # indent of a wrapped item's further lines


@dataclass(frozen=True)
class Styled:
    """A cell item painted by severity when colour is on."""

    text: str
    severity: Severity


Item = str | Styled
Paint = Callable[[str, Severity], str]


def paint(text: str, severity: Severity) -> str:
    return f"\x1b[{SGR[severity]}m{text}\x1b[0m"


def no_paint(text: str, severity: Severity) -> str:
    return text


def _text(item: Item) -> str:
    return item.text if isinstance(item, Styled) else item


def wrap_text(text: str, width: int | None, first: str = "", rest: str = "") -> list[str]:
    """`text` in lines of at most `width` (None: one line), words never broken."""
    if width is None:
        return [first + text]
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False) or [first]


def _min_width(items: list[str], header: str) -> int:
    """The longest word (a header wraps too; an item's further lines are indented)."""
    words = [len(w) + len(CONTINUATION) for it in items for w in it.split()[1:]]
    words += [len(it.split()[0]) for it in items if it.split()]
    return max([*map(len, header.split()), *words])


def _fit(natural: list[int], minimum: list[int], width: int | None) -> list[int]:
    """Narrow the widest columns first until the row fits `width` (or none can give)."""
    widths = list(natural)
    if width is None:
        return widths
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - width
    while excess > 0:
        slack = [(w, i) for i, w in enumerate(widths) if w > minimum[i]]
        if not slack:
            break
        _, i = max(slack)
        widths[i] -= 1
        excess -= 1
    return widths


def render(headers: Sequence[str], rows: Sequence[Sequence[Sequence[Item]]],
           width: int | None, paint: Paint = no_paint) -> list[str]:
    """Lines of a table. A row is a list of cells, a cell a list of items (each item starts
    on its own line). Items that are Styled are painted after padding, so escape codes
    never count towards a column's width."""
    cols = len(headers)
    texts = [[_text(it) for row in rows for it in row[c]] for c in range(cols)]
    natural = [max([len(h), *map(len, t)]) for h, t in zip(headers, texts, strict=True)]
    minimum = [_min_width(t, h) for h, t in zip(headers, texts, strict=True)]
    widths = _fit(natural, minimum, width)
    head = [wrap_text(h, w if width is not None and len(h) > w else None)
            for h, w in zip(headers, widths, strict=True)]
    out = [GAP.join((h[n] if n < len(h) else "").ljust(w)
                    for h, w in zip(head, widths, strict=True)).rstrip()
           for n in range(max(map(len, head)))]
    for row in rows:
        cells: list[list[tuple[str, Severity | None]]] = []
        for c, cell in enumerate(row):
            lines: list[tuple[str, Severity | None]] = []
            for it in cell:
                sev = it.severity if isinstance(it, Styled) else None
                wrapped = (wrap_text(_text(it), widths[c], "", CONTINUATION)
                           if width is not None and len(_text(it)) > widths[c]
                           else [_text(it)])
                lines += [(ln, sev) for ln in wrapped]
            cells.append(lines)
        for n in range(max(len(c) for c in cells)):
            parts = []
            for c, lines in enumerate(cells):
                text, sev = lines[n] if n < len(lines) else ("", None)
                pad = " " * max(0, widths[c] - len(text))
                parts.append((paint(text, sev) if sev is not None and text else text) + pad)
            out.append(GAP.join(parts).rstrip())
    return out
