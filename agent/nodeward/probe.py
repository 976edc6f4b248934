"""Cross-node verification: probe peer nodes' sensitive ports from this node's network.

A static verdict (bind scope, ruleset evaluation) can be wrong, and another node may miss a
rule; a real TCP connect from a neighbour shows it. Probes go only to the addresses of
cluster nodes the caller passes in (never anything else), are rate-limited, short, and TCP
only (an unanswered UDP probe proves nothing).
"""

from __future__ import annotations

import errno
import ipaddress
import selectors
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .catalog import Catalog
from .model import Finding, Severity


@dataclass(frozen=True)
class Peer:
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class ProbeResult:
    peer: str
    address: str
    port: int
    outcome: str  # open | refused | timeout | unreachable | error

    @property
    def reachable(self) -> bool:
        return self.outcome == "open"


def targets(peers: Iterable[Peer], ports: Iterable[tuple[str, int]],
            local_addresses: Iterable[str]) -> list[tuple[str, str, int]]:
    """(peer, address, port) for every TCP port on every peer address that is not ours."""
    mine = {ipaddress.ip_address(a.split("%")[0]) for a in local_addresses}
    tcp_ports = sorted({p for proto, p in ports if proto == "tcp"})
    out = []
    for peer in peers:
        for addr in peer.addresses:
            if ipaddress.ip_address(addr) in mine:
                continue
            out.extend((peer.name, addr, port) for port in tcp_ports)
    return out


def probe(plan: Sequence[tuple[str, str, int]], timeout: float = 1.0,
          max_per_second: float = 20.0) -> list[ProbeResult]:
    """Non-blocking connects, started no faster than `max_per_second`, each given
    `timeout` seconds. Results in the order of `plan`."""
    sel = selectors.DefaultSelector()
    results: dict[int, ProbeResult] = {}
    pending: dict[socket.socket, tuple[int, float]] = {}
    gap = 1.0 / max_per_second
    next_start = time.monotonic()
    i = 0

    def finish(s: socket.socket, outcome: str) -> None:
        idx, _ = pending.pop(s)
        sel.unregister(s)
        s.close()
        peer, addr, port = plan[idx]
        results[idx] = ProbeResult(peer, addr, port, outcome)

    while i < len(plan) or pending:
        now = time.monotonic()
        if i < len(plan) and now >= next_start:
            _peer, addr, port = plan[i]
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((addr, port))
            pending[s] = (i, now + timeout)
            sel.register(s, selectors.EVENT_WRITE)
            if err not in (0, errno.EINPROGRESS):
                finish(s, _outcome(err))
            i += 1
            next_start = now + gap
        for key, _ in sel.select(timeout=0.02):
            s = key.fileobj
            finish(s, _outcome(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
        now = time.monotonic()
        for s, (_, deadline) in list(pending.items()):
            if now >= deadline:
                finish(s, "timeout")
    sel.close()
    return [results[k] for k in range(len(plan))]


def _outcome(err: int) -> str:
    if err == 0:
        return "open"
    if err == errno.ECONNREFUSED:
        return "refused"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
        return "unreachable"  # includes an ICMP admin-prohibited REJECT
    return "error"


def probe_findings(results: Iterable[ProbeResult], catalog: Catalog) -> list[Finding]:
    """NW601: a peer answers on a port whose component should be loopback-only."""
    out = []
    for r in results:
        comp = catalog.by_port("tcp", r.port)
        if not r.reachable or comp is None or comp.max_scope != "loopback":
            continue
        host = f"[{r.address}]" if ":" in r.address else r.address
        out.append(Finding(
            id="NW601", severity=max(comp.severity, Severity.MEDIUM),
            title=f"peer {r.peer}: {comp.name} on {host}:{r.port} answers from the node network",
            remediation=(f"On {r.peer}: {comp.remediation} Until then, close the port to the "
                         "node network in its host firewall (nodeward apply on that node)."),
            component=comp.name, protocol="tcp", address=r.address, port=r.port,
            scope="peer", evidence={"peer": r.peer, "probe": r.outcome,
                                    "max_scope": comp.max_scope}))
    return out
