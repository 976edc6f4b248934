"""Classify a bind address by where it makes a socket reachable (pure)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from .model import SCOPE_RANK, BindScope, Interface

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Where a node address counts as private when no node_cidrs are configured: RFC 1918,
#: CGNAT (RFC 6598) and IPv6 unique-local (RFC 4193). Spelled out rather than taken from
#: ipaddress.is_private, which also counts documentation and benchmark ranges.
PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def classify(address: str, interfaces: Sequence[Interface],
             node_cidrs: Sequence[IPNetwork] = (),
             device: Interface | None = None) -> tuple[BindScope, str]:
    """(scope, interface name holding the address or "").

    Order matters: wildcard and loopback are decided by the address alone; otherwise the
    interface carrying the address decides pod-facing before the address decides
    link-local, because Calico puts link-local addresses on its cali* veths.
    A node address counts as private when it lies in `node_cidrs`, or, when none are
    configured, in a private range (RFC 1918, RFC 4193, CGNAT).
    """
    ip = _ip(address)
    if device is not None and not ip.is_loopback:
        # SO_BINDTODEVICE: only packets arriving on `device` reach the socket, so the
        # device decides; a wildcard there is as wide as the device's own addresses.
        if device.name == "lo":
            return BindScope.LOOPBACK, device.name
        if device.pod_facing:
            return BindScope.POD, device.name
        if ip.is_unspecified:
            scopes = [classify(a.address, [device], node_cidrs)[0] for a in device.addresses
                      if not _ip(a.address).is_loopback]
            widest = max(scopes, key=SCOPE_RANK.__getitem__, default=BindScope.UNKNOWN)
            return widest, device.name
    if ip.is_unspecified:
        return BindScope.WILDCARD, ""
    if ip.is_loopback:
        return BindScope.LOOPBACK, ""
    holder = None
    for iface in interfaces:
        for a in iface.addresses:
            if _ip(a.address) == ip:
                holder = iface
                break
        if holder:
            break
    if holder is None:
        return BindScope.UNKNOWN, ""
    if holder.pod_facing:
        return BindScope.POD, holder.name
    if ip.is_link_local:
        return BindScope.LINK_LOCAL, holder.name
    if node_cidrs:
        private = any(ip.version == n.version and ip in n for n in node_cidrs)
    else:
        private = any(ip.version == n.version and ip in n for n in PRIVATE_NETS)
    return (BindScope.NODE_PRIVATE if private else BindScope.NODE), holder.name


def has_pod_interfaces(interfaces: Sequence[Interface]) -> bool:
    return any(i.pod_facing for i in interfaces)
