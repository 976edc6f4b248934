"""The one entry point for `nodeward scan`: cluster view + WireGuard/IPsec + Calico.

`collect_cluster_scan` does the (read-only) I/O and never raises for an unusable API,
socket or netlink family: those become notes and NW500. `check_cluster_scan` is pure.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .checks import CheckResult, with_findings
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
from .config import Suppression
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
                         uapi_dir: str = str(UAPI_DIR)) -> ClusterScan:
    view = collect_cluster(settings, snapshot.node)
    notes: list[str] = []
    wg: tuple[WgDevice, ...] = ()
    states: tuple[XfrmState, ...] = ()
    policies: tuple[XfrmPolicy, ...] = ()
    routes: tuple[Route, ...] = ()
    if settings.encryption == "wireguard":
        kernel = [i.name for i in snapshot.interfaces if i.kind == "wireguard"]
        # UAPI sockets are shared by all namespaces: keep those whose interface we see.
        seen = {i.name for i in snapshot.interfaces} or None
        k_dev, k_err = collect_netlink(kernel)
        u_dev, u_err = collect_uapi(uapi_dir, seen)
        wg, notes = k_dev + u_dev, [*notes, *k_err, *u_err]
    elif settings.encryption == "ipsec":
        states, policies, errs = collect_xfrm()
        notes += errs
    rules: tuple[RouteRule, ...] | None = None
    if settings.encryption != "none":
        routes, errs = collect_routes()
        rules, rerrs = collect_rules()
        notes += [*errs, *rerrs]
    local = tuple(a.address for i in snapshot.interfaces for a in i.addresses)
    return ClusterScan(view, wg, states, policies, routes, local, tuple(notes), rules)


def check_cluster_scan(scan: ClusterScan, settings: ClusterSettings,
                       now: float | None = None,
                       endpoint_labels: Sequence[dict] = ()) -> list[Finding]:
    """Pure. Encryption checks run only when `encryption` says what is expected."""
    now = time.time() if now is None else now
    peers = scan.view.peers
    out = calico_findings(scan.view, settings.encryption, endpoint_labels)
    if settings.encryption == "wireguard":
        out += wireguard_findings(scan.wireguard, peers, now)
        out += route_findings(scan.routes, peers, [d.name for d in scan.wireguard],
                              scan.rules)
    elif settings.encryption == "ipsec":
        out += ipsec_findings(scan.xfrm_states, scan.xfrm_policies, peers,
                              scan.local_addresses, now)
    return out


def with_cluster(snapshot: NodeSnapshot, result: CheckResult, settings: ClusterSettings,
                 suppress: tuple[Suppression, ...]) -> tuple[NodeSnapshot, CheckResult]:
    """The cluster stage added to a scan (CLI and daemon alike): its findings, suppressed
    like the rest, and its collector notes joined to the snapshot's."""
    scan, found = cluster_findings(settings, snapshot)
    if scan.notes:
        snapshot = dataclasses.replace(snapshot, notes=snapshot.notes + tuple(scan.notes))
    return snapshot, with_findings(result, found, suppress)


def cluster_findings(settings: ClusterSettings,
                     snapshot: NodeSnapshot) -> tuple[ClusterScan, list[Finding]]:
    """collect + check, for the scan command."""
    scan = collect_cluster_scan(settings, snapshot)
    return scan, check_cluster_scan(scan, settings)
