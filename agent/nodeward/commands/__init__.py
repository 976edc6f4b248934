"""Subcommands beyond `scan`, one module each (see nodeward.cli.COMMAND_MODULES)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def seconds_arg(maximum: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds in 0..maximum, else a usage error."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of seconds in 0-{maximum:g}")
        return value

    return parse
