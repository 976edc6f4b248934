"""Differential test: the evaluator's verdict must equal what the kernel does.

A "node" namespace with listeners, a "pod" behind a pod-facing veth (cali0), a "peer" node
on the node network and an "outside" host (also holding 169.254.169.254) on another subnet.
For many seeded random rulesets (iptables-legacy, iptables-nft, and both at once) the ruleset
is applied in the node with *-restore, read back with the flavour's *-save (so the parser
sees the kernel's own rendering), evaluated for every probe, and every probe is really made
from its source namespace by a persistent prober. open == accept, refused == reject,
timeout == drop; no tolerance. When both flavours hold rules the order of two same-priority
tables is the kernel's business, so mixed rounds compare reachable / not reachable only.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeward.collect.ruleset import collect_ruleset
from nodeward.ruleset import Packet, evaluate
from nodeward.ruleset.iptables import parse_iptables_save

pytestmark = pytest.mark.lab

PROBER = Path(__file__).resolve().parent.parent / "lab" / "prober.py"
ACCEPTOR = PROBER.with_name("acceptor.py")
NODE, NODE2, PODGW, POD, PEER, OUT = ("10.77.0.1", "198.51.100.1", "10.244.1.1", "10.244.1.2",
                                      "10.77.0.2", "198.51.100.10")
META = "169.254.169.254"
NODE_PORTS = (2379, 6443, 10250, 10255, 30080)
OUT_PORTS = (80, 8080)
LOCAL = (NODE, NODE2, PODGW, "127.0.0.1")
SEED = 20261125
ROUNDS = {"nft": 40, "iptables-legacy": 70, "iptables-nft": 60, "mixed": 30}
TIMEOUT = 0.25
#: Every later packet of a probe (SYN-ACK, the client's ACK, FIN, RST, ICMP errors) crosses
#: the node's PREROUTING/INPUT/FORWARD too. Rejecting the client's final ACK sends an ICMP
#: error that the prober can read back through SO_ERROR as "refused" although the handshake
#: completed; these first rules let such packets through so the kernel's answer
#: depends on the first packet only, which is what the evaluator is asked about. The
#: evaluator sees it like any other rule (it does not match a SYN).
REPLY = ("-p tcp -m tcp --tcp-flags ACK ACK -j ACCEPT",
         "-p tcp -m tcp --tcp-flags RST RST -j ACCEPT",
         "-p icmp -m icmp --icmp-type 3 -j ACCEPT")

# (source ns, destination, port, path, packet iif, packet oif)
def _probes() -> list[tuple[str, str, int, str, str, str]]:
    out = []
    for port in NODE_PORTS:
        out += [("pod", NODE, port, "input", "cali0", ""),
                ("pod", PODGW, port, "input", "cali0", ""),
                ("peer", NODE, port, "input", "eth0", ""),
                ("out", NODE2, port, "input", "eth0", ""),
                ("node", "127.0.0.1", port, "input", "lo", "")]
    for port in OUT_PORTS:
        out += [("pod", META, port, "forward", "cali0", "eth0"),
                ("pod", OUT, port, "forward", "cali0", "eth0")]
    return out


SRC = {"pod": POD, "peer": PEER, "out": OUT, "node": "127.0.0.1"}


class Gen:
    """Seeded random iptables rulesets over the lab's addresses, interfaces and ports."""

    def __init__(self, rnd: random.Random, notrack: bool = True, ct_negation: bool = True):
        self.r = rnd
        self.notrack = notrack
        self.ct_negation = ct_negation

    def neg(self, p: float = 0.25) -> str:
        return "! " if self.r.random() < p else ""

    def matches(self, chain: str) -> str:
        r = self.r
        parts = []
        if r.random() < 0.3:
            parts.append(self.neg() + "-s " + r.choice(
                ["10.244.1.0/24", f"{POD}/32", "10.77.0.0/24", PEER, "198.51.100.0/24",
                 "10.0.0.0/8", "127.0.0.0/8"]))
        if r.random() < 0.3:
            parts.append(self.neg() + "-d " + r.choice(
                [NODE, NODE2, PODGW, "127.0.0.1", META, "198.51.100.0/24", "10.77.0.0/16"]))
        if r.random() < 0.35:
            parts.append(self.neg() + "-i " + r.choice(["cali0", "cali+", "eth0", "eth+", "lo"]))
        if chain in ("FORWARD",) and r.random() < 0.2:
            parts.append(self.neg() + "-o " + r.choice(["eth0", "eth+", "cali+"]))
        if r.random() < 0.5:
            proto = r.choice(["tcp", "tcp", "tcp", "udp", "icmp"])
            n = self.neg(0.1) if proto == "tcp" else ""
            parts.append(f"{n}-p {proto}")
            if proto in ("tcp", "udp") and not n and r.random() < 0.7:
                ports = sorted(r.sample([*NODE_PORTS, *OUT_PORTS, 22, 10256], 3))
                form = r.randrange(4)
                if form == 0:
                    parts.append(f"-m {proto} {self.neg()}--dport {ports[0]}")
                elif form == 1:
                    parts.append(f"-m {proto} {self.neg()}--dport {ports[0]}:{ports[1]}")
                elif form == 2:
                    parts.append(f"-m multiport {self.neg()}--dports "
                                 f"{ports[0]},{ports[1]}:{ports[2]}")
                else:
                    parts.append(f"-m {proto} {self.neg()}--sport "
                                 + r.choice(["1024:65535", "0:1023"]))
        if r.random() < 0.2 and self.ct_negation:
            parts.append(r.choice(["-m conntrack ", "-m state "]) + self.neg()
                         + ("--ctstate " if "conntrack" in parts[-1:][0:1] else "")
                         if False else self._ct())
        if r.random() < 0.15:
            parts.append(f"-m addrtype {self.neg()}--{r.choice(['dst', 'src'])}-type "
                         + r.choice(["LOCAL", "UNICAST", "LOCAL,MULTICAST"]))
        if r.random() < 0.15:
            parts.append(f"-m set {self.neg()}--match-set "
                         + r.choice(["nwpods src", "nwpeer src", "nwmeta dst", "nwnone src"]))
        if r.random() < 0.2:
            parts.append(f'-m comment --comment "gen rule {r.randrange(1000)}"')
        return " ".join(parts)

    def _ct(self) -> str:
        r = self.r
        states = r.choice(["NEW", "ESTABLISHED,RELATED", "INVALID", "NEW,ESTABLISHED",
                           "UNTRACKED", "RELATED"] if self.ct_negation else
                          ["NEW", "ESTABLISHED", "INVALID", "UNTRACKED", "RELATED"])
        neg = self.neg() if self.ct_negation else ""
        if r.random() < 0.5 or not self.ct_negation:
            return f"-m conntrack {neg}--ctstate {states}"
        return f"-m state {neg}--state {states}"

    def target(self, table: str, chain: str, users: list[str]) -> str:
        r = self.r
        opts = ["ACCEPT", "DROP", "RETURN", 'LOG --log-prefix "nw "']
        if table == "filter":
            opts += ["REJECT --reject-with icmp-port-unreachable", "REJECT"]
            if users:
                opts += ["JUMP", "JUMP", "GOTO"]
        if table == "raw" and self.notrack:
            opts.append("CT --notrack")
        t = r.choice(opts)
        if t in ("JUMP", "GOTO"):
            return ("-j " if t == "JUMP" else "-g ") + r.choice(users)
        return "-j " + t

    def ruleset(self) -> str:
        r = self.r
        out = []
        for table, chains in (("raw", ["PREROUTING"]), ("mangle", ["PREROUTING"]),
                              ("filter", ["INPUT", "FORWARD"])):
            users = [f"NW-U{i}" for i in range(r.randrange(4))] if table == "filter" else []
            out.append(f"*{table}")
            for c in chains:
                pol = r.choice(["ACCEPT", "DROP"]) if table == "filter" else "ACCEPT"
                out.append(f":{c} {pol} [0:0]")
            out += [f":{u} - [0:0]" for u in users]
            weight = 1 if table != "filter" else 6
            for c in chains:
                out += [f"-A {c} {rule}" for rule in REPLY]
                for _ in range(r.randrange(weight + 1) if r.random() < 0.8 else 0):
                    tgt = self.target(table, c, users)
                    if tgt.endswith("REJECT") and "-p tcp" not in tgt:
                        pass
                    out.append(f"-A {c} {self.matches(c)} {tgt}".replace("  ", " "))
            for i, u in enumerate(users):
                for _ in range(r.randrange(4)):
                    tgt = self.target(table, u, users[i + 1:])
                    out.append(f"-A {u} {self.matches('INPUT')} {tgt}".replace("  ", " "))
            out.append("COMMIT")
        return "\n".join(out) + "\n"


