"""Command line: `nodeward [--config PATH] COMMAND ...` (global options may also follow the
command).

Exit codes: 0 nothing at or above --fail-on, 1 something is, 2 usage or config error
(one line on stderr, nothing changed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace as dataclasses_replace

from . import __version__
from . import config as config_mod
from .checks import run_checks
from .model import Severity
from .redact import redact_text
from .report import render
from .report.logs import log_finding, make_logger, route_module_logs
from .snapshot import take_snapshot

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
SEVERITIES = [str(s) for s in Severity]


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


FORMATS = ["table", "json", "jsonl", "log", "sarif", "junit", "policyreport"]


def _scan_parser(sub: argparse._SubParsersAction) -> None:
    scan = sub.add_parser("scan", help="scan listening sockets and report findings")
    scan.add_argument("--format", choices=FORMATS, default="table",
                      help="table (default), one JSON document, one finding per line, "
                           "JSON-lines log events, SARIF 2.1.0, JUnit XML, or a wgpolicyk8s.io "
                           "ClusterPolicyReport (YAML)")
    scan.add_argument("--output", "-o", metavar="FILE",
                      help="write the report to FILE (replaced whole, never half-written) "
                           "instead of stdout")
    scan.add_argument("--no-remediation", dest="remediation", action="store_false",
                      help="table: leave out the remediation section")
    scan.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                      help="table: colour severities (auto: on a terminal, unless NO_COLOR "
                           "is set)")
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
    scan.add_argument("--explain", type=port_number, metavar="PORT",
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
    "nodeward.commands.inspect",
    "nodeward.commands.completion",
    "nodeward.commands.audit",
    "nodeward.commands.relay",
    "nodeward.policy.verify",
    "nodeward.policy.suggest",
)


def _global_options(p: argparse.ArgumentParser, top: bool) -> None:
    """Options valid anywhere on the line. Below the top level their default is SUPPRESS,
    so `nodeward --config A scan` keeps A and `nodeward scan --config B` sets B."""
    p.add_argument("--config", metavar="PATH", default=None if top else argparse.SUPPRESS,
                   help=f"config file (default {config_mod.DEFAULT_PATH} if present)")


def _all_subparsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in dict.fromkeys(a.choices.values()):
                out += [sp, *_all_subparsers(sp)]
    return out


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = _Parser(prog="nodeward", description="Host-firewall agent for Kubernetes nodes.")
    _global_options(p, top=True)
    p.add_argument("--version", action="store_true", help="print the version and exit")
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
    for sp in _all_subparsers(p):
        _global_options(sp, top=False)
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
    snap = take_snapshot(cfg, force_procfs=args.procfs, firewall=firewall, ruleset=saved,
                         auth_probe=cfg.auth_probe)
    if args.explain is not None:
        from .report.explain import explain

        result = run_checks(snap, cfg)
        for note in snap.notes:
            err_log.warning("collector_note", note=note)
        if snap.ruleset is None:
            return EXIT_USAGE
        sys.stdout.write(redact_text(explain(result.reach, args.explain)))
        return EXIT_OK
    cluster = cfg.section("cluster")
    if args.offline:
        from .collect.cluster import ClusterSettings

        cluster = dataclasses_replace(cluster or ClusterSettings(), offline_dir=args.offline,
                                      use_api=False)
    if cluster is not None:
        from .snapshot import add_cluster

        snap = add_cluster(snap, cluster)
    result = run_checks(snap, cfg)
    for note in snap.notes:
        err_log.warning("collector_note", note=note)
    threshold = Severity.parse(args.fail_on)
    text = _report(args, cfg, snap, result, threshold)
    if args.output:
        _write_whole(args.output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return EXIT_FINDINGS if any(f.severity >= threshold for f in result.findings) else EXIT_OK


def _terminal(args: argparse.Namespace) -> tuple[int | None, bool]:
    """(width, colour) for the table: a width only on a terminal (a file or pipe gets whole
    lines), colour per --color, `auto` honouring NO_COLOR (no-color.org) and TERM=dumb."""
    tty = not args.output and sys.stdout.isatty()
    width = None
    if tty:
        try:
            width = os.get_terminal_size(sys.stdout.fileno()).columns
        except OSError:
            width = None
    auto = tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    return width, args.color == "always" or (args.color == "auto" and auto)


def _report(args: argparse.Namespace, cfg: config_mod.Config, snap, result,
            threshold: Severity) -> str:
    if args.format == "json":
        # indented on a terminal, compact into a pipe or file (programs read those)
        pretty = not args.output and sys.stdout.isatty()
        return render.to_json(snap, result, cfg.catalog, pretty=pretty)
    if args.format == "jsonl":
        return render.to_jsonl(snap, result)
    if args.format == "sarif":
        from .report.sarif import to_sarif

        return redact_text(to_sarif(snap, result))
    if args.format == "junit":
        from .report.junit import to_junit

        return redact_text(to_junit(snap, result, threshold))
    if args.format == "policyreport":
        import yaml

        from .report import policyreport

        doc = policyreport.build(snap.node, snap.scanned_at, result.findings)
        return yaml.safe_dump(doc, sort_keys=False)
    if args.format == "log":
        import io

        buf = io.StringIO()
        log = make_logger(cfg.node_name, buf)
        for f in result.findings:
            log_finding(log, f)
        log.info("scan_complete", sockets=len(snap.sockets), findings=len(result.findings),
                 suppressed=len(result.suppressed), socket_source=snap.socket_source)
        return buf.getvalue()
    width, color = _terminal(args)
    return render.to_table(snap, result, cfg.catalog, width, color=color,
                           remediation=args.remediation)


def _write_whole(path: str, text: str) -> None:
    """Write to a temporary file beside `path` and rename it over: a reader (a CI upload
    step, a log shipper) never sees half a report, and a failed write leaves the old one.
    A symlink is followed (the link stays), and what is not a regular file (/dev/stdout, a
    FIFO) is written to directly: renaming over it would replace the device node."""
    import stat
    import tempfile

    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UsageError(f"--output: {path}: {e.strerror}") from None
    try:
        if st is not None and not stat.S_ISREG(st.st_mode):
            with open(target, "w") as f:
                f.write(text)
            return
        fd, tmp = tempfile.mkstemp(prefix=".nodeward-", dir=os.path.dirname(target))
    except OSError as e:
        raise UsageError(f"--output: {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, stat.S_IMODE(st.st_mode) if st is not None else 0o644)
        os.replace(tmp, target)
    except OSError as e:
        os.unlink(tmp)
        raise UsageError(f"--output: {path}: {e.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    route_module_logs("")  # until the config names the node
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version or args.command == "version":
            print(__version__)
            return EXIT_OK
        if args.command is None:
            raise UsageError("a command is required (see nodeward --help)")
        cfg = config_mod.load(args.config) if getattr(args, "needs_config", True) else None
    except UsageError as e:
        print(f"nodeward: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except config_mod.ConfigError as e:
        print(f"nodeward: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    # Module loggers (cluster collector, Kubernetes client) as JSON on stderr, never on
    # stdout, where they would corrupt `scan --format json`.
    route_module_logs(cfg.node_name if cfg is not None else "")
    try:
        return args.handler(args, cfg)
    except UsageError as e:  # an argument combination only the command can judge
        print(f"nodeward: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
