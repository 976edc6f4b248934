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
from .checks.encryption import Route, ipsec_findings, route_findings, wireguard_findings
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
    if settings.encryption != "none":
        routes, errs = collect_routes()
        notes += errs
    local = tuple(a.address for i in snapshot.interfaces for a in i.addresses)
    return ClusterScan(view, wg, states, policies, routes, local, tuple(notes))


def check_cluster_scan(scan: ClusterScan, settings: ClusterSettings,
                       now: float | None = None,
                       endpoint_labels: Sequence[dict] = ()) -> list[Finding]:
    """Pure. Encryption checks run only when `encryption` says what is expected."""
    now = time.time() if now is None else now
    peers = scan.view.peers
    out = calico_findings(scan.view, settings.encryption, endpoint_labels)
    if settings.encryption == "wireguard":
        out += wireguard_findings(scan.wireguard, peers, now)
        out += route_findings(scan.routes, peers, [d.name for d in scan.wireguard])
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
