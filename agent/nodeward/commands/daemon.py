"""`nodeward run`: the agent's daemon loop (see nodeward.daemon)."""

from __future__ import annotations

import argparse
import sys

from ..config import Config


def cmd_run(args: argparse.Namespace, cfg: Config) -> int:
    from ..daemon import Agent

    return Agent(args.config, cfg, sys.stdout).run(max_cycles=args.cycles)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run as a daemon: scan every interval, log changes, "
                                   "serve /healthz and /metrics")
    p.add_argument("--cycles", type=int, default=None, metavar="N",
                   help="stop after N cycles (for tests and one-off runs)")
    p.set_defaults(handler=cmd_run)
