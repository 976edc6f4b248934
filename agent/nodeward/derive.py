"""Settings the cluster view implies, beside the ones typed into the config. Pure.

An operator should not have to retype what the cluster already says: that Calico runs
WireGuard (FelixConfiguration `wireguardEnabled`), which ranges pods use (IPPools, node
`podCIDRs`, block affinities), which nodes are the control plane (`node-role` labels) and
where the other nodes are. Explicit config always wins; every derived value says where it
came from, so the scan can show it (JSON `derived`, the table header).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .collect.cluster import ClusterView

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Derived:
    """What the cluster view implies. `sources[key]` names where a value came from
    ("config" when the config set it)."""

    encryption: str = "none"  # wireguard | ipsec | none
    pod_cidrs: tuple[IPNetwork, ...] = ()
    node_addresses: tuple[IPNetwork, ...] = ()  # every node's addresses, as /32 or /128
    control_plane: tuple[IPNetwork, ...] = ()  # addresses of control-plane nodes
    etcd_members: tuple[IPNetwork, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, dict]:
        """For reports: each derived value with its source."""
        values = {"encryption": self.encryption,
                  "pod_cidrs": [str(n) for n in self.pod_cidrs],
                  "node_addresses": [str(n) for n in self.node_addresses],
                  "control_plane": [str(n) for n in self.control_plane],
                  "etcd_members": [str(n) for n in self.etcd_members]}
        return {k: {"value": values[k], "source": self.sources[k]}
                for k in values if k in self.sources}


def _felix(view: ClusterView) -> tuple[dict, str]:
    """FelixConfiguration `default` overlaid by `node.<name>`, as Felix merges them; and
    the names that contributed."""
    merged: dict = {}
    names = []
    by_name = {(o.get("metadata") or {}).get("name", ""): o.get("spec") or {}
               for o in view.kind("FelixConfiguration")}
    for key in ("default", f"node.{view.node}"):
        if key in by_name:
            merged.update(by_name[key])
            names.append(key)
    return merged, "+".join(names)


def expected_encryption(view: ClusterView, configured: str = "") -> tuple[str, str]:
    """(mode, source). Configured wins; else what Calico (or Cilium) says it runs."""
    if configured:
        return configured, "config"
    felix, names = _felix(view)
    for key in ("wireguardEnabled", "wireguardEnabledV6"):
        if felix.get(key) is True:
            return "wireguard", f"FelixConfiguration {names} {key}: true"
    if felix.get("ipsecMode"):
        return "ipsec", f"FelixConfiguration {names} ipsecMode: {felix['ipsecMode']}"
    if view.cilium_wireguard_nodes:
        return "wireguard", (f"network.cilium.io/wg-pub-key on "
                             f"{view.cilium_wireguard_nodes} node(s)")
    return "none", ("FelixConfiguration without wireguardEnabled" if names
                    else "no encryption configured or announced by the CNI")


def _nets(values: Iterable[str]) -> list[IPNetwork]:
    out: list[IPNetwork] = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except (ValueError, TypeError):
            continue
    return out


def _collapse(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    return (tuple(ipaddress.collapse_addresses(v4))
            + tuple(ipaddress.collapse_addresses(v6)))


def _ippools(view: ClusterView) -> list[str]:
    return [str((p.get("spec") or {}).get("cidr", "")) for p in view.kind("IPPool")
            if not (p.get("spec") or {}).get("disabled")]


def derive(view: ClusterView, *, encryption: str = "",
           pod_cidrs: tuple[IPNetwork, ...] = (),
           control_plane: tuple[IPNetwork, ...] = (),
           etcd_members: tuple[IPNetwork, ...] | None = None) -> Derived:
    """Explicit values (non-empty) win and are marked "config"; the rest come from the
    view. A view with no nodes derives nothing but encryption from Calico objects."""
    sources: dict[str, str] = {}
    enc, sources["encryption"] = expected_encryption(view, encryption)
    if pod_cidrs:
        pods, sources["pod_cidrs"] = pod_cidrs, "config"
    else:
        pools = _ippools(view)
        node_cidrs = [c for n in view.nodes for c in n.pod_cidrs]
        pods = _collapse(_nets(pools + node_cidrs))
        if pods:
            sources["pod_cidrs"] = ", ".join(
                x for x, on in (("IPPool", pools), ("Node podCIDRs/BlockAffinity", node_cidrs))
                if on)
    addrs = _collapse(_nets(a for n in view.nodes for a in n.addresses))
    if addrs:
        sources["node_addresses"] = f"Node addresses ({len(view.nodes)} nodes)"
    if control_plane:
        cp, sources["control_plane"] = control_plane, "config"
    else:
        cps = [n for n in view.nodes if n.control_plane]
        cp = _collapse(_nets(a for n in cps for a in n.addresses))
        if cp:
            sources["control_plane"] = ("node-role.kubernetes.io/control-plane on "
                                        + ", ".join(n.name for n in cps[:5])
                                        + (" …" if len(cps) > 5 else ""))
    if etcd_members is not None:
        etcd, sources["etcd_members"] = etcd_members, "config"
    else:
        etcd = cp
        if cp:
            sources["etcd_members"] = "control-plane nodes (kubeadm stacked etcd)"
    return Derived(encryption=enc, pod_cidrs=tuple(pods), node_addresses=addrs,
                   control_plane=tuple(cp), etcd_members=tuple(etcd), sources=sources)


def fills(cfg: Any, derived: Derived) -> list[tuple[str, Any, Any]]:
    """(section, "" for the top level; settings_table Key; value) of every key the settings
    table marks `derived` that the config leaves at its default and the view supplies."""
    from .settings_table import filled_keys

    out = []
    for section, key in filled_keys():
        target = cfg.section(section) if section else cfg
        value = getattr(derived, key.derived)
        if target is not None and value and getattr(target, key.name) == key.default:
            out.append((section, key, value))
    return out


def with_derived(cfg: Any, derived: Derived | None) -> Any:
    """The Config with what the cluster implies filled into the keys the config left at
    their defaults (`fills`: node_cidrs from every node's addresses, pod_cidrs,
    enforce.control_plane and enforce.etcd_members). Set keys are never changed (explicit
    config wins). Pure: a new Config, the old one untouched."""
    if derived is None:
        return cfg
    changes: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for section, key, value in fills(cfg, derived):
        (sections.setdefault(section, {}) if section else changes)[key.name] = value
    if sections:
        changes["sections"] = {**cfg.sections, **{
            name: dataclasses.replace(cfg.section(name), **fill)
            for name, fill in sections.items()}}
    return dataclasses.replace(cfg, **changes) if changes else cfg
