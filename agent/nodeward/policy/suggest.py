"""`nodeward suggest`: policy from what audit mode saw.

After `nodeward apply --mode audit` has run for a while, this writes

  * a Calico HostEndpoint for this node and a StagedGlobalNetworkPolicy (or, with
    `--kind global`, a GlobalNetworkPolicy) that allows exactly the observed sources per
    component port and denies the rest of each port, with audit mode's counters as
    comments: stage it in Calico and watch before enforcing;
  * the same allow list as nodeward's own `enforce.allow` (a copy of the config with it
    merged), for `nodeward apply --mode enforce`.

Where the sources come from, since the kernel log is not readable from every network
namespace (LOG in a non-initial netns is off unless net.netfilter.nf_log_all_netns=1):
  * conntrack (`conntrack -L`, per namespace): audit mode lets the connections through,
    so each is a tracked flow; an entry lingers up to 120 s after close (TIME_WAIT),
    and for days while open;
  * `--log FILE`: the `nodeward-audit:` lines of the kernel log (journalctl -k, kern.log)
    for what conntrack has forgotten.
Which flows audit mode counted is decided by nodeward's own plan (enforce.plan.verdict):
the same rules `apply --mode enforce` would install. Read-only: it writes only the files
named on the command line.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..commands import seconds_arg
from ..config import Config

EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2
HEP_LABEL = "nodeward.io/node"
_KV = re.compile(r"(\w+)=(\S*)")


@dataclass(frozen=True)
class Flow:
    """One connection attempt seen: from conntrack (one entry) or the audit log (a line)."""

    family: int
    proto: str
    src: str
    dst: str
    dport: int
    iif: str = ""
    via: str = "conntrack"


@dataclass
class Source:
    address: str
    flows: int = 0
    audited: int = 0  # flows enforce mode would have dropped (audit counted them)
    via: set[str] = field(default_factory=set)


@dataclass
class Port:
    component: str
    proto: str
    ports: tuple[tuple[int, int], ...]
    sources: dict[str, Source] = field(default_factory=dict)
    counted: int = 0  # packets audit mode's counting rules saw for this component


# -- collect ------------------------------------------------------------------------------


def parse_conntrack(text: str) -> list[Flow]:
    """`conntrack -L -o extended` (or `-E`) lines -> flows (original direction)."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0].startswith("["):  # an event (`conntrack -E`): [NEW] ipv4 ...
            words = words[1:]
        if len(words) < 4 or words[0] not in ("ipv4", "ipv6") or words[2] not in ("tcp",
                                                                                  "udp"):
            continue
        kv: dict[str, str] = {}
        for k, v in _KV.findall(line):
            kv.setdefault(k, v)  # the first src/dst/dport are the original direction
        if not {"src", "dst", "dport"} <= set(kv) or not kv["dport"].isdigit():
            continue
        out.append(Flow(4 if words[0] == "ipv4" else 6, words[2], kv["src"], kv["dst"],
                        int(kv["dport"])))
    return out


def parse_audit_log(text: str, prefix: str) -> list[Flow]:
    """Kernel LOG lines carrying the audit prefix (`IN=cali0 ... SRC= DST= PROTO=TCP
    SPT= DPT=`), from any log that keeps them whole (journalctl -k, kern.log, dmesg)."""
    marker = prefix.strip()
    out = []
    for line in text.splitlines():
        at = line.find(marker)
        if at < 0:
            continue
        kv = dict(_KV.findall(line[at + len(marker):]))
        proto = kv.get("PROTO", "").lower()
        if proto not in ("tcp", "udp") or not kv.get("DPT", "").isdigit():
            continue
        try:
            fam = ipaddress.ip_address(kv.get("SRC", "")).version
            ipaddress.ip_address(kv.get("DST", ""))
        except ValueError:
            continue
        out.append(Flow(fam, proto, kv["SRC"], kv["DST"], int(kv["DPT"]), kv.get("IN", ""),
                        "log"))
    return out


def read_conntrack(run: Callable[..., subprocess.CompletedProcess] = subprocess.run
                   ) -> tuple[list[Flow], list[str], bool]:
    """Both families' tables, a note per one that could not be read, and whether any
    could."""
    flows, notes = [], []
    read = False
    for fam in ("ipv4", "ipv6"):
        argv = ["conntrack", "-L", "-f", fam, "-o", "extended"]
        try:
            r = run(argv, capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            return flows, ["conntrack: command not found (install conntrack-tools)"], False
        except subprocess.TimeoutExpired:
            notes.append(f"conntrack -f {fam}: timed out after 30s")
            continue
        if r.returncode != 0:
            err = (r.stderr.strip() or "no output").splitlines()[0]
            notes.append(f"conntrack -f {fam}: exit {r.returncode}: {err}")
            continue
        flows += parse_conntrack(r.stdout)
        read = True
    return flows, notes, read


def watch_conntrack(seconds: float, ready: Callable[[], None] = lambda: None
                    ) -> tuple[list[Flow], list[str]]:
    """New flows as conntrack reports them (`conntrack -E -e NEW`) for `seconds`: the way
    to catch short connections over hours, which `-L` forgets ~120 s after they close."""
    import selectors
    import time

    try:
        p = subprocess.Popen(["conntrack", "-E", "-e", "NEW", "-o", "extended"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        return [], ["conntrack: command not found (install conntrack-tools)"]
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    ready()
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and p.poll() is None:
            if sel.select(left):
                line = p.stdout.readline()
                if line:
                    lines.append(line)
    p.terminate()
    try:
        rest, err = p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        rest, err = p.communicate()
    lines += rest.splitlines()
    notes = []
    if p.returncode not in (0, -15) and not lines:
        notes.append(f"conntrack -E: exit {p.returncode}: "
                     f"{(err.strip() or 'no output').splitlines()[0]}")
    return parse_conntrack("\n".join(lines)), notes


def route_iif(addr: str) -> str:
    """The interface this node routes `addr` through: where its packets arrive (rp_filter's
    view), for the plan's pod-interface rules."""
    r = subprocess.run(["ip", "-j", "route", "get", addr], capture_output=True, text=True,
                       timeout=10)
    try:
        routes = json.loads(r.stdout or "[]")
    except ValueError:
        return ""
    return routes[0].get("dev", "") if routes else ""


# -- checks: which flows hit which component, and would enforce mode drop them ------------


def observe(flows: Iterable[Flow], protected: Sequence[tuple[str, str, tuple]],
            local: set[str], would_drop: Callable[[Flow], bool]) -> list[Port]:
    """Group flows to the node's protected component ports by source. Flows from the node
    itself (loopback, its own addresses) are not sources a policy needs to name."""
    ports = [Port(name, proto, tuple(p)) for name, proto, p in protected]
    for f in flows:
        if f.dst not in local or f.src in local or ipaddress.ip_address(f.src).is_loopback:
            continue
        for p in ports:
            if p.proto == f.proto and any(lo <= f.dport <= hi for lo, hi in p.ports):
                s = p.sources.setdefault(f.src, Source(f.src))
                s.flows += 1
                s.via.add(f.via)
                if would_drop(f):
                    s.audited += 1
                break
    return ports


def counters_by_component(counters: Iterable[Any], marker: str) -> dict[str, int]:
    """Packets per component from the audit rules ("<comp> closed", "pod to <comp>"):
    the LOG rule and the counting rule share a comment, the larger is the count."""
    per_rule: dict[tuple[str, str], int] = {}
    for c in counters:
        text = (c.comment or "").removeprefix(f"{marker}: ")
        per_rule[(c.chain, text)] = max(per_rule.get((c.chain, text), 0), c.packets)
    out: dict[str, int] = {}
    for (_chain, text), n in per_rule.items():
        name = text.removesuffix(" closed") if text.endswith(" closed") else (
            text.removeprefix("pod to ") if text.startswith("pod to ") else "")
        if name and name != "metadata":
            out[name] = out.get(name, 0) + n
    return out


def unobserved_defaults(plan: Any, ports: Sequence[Port], marker: str,
                        listening: set[tuple[str, int]], local: set[str]) -> list[str]:
    """nodeward's default sources (the `<component> from <why>` accepts of the plan: control
    plane, etcd members, node CIDRs) that no observed source falls in. The Calico policy
    allows observed sources only, so it would deny these: say so before anyone enforces it
    (an API server that did not call the kubelet during audit would lose logs/exec)."""
    seen = {p.component: [ipaddress.ip_address(a) for a in p.sources] for p in ports
            if any((p.proto, n) in listening for lo, hi in p.ports for n in range(lo, hi + 1))}
    out = []
    for r in plan.rules:
        text = r.comment.removeprefix(f"{marker}: ")
        comp, sep, why = text.partition(" from ")
        if r.chain != "input" or r.verdict != "accept" or not sep or not r.match.saddr \
                or comp not in seen:
            continue
        net = ipaddress.ip_network(r.match.saddr)
        if net.num_addresses == 1 and str(net.network_address) in local:
            continue  # the node itself: over loopback, which no host policy sees
        if not any(a.version == net.version and a in net for a in seen[comp]):
            line = f"{comp}: {why} {net} is a nodeward default source but sent nothing " \
                   "during audit; the Calico policy denies it"
            if line not in out:
                out.append(line)
    return out


# -- report: Calico YAML and nodeward config ----------------------------------------------


def _q(value: Any) -> str:
    return json.dumps(value)  # a JSON scalar is a YAML scalar, quoted where it must be


def _net(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    return f"{ip}/{ip.max_prefixlen}"


def _calico_ports(ports: tuple[tuple[int, int], ...]) -> str:
    return "[" + ", ".join(str(lo) if lo == hi else _q(f"{lo}:{hi}") for lo, hi in ports) + "]"


def _port_text(p: Port) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in p.ports)


def calico_yaml(node: str, ports: Sequence[Port], node_ips: Sequence[str], kind: str,
                order: int, header: Sequence[str]) -> str:
    """HostEndpoint + (Staged)GlobalNetworkPolicy, hand-written so each rule carries its
    counters as a comment. Validated against Calico's CRD schemas in the tests."""
    name = f"nodeward-{node}"
    out = [f"# {line}" for line in header]
    out += ["apiVersion: projectcalico.org/v3", "kind: HostEndpoint", "metadata:",
            f"  name: {_q(name)}", "  labels:", f"    {HEP_LABEL}: {_q(node)}", "spec:",
            f"  node: {_q(node)}",
            "  # all of the node's interfaces; the profile keeps what no policy names open",
            '  interfaceName: "*"',
            "  expectedIPs: [" + ", ".join(_q(a) for a in node_ips) + "]",
            "  profiles: [\"projectcalico-default-allow\"]", "---",
            "apiVersion: projectcalico.org/v3", f"kind: {kind}", "metadata:",
            f"  name: {_q(name)}", "spec:", f"  order: {order}",
            f"  selector: {_q(f'{HEP_LABEL} == {_q(node)[1:-1]!r}')}",
            "  types: [\"Ingress\"]", "  ingress:"]
    for p in ports:
        total = sum(s.flows for s in p.sources.values())
        audited = sum(s.audited for s in p.sources.values())
        out.append(f"  # {p.component} {p.proto}/{_port_text(p)}: {len(p.sources)} source(s), "
                   f"{total} connection(s) observed, {audited} of them ones enforce mode "
                   f"would drop; audit counters: {p.counted} packet(s)")
        proto = p.proto.upper()
        if p.sources:
            out += ["  - action: Allow", f"    protocol: {proto}", "    source:",
                    "      nets:"]
            for s in sorted(p.sources.values(), key=lambda s: ipaddress.ip_address(
                    s.address).packed):
                out.append(f"      - {_q(_net(s.address))}  # {s.flows} connection(s), "
                           f"{s.audited} audited, seen in {'+'.join(sorted(s.via))}")
            out += ["    destination:", f"      ports: {_calico_ports(p.ports)}"]
        out += ["  - action: Deny", f"    protocol: {proto}", "    destination:",
                f"      ports: {_calico_ports(p.ports)}"]
    out += ["  # everything else is left as it is: nodeward closes component ports only",
            "  - action: Allow"]
    return "\n".join(out) + "\n"


def allow_map(ports: Sequence[Port]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in ports:
        for s in p.sources.values():
            nets = out.setdefault(p.component, [])
            if _net(s.address) not in nets:
                nets.append(_net(s.address))
    return {k: sorted(v, key=lambda n: ipaddress.ip_network(n).network_address.packed)
            for k, v in out.items()}


def allow_config(raw: Mapping[str, Any] | None, ports: Sequence[Port],
                 header: Sequence[str]) -> str:
    """The config file with `enforce.allow` extended by the observed sources (what is
    already there stays): ready for `nodeward --config FILE apply --mode enforce`."""
    import yaml

    data = dict(raw or {})
    enforce = dict(data.get("enforce") or {})
    allow = {k: list(v) for k, v in (enforce.get("allow") or {}).items()}
    for comp, nets in allow_map(ports).items():
        have = allow.setdefault(comp, [])
        have += [n for n in nets if n not in have]
    enforce["allow"] = allow
    data["enforce"] = enforce
    lines = [f"# {line}" for line in header]
    for p in ports:
        for s in sorted(p.sources.values(), key=lambda s: s.address):
            lines.append(f"#   {p.component} <- {s.address}: {s.flows} connection(s), "
                         f"{s.audited} audited")
    return "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False)


# -- command ------------------------------------------------------------------------------


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    from ..cli import _write_whole

    _write_whole(path, text)


def cmd_suggest(args: argparse.Namespace, cfg: Config) -> int:
    import yaml

    from ..checks import run_checks
    from ..enforce import backends
    from ..enforce.plan import AUDIT_PREFIX, MARKER, Packet, PlanError, build_plan, verdict
    from ..snapshot import now_rfc3339, take_snapshot

    settings = cfg.section("enforce")
    snap = take_snapshot(cfg, firewall=False)
    findings = run_checks(snap, cfg).findings
    try:
        plan = build_plan(snap, cfg.catalog, cfg, settings, findings)
    except PlanError as e:
        print(f"nodeward: suggest: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    notes: list[str] = []
    flows: list[Flow] = []
    read_any = False
    if args.conntrack:
        got, ct_notes, ok = read_conntrack()
        flows += got
        notes += ct_notes
        read_any = read_any or ok
    if args.watch:
        got, w_notes = watch_conntrack(args.watch, lambda: print(
            f"nodeward: suggest: watching conntrack for {args.watch:g}s", file=sys.stderr,
            flush=True))
        flows += got
        notes += w_notes
        read_any = read_any or not w_notes
    for path in args.log or ():
        try:
            text = sys.stdin.read() if path == "-" else open(path).read()  # noqa: SIM115
        except OSError as e:
            notes.append(f"--log {path}: {e.strerror}")
            continue
        flows += parse_audit_log(text, AUDIT_PREFIX)
        read_any = True
    local = {a.address for i in snap.interfaces for a in i.addresses} | {"127.0.0.1", "::1"}
    iifs: dict[str, str] = {}

    def would_drop(f: Flow) -> bool:
        iif = f.iif or iifs.setdefault(f.src, route_iif(f.src))
        pkt = Packet(f.family, f.proto, f.dport, f.src, f.dst, iif)
        return verdict(plan, "input", pkt) == "drop"

    ports = observe(flows, plan.protected, local, would_drop)
    try:
        backend = backends.select(cfg.backend, plan.families, settings.log_rate)
        counts = counters_by_component(backend.status(), MARKER)
        counter_note = f"audit counters from backend {backend.name}"
    except backends.BackendError as e:
        counts, counter_note = {}, f"no audit counters: {e}"
        notes.append(counter_note)
    for p in ports:
        p.counted = counts.get(p.component, 0)
    listening = {(k.protocol, k.port) for k in snap.sockets}
    notes += unobserved_defaults(plan, ports, MARKER, listening, local)
    if not any(c for c in counts.values()) and counts:
        notes.append("the audit rules counted nothing yet (was `apply --mode audit` run, "
                     "and has traffic reached the node since?)")
    if not read_any:
        for n in notes:
            print(f"nodeward: suggest: warning: {n}", file=sys.stderr)
        print("nodeward: suggest: no source of observed traffic could be read; nothing "
              "written", file=sys.stderr)
        return EXIT_NOTHING
    observed = sum(len(p.sources) for p in ports)
    header = [f"nodeward suggest, node {snap.node}, {now_rfc3339()}",
              f"from {len(flows)} flow(s) ({'conntrack' if args.conntrack else 'no conntrack'}"
              f"{f', {args.watch:g}s of conntrack events' if args.watch else ''}"
              f"{', audit log' if args.log else ''}); {observed} source/port pair(s) on "
              f"{sum(1 for p in ports if p.sources)} component(s); {counter_note}",
              *[f"warning: {n}" for n in notes]]
    node_ips = sorted(a for a in local if not ipaddress.ip_address(a).is_loopback
                      and not ipaddress.ip_address(a).is_link_local)
    kind = "GlobalNetworkPolicy" if args.kind == "global" else "StagedGlobalNetworkPolicy"
    _write(args.calico_out, calico_yaml(snap.node.lower(), ports, node_ips, kind, args.order,
                                        header))
    if args.allow_out:
        raw = None
        if cfg.source and cfg.source != "<defaults>":
            try:
                with open(cfg.source) as f:
                    raw = yaml.safe_load(f) or {}
            except (OSError, yaml.YAMLError) as e:
                print(f"nodeward: suggest: {cfg.source}: {e}", file=sys.stderr)
                return EXIT_USAGE
        _write(args.allow_out, allow_config(raw, ports, header))
    for n in notes:
        print(f"nodeward: suggest: warning: {n}", file=sys.stderr)
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("suggest", help="Calico HostEndpoint + (Staged)GlobalNetworkPolicy and "
                                       "enforce.allow from what audit mode saw")
    s.add_argument("--calico-out", default="-", metavar="FILE",
                   help="write the Calico YAML here (default: stdout)")
    s.add_argument("--allow-out", metavar="FILE",
                   help="write a copy of the config with enforce.allow extended by the "
                        "observed sources")
    s.add_argument("--kind", choices=["staged", "global"], default="staged",
                   help="StagedGlobalNetworkPolicy (default: watch before enforcing) or "
                        "GlobalNetworkPolicy")
    s.add_argument("--order", type=int, default=100, help="the policy's Calico order")
    s.add_argument("--log", action="append", metavar="FILE",
                   help="also read nodeward-audit: lines from this kernel log ('-': stdin)")
    s.add_argument("--no-conntrack", dest="conntrack", action="store_false",
                   help="do not list conntrack's table (then --watch/--log are the sources)")
    s.add_argument("--watch", type=seconds_arg(86400), default=0, metavar="S",
                   help="also collect new flows from conntrack events for S seconds")
    s.set_defaults(handler=cmd_suggest)
