"""`nodeward verify`: the "from a pod, this must time out" test, run by the node itself.

For a sample of pod network namespaces on this node it connects, from inside each one, to
the node's sensitive ports (catalog components listening here), the metadata address and
the configured expected-open / expected-blocked targets, and compares what happened with
what policy says should happen. Opt-in: entering another namespace needs CAP_SYS_ADMIN
(and reading other processes' namespaces CAP_SYS_PTRACE). Read-only: nothing is written,
and the agent's own process never leaves its namespace (see netns_probe).

Where the expectation comes from: a pod may reach a component only where
`enforce.allow.<component>` names its address, the metadata address only where
`enforce.metadata_allow` does (nodeward's own policy), and `--expect-open` /
`--expect-blocked` (or the `verify` config section) say so for any other target.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..config import Config, ConfigError
from ..model import BindScope, Finding, NodeSnapshot, Severity
from .netns_probe import Outcome, ProbeError, probe_in
from .verify_settings import VerifySettings, hostport

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
#: A pod's cgroup path names its UID: kubepods/burstable/pod<uid>/... (cgroupfs driver) or
#: kubepods-burstable-pod<uid with _>.slice (systemd driver).
POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}"
                     r"[-_][0-9a-f]{12})")


@dataclass(frozen=True)
class PodNetns:
    name: str  # "pod <uid>" or "netns <name>"
    path: str  # file to setns() on
    inode: int
    source: str  # "cgroup" | "run-netns" | "argument"


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    kind: str  # "component" | "metadata" | "expect-open" | "expect-blocked"
    component: str = ""
    severity: Severity = Severity.HIGH


@dataclass(frozen=True)
class Check:
    pod: PodNetns
    target: Target
    expected: str  # "open" | "blocked"
    why: str
    outcome: Outcome

    @property
    def ok(self) -> bool:
        return (self.outcome.outcome == "open") == (self.expected == "open")


@dataclass(frozen=True)
class VerifyResult:
    node: str
    checks: tuple[Check, ...]
    findings: tuple[Finding, ...]
    discovered: int
    sampled: tuple[PodNetns, ...]
    errors: dict[str, str] = field(default_factory=dict)


# -- collect: which namespaces ------------------------------------------------------------


def discover(proc: str = "/proc", run_netns: str = "/run/netns",
             own_inode: int | None = None) -> list[PodNetns]:
    """Pod network namespaces: one per distinct netns of a process whose cgroup names a
    pod, then /run/netns/* (CNI plugins and labs keep named ones there). The agent's own
    namespace (host-network pods share it) is left out."""
    if own_inode is None:
        own_inode = os.stat("/proc/self/ns/net").st_ino
    seen: dict[int, PodNetns] = {}
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        pids = []
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/cgroup") as f:
                m = POD_UID.search(f.read())
            if m is None:
                continue
            ino = os.stat(f"{proc}/{pid}/ns/net").st_ino
        except OSError:  # gone, or not ours to read: the next process of the pod will do
            continue
        if ino != own_inode and ino not in seen:
            uid = m.group(1).replace("_", "-")
            seen[ino] = PodNetns(f"pod {uid}", f"{proc}/{pid}/ns/net", ino, "cgroup")
    try:
        names = sorted(os.listdir(run_netns))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(run_netns, name)
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue
        if ino != own_inode and ino not in seen:
            seen[ino] = PodNetns(f"netns {name}", path, ino, "run-netns")
    return sorted(seen.values(), key=lambda p: p.name)


def named(names: Iterable[str], run_netns: str = "/run/netns") -> list[PodNetns]:
    out = []
    for name in names:
        path = name if "/" in name else os.path.join(run_netns, name)
        try:
            ino = os.stat(path).st_ino
        except OSError as e:
            raise ConfigError(f"--netns {name}: {e.strerror}") from None
        out.append(PodNetns(f"netns {name}", path, ino, "argument"))
    return out


# -- plan: which targets, and what policy expects -----------------------------------------


def _node_addresses(snap: NodeSnapshot, ipv6: bool) -> list[str]:
    out = []
    for iface in snap.interfaces:
        if iface.name == "lo":
            continue
        for a in iface.addresses:
            ip = ipaddress.ip_address(a.address)
            if ip.is_loopback or ip.is_link_local or (ip.version == 6 and not ipv6):
                continue
            out.append(a.address)
    return list(dict.fromkeys(out))


def targets_for(snap: NodeSnapshot, cfg: Config, vs: VerifySettings) -> list[Target]:
    """The node's TCP components a pod should not reach by default (catalog max_scope
    other than "any", not bound to loopback), at every node address they answer on."""
    addrs = _node_addresses(snap, vs.ipv6)
    out: dict[tuple[str, int], Target] = {}
    for sock in snap.sockets:
        if sock.protocol != "tcp" or sock.scope in (BindScope.LOOPBACK, BindScope.LINK_LOCAL):
            continue
        ident = cfg.catalog.identify(sock.protocol, sock.port, sock.process)
        comp = ident.component
        if comp is None or comp.max_scope == "any" or ident.unexpected_process:
            continue
        if sock.address == "0.0.0.0":
            hosts = [a for a in addrs if ":" not in a]
        elif sock.address == "::":  # dual-stack unless IPV6_V6ONLY
            hosts = [a for a in addrs if ":" in a or sock.v6only is not True]
        else:
            hosts = [sock.address]
        for host in hosts:
            if ":" in host and not vs.ipv6:
                continue
            out.setdefault((host, sock.port), Target(host, sock.port, "component", comp.name,
                                                     max(comp.severity, Severity.MEDIUM)))
    for host, port in vs.metadata:
        out[(host, port)] = Target(host, port, "metadata", "metadata", Severity.HIGH)
    for host, port in vs.expect_open:
        old = out.get((host, port))
        out[(host, port)] = Target(host, port, "expect-open", old.component if old else "")
    for host, port in vs.expect_blocked:
        old = out.get((host, port))
        out[(host, port)] = Target(host, port, "expect-blocked", old.component if old else "")
    ordered = sorted(out.values(), key=lambda t: (t.kind != "component", t.port, t.host))
    return ordered[:vs.max_targets]


def _in(addr: str, nets: Iterable) -> bool:
    if not addr:
        return False
    ip = ipaddress.ip_address(addr)
    return any(ip.version == n.version and ip in n for n in nets)


def expectation(target: Target, source: str, cfg: Config) -> tuple[str, str]:
    """("open" | "blocked", why) for a connection from `source` to `target`."""
    if target.kind == "expect-open":
        return "open", "--expect-open / verify.expect_open"
    if target.kind == "expect-blocked":
        return "blocked", "--expect-blocked / verify.expect_blocked"
    settings = cfg.section("enforce")
    if target.kind == "metadata":
        if _in(source, settings.metadata_allow):
            return "open", "enforce.metadata_allow names the pod's address"
        return "blocked", "pods may not reach the metadata service (enforce.metadata_allow)"
    if _in(source, settings.allow.get(target.component, ())):
        return "open", f"enforce.allow.{target.component} names the pod's address"
    return "blocked", (f"{target.component} is not for pods (catalog max_scope; "
                       f"enforce.allow.{target.component} does not name the pod)")


# -- checks: findings ---------------------------------------------------------------------


def _finding(c: Check) -> Finding | None:
    if c.ok:
        return None
    t, o = c.target, c.outcome
    ev = {"netns": c.pod.name, "netns_path": c.pod.path, "source": o.source,
          "observed": o.outcome, "detail": o.detail, "seconds": o.seconds,
          "expected": c.expected, "why": c.why}
    where = f"{t.host}:{t.port}"
    if c.expected == "open":
        return Finding("NW532", Severity.MEDIUM,
                       f"{c.pod.name} could not connect to {where} ({o.outcome}), which "
                       "policy expects to be open",
                       f"Find the rule that {o.outcome} the connection (nodeward scan "
                       f"--explain {t.port}; calicoctl / NetworkPolicy for the pod) or fix "
                       "the expectation", t.component, "tcp", t.host, t.port, evidence=ev)
    if t.kind == "metadata":
        return Finding("NW531", Severity.HIGH,
                       f"{c.pod.name} reached the metadata endpoint {where}",
                       "Block pod egress to the metadata address (nodeward apply --mode "
                       "enforce drops it in FORWARD; or a Calico/NetworkPolicy egress deny "
                       "for 169.254.169.254/32), or require IMDSv2 with hop limit 1",
                       "metadata", "tcp", t.host, t.port, evidence=ev)
    if t.kind == "expect-blocked":
        return Finding("NW533", Severity.HIGH,
                       f"{c.pod.name} reached {where}, which policy expects to be blocked",
                       "Add the missing deny (NetworkPolicy / Calico policy for the pod's "
                       "namespace, or enforce.allow in nodeward) and run verify again",
                       t.component, "tcp", t.host, t.port, evidence=ev)
    return Finding("NW530", t.severity,
                   f"{c.pod.name} reached {t.component} on {where}, a node port pods "
                   "should not reach",
                   f"Close {t.component} to pods: nodeward apply --mode enforce (pod chain "
                   f"drops it), a Calico HostEndpoint policy, or bind {t.component} to a "
                   "narrower address; list legitimate pods in enforce.allow",
                   t.component, "tcp", t.host, t.port, evidence=ev)


def verify(cfg: Config, snap: NodeSnapshot, pods: Sequence[PodNetns], vs: VerifySettings,
           discovered: int) -> VerifyResult:
    targets = targets_for(snap, cfg, vs)
    checks: list[Check] = []
    findings: list[Finding] = []
    errors: dict[str, str] = {}
    for pod in pods:
        try:
            outcomes = probe_in(pod.path, [(t.host, t.port) for t in targets], vs.timeout,
                                vs.rate)
        except ProbeError as e:
            errors[pod.name] = str(e)
            findings.append(Finding(
                "NW534", Severity.MEDIUM, f"verify could not probe from {pod.name}: {e}",
                "Run verify as root with CAP_SYS_ADMIN (and CAP_SYS_PTRACE for other "
                "processes' namespaces), e.g. hostPID and the capabilities on the agent",
                evidence={"netns": pod.name, "netns_path": pod.path, "error": str(e)}))
            continue
        for t, o in zip(targets, outcomes, strict=True):
            expected, why = expectation(t, o.source, cfg)
            c = Check(pod, t, expected, why, o)
            checks.append(c)
            f = _finding(c)
            if f is not None:
                findings.append(f)
    if not pods:
        findings.append(Finding(
            "NW534", Severity.LOW, "verify found no pod network namespace to probe from",
            "Run verify on a node with pods, with hostPID (to see /proc/*/ns/net), or name "
            "namespaces with --netns", evidence={"discovered": discovered}))
    return VerifyResult(snap.node, tuple(checks), tuple(findings), discovered, tuple(pods),
                        errors)


