"""The verdict memo when nft sets and maps change (kube-proxy's nftables mode changes its
service maps on most syncs, and every packet is looked up in them): a socket is evaluated
again only when an element its lookups hit or missed changed, or a set it read changed in
a way a lookup cannot pin down. Property: after any sequence of map, set and chain changes
the memo's verdicts equal a fresh evaluation's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from nodeward.model import Socket
from nodeward.ruleset import Ruleset
from nodeward.ruleset.nft import parse_nft_json
from nodeward.ruleset.reach import ReachMemo, reachability

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.ruleset import kube_proxy_nft_json

NODE = "10.0.1.5"
KW = {"node_addresses": [NODE], "node_cidrs": ["10.0.0.0/16"],
      "pod_cidrs": ["10.244.0.0/16"]}
PORTS = [22, 80, 6443, 10250, 30002, 30003, 30004]
SOCKETS = [Socket("tcp", 4, "0.0.0.0", p, i, 0) for i, p in enumerate(PORTS, 1)]
BASE = json.loads(kube_proxy_nft_json(12, nodes=(NODE,)))["nftables"]


def _map(items: list, name: str) -> dict:
    return next(i.get("map") or i.get("set") for i in items
                if (i.get("map") or i.get("set") or {}).get("name") == name)


def mutate(items: list, kind: str, k: int) -> None:
    if kind == "service":  # a ClusterIP service appears (never a node address)
        _map(items, "service-ips")["elem"].append(
            [{"concat": [f"10.96.9.{k % 250 + 1}", "tcp", 80]},
             {"goto": {"target": "reject-chain"}}])
    elif kind == "unservice" and _map(items, "service-ips")["elem"]:
        _map(items, "service-ips")["elem"].pop(k % len(_map(items, "service-ips")["elem"]))
    elif kind == "nodeport":  # a NodePort on one of the node's listening ports
        port = PORTS[k % len(PORTS)]
        _map(items, "no-endpoint-nodeports")["elem"].append(
            [{"concat": ["tcp", port]}, {"drop": None}])
    elif kind == "unnodeport" and _map(items, "service-nodeports")["elem"]:
        _map(items, "service-nodeports")["elem"].pop(0)
    elif kind == "nodeips":
        s = _map(items, "nodeport-ips")
        s["elem"] = [] if s["elem"] else [NODE]
    elif kind == "firewall":  # the node's own address . port behind a firewall chain
        _map(items, "firewall-ips")["elem"].append(
            [{"concat": [NODE, "tcp", PORTS[k % len(PORTS)]]},
             {"goto": {"target": "reject-chain"}}])


def ruleset(items: list, n: int) -> Ruleset:
    t, s = parse_nft_json(json.dumps({"nftables": items}))
    return Ruleset(t, s, fingerprint=f"fp{n}")


def verdicts(reach) -> list:
    return [(r.socket.port, r.verdicts, r.destinations) for r in reach]


MUTATIONS = ["service", "unservice", "nodeport", "unnodeport", "nodeips", "firewall"]


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 50)),
                      min_size=1, max_size=5))
def test_memo_equals_fresh_evaluation_after_set_changes(steps) -> None:
    items = json.loads(json.dumps(BASE))
    memo = ReachMemo()
    reachability(SOCKETS, ruleset(items, 0), memo=memo, **KW)
    for n, (kind, k) in enumerate(steps, 1):
        mutate(items, kind, k)
        rs = ruleset(items, n)
        got = reachability(SOCKETS, rs, memo=memo, **KW)
        assert verdicts(got) == verdicts(reachability(SOCKETS, rs, **KW)), (kind, k)


def test_a_service_map_element_reevaluates_only_the_sockets_it_answers() -> None:
    items = json.loads(json.dumps(BASE))
    memo = ReachMemo()
    before = reachability(SOCKETS, ruleset(items, 0), memo=memo, **KW)
    mutate(items, "service", 3)  # a cluster IP: no listener's packet is looked up with it
    reachability(SOCKETS, ruleset(items, 1), memo=memo, **KW)
    assert memo.reevaluated == 0 and memo.hits == len(SOCKETS)
    mutate(items, "firewall", 0)  # NODE . tcp . 22: only the socket on port 22
    got = reachability(SOCKETS, ruleset(items, 2), memo=memo, **KW)
    assert memo.reevaluated == 1
    assert verdicts(got) == verdicts(reachability(SOCKETS, ruleset(items, 2), **KW))
    assert verdicts(got) != verdicts(before)  # (port 22 now goes to the reject chain)
