"""Parse errors that name the source and line, so an operator can find the bad rule."""

from __future__ import annotations


class RulesetParseError(ValueError):
    """Bad ruleset text. `str()` is one line: `source:line: message`."""

    def __init__(self, source: str, line: int, message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        super().__init__(f"{source}:{line}: {message}")