# -- report -------------------------------------------------------------------------------


def to_dict(r: VerifyResult) -> dict:
    return {
        "node": r.node, "discovered": r.discovered, "sampled": len(r.sampled),
        "namespaces": [{"name": p.name, "path": p.path, "source": p.source,
                        "error": r.errors.get(p.name)} for p in r.sampled],
        "connections": [{
            "netns": c.pod.name, "source": c.outcome.source, "target": c.target.host,
            "port": c.target.port, "kind": c.target.kind, "component": c.target.component,
            "expected": c.expected, "observed": c.outcome.outcome,
            "detail": c.outcome.detail, "seconds": c.outcome.seconds, "ok": c.ok,
            "why": c.why} for c in r.checks],
        "findings": [f.to_dict() for f in r.findings],
    }


def to_table(r: VerifyResult) -> str:
    from ..report import table

    rows = [[[c.pod.name], [c.outcome.source or "-"], [f"{c.target.host}:{c.target.port}"],
             [c.target.component or c.target.kind], [c.expected], [c.outcome.outcome],
             ["ok" if c.ok else "MISMATCH"]] for c in r.checks]
    width = None
    if sys.stdout.isatty():
        import shutil

        width = shutil.get_terminal_size().columns
    lines = table.render(["NETNS", "SOURCE", "TARGET", "WHAT", "EXPECTED", "OBSERVED",
                          "RESULT"], rows, width)
    out = [*lines, "", f"{len(r.sampled)} of {r.discovered} pod namespace(s) probed, "
                       f"{len(r.checks)} connection(s), {len(r.findings)} finding(s)"]
    for f in r.findings:
        out.append(f"{f.id} {f.severity}: {f.title}")
        out.append(f"    fix: {f.remediation}")
    return "\n".join(out) + "\n"


