"""Bind-scope checks: what a listening socket exposes before any firewall is considered.

Pure functions of the snapshot and the catalog. IDs are stable and documented in README.md:

    NW101  a port that should not be open at all is listening (kubelet read-only)
    NW102  a component is bound wider than its catalog max_scope
    NW103  an unauthenticated-by-default port is on a pod-facing address
    NW104  a component's port is held by a process that is not that component
"""

from __future__ import annotations

from collections.abc import Iterator

from ..catalog import Catalog, Component, Identification
from ..model import BindScope, Finding, NodeSnapshot, Severity, Socket
from ..scope import has_pod_interfaces


def _base(sock: Socket, comp: Component | None, ident: Identification) -> dict:
    proc = sock.process
    evidence = {
        "bind_scope": str(sock.scope),
        "identified_by": ident.by,
        "family": f"ipv{sock.family}",
        "inode": sock.inode,
    }
    if sock.scope_interface:
        evidence["interface"] = sock.scope_interface
    if sock.interface:
        evidence["bound_device"] = sock.interface
    if proc:
        evidence.update(exe=proc.exe, cmdline=" ".join(proc.cmdline)[:512], uid=proc.uid)
        if proc.container_id:
            evidence["container_id"] = proc.container_id
        if proc.pod_uid:
            evidence["pod_uid"] = proc.pod_uid
    if comp:
        evidence.update(catalog_ports=comp.port_text, max_scope=comp.max_scope)
    return {
        "component": comp.name if comp else "",
        "protocol": sock.protocol,
        "address": sock.address,
        "port": sock.port,
        "scope": str(sock.scope),
        "pid": proc.pid if proc else None,
        "process": proc.name if proc else "",
        "evidence": evidence,
    }


def _where(sock: Socket) -> str:
    host = f"[{sock.address}]" if ":" in sock.address else sock.address
    return f"{host}:{sock.port}/{sock.protocol}"


def pod_reachable_by_bind(sock: Socket, pod_interfaces_present: bool) -> bool:
    """Does the bind alone let pods reach the socket through the node's stack?"""
    if sock.scope is BindScope.POD:
        return True
    return sock.scope is BindScope.WILDCARD and pod_interfaces_present


def check_socket(sock: Socket, ident: Identification, pods_present: bool) -> Iterator[Finding]:
    comp = ident.component
    if comp is None:
        return
    base = _base(sock, comp, ident)
    if ident.unexpected_process:
        proc = sock.process.name if sock.process else "?"
        yield Finding(
            id="NW104", severity=Severity.MEDIUM,
            title=f"{comp.name} port {_where(sock)} is held by {proc!r}, not by "
                  f"{'/'.join(sorted(comp.processes)) or 'the component'}",
            remediation=(f"Find out why {proc} (pid {base['pid']}) listens on "
                         f"{comp.name}'s port: a squatter can impersonate {comp.name} to its "
                         "clients. Stop it or move it, or add it to the catalog."),
            **base)
        return  # it is not the component: its exposure rules do not apply
    if comp.always:
        sev = comp.severity if sock.scope is not BindScope.LOOPBACK else Severity.LOW
        yield Finding(
            id="NW101", severity=sev,
            title=f"{comp.name} is listening on {_where(sock)} ({sock.scope})",
            remediation=comp.remediation, **base)
    if comp.exceeds(sock.scope):
        yield Finding(
            id="NW102", severity=comp.severity,
            title=f"{comp.name} is bound to {_where(sock)} ({sock.scope}), wider than "
                  f"{comp.max_scope}",
            remediation=comp.remediation, **base)
    if not comp.auth and pod_reachable_by_bind(sock, pods_present):
        yield Finding(
            id="NW103", severity=comp.severity,
            title=f"unauthenticated {comp.name} on {_where(sock)} is reachable from pods "
                  f"({sock.scope})",
            remediation=(f"{comp.remediation} Pods reach host addresses through the node's "
                         "own network stack, which NetworkPolicy does not cover."),
            **base)


def exposure_findings(snapshot: NodeSnapshot, catalog: Catalog) -> list[Finding]:
    pods_present = has_pod_interfaces(snapshot.interfaces)
    out: list[Finding] = []
    for sock in snapshot.sockets:
        ident = catalog.identify(sock.protocol, sock.port, sock.process)
        out.extend(check_socket(sock, ident, pods_present))
    return out
