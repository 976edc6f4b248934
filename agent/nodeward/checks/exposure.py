"""Bind-scope checks: what a listening socket exposes before any firewall is considered.

Pure functions of the snapshot and the catalog. IDs are stable and documented in README.md:

    NW101  a port that should not be open at all is listening (kubelet read-only)
    NW102  a component is bound wider than its catalog max_scope
    NW103  a port that is unauthenticated (verified) or unauthenticated by default (not
           verified) is on a pod-facing address
    NW104  a component's port is held by a process that is not that component

Wording and severity follow the authentication evidence of the snapshot (collect/auth.py):
"unauthenticated" only when the node showed it (a flag, a config line, a probe that got
data without credentials), "authentication not verified" otherwise. Severity is exposure x
authentication: the catalog's severity assumes the component's default (`auth`); a verified
state that contradicts the default moves it one level (an etcd that demands client
certificates is one level lower, an anonymous kubelet one level higher).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from ..catalog import Catalog, Component, Identification
from ..model import (
    AUTH_NONE,
    AUTH_REQUIRED,
    AuthEvidence,
    BindScope,
    Finding,
    NodeSnapshot,
    Severity,
    Socket,
)
from ..redact import redact_argv
from ..scope import has_pod_interfaces


def auth_severity(comp: Component, auth: AuthEvidence | None) -> Severity:
    """The catalog severity, moved one level when verified evidence contradicts the
    component's default authentication."""
    sev = comp.severity
    if auth is None:
        return sev
    if auth.state == AUTH_NONE and comp.auth:
        return Severity(min(sev + 1, Severity.CRITICAL))
    if auth.state == AUTH_REQUIRED and not comp.auth:
        return Severity(max(sev - 1, Severity.INFO))
    return sev


def auth_phrase(auth: AuthEvidence | None) -> str:
    """How a title states what is known about authentication."""
    if auth is None or not auth.verified:
        return "authentication not verified"
    if auth.state == AUTH_NONE:
        return "unauthenticated"
    return "requires authentication"


def unauthenticated(comp: Component, auth: AuthEvidence | None) -> bool | None:
    """True: verified unauthenticated; None: unauthenticated by the catalog's default only
    (not verified); False: verified or assumed (catalog auth) to authenticate."""
    if auth is not None and auth.verified:
        return auth.state == AUTH_NONE
    return None if not comp.auth else False


def _base(sock: Socket, comp: Component | None, ident: Identification,
          auth: AuthEvidence | None = None) -> dict:
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
        evidence.update(exe=proc.exe, cmdline=" ".join(redact_argv(proc.cmdline))[:512],
                        uid=proc.uid)
        if proc.container_id:
            evidence["container_id"] = proc.container_id
        if proc.pod_uid:
            evidence["pod_uid"] = proc.pod_uid
    if comp:
        evidence.update(catalog_ports=comp.port_text, max_scope=comp.max_scope)
        evidence["authentication"] = (auth.to_dict() if auth is not None else
                                      {"state": "unknown", "decided_by": ""})
        evidence["authentication"]["catalog_default"] = ("authenticated" if comp.auth
                                                         else "unauthenticated")
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


def check_socket(sock: Socket, ident: Identification, pods_present: bool,
                 auth: AuthEvidence | None = None) -> Iterator[Finding]:
    comp = ident.component
    if comp is None:
        return
    base = _base(sock, comp, ident, None if ident.unexpected_process else auth)
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
    severity = auth_severity(comp, auth)
    phrase = auth_phrase(auth)
    if comp.always:
        sev = severity if sock.scope is not BindScope.LOOPBACK else Severity.LOW
        yield Finding(
            id="NW101", severity=sev,
            title=f"{comp.name} is listening on {_where(sock)} ({sock.scope}); {phrase}",
            remediation=comp.remediation, **base)
    if comp.exceeds(sock.scope):
        yield Finding(
            id="NW102", severity=severity,
            title=f"{comp.name} is bound to {_where(sock)} ({sock.scope}), wider than "
                  f"{comp.max_scope}; {phrase}",
            remediation=comp.remediation, **base)
    open_ = unauthenticated(comp, auth)
    if open_ is not False and pod_reachable_by_bind(sock, pods_present):
        title = (f"unauthenticated {comp.name} on {_where(sock)} is reachable from pods "
                 f"({sock.scope})" if open_ else
                 f"{comp.name} on {_where(sock)} is reachable from pods ({sock.scope}); "
                 "authentication not verified (unauthenticated by default)")
        yield Finding(
            id="NW103", severity=severity,
            title=title,
            remediation=(f"{comp.remediation} Pods reach host addresses through the node's "
                         "own network stack, which NetworkPolicy does not cover."),
            **base)


def exposure_findings(snapshot: NodeSnapshot, catalog: Catalog) -> list[Finding]:
    pods_present = has_pod_interfaces(snapshot.interfaces)
    out: list[Finding] = []
    for sock in snapshot.sockets:
        ident = snapshot.identity(sock, catalog)
        out.extend(check_socket(sock, ident, pods_present, snapshot.auth.get(sock.key)))
    return out


#: Firewall findings about a component's socket: they carry the same authentication
#: evidence and severity adjustment as the bind-scope ones.
REACH_IDS = frozenset({"NW201", "NW202"})


def with_auth(findings: list[Finding], snapshot: NodeSnapshot,
              catalog: Catalog) -> list[Finding]:
    """NW201/NW202 findings with the socket's authentication in title, evidence and
    severity (the firewall stage judges paths, not credentials)."""
    out = []
    for f in findings:
        comp = catalog.get(f.component) if f.id in REACH_IDS else None
        if comp is None:
            out.append(f)
            continue
        auth = snapshot.auth.get((f.protocol, f.address, f.port or 0))
        ev = {**f.evidence, "authentication": {
            **(auth.to_dict() if auth else {"state": "unknown", "decided_by": ""}),
            "catalog_default": "authenticated" if comp.auth else "unauthenticated"}}
        delta = auth_severity(comp, auth) - comp.severity
        sev = Severity(min(max(f.severity + delta, Severity.INFO), Severity.CRITICAL))
        out.append(dataclasses.replace(f, severity=sev, evidence=ev,
                                       title=f"{f.title}; {auth_phrase(auth)}"))
    return out