EMPTY = "".join(f"*{t}\n" + "".join(f":{c} ACCEPT [0:0]\n" for c in cs) + "COMMIT\n"
                for t, cs in (("raw", ["PREROUTING", "OUTPUT"]),
                              ("mangle", ["PREROUTING", "INPUT", "FORWARD", "OUTPUT",
                                          "POSTROUTING"]),
                              ("filter", ["INPUT", "FORWARD", "OUTPUT"])))


NFT_PRIO = {"raw": -300, "mangle": -150, "filter": 0}
NFT_SETS = {"nwpods": "10.244.0.0/16", "nwpeer": PEER, "nwmeta": META, "nwnone": ""}


def to_nft(text: str) -> str:
    """Render a generated iptables ruleset as native nftables (tables ip nw_<name>), from
    the parsed model, so the native rounds run the same shapes of rules."""
    out = []
    for t in parse_iptables_save(text):
        out.append(f"table ip nw_{t.name} {{")
        for name, members in NFT_SETS.items():
            elems = f" elements = {{ {members} }}" if members else ""
            out.append(f"  set {name} {{\n    type ipv4_addr; flags interval;{elems}\n  }}")
        for c in t.chains.values():
            out.append(f"  chain {c.name} {{")
            if c.hook:
                out.append(f"    type filter hook {c.hook} priority {NFT_PRIO[t.name]}; "
                           f"policy {c.policy.lower()};")
            for r in c.rules:
                out.append("    " + " ".join([*(_nft_match(m) for m in r.matches),
                                              _nft_target(r)]).strip())
            out.append("  }")
        out.append("}")
    return "\n".join(out) + "\n"


