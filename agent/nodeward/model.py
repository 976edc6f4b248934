"""Immutable data passed between stages: collect -> snapshot -> checks -> plan -> reporters.

Everything here is a frozen dataclass so that checks and planners are pure functions over
values that cannot change under them, and so fixtures can build snapshots without root.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Severity(enum.IntEnum):
    """Ordered so that `--fail-on` is a simple comparison."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = "|".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown severity {text!r} (expected {names})") from None

    def __str__(self) -> str:
        return self.name.lower()


class BindScope(str, enum.Enum):
    """Where a bind address makes a socket reachable, from the socket's point of view alone.

    The firewall can narrow this further (reachability); it can never widen it.
    """

    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    NODE_PRIVATE = "node-private"  # a node address in node_cidrs (or a private range)
    NODE = "node"  # a node address outside node_cidrs / private ranges (e.g. public)
    POD = "pod"  # an address on a pod-facing interface
    WILDCARD = "wildcard"  # 0.0.0.0 / :: : every address, pod-facing ones included
    UNKNOWN = "unknown"  # not on any interface of this namespace (nonlocal bind)

    def __str__(self) -> str:
        return self.value


#: How widely each scope exposes a socket. POD ranks above NODE because pods are the
#: tenants a node must be protected from; WILDCARD includes POD.
SCOPE_RANK: dict[BindScope, int] = {
    BindScope.LOOPBACK: 0,
    BindScope.LINK_LOCAL: 1,
    BindScope.NODE_PRIVATE: 1,
    BindScope.NODE: 2,
    BindScope.UNKNOWN: 2,
    BindScope.POD: 3,
    BindScope.WILDCARD: 4,
}


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    name: str  # best full name: comm, or argv[0]/exe basename when comm is truncated
    comm: str = ""
    exe: str = ""
    cmdline: tuple[str, ...] = ()
    uid: int | None = None
    cgroup: str = ""
    container_id: str = ""
    pod_uid: str = ""

    def names(self) -> frozenset[str]:
        """Every name the process is known by; catalog matching tries all of them.
        Cached in the instance (immutable inputs): called once per socket."""
        cached = self.__dict__.get("_names")
        if cached is not None:
            return cached
        out = {self.name, self.comm}
        if self.exe:
            out.add(self.exe.rsplit("/", 1)[-1].removesuffix(" (deleted)"))
        if self.cmdline:
            out.add(self.cmdline[0].rsplit("/", 1)[-1])
        result = frozenset(n for n in out if n)
        self.__dict__["_names"] = result
        return result


class Socket(NamedTuple):
    """A listening socket, attributed and classified.

    A NamedTuple rather than a frozen dataclass because a node may hold tens of thousands
    and one is built per socket per scan: tuple construction is ~5x cheaper. Equally
    immutable.
    """

    protocol: str  # "tcp" | "udp"
    family: int  # 4 | 6
    address: str  # bind address, canonical text form
    port: int
    inode: int
    uid: int
    interface: str = ""  # SO_BINDTODEVICE name, if any
    process: ProcessInfo | None = None
    scope: BindScope = BindScope.UNKNOWN
    scope_interface: str = ""  # interface carrying the bind address, when one does
    v6only: bool | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.protocol, self.address, self.port)


@dataclass(frozen=True)
class Address:
    interface: str
    family: int
    address: str
    prefixlen: int


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    kind: str = ""  # veth, bridge, wireguard, vxlan, ...
    up: bool = True
    pod_facing: bool = False
    addresses: tuple[Address, ...] = ()


#: AuthEvidence states: credentials needed for data, data served without, not known.
AUTH_REQUIRED, AUTH_NONE, AUTH_UNKNOWN = "required", "none", "unknown"


@dataclass(frozen=True)
class AuthEvidence:
    """Whether a socket demands credentials, from what the node shows: the process' flags,
    the config files and environment it names, and an optional loopback probe. `decided_by`
    names the flag, file line or probe result that set `state`; "none" and "required" are
    only ever set by such a fact, never by the catalog's default."""

    state: str = AUTH_UNKNOWN
    decided_by: str = ""
    #: The settings that bear on it, "<where>" -> value (e.g. "--client-cert-auth": "true",
    #: "/var/lib/kubelet/config.yaml:7 authentication.anonymous.enabled": "false").
    settings: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    #: What the loopback probe saw (target, tls, path, status, body: bool), or {} if none.
    probe: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def verified(self) -> bool:
        return self.state != AUTH_UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "decided_by": self.decided_by,
                "settings": dict(self.settings), "probe": dict(self.probe)}


