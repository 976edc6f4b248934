"""The netlink reader (collect/nftnl.py) against `nft -j`, on rulesets the real `nft -f`
loaded: run inside a scratch namespace (`ip netns exec NS python -m tests.lab.nftnl_compare
FILE...`), it loads each file, reads every native table both ways, and compares the two
models: chains, rules (target, matches, uncertain or not), named sets, and the verdicts of
every listening port x source class. Prints one JSON line of figures; the differences
found, each with the file, go in "diffs".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "agent"))
sys.path.insert(0, str(ROOT))

from nodeward.collect import nfgen, nftnl  # noqa: E402
from nodeward.model import Socket  # noqa: E402
from nodeward.ruleset.model import Ruleset  # noqa: E402
from nodeward.ruleset.nft import parse_nft_json  # noqa: E402
from nodeward.ruleset.reach import reachability  # noqa: E402
from tests.lab import realworld as rw  # noqa: E402

PORTS = (22, 53, 80, 443, 2379, 6443, 8080, 10250, 30080)
_PORT = re.compile(r"dport\D{0,12}(\d{1,5})")
BASES = "*filter\\n:INPUT ACCEPT [0:0]\\n:FORWARD ACCEPT [0:0]\\n:OUTPUT ACCEPT [0:0]\\nCOMMIT\\n"


def uncertain(rule) -> bool:
    return any(m.op == "unknown" for m in rule.matches) or \
        rule.target.startswith(("NFT-", "XT-", "UNREADABLE"))


def _kinds(rule) -> list[str]:
    out = [m.args[0][:40] for m in rule.matches if m.op == "unknown"]
    if rule.target.startswith(("NFT-", "XT-")):
        out.append(rule.target)
    return out


_ORDER = {"table": 0, "set": 1, "map": 1, "flowtable": 1, "counter": 1, "quota": 1,
          "chain": 2, "rule": 3}


def json_loadable(text: str) -> str:
    """An `nft -j list ruleset` document nft -j -f loads: tables, then sets and maps, then
    chains, then rules (a listing may name a chain in a jump before declaring it)."""
    items = json.loads(text)["nftables"]
    items = [i for i in items if "metainfo" not in i]
    for i in items:
        s = i.get("set") or i.get("map")
        if isinstance(s, dict) and s.get("elem") == []:
            del s["elem"]  # nft -j -f refuses an empty element list
    items.sort(key=lambda i: 2.5 if i.get("map", {}).get("map") == "verdict" else
               _ORDER.get(next(iter(i)), 4))  # verdict maps name chains
    return json.dumps({"nftables": items})


def load(path: Path) -> str | None:
    """Load one corpus file into this namespace; None when nft refused it (why)."""
    subprocess.run(["nft", "flush", "ruleset"], check=True)
    prep = []
    if "issue13263" in path.name:  # its base chains are iptables-nft's (see the corpus)
        prep = [["sh", "-c", f"printf '{BASES}' | iptables-nft-restore"]]
    for cmd in prep:
        subprocess.run(cmd, check=True, capture_output=True)
    if path.suffix == ".json":
        r = subprocess.run(["nft", "-j", "-f", "-"], input=json_loadable(path.read_text()),
                           capture_output=True, text=True)
    else:
        r = subprocess.run(["nft", "-f", "-"], input=rw.nft_loadable(path.read_text()),
                           capture_output=True, text=True)
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["?"])[0]
    return None


def compare_loaded(label: str, counts: Counter, diffs: list[str], text: str = "") -> None:
    """Compare both reads of every native table now in this namespace."""
    listed = nfgen.list_tables() or []
    ref_tables, ref_sets, our_tables, our_sets = [], {}, [], {}
    for fam, name in listed:
        if fam not in ("ip", "ip6", "inet"):
            continue
        out = subprocess.run(["nft", "-s", "-j", "list", "table", fam, name],
                             capture_output=True, text=True, check=True).stdout
        t, s = parse_nft_json(out, source=f"nft -j list table {fam} {name}")
        ref_tables += t
        ref_sets.update(s)
        got = nftnl.read_table(fam, name)
        our_tables += got.tables
        our_sets.update(got.sets)
        counts["tables"] += 1
    for rt, ot in zip(ref_tables, our_tables, strict=True):
        if set(rt.chains) != set(ot.chains):
            diffs.append(f"{label}: {rt.family} {rt.name}: chains differ")
            continue
        for cname, rc in rt.chains.items():
            oc = ot.chains[cname]
            if (rc.policy, rc.hook, rc.priority) != (oc.policy, oc.hook, oc.priority):
                diffs.append(f"{label}: chain {cname}: {rc.hook}/{rc.policy}/{rc.priority} "
                             f"vs {oc.hook}/{oc.policy}/{oc.priority}")
            if len(rc.rules) != len(oc.rules):
                diffs.append(f"{label}: chain {cname}: {len(rc.rules)} vs {len(oc.rules)} rules")
                continue
            for rr, orr, text in zip(rc.rules, oc.rules, rc.rule_texts(), strict=True):
                counts["rules"] += 1
                ru, ou = uncertain(rr), uncertain(orr)
                counts["rules uncertain via nft -j"] += ru
                counts["rules uncertain via netlink"] += ou
                if ou and not ru:
                    counts["uncertain via netlink only"] += 1
                    diffs.append(f"{label}: uncertain via netlink only: {_kinds(orr)} "
                                 f"({text[:160]})")
                elif ru and not ou:
                    counts["uncertain via nft -j only"] += 1
                    diffs.append(f"{label}: uncertain via nft -j only: {_kinds(rr)} "
                                 f"({text[:160]})")
                same = (rr.target, rr.arg, _m(rr), rr.effects) == \
                    (orr.target, orr.arg, _m(orr), orr.effects) and \
                    _vmap(rr.vmap) == _vmap(orr.vmap)
                if not same:
                    counts["rules modelled differently"] += 1
                    diffs.append(f"{label}: rule differs:\n    nft -j : {rr.target} {rr.arg} "
                                 f"{[(m.op, m.args, m.negate) for m in rr.matches]} "
                                 f"{rr.effects} {_vmap(rr.vmap)}\n    netlink: {orr.target} "
                                 f"{orr.arg} {[(m.op, m.args, m.negate) for m in orr.matches]}"
                                 f" {orr.effects} {_vmap(orr.vmap)}\n    ({text[:200]})")
    for key, s in ref_sets.items():
        counts["sets"] += 1
        o = our_sets.get(key)
        if o is None or (s.type, sorted(s.members), sorted(s.elements), s.keyed) != \
                (o.type, sorted(o.members), sorted(o.elements), o.keyed):
            counts["sets differing"] += 1
            diffs.append(f"{label}: set {key}: {s.type} {s.members[:4]} {s.elements[:4]} vs "
                         f"{o and (o.type, o.members[:4], o.elements[:4])}")
    ports = sorted({*PORTS, *(int(p) for p in _PORT.findall(text) if 0 < int(p) < 65536)})
    socks = [Socket(proto, fam, "0.0.0.0" if fam == 4 else "::", p, 0, 0)
             for proto in ("tcp", "udp") for fam in (4, 6) for p in ports[:40]]
    kw = {"node_addresses": ["10.0.1.5", "fd00::5"], "node_cidrs": ["10.0.0.0/16"],
          "pod_cidrs": ["10.244.0.0/16"]}
    ra = reachability(socks, Ruleset(tuple(ref_tables), ref_sets), **kw)
    rb = reachability(socks, Ruleset(tuple(our_tables), our_sets), **kw)
    for a, b in zip(ra, rb, strict=True):
        for cls, va in a.verdicts.items():
            vb = b.verdicts.get(cls)
            counts["verdicts"] += 1
            if vb is None or (va.action, va.certain) != (vb.action, vb.certain):
                counts["verdicts differing"] += 1
                diffs.append(f"{label}: {a.socket.protocol}/{a.socket.port} v{a.socket.family} "
                             f"{cls}: nft -j {va.action}{'' if va.certain else '?'} vs "
                             f"netlink {vb and vb.action}{'' if vb and vb.certain else '?'}")


def _m(rule) -> list:
    """The matches compared; an unmodelled one by being there (its args are only the text
    an operator reads, where nft names constants this reader prints as numbers: cs1, 32)."""
    return [(m.op, m.args if m.op != "unknown" else (), m.negate) for m in rule.matches]


def _vmap(v):
    if not v:
        return v
    sels, s = v
    return (sels, s if isinstance(s, str) else (sorted(s.elements), s.keyed))


def main(paths: list[str]) -> None:
    counts: Counter = Counter()
    diffs: list[str] = []
    refused: list[str] = []
    for p in map(Path, paths):
        why = load(p)
        if why is not None:
            refused.append(f"{rw.rel(p)}: {why}")
            continue
        counts["files compared"] += 1
        try:
            compare_loaded(rw.rel(p), counts, diffs, p.read_text())
        except Exception as e:  # reported as a difference, with the file
            diffs.append(f"{rw.rel(p)}: {type(e).__name__}: {e}")
    subprocess.run(["nft", "flush", "ruleset"], check=False)
    print(json.dumps({"counts": counts, "diffs": diffs, "refused": refused}))


if __name__ == "__main__":
    main(sys.argv[1:])
