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
    """The config already loaded through the settings table (the CLI exits 2 with the
    one-line error otherwise): a summary line a deploy step can gate on and log, then each
    key the file sets, and with --offline DIR what that cluster view derives for the keys
    it leaves unset."""
    from .. import settings_docs, settings_load

    parts = [f"mode {cfg.mode}", f"backend {cfg.backend}",
             f"{len(cfg.suppress)} suppression(s)",
             f"{len(_changed(cfg.catalog))} catalog override(s)"]
    if cfg.sections:
        parts.append("sections " + ", ".join(sorted(cfg.sections)))
    lines = [f"{cfg.source}: ok ({'; '.join(parts)})"]
    raw = settings_load.load_file(cfg.source) if cfg.source != "<defaults>" else {}
    for path, value in settings_docs.set_keys(raw, cfg):
        lines.append(f"  set      {path}: {settings_docs.shown(value)}")
    if args.offline:
        import os

        from ..cli import UsageError
        from ..collect.cluster import load_offline
        from ..derive import derive

        if not os.path.isdir(args.offline):
            raise UsageError(f"config check: --offline {args.offline}: not a directory")

        cluster = cfg.section("cluster")
        view = load_offline((cluster and cluster.node_name) or cfg.node_name, args.offline)
        derived = derive(view, encryption=cluster.encryption if cluster else "")
        for path, value, source in settings_docs.derived_keys(cfg, derived):
            lines.append(f"  derived  {path}: {settings_docs.shown(value)} (from {source})")
        lines += [f"  unknown  {reason}" for reason in view.unknown]
    lines.append("  default  every other key (`nodeward config keys` lists them)")
    print("\n".join(lines))
    return 0


def cmd_config_keys(args: argparse.Namespace, cfg: Config | None) -> int:
    from .. import settings_docs

    sys.stdout.write(settings_docs.markdown() if args.markdown else settings_docs.text())
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
    check.add_argument("--offline", metavar="DIR",
                       help="also show what this cluster dump (as for scan --offline) "
                            "derives for the keys the file leaves unset")
    check.set_defaults(handler=cmd_config_check)
    keys = csub.add_parser("keys", help="every setting: type, default and meaning")
    keys.add_argument("--markdown", action="store_true",
                      help="as Markdown (docs/settings.md)")
    keys.set_defaults(handler=cmd_config_keys, needs_config=False)
    e = sub.add_parser("explain", help="what a finding ID means and how to fix it")
    e.add_argument("id", nargs="?", metavar="ID", help="a finding ID such as NW102")
    e.add_argument("--all", action="store_true", help="every finding ID")
    e.add_argument("--markdown", action="store_true",
                   help="every finding ID as Markdown (docs/findings.md)")
    e.set_defaults(handler=cmd_explain, needs_config=False)
    k = sub.add_parser("catalog", help="the effective port catalog (shipped + config)")
    k.add_argument("--format", choices=["table", "json", "yaml"], default="table")
    k.set_defaults(handler=cmd_catalog)
