"""Kernel differential over the real corpus: each real ruleset of ../shared/realworld is
loaded with the real iptables-restore (iptables-nft and -legacy, alternately) or nft -f into
the node namespace of the differential lab (tests/integration/test_reachability_differential
.py: node, pod behind cali0, peer node, outside host), read back by the live collector
(collect_ruleset), and real connections from the pod, the peer, the outside host and the
node itself (loopback, which takes the OUTPUT path: nat OUTPUT DNATs a NodePort away) are
compared with the evaluator's verdicts, IPv4 and IPv6, INPUT and FORWARD.

Ports probed: the lab's node ports, and up to 8 ports each ruleset names itself (NodePorts
among them), all listened on. Before probing, rules letting a probe's *later* packets
through (the same REPLY rules as the generated differential: ACK/RST, ICMP errors, UDP
from the servers' ports, IPv6 ND) go first in every non-nat base chain: they never match
a first packet, which is what the evaluator is asked about.

A verdict is "certain and wrong" when the kernel's reachability (connection completed or
not) differs from a certain verdict; reject vs drop differences are counted apart (an
ICMP error the ruleset's own OUTPUT drops turns a REJECT into silence). All 284 + 282
dockerd goldens run (about a minute here); SAMPLE > 1 would take every SAMPLE-th of them
(deterministic, and the run prints which).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from nodeward.collect import nfgen
from nodeward.collect.ruleset import Probes, collect_ruleset, read_native
from nodeward.ruleset import Packet, evaluate
from tests.integration.test_reachability_differential import (
    EMPTY,
    KIND,
    LOCAL,
    META,
    META6,
    NODE,
    NODE2,
    NODE2_6,
    NODE6,
    OUT,
    OUT6,
    PEER,
    PEER6,
    POD,
    POD6,
    PODGW,
    PODGW6,
    REPLY,
    Prober,
    _restore,
    build_topology,
)
from tests.lab import realworld as rw
from tests.lab import setns

pytestmark = pytest.mark.lab

SAMPLE = 1  # every dockerd golden (284 iptables + 282 nft)
LAB_PORTS = (2379, 6443, 10250, 10255, 30080)
OUT_PORTS = (80, 8080)
MAX_EXTRA = 8
ADDR = {4: {"node": NODE, "node2": NODE2, "podgw": PODGW, "lo": "127.0.0.1", "meta": META,
            "out": OUT},
        6: {"node": NODE6, "node2": NODE2_6, "podgw": PODGW6, "lo": "::1", "meta": META6,
            "out": OUT6}}
SRC = {4: {"pod": POD, "peer": PEER, "out": OUT, "node": "127.0.0.1"},
       6: {"pod": POD6, "peer": PEER6, "out": OUT6, "node": "::1"}}


def _corpus() -> list[tuple[str, object, int]]:
    """(kind, path, family) of the rulesets run, deterministic: kind "ipt" or "nft"."""
    out = []
    for path, fam in rw.ipt_files():
        m = re.search(r"moby-ipt-(\d+)", path.name)
        if m is None or (int(m.group(1)) - 1) % SAMPLE == 0:
            out.append(("ipt", path, fam))
    for path in rw.nft_text_files():
        m = re.search(r"moby-nft-(\d+)", path.name)
        if m is None or (int(m.group(1)) - 1) % SAMPLE == 0:
            out.append(("nft", path, 0))
    return out


_PORT = re.compile(r"(?:--dports?|--to-ports|dport|--on-port) \{?\s*([0-9][0-9,: ]*)")


def _ports(text: str) -> list[int]:
    """Ports the ruleset names (first MAX_EXTRA, not the lab's), NodePorts first."""
    found: dict[int, None] = {}
    for m in _PORT.finditer(text):
        for part in re.split(r"[ ,]+", m.group(1).strip()):
            lo = part.split(":")[0]
            if lo.isdigit() and 0 < int(lo) < 65536:
                found[int(lo)] = None
    ports = sorted(p for p in found if p not in LAB_PORTS and p not in OUT_PORTS)
    ports.sort(key=lambda p: not 30000 <= p <= 32767)
    return ports[:MAX_EXTRA]


def _probes(fams, extra) -> list[tuple[str, int, str, str, int, str, str, str]]:
    out = []
    for fam in fams:
        a = ADDR[fam]
        for proto in ("tcp", "udp"):
            for port in (*LAB_PORTS, *extra):
                out += [("pod", fam, proto, a["node"], port, "input", "cali0", ""),
                        ("pod", fam, proto, a["podgw"], port, "input", "cali0", ""),
                        ("peer", fam, proto, a["node"], port, "input", "eth0", ""),
                        ("out", fam, proto, a["node2"], port, "input", "eth0", ""),
                        ("node", fam, proto, a["lo"], port, "input", "lo", ""),
                        ("node", fam, proto, a["node"], port, "input", "lo", "")]
            for port in OUT_PORTS:
                out += [("pod", fam, proto, a["meta"], port, "forward", "cali0", "eth0"),
                        ("pod", fam, proto, a["out"], port, "forward", "cali0", "eth0")]
    return out


def _with_reply_rules(text: str, family: int) -> str:
    """The dump with the REPLY rules first in each non-nat table's base chains."""
    out, table, bases = [], "", []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("*"):
            table, bases = s[1:], []
        elif s.startswith(":") and len(s.split()) > 1 and s.split()[1] != "-":
            bases.append(s[1:].split()[0])
        elif table and table != "nat" and bases and (s.startswith(("-A", "[", "COMMIT"))):
            out += [f"-A {b} {r}" for b in bases for r in REPLY[family]]
            bases = []
        out.append(line)
    return "\n".join(out) + "\n"


NFT_REPLY = ("tcp flags & ack == ack accept", "tcp flags & rst == rst accept",
             "meta l4proto icmp icmp type destination-unreachable accept",
             "meta l4proto ipv6-icmp icmpv6 type { destination-unreachable, "
             "nd-neighbor-solicit, nd-neighbor-advert } accept",
             "udp sport { " + ", ".join(map(str, sorted({*LAB_PORTS, *OUT_PORTS}))) + " } accept")


def _nft_reply_script(listing: str) -> str:
    """`insert rule` commands putting the REPLY rules first in every non-nat base chain."""
    cmds = []
    for item in json.loads(listing)["nftables"]:
        c = item.get("chain")
        if not c or "hook" not in c or c.get("type") == "nat":
            continue
        fam = c["family"]
        for r in NFT_REPLY:
            if ("icmpv6" in r and fam == "ip") or (" icmp type" in r and fam == "ip6"):
                continue
            cmds.append(f"insert rule {fam} {c['table']} {c['name']} {r}")
    return "\n".join(reversed(cmds)) + "\n" if cmds else ""


@pytest.fixture(scope="module")
def topo(module_lab):
    why = rw.available()
    if why:
        pytest.fail(why) if __import__("os").environ.get("CI") == "true" else pytest.skip(why)
    for tool in ("iptables-legacy-restore", "iptables-nft-restore", "nft", "ipset",
                 "conntrack", "nfacct"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool}")
    lab = module_lab
    corpus = _corpus()
    texts = {path: path.read_text() for _, path, _ in corpus}
    extra = sorted({p for t in texts.values() for p in _ports(t)})
    ports = (*LAB_PORTS, *extra)
    node, peer, out, pod = build_topology(lab, ports)
    # the objects the dumps name (iptables-restore refuses a rule naming a missing one)
    for _, path, fam in corpus:
        for cmd in rw.ipt_objects(texts[path], fam or 4):
            lab.sh(*cmd, ns=node, check=False)
    nat = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
    _restore(lab, node, "iptables-legacy-restore", nat)
    _restore(lab, node, "ip6tables-legacy-restore", nat)
    lab.sysctl(node, "net.netfilter.nf_conntrack_tcp_loose", "0")
    probers = {name: Prober(lab, ns) for name, ns in
               (("pod", pod), ("peer", peer), ("out", out), ("node", node))}
    shown = json.loads(lab.sh("ip", "-j", "addr", "show", ns=node).stdout)
    ifaddrs = {i["ifname"]: tuple(a["local"] for a in i.get("addr_info", ())) for i in shown}
    # connected routes, plus the routes the lab adds (meta via out, as a real node routes)
    networks = {i["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in i.get("addr_info", ())]
                for i in shown}
    return lab, node, probers, (ifaddrs, networks), corpus, texts


def _load(lab, node, kind: str, path, fam: int, text: str, flavour: str) -> str | None:
    """Load one real ruleset; None, or the kernel's refusal (first line)."""
    lab.sh("nft", "flush", "ruleset", ns=node)
    for cmd in ("iptables-legacy-restore", "ip6tables-legacy-restore"):
        _restore(lab, node, cmd, EMPTY)
    sh = ["ip", "netns", "exec", node.name]
    if kind == "ipt":
        cmd = ("ip6tables" if fam == 6 else "iptables") + f"-{flavour}-restore"
        r = subprocess.run([*sh, cmd], input=_with_reply_rules(text, fam), text=True,
                           capture_output=True, timeout=60)
    else:
        prep = ""
        if "issue13263" in path.name:  # its base chains are iptables-nft's
            from tests.integration.test_realworld_corpus import BASES
            prep = f"printf '{BASES}' | iptables-nft-restore && "
        r = subprocess.run([*sh, "sh", "-c", f"{prep}nft -f -"], input=rw.nft_loadable(text),
                           text=True, capture_output=True, timeout=60)
        if r.returncode == 0:
            listing = lab.sh("nft", "-j", "list", "chains", ns=node).stdout
            script = _nft_reply_script(listing)
            if script:
                r = subprocess.run([*sh, "nft", "-f", "-"], input=script, text=True,
                                   capture_output=True, timeout=60)
    lab.sh("conntrack", "-F", ns=node, check=False)
    lab.sh("conntrack", "-F", "-f", "ipv6", ns=node, check=False)
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["?"])[0]
    return None


def test_real_rulesets_match_the_kernel(topo, tmp_path):
    lab, node, probers, ifaddrs, corpus, texts = topo
    started = time.monotonic()
    stats: Counter = Counter()
    refused, wrong, uncertain_kinds, inexact = [], [], Counter(), Counter()
    sampled = [rw.rel(p) for k, p, _ in corpus if "moby-" in p.name and "doc" not in p.name]
    pool = ThreadPoolExecutor(1, initializer=setns, initargs=(node.name,))
    netlink = Probes(nft_tables=lambda: pool.submit(nfgen.list_tables).result(60),
                     nft_read=lambda f, t, n: pool.submit(read_native, f, t, n).result(120))
    for n, (kind, path, fam) in enumerate(corpus):
        text = texts[path]
        flavour = "nft" if n % 2 else "legacy"
        why = _load(lab, node, kind, path, fam, text, flavour)
        if why:
            refused.append(f"{rw.rel(path)}: {why}")
            continue
        stats["rulesets"] += 1
        stats[f"rulesets {kind if kind == 'nft' else 'iptables-' + flavour}"] += 1

        def run(argv):
            r = lab.sh(*argv, ns=node, check=False)
            return r.stdout if r.returncode == 0 else None

        # native nft tables as the daemon reads them: over netlink, from inside the node
        ruleset = collect_ruleset(run, probes=netlink) if kind == "nft" else \
            collect_ruleset(run)
        stats["nft rulesets read over netlink"] += any(
            "read over netlink" in x for x in ruleset.notes)
        fams = (fam,) if fam else (4, 6)
        probes = _probes(fams, _ports(text))
        by_src: dict[str, list[int]] = {}
        for i, p in enumerate(probes):
            by_src.setdefault(p[0], []).append(i)
        for src, idx in by_src.items():
            probers[src].send([[probes[i][3], probes[i][4], probes[i][2]] for i in idx])
        seen: dict[int, str] = {}
        for src, idx in by_src.items():
            for i, res in zip(idx, probers[src].recv(), strict=True):
                seen[i] = KIND[res]
        for i, (src, pfam, proto, dst, port, path_, iif, oif) in enumerate(probes):
            # the node's own probes: root's socket, from the address it connects to
            pkt = Packet(pfam, SRC[pfam][src] if src != "node" or dst.startswith(("127", "::1"))
                         else dst, dst, proto, port, iif=iif, oif=oif,
                         uid=0 if src == "node" else None, gid=0 if src == "node" else None)
            v = evaluate(ruleset, pkt, local_addresses=LOCAL, path=path_,
                         interface_addresses=ifaddrs[0], interface_networks=ifaddrs[1])
            stats["probes"] += 1
            stats[f"kernel {seen[i]}"] += 1
            if src == "node" and any(s.effect == "dnat" for s in v.trace):
                stats["loopback probes DNATed away (nat OUTPUT)"] += 1
            if not v.certain:
                stats["uncertain"] += 1
                uncertain_kinds[(v.reasons[1] if len(v.reasons) > 1 else v.reasons[0])
                                .split(": ", 1)[-1][:90]] += 1
                continue
            if (v.action == "accept") != (seen[i] == "accept"):
                stats["certain and wrong"] += 1
                wrong.append(f"{rw.rel(path)} ({flavour if kind == 'ipt' else 'nft'}) IPv{pfam} "
                             f"{proto} {src}->{dst}:{port} ({path_}) kernel={seen[i]} "
                             f"evaluator={v.action}\n  " + "\n  ".join(map(str, v.trace)))
            else:
                stats["certain and agreeing"] += 1
                if v.action != seen[i]:
                    stats["  of which reject/drop told apart wrong"] += 1
                    inexact[f"{rw.rel(path).rsplit('/', 1)[-1]} IPv{pfam} {proto} {src}->"
                            f"{dst} ({path_}) kernel={seen[i]} evaluator={v.action} "
                            f"last={v.trace[-1] if v.trace else '-'}"[:220]] += 1
    pool.shutdown()
    took = time.monotonic() - started
    share = stats["uncertain"] / max(stats["probes"], 1)
    print(f"\nreal-corpus differential ({took:.0f}s): " +
          ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) +
          f"; uncertain {100 * share:.2f}% of probes; refused by the kernel {len(refused)}")
    names = [s.rsplit("/", 1)[-1].split(".")[0] for s in sampled]
    print(f"  dockerd goldens run (every {SAMPLE}): {len(names)}" +
          (f": {' '.join(names)}" if SAMPLE > 1 else ""))
    for x in refused:
        print("  refused:", x)
    for reason, count in uncertain_kinds.most_common(10):
        print(f"  uncertain x{count}: {reason}")
    for case, count in inexact.most_common(5):
        print(f"  reject/drop x{count}: {case}")
    if wrong:
        (tmp_path / "wrong.txt").write_text("\n=====\n".join(wrong))
        print("  first wrong:", "\n".join(wrong[:5]))
    assert not wrong, f"{len(wrong)} certain and wrong (all in {tmp_path / 'wrong.txt'})"
    assert share < 0.01, f"uncertain {100 * share:.2f}% of probes"
    assert len(refused) <= 1, refused  # the 80-column paste (omr-1940) only
    assert stats["nft rulesets read over netlink"] == stats["rulesets nft"] > 0