def _nft_match(m) -> str:
    ne = "!= " if m.negate else ""
    last = m.text.split()[-1]
    if m.op in ("src", "dst"):
        return f"ip {'saddr' if m.op == 'src' else 'daddr'} {ne}{last}"
    if m.op in ("iif", "oif"):
        name = m.args[0] + ("*" if m.args[1] else "")
        return f'{"iifname" if m.op == "iif" else "oifname"} {ne}"{name}"'
    if m.op == "proto":
        return f"meta l4proto {ne}{m.args[0]}"
    if m.op in ("dport", "sport"):
        ports = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in m.args)
        return f"th {m.op} {ne}{{ {ports} }}"
    if m.op == "ctstate":
        return f"ct state {ne}{m.args[0].lower()}"
    if m.op == "addrtype":
        types = ", ".join(x.lower() for x in m.args[1])
        return f"fib {'daddr' if m.args[0] == 'dst' else 'saddr'} type {ne}{{ {types} }}"
    if m.op == "set":
        return f"ip {'saddr' if m.args[1][0] == 'src' else 'daddr'} {ne}@{m.args[0]}"
    if m.op == "tcpflags":
        mask = " | ".join(sorted(x.lower() for x in m.args[0]))
        comp = " | ".join(sorted(x.lower() for x in m.args[1]))
        return f"tcp flags & ({mask}) == {comp}"
    if m.op == "comment":
        return ""
    if "icmp-type" in m.text:
        return "icmp type destination-unreachable"
    raise AssertionError(f"no nft rendering for {m}")


