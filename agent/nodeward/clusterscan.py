"""The cluster stage: cluster view + WireGuard/IPsec + Calico.

`collect_cluster_scan` does the (read-only) I/O and never raises for an unusable API,
socket or netlink family: those become notes and NW500; snapshot.add_cluster puts its
result into the snapshot. `check_cluster_scan` is pure and runs with the other checks
(checks.run_checks).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .checks.calico import calico_findings
from .checks.encryption import (
    Route,
    RouteRule,
    ipsec_findings,
    route_findings,
    wireguard_findings,
)
from .collect.cluster import ClusterSettings, ClusterView, collect_cluster
from .collect.wireguard import UAPI_DIR, WgDevice, collect_netlink, collect_uapi
from .collect.xfrm import XfrmPolicy, XfrmState, collect_xfrm
from .derive import Derived, derive
from .model import Finding, NodeSnapshot


@dataclass(frozen=True)
class ClusterScan:
    view: ClusterView
    wireguard: tuple[WgDevice, ...] = ()
    xfrm_states: tuple[XfrmState, ...] = ()
    xfrm_policies: tuple[XfrmPolicy, ...] = ()
    routes: tuple[Route, ...] = ()
    local_addresses: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # collector errors an operator should see
    rules: tuple[RouteRule, ...] | None = None  # None: not read (the route check guesses)
    #: what the view implies (encryption expected, CIDRs, ...)
    derived: Derived = dataclasses.field(default_factory=Derived)
    listening: frozenset[tuple[str, int]] = frozenset()  # (protocol, port) on this node


def collect_routes() -> tuple[tuple[Route, ...], tuple[str, ...]]:
    """Unicast routes of every table with their output interface (and table)."""
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            out = []
            for r in ipr.get_routes():
                dst = r.get_attr("RTA_DST")
                oif = r.get_attr("RTA_OIF")
                if r["type"] != 1 or oif is None:
                    continue
                fam_any = "0.0.0.0" if r["family"] == 2 else "::"
                out.append(Route(f"{dst or fam_any}/{r['dst_len']}", names.get(oif, str(oif)),
                                 r.get_attr("RTA_TABLE") or r["table"]))
            return tuple(out), ()
    except Exception as e:  # netlink trouble must not stop the scan
        return (), (f"routes: {type(e).__name__}: {e}",)


#: rule attributes that narrow a rule to some traffic (the route check skips such rules)
_SELECTORS = ("FRA_IIFNAME", "FRA_OIFNAME", "FRA_SPORT_RANGE", "FRA_DPORT_RANGE",
              "FRA_IP_PROTO", "FRA_UID_RANGE", "FRA_L3MDEV", "FRA_TUN_ID")


def collect_rules() -> tuple[tuple[RouteRule, ...] | None, tuple[str, ...]]:
    """Policy-routing rules of both families (None and a note when unreadable)."""
    try:
        import socket

        from pyroute2 import IPRoute

        out = []
        with IPRoute() as ipr:
            for fam, v in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
                for r in ipr.get_rules(family=fam):
                    sup = r.get_attr("FRA_SUPPRESS_PREFIXLEN")
                    out.append(RouteRule(
                        family=v, priority=r.get_attr("FRA_PRIORITY") or 0,
                        table=r.get_attr("FRA_TABLE") or r["table"], action=r["action"],
                        fwmark=r.get_attr("FRA_FWMARK") or 0,
                        fwmask=r.get_attr("FRA_FWMASK") or 0,
                        invert=bool(r["flags"] & 0x2),
                        suppress_prefixlen=-1 if sup in (None, 0xFFFFFFFF) else sup,
                        selective=bool(r["src_len"] or r["dst_len"] or r["tos"]
                                       or any(r.get_attr(a) is not None
                                              for a in _SELECTORS))))
        return tuple(out), ()
    except Exception as e:  # netlink trouble must not stop the scan
        return None, (f"ip rules: {type(e).__name__}: {e}",)


def collect_cluster_scan(settings: ClusterSettings, snapshot: NodeSnapshot,
                         uapi_dir: str = str(UAPI_DIR),
                         view: ClusterView | None = None,
                         derived: Derived | None = None) -> ClusterScan:
    """`view`: a cluster view the caller already holds (the daemon's watch); else it is
    read now (one LIST per kind, or the offline directory). `derived`: what the caller
    already derived from that same view (the daemon, while the view is unchanged)."""
    if view is None:
        view = collect_cluster(settings, snapshot.node)
    if derived is None:
        derived = derive(view, encryption=settings.encryption)
    notes: list[str] = []
    wg: tuple[WgDevice, ...] = ()
    states: tuple[XfrmState, ...] = ()
    policies: tuple[XfrmPolicy, ...] = ()
    routes: tuple[Route, ...] = ()
    if derived.encryption == "wireguard":
        kernel = [i.name for i in snapshot.interfaces if i.kind == "wireguard"]
        # UAPI sockets are shared by all namespaces: keep those whose interface we see.
        seen = {i.name for i in snapshot.interfaces} or None
        k_dev, k_err = collect_netlink(kernel)
        u_dev, u_err = collect_uapi(uapi_dir, seen)
        wg, notes = k_dev + u_dev, [*notes, *k_err, *u_err]
    elif derived.encryption == "ipsec":
        states, policies, errs = collect_xfrm()
        notes += errs
    rules: tuple[RouteRule, ...] | None = None
    if derived.encryption != "none":
        routes, errs = collect_routes()
        rules, rerrs = collect_rules()
        notes += [*errs, *rerrs]
    local = tuple(a.address for i in snapshot.interfaces for a in i.addresses)
    listening = frozenset((s.protocol, s.port) for s in snapshot.sockets)
    return ClusterScan(view, wg, states, policies, routes, local, tuple(notes), rules,
                       derived, listening)


def check_cluster_scan(scan: ClusterScan, settings: ClusterSettings | None = None,
                       now: float | None = None,
                       endpoint_labels: Sequence[dict] = ()) -> list[Finding]:
    """Pure. Encryption checks run for what is expected: the configured `encryption`, else
    what the cluster announces (scan.derived)."""
    now = time.time() if now is None else now
    peers = scan.view.peers
    configured = settings.encryption if settings is not None else ""
    encryption = configured or scan.derived.encryption
    source = "config" if configured else scan.derived.sources.get("encryption", "")
    out = calico_findings(scan.view, encryption, endpoint_labels, encryption_source=source,
                          listening=scan.listening)
    if encryption == "wireguard":
        out += wireguard_findings(scan.wireguard, peers, now)
        out += route_findings(scan.routes, peers, [d.name for d in scan.wireguard],
                              scan.rules)
    elif encryption == "ipsec":
        out += ipsec_findings(scan.xfrm_states, scan.xfrm_policies, peers,
                              scan.local_addresses, now)
    return out


def derived_for(cfg: Any) -> Derived | None:
    """What the cluster implies for `cfg` (one read of the view), or None without a
    `cluster` section. For one-shot commands (plan, apply); the daemon derives from the
    view it watches."""
    settings = cfg.section("cluster")
    if settings is None:
        return None
    view = collect_cluster(settings, cfg.node_name)
    return derive(view, encryption=settings.encryption)
