"""Command line: `nodeward [--config PATH] COMMAND ...`.

Exit codes: 0 nothing at or above --fail-on, 1 something is, 2 usage or config error
(one line on stderr, nothing changed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace as dataclasses_replace

from . import __version__
from . import config as config_mod
from .checks import run_checks
from .model import Severity
from .report import render
from .report.logs import log_finding, make_logger
from .snapshot import take_snapshot

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
SEVERITIES = [str(s) for s in Severity]


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _scan_parser(sub: argparse._SubParsersAction) -> None:
    scan = sub.add_parser("scan", help="scan listening sockets and report findings")
    scan.add_argument("--format", choices=["table", "json", "jsonl", "log"], default="table",
                      help="table (default), one JSON document, one finding per line, or "
                           "structlog events on stdout")
    scan.add_argument("--fail-on", choices=SEVERITIES, default="high", metavar="SEVERITY",
                      help=f"exit 1 if a finding is at least this severe "
                           f"({'|'.join(SEVERITIES)}; default high)")
    scan.add_argument("--procfs", action="store_true",
                      help="read /proc/net instead of netlink sock_diag")
    fw = scan.add_mutually_exclusive_group()
    fw.add_argument("--firewall", dest="firewall", action="store_const", const=True,
                    help="evaluate every socket through the live ruleset (NW2xx); the "
                         "default unless the config says `firewall: false`")
    fw.add_argument("--no-firewall", dest="firewall", action="store_const", const=False,
                    help="bind-scope checks only: do not read the ruleset")
    scan.add_argument("--ruleset", action="append", metavar="FILE",
                      help="evaluate this saved dump instead of the live ruleset "
                           "(iptables-save text, v6:FILE for ip6tables-save, or nft -j "
                           "JSON); repeat for several")
    scan.add_argument("--explain", type=int, metavar="PORT",
                      help="print the rule path deciding PORT per source class")
    scan.add_argument("--offline", metavar="DIR",
                      help="read cluster objects (nodes, Calico) from YAML files in DIR")
    scan.set_defaults(handler=cmd_scan)


#: Modules that add subcommands: each has register(subparsers), and every subparser it adds
#: sets `handler=fn(args, config) -> exit code`. Kept as import paths so a command's
#: dependencies load only when the CLI starts, and the CLI stays one small table.
COMMAND_MODULES = (
    "nodeward.commands.enforce",
    "nodeward.commands.daemon",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = _Parser(prog="nodeward", description="Host-firewall agent for Kubernetes nodes.")
    p.add_argument("--config", metavar="PATH",
                   help=f"config file (default {config_mod.DEFAULT_PATH} if present)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _scan_parser(sub)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # not built yet
        module.register(sub)
    sub.add_parser("version", help="print the version")
    return p


def cmd_scan(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    err_log = make_logger(cfg.node_name, sys.stderr)
    firewall = cfg.firewall if args.firewall is None else args.firewall
    if args.explain is not None and not firewall:
        raise UsageError("--explain needs the firewall (drop --no-firewall)")
    if args.ruleset and not firewall:
        raise UsageError("--ruleset and --no-firewall contradict each other")
    saved = None
    if args.ruleset:
        from .collect.ruleset import read_dump_files
        from .ruleset.errors import RulesetParseError

        try:
            saved = read_dump_files(args.ruleset)
        except RulesetParseError as e:
            raise UsageError(f"ruleset: {e}") from None
        except OSError as e:
            raise UsageError(f"ruleset: {e.filename}: {e.strerror}") from None
    snap = take_snapshot(cfg, force_procfs=args.procfs, firewall=firewall, ruleset=saved)
    result = run_checks(snap, cfg)
    if args.explain is not None:
        from .report.explain import explain

        for note in snap.notes:
            err_log.warning("collector_note", note=note)
        if snap.ruleset is None:
            return EXIT_USAGE
        sys.stdout.write(explain(result.reach, args.explain))
        return EXIT_OK
    cluster = cfg.section("cluster")
    if args.offline:
        from .collect.cluster import ClusterSettings

        cluster = dataclasses_replace(cluster or ClusterSettings(), offline_dir=args.offline,
                                      use_api=False)
    if cluster is not None:
        from .clusterscan import with_cluster

        snap, result = with_cluster(snap, result, cluster, cfg.suppress)
    for note in snap.notes:
        err_log.warning("collector_note", note=note)
    out = sys.stdout
    if args.format == "json":
        # indented on a terminal, compact into a pipe or file (programs read those)
        out.write(render.to_json(snap, result, cfg.catalog, pretty=out.isatty()))
    elif args.format == "jsonl":
        out.write(render.to_jsonl(snap, result))
    elif args.format == "log":
        log = make_logger(cfg.node_name, out)
        for f in result.findings:
            log_finding(log, f)
        log.info("scan_complete", sockets=len(snap.sockets), findings=len(result.findings),
                 suppressed=len(result.suppressed), socket_source=snap.socket_source)
    else:
        out.write(render.to_table(snap, result, cfg.catalog))
    out.flush()
    threshold = Severity.parse(args.fail_on)
    return EXIT_FINDINGS if any(f.severity >= threshold for f in result.findings) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError("a command is required (see nodeward --help)")
        if args.command == "version":
            print(__version__)
            return EXIT_OK
        cfg = config_mod.load(args.config)
    except UsageError as e:
        print(f"nodeward: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except config_mod.ConfigError as e:
        print(f"nodeward: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.handler(args, cfg)
    except UsageError as e:  # an argument combination only the command can judge
        print(f"nodeward: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