def _nft_target(r) -> str:
    t = r.target
    if t in ("ACCEPT", "DROP", "RETURN"):
        return t.lower()
    if t == "REJECT":
        return "reject"
    if t == "LOG":
        return 'log prefix "nw "'
    if t in ("JUMP", "GOTO"):
        return f"{t.lower()} {r.arg}"
    if t == "CT":
        return "notrack"
    raise AssertionError(f"no nft rendering for target {t}")


class Prober:
    def __init__(self, lab, ns) -> None:
        self.p = lab.spawn(ns, [sys.executable, str(PROBER)], wait_for="ready",
                           stdin=subprocess.PIPE)

    def send(self, targets: list[tuple[str, int]]) -> None:
        self.p.stdin.write(json.dumps({"timeout": TIMEOUT, "targets": targets}) + "\n")
        self.p.stdin.flush()

    def recv(self) -> list[str]:
        return json.loads(self.p.stdout.readline())


@pytest.fixture(scope="module")
def topo(module_lab):
    for tool in ("iptables-legacy-restore", "iptables-nft-restore", "ipset", "conntrack"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool}")
    lab = module_lab
    node = lab.node("node", f"{NODE}/24")
    lab.addr(node, "eth0", f"{NODE2}/24")
    peer = lab.node("peer", f"{PEER}/24")
    out = lab.node("out", f"{OUT}/24")
    lab.addr(out, "lo", f"{META}/32")
    pod = lab.pod(node, f"{POD}/24", gateway=f"{PODGW}/24", host_if="cali0")
    lab.route(node, f"{META}/32", OUT)
    # REJECT answers with ICMP; the kernel rate-limits ICMP, which would turn rejects
    # into silent drops after the first few dozen probes.
    for key, value in (("net.ipv4.icmp_ratelimit", "0"), ("net.ipv4.icmp_msgs_per_sec", "1000000"),
                       ("net.ipv4.icmp_msgs_burst", "1000000")):
        lab.sysctl(node, key, value)
    lab.route(out, "10.244.1.0/24", NODE2)
    lab.spawn(node, [sys.executable, str(ACCEPTOR), *(f"0.0.0.0:{p}" for p in NODE_PORTS)],
              wait_for="ready")
    lab.spawn(out, [sys.executable, str(ACCEPTOR), *(f"0.0.0.0:{p}" for p in OUT_PORTS)],
              wait_for="ready")
    for cmd in (["ipset", "create", "nwpods", "hash:net"],
                ["ipset", "add", "nwpods", "10.244.0.0/16"],
                ["ipset", "create", "nwpeer", "hash:ip"], ["ipset", "add", "nwpeer", PEER],
                ["ipset", "create", "nwmeta", "hash:ip"], ["ipset", "add", "nwmeta", META],
                ["ipset", "create", "nwnone", "hash:ip"]):
        lab.sh(*cmd, ns=node)
    for flavour in ("legacy", "nft"):
        r = lab.sh(f"iptables-{flavour}-restore", ns=node, check=False)
        if r.returncode != 0:
            pytest.skip(f"iptables-{flavour}-restore does not work here: {r.stderr.strip()}")
    # nftables' "ct state" sees INVALID when no one asked for conntrack in this netns (xt
    # state/conntrack matches do; iptables-nft translates them to native ct expressions,
    # which do not). Every real node has a nat table, which keeps conntrack on; so here.
    _restore(lab, node, "iptables-legacy-restore",
             "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n")
    probers = {name: Prober(lab, ns) for name, ns in
               (("pod", pod), ("peer", peer), ("out", out), ("node", node))}
    return lab, node, probers


