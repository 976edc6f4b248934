"""The `verify` config section (CLI options override it, lists add to it). Its keys,
defaults and checks are nodeward.settings_table.VERIFY (docs/settings.md).

    verify:
      metadata: [169.254.169.254:80]     # metadata endpoints pods must not reach
      expect_open: [10.96.0.10:53]       # every probed pod must connect here
      expect_blocked: [10.0.0.5:5432]    # no probed pod may connect here
      max_pods: 20                       # namespaces probed per run
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from ..settings_schema import HostPort
from ..settings_table import VERIFY, VerifySettings

__all__ = ["DEFAULT", "VerifySettings", "hostport", "merged", "parse"]

DEFAULT = VerifySettings()
parse = VERIFY.parse
_HOSTPORT = HostPort("text")


def hostport(value: Any, where: str) -> tuple[str, int]:
    """'10.0.0.1:6443' or '[fd00::1]:6443' -> ('10.0.0.1', 6443): IP addresses only (a
    name would be resolved inside the pod, by the pod's resolver)."""
    return _HOSTPORT.parse(value, where)


def merged(vs: VerifySettings, args: argparse.Namespace) -> VerifySettings:
    """CLI over config: --metadata replaces, --expect-* add, numbers override (with the
    config key's bounds)."""
    kw: dict[str, Any] = {}
    if args.metadata:
        kw["metadata"] = tuple(args.metadata)
    if args.expect_open:
        kw["expect_open"] = vs.expect_open + tuple(args.expect_open)
    if args.expect_blocked:
        kw["expect_blocked"] = vs.expect_blocked + tuple(args.expect_blocked)
    for key in ("max_pods", "timeout", "rate"):
        value = getattr(args, key)
        if value is not None:
            kw[key] = VERIFY.by_name[key].kind.parse(value, "--" + key.replace("_", "-"))
    return replace(vs, **kw)