@dataclass(frozen=True)
class AttributionGaps:
    """Processes whose sockets the fd walk could not see, by refusal: listing the fd
    directory of another user's process needs CAP_DAC_READ_SEARCH; reading its fd links
    needs CAP_SYS_PTRACE (the kernel's ptrace access check). `unresolved`: wanted socket
    inodes no readable process held."""

    fd_dir_denied: int = 0
    fd_link_denied: int = 0
    unresolved: int = 0

    @property
    def denied(self) -> int:
        return self.fd_dir_denied + self.fd_link_denied

    def missing(self) -> tuple[str, ...]:
        """The capabilities whose absence the refusals show."""
        return ((("CAP_DAC_READ_SEARCH",) if self.fd_dir_denied else ())
                + (("CAP_SYS_PTRACE",) if self.fd_link_denied else ()))

    def missing_text(self) -> str:
        parts = []
        if self.fd_dir_denied:
            parts.append(f"{self.fd_dir_denied} fd directories not listable: needs "
                         "CAP_DAC_READ_SEARCH")
        if self.fd_link_denied:
            parts.append(f"{self.fd_link_denied} with fd links refused: needs CAP_SYS_PTRACE")
        return "; ".join(parts)


@dataclass(frozen=True)
class NodeSnapshot:
    """Everything the checks may look at. Later stages add fields with defaults."""

    def identity(self, sock: Any, catalog: Any) -> Any:
        """The socket's catalog identification: the one made at snapshot time, or (a
        snapshot built by hand, a socket from elsewhere) asked of `catalog` now."""
        hit = self.identities.get(sock)
        return hit if hit is not None else catalog.identify(sock.protocol, sock.port,
                                                            sock.process)

    node: str
    scanned_at: str  # RFC 3339
    sockets: tuple[Socket, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    socket_source: str = "netlink"  # "netlink" | "procfs" (fallback)
    notes: tuple[str, ...] = ()  # collector warnings an operator should see
    #: The live netfilter ruleset (nodeward.ruleset.model.Ruleset), or None when it was not
    #: read (disabled, or unreadable: then a note says why).
    ruleset: Any = field(default=None, compare=False, hash=False)
    #: The cluster as this node sees it (nodeward.clusterscan.ClusterScan: the cluster view,
    #: WireGuard devices, xfrm state, routes, what the view implies), when a `cluster`
    #: section or --offline asks for it; None otherwise.
    cluster: Any = field(default=None, compare=False, hash=False)
    #: Each socket's component, identified once when the snapshot is taken (catalog:
    #: process name first, port second): checks, the planner and reporters read it here
    #: instead of asking the catalog again. Keyed by Socket.
    identities: dict[Any, Any] = field(default_factory=dict, compare=False, hash=False)
    #: Settings the cluster view implied (nodeward.derive.Derived.summary()): each value
    #: with where it came from; empty without a cluster stage.
    derived: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: Why the firewall stage had no ruleset at all (nodeward.ruleset.model.Problem values;
    #: empty when it was read or not wanted): each is an NW206 finding.
    ruleset_unavailable: tuple[Any, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: Authentication evidence per socket key (protocol, address, port), for the sockets
    #: of components the catalog knows how to judge (nodeward.collect.auth).
    auth: dict[tuple[str, str, int], AuthEvidence] = field(default_factory=dict,
                                                           compare=False, hash=False)
    #: What the socket -> process walk was refused (collect.procs); NW109 when it matters.
    attribution: AttributionGaps = field(default_factory=AttributionGaps)


@dataclass(frozen=True)
class Finding:
    id: str
    severity: Severity
    title: str
    remediation: str
    component: str = ""
    protocol: str = ""
    address: str = ""
    port: int | None = None
    scope: str = ""
    pid: int | None = None
    process: str = ""
    evidence: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple:
        """Identity across scans: used to tell new findings from resolved ones. The address
        family is part of it (the IPv4 and IPv6 NW205 findings carry no address), and so is
        the scope (one port may be reported for two interfaces or hooks)."""
        family = (6 if ":" in self.address else 4) if self.address \
            else self.evidence.get("family", 0)
        return (self.id, self.component, self.protocol, self.address, self.port, family,
                self.scope)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": str(self.severity),
            "title": self.title,
            "component": self.component,
            "protocol": self.protocol,
            "address": self.address,
            "port": self.port,
            "scope": self.scope,
            "pid": self.pid,
            "process": self.process,
            "remediation": self.remediation,
            "evidence": dict(self.evidence),
        }
