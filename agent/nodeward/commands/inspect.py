"""Read-only commands that look at nodeward itself, not the node: `config check`,
`explain ID`, `catalog`. None of them scans or writes anything."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

import yaml

from .. import catalog as catalog_mod
from .. import findings
from ..config import Config


def cmd_config_check(args: argparse.Namespace, cfg: Config) -> int:
    """The config already loaded (the CLI exits 2 with the one-line error otherwise): say
    what it holds, so a deploy step can gate on exit 0 and log the summary."""
    parts = [f"mode {cfg.mode}", f"backend {cfg.backend}",
             f"{len(cfg.suppress)} suppression(s)",
             f"{len(_changed(cfg.catalog))} catalog override(s)"]
    if cfg.sections:
        parts.append("sections " + ", ".join(sorted(cfg.sections)))
    print(f"{cfg.source}: ok ({'; '.join(parts)})")
    return 0


def cmd_explain(args: argparse.Namespace, cfg: Config | None) -> int:
    if args.all or args.markdown:
        if args.markdown:
            sys.stdout.write(findings.markdown())
        else:
            sys.stdout.write("\n".join(i.text() for i in findings.registry().values()))
        return 0
    from ..cli import UsageError

    if not args.id:
        raise UsageError("explain: give a finding ID such as NW102 (or --all)")
    info = findings.get(args.id)
    if info is None:
        known = ", ".join(findings.registry())
        raise UsageError(f"explain: unknown finding ID {args.id!r} (known: {known})")
    sys.stdout.write(info.text())
    return 0


def _changed(cat: catalog_mod.Catalog) -> dict[str, str]:
    """Component name -> "added" or "overridden", against the shipped catalog."""
    base = {c.name: c for c in catalog_mod.load_default().components}
    out = {}
    for c in cat.components:
        if c.name not in base:
            out[c.name] = "added"
        elif c != base[c.name]:
            out[c.name] = "overridden"
    return out


def _component_dict(c: catalog_mod.Component, origin: str) -> dict[str, Any]:
    d = asdict(c)
    d["ports"] = [lo if lo == hi else f"{lo}-{hi}" for lo, hi in c.ports]
    d["protocols"] = sorted(c.protocols)
    d["processes"] = sorted(c.processes)
    d["severity"] = str(c.severity)
    d["origin"] = origin
    return d


def cmd_catalog(args: argparse.Namespace, cfg: Config) -> int:
    changed = _changed(cfg.catalog)
    comps = [_component_dict(c, changed.get(c.name, "built-in"))
             for c in cfg.catalog.components]
    if args.format == "json":
        sys.stdout.write(json.dumps({"components": comps}, indent=2) + "\n")
    elif args.format == "yaml":
        sys.stdout.write(yaml.safe_dump({"components": comps}, sort_keys=False))
    else:
        from ..report import table

        rows = [[[c.name], [c.port_text], ["/".join(sorted(c.protocols))],
                 [str(c.severity)], [c.max_scope], ["yes" if c.auth else "no"],
                 [changed.get(c.name, "built-in")]] for c in cfg.catalog.components]
        width = None
        if sys.stdout.isatty():
            import shutil

            width = shutil.get_terminal_size().columns
        lines = table.render(["COMPONENT", "PORTS", "PROTO", "SEVERITY", "MAX SCOPE", "AUTH",
                              "ORIGIN"], rows, width)
        sys.stdout.write("\n".join(lines) + f"\n\n{len(rows)} components (source: "
                         f"{cfg.source})\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("config", help="check a config file without running anything")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION", required=True,
                            parser_class=type(c))
    check = csub.add_parser("check", help="load and validate the config: exit 0, or 2 and "
                                          "the one-line error")
    check.set_defaults(handler=cmd_config_check)
    e = sub.add_parser("explain", help="what a finding ID means and how to fix it")
    e.add_argument("id", nargs="?", metavar="ID", help="a finding ID such as NW102")
    e.add_argument("--all", action="store_true", help="every finding ID")
    e.add_argument("--markdown", action="store_true",
                   help="every finding ID as Markdown (docs/findings.md)")
    e.set_defaults(handler=cmd_explain, needs_config=False)
    k = sub.add_parser("catalog", help="the effective port catalog (shipped + config)")
    k.add_argument("--format", choices=["table", "json", "yaml"], default="table")
    k.set_defaults(handler=cmd_catalog)
