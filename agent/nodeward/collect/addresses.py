"""Interfaces and their addresses in the current network namespace, over rtnetlink."""

from __future__ import annotations

import fnmatch
import socket
from collections.abc import Iterable

from ..model import Address, Interface

IFF_UP = 0x1


def is_pod_facing(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def collect_interfaces(pod_patterns: Iterable[str]) -> list[Interface]:
    # imported here: pyroute2 costs ~50 ms of start-up (its package loads NDB/IPDB too),
    # which --help, --version and `config check` need not pay
    from pyroute2 import IPRoute

    patterns = tuple(pod_patterns)
    with IPRoute() as ipr:
        links = ipr.get_links()
        addrs = ipr.get_addr()
    by_index: dict[int, list[Address]] = {}
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
    for a in addrs:
        fam = 6 if a["family"] == socket.AF_INET6 else 4
        # For IPv4 IFA_LOCAL is the address of this end; IFA_ADDRESS is the peer on
        # point-to-point links (tunl0, wireguard).
        text = (a.get_attr("IFA_LOCAL") if fam == 4 else None) or a.get_attr("IFA_ADDRESS")
        if not text:
            continue
        idx = a["index"]
        by_index.setdefault(idx, []).append(
            Address(names.get(idx, str(idx)), fam, text, a["prefixlen"]))
    out = []
    for link in links:
        name = link.get_attr("IFLA_IFNAME")
        out.append(Interface(
            name=name,
            index=link["index"],
            kind=link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "",
            up=bool(link["flags"] & IFF_UP),
            pod_facing=is_pod_facing(name, patterns),
            addresses=tuple(by_index.get(link["index"], ())),
        ))
    return out