def _restore(lab, node, cmd: str, text: str) -> None:
    argv = [cmd, "-f", "-"] if cmd == "nft" else [cmd]
    r = subprocess.run(["ip", "netns", "exec", node.name, *argv], input=text, text=True,
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {r.stderr.strip()}\n{text}")


def _apply(lab, node, mode: str, legacy: str, nft: str) -> None:
    lab.sh("nft", "flush", "ruleset", ns=node)
    _restore(lab, node, "iptables-legacy-restore", legacy if mode in ("iptables-legacy", "mixed")
             else EMPTY)
    if mode == "nft":
        _restore(lab, node, "nft", to_nft(nft).replace("\n", "\n"))
    elif mode != "iptables-legacy":
        _restore(lab, node, "iptables-nft-restore", nft)
    lab.sh("conntrack", "-F", ns=node, check=False)


KIND = {"open": "accept", "refused": "reject", "timeout": "drop"}


def test_evaluator_matches_kernel(topo):
    lab, node, probers = topo
    rnd = random.Random(SEED)
    probes = _probes()
    stats = {"rulesets": 0, "probes": 0, "rules": 0}
    started = time.monotonic()
    mismatches = []
    for mode, rounds in ROUNDS.items():
        for rnum in range(rounds):
            gen = Gen(rnd, notrack=mode != "mixed", ct_negation=mode != "nft")
            legacy, nft = gen.ruleset(), gen.ruleset()
            _apply(lab, node, mode, legacy, nft)
            dumps: dict[str, str] = {}

            def run(argv, dumps=dumps):
                dumps[argv[0]] = out = lab.sh(*argv, ns=node, check=False).stdout
                return out

            ruleset = collect_ruleset(run)
            stats["rulesets"] += 1
            stats["rules"] += sum(len(c.rules) for t in ruleset.tables
                                  for c in t.chains.values())
            by_src: dict[str, list[int]] = {}
            for i, (src, *_rest) in enumerate(probes):
                by_src.setdefault(src, []).append(i)
            for src, idx in by_src.items():
                probers[src].send([[probes[i][1], probes[i][2]] for i in idx])
            seen: dict[int, str] = {}
            for src, idx in by_src.items():
                for i, res in zip(idx, probers[src].recv(), strict=True):
                    seen[i] = KIND[res]
            for i, (src, dst, port, path, iif, oif) in enumerate(probes):
                pkt = Packet(4, SRC[src], dst, "tcp", port, iif=iif, oif=oif)
                v = evaluate(ruleset, pkt, local_addresses=LOCAL, path=path)
                stats["probes"] += 1
                got = seen[i]
                want = v.action
                if mode == "mixed":
                    got, want = got == "accept", want == "accept"
                if not v.certain or got != want:
                    mismatches.append(
                        f"[{mode} round {rnum}] {src}->{dst}:{port} ({path}) kernel={seen[i]} "
                        f"evaluator={v.action} certain={v.certain} {v.reasons}\n  trace: "
                        + "\n  ".join(map(str, v.trace)) + "\n--- ruleset:\n"
                        + (legacy if mode == "iptables-legacy" else
                           to_nft(nft) if mode == "nft" else nft)
                        + ("" if mode != "mixed" else "--- legacy:\n" + legacy)
                        + "--- read back:\n" + "\n".join(f"{k}:\n{v}" for k, v in dumps.items()))
    took = time.monotonic() - started
    print(f"\ndifferential: {stats['rulesets']} rulesets ({stats['rules']} rules read back), "
          f"{stats['probes']} probes, {len(mismatches)} mismatches, {took:.1f}s")
    kinds: dict[str, int] = {}
    for m in mismatches:
        head = re.sub(r"round \d+", "", m.split("\n")[0])
        kinds[head] = kinds.get(head, 0) + 1
    for head, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:15]:
        print(count, head)
    assert not mismatches, f"{len(mismatches)} mismatches; first:\n" + mismatches[0]