# -- command ------------------------------------------------------------------------------


def _hostport_arg(text: str) -> tuple[str, int]:
    try:
        return hostport(text, "argument")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("argument: ")) from None


def cmd_verify(args: argparse.Namespace, cfg: Config) -> int:
    from ..snapshot import take_snapshot
    from .verify_settings import merged

    try:
        vs = merged(cfg.section("verify"), args)
        if args.netns:
            pods = named(args.netns)
            discovered = len(pods)
        else:
            found = discover()
            discovered, pods = len(found), found[:vs.max_pods]
    except ConfigError as e:
        print(f"nodeward: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    snap = take_snapshot(cfg, firewall=False)
    result = verify(cfg, snap, pods, vs, discovered)
    from ..checks import sort_findings, split_suppressed

    kept = split_suppressed(sort_findings(list(result.findings)), cfg.suppress)
    findings = tuple(kept.findings)
    result = VerifyResult(result.node, result.checks, findings, result.discovered,
                          result.sampled, result.errors)
    if args.format == "json":
        sys.stdout.write(json.dumps(to_dict(result), indent=1) + "\n")
    else:
        sys.stdout.write(to_table(result))
    threshold = Severity.parse(args.fail_on)
    return EXIT_FINDINGS if any(f.severity >= threshold for f in findings) else EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import SEVERITIES

    v = sub.add_parser("verify", help="connect from pod network namespaces to the node's "
                                      "ports and the metadata address, against policy "
                                      "(opt-in: needs CAP_SYS_ADMIN)")
    v.add_argument("--netns", action="append", metavar="NAME",
                   help="probe from this namespace (/run/netns/NAME or a path such as "
                        "/proc/PID/ns/net); repeat. Default: discover pod namespaces")
    v.add_argument("--expect-open", action="append", type=_hostport_arg, metavar="HOST:PORT",
                   help="a connection every probed pod must make; repeat")
    v.add_argument("--expect-blocked", action="append", type=_hostport_arg,
                   metavar="HOST:PORT", help="a connection no probed pod may make; repeat")
    v.add_argument("--metadata", action="append", type=_hostport_arg, metavar="HOST:PORT",
                   help="metadata endpoint(s) (default 169.254.169.254:80)")
    v.add_argument("--max-pods", type=int, default=None, metavar="N",
                   help="probe at most N namespaces (default 20)")
    v.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds before a connect counts as dropped (default 1)")
    v.add_argument("--rate", type=float, default=None, metavar="N",
                   help="new connections per second per namespace (default 20)")
    v.add_argument("--format", choices=["table", "json"], default="table")
    v.add_argument("--fail-on", choices=SEVERITIES, default="high", metavar="SEVERITY",
                   help="exit 1 if a finding is at least this severe (default high)")
    v.set_defaults(handler=cmd_verify)
