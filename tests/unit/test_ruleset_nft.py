"""nft -j parser: a real `nft -j list ruleset` capture (nft 1.0.6) of an inet table with a
named set, jump/goto/return, fib, ct state, anonymous sets; iptables-nft tables skipped."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeward.collect.ruleset import collect_ruleset
from nodeward.ruleset import Packet, Ruleset, RulesetParseError, evaluate
from nodeward.ruleset.nft import parse_nft_json

ITEMS = [
    {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "fw", "handle": 1}},
    {
        "set": {
            "family": "inet",
            "name": "pods",
            "table": "fw",
            "type": "ipv4_addr",
            "handle": 4,
            "flags": ["interval"],
            "elem": [{"prefix": {"addr": "10.244.0.0", "len": 16}}],
        }
    },
    {
        "chain": {
            "family": "inet",
            "table": "fw",
            "name": "input",
            "handle": 1,
            "type": "filter",
            "hook": "input",
            "prio": -10,
            "policy": "drop",
        }
    },
    {"chain": {"family": "inet", "table": "fw", "name": "sub", "handle": 2}},
    {"chain": {"family": "inet", "table": "fw", "name": "sub2", "handle": 3}},
    {
        "rule": {
            "family": "inet",
            "table": "fw",
            "chain": "input",
            "handle": 5,
            "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}},
                {"accept": None},
            ],
        }
    },
    {
        "rule": {
            "family": "inet",
            "table": "fw",
            "chain": "input",
            "handle": 6,
            "expr": [
                {
                    "match": {
                        "op": "in",
                        "left": {"ct": {"key": "state"}},
                        "right": ["established", "related"],
                    }
                },
                {"accept": None},
            ],
        }
    },
    {
        "rule": {
            "family": "inet",
            "table": "fw",
            "chain": "input",
            "handle": 8,
            "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cali*"}},
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                        "right": {"set": [{"range": [2379, 2380]}, 10250]},
                    }
                },
                {"drop": None},
            ],
        }
    },
    {
        "rule": {
            "family": "inet",
            "table": "fw",
            "chain": "input",
            "handle": 9,
            "expr": [
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                        "right": "@pods",
                    }
                },
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                        "right": 22,
                    }
                },
                {"counter": {"packets": 0, "bytes": 0}},
                {"reject": {"type": "icmp", "expr": "port-unreachable"}},
            ],
        }
    },
    {
        "rule": {
            "family": "inet",
            "table": "fw",
            "chain": "input",
            "handle": 10,
            "expr": [
                {
                    "match": {
                        "op": "!=",
                        "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                        "right": {"prefix": {"addr": "10.0.0.0", "len": 8}},
                    }
                },
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                {"jump": {"target": "sub"}},
            ],
        }
    },
    {
        "rule": {
            "family": "inet",
            "table": "fw",
            "chain": "input",
            "handle": 11,
            "expr": [
                {
                    "match": {
                        "op": "==",
                        "left": {"fib": {"result": "type", "flags": ["daddr"]}},
                        "right": "local",
                    }
                },
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                        "right": 6443,
                    }
                },
                {"log": {"prefix": "x"}},
                {"accept": None},
            ],
        }
    },
    {
        "rule": {
            "family": "inet",
            "table": "fw",
            "chain": "sub",
            "handle": 12,
            "expr": [
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                        "right": 80,
                    }
                },
                {"goto": {"target": "sub2"}},
            ],
        }
    },
    {
        "rule": {
            "family": "inet",
            "table": "fw",
            "chain": "sub",
            "handle": 13,
            "expr": [{"return": None}],
        }
    },
    {
        "rule": {
            "family": "inet",
            "table": "fw",
            "chain": "sub2",
            "handle": 14,
            "expr": [{"notrack": None}],
        }
    },
]
IPT_NFT = [
    {"table": {"family": "ip", "name": "filter", "handle": 2}},
    {
        "chain": {
            "family": "ip",
            "table": "filter",
            "name": "INPUT",
            "handle": 1,
            "type": "filter",
            "hook": "input",
            "prio": 0,
            "policy": "drop",
        }
    },
]
DOC = json.dumps({"nftables": ITEMS + IPT_NFT})


def verdict(rs, src, iif, port):
    return evaluate(
        rs, Packet(4, src, "10.0.0.1", "tcp", port, iif=iif), local_addresses=["10.0.0.1"]
    )


def test_native_nft_paths():
    tables, sets = parse_nft_json(DOC, skip={("ip", "filter")})
    assert [(t.family, t.name) for t in tables] == [("inet", "fw")]
    rs = Ruleset(tables, sets)
    assert verdict(rs, "10.244.1.2", "cali0", 10250).action == "drop"
    assert verdict(rs, "10.244.1.2", "cali0", 2380).action == "drop"
    assert verdict(rs, "10.244.1.2", "eth0", 22).action == "reject"  # @pods set
    v = verdict(rs, "8.8.8.8", "eth0", 80)  # jump sub -> goto sub2 -> back in input
    assert v.action == "drop" and [s.chain for s in v.trace][:3] == ["input", "sub", "sub2"]
    v = verdict(rs, "8.8.8.8", "eth0", 6443)  # fib daddr type local
    assert v.action == "accept" and v.certain
    assert verdict(rs, "127.0.0.1", "lo", 1).action == "accept"


def test_iptables_nft_tables_not_evaluated_twice():
    outputs = {"nft": DOC, "iptables-nft-save": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"}
    rs = collect_ruleset(lambda argv: outputs.get(argv[0]))
    assert sorted((t.frontend, t.name) for t in rs.tables) == [
        ("iptables-nft", "filter"),
        ("nft", "fw"),
    ]
    # without the skip the nft copy of ip filter (policy drop) would drop everything
    assert verdict(rs, "10.1.1.1", "eth0", 6443).action == "accept"


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        json.dumps({"nftables": [1]}),
        json.dumps({"nftables": [{"rule": {"family": "inet"}}]}),
    ],
)
def test_malformed_nft_json(text):
    with pytest.raises(RulesetParseError) as e:
        parse_nft_json(text, source="nft.json")
    assert str(e.value).startswith("nft.json:") and "\n" not in str(e.value)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(
        ["inet", "ip", "ip6", "filter", "input", "accept", "drop", "tcp", "dport", "==",
         "!=", "payload", "meta", "iifname", "saddr", "10.0.0.0/8", "jump", "x"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["family", "name", "table", "chain", "hook", "prio", "policy",
                         "expr", "match", "left", "right", "op", "payload", "protocol",
                         "field", "meta", "key", "accept", "drop", "jump", "target",
                         "counter", "set", "elem", "prefix", "addr", "len", "range"]),
        inner, max_size=5),
    max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    _json.map(lambda v: {"nftables": v}),
    st.lists(st.dictionaries(st.sampled_from(["table", "chain", "rule", "set", "metainfo"]),
                             _json, min_size=1, max_size=2), max_size=6).map(
        lambda items: {"nftables": items})))
def test_any_json_shape_is_parsed_or_a_one_line_error(doc):
    """Whatever shape `nft -j` (or a hand-edited file) gives, never a traceback."""
    try:
        parse_nft_json(json.dumps(doc), source="nft.json")
    except RulesetParseError as e:
        assert str(e).startswith("nft.json:") and "\n" not in str(e)


def test_parse_from_pieces_equals_parse_from_text() -> None:
    """The live collector reads nft's JSON in pieces (collect.ruleset.Pieces) and the parser
    takes them out of the list as it goes: the result must be the one of the whole text,
    for real dumps (../shared/realworld/nft) cut anywhere, also mid-string and mid-number;
    a dump cut short is an error, not a shorter ruleset."""
    from pathlib import Path

    from nodeward.collect.ruleset import Pieces

    real = Path(__file__).resolve().parents[2].parent / "shared" / "realworld" / "nft"
    files = sorted(real.glob("*.json"))
    assert files, f"no nft captures in {real}"
    for path in files:
        text = path.read_text()
        try:
            whole = parse_nft_json(text, source=path.name)
        except RulesetParseError:
            continue
        for size in (1, 7, 64, 1000):
            pieces = Pieces(text[i:i + size] for i in range(0, len(text), size))
            assert pieces.count('{"rule":') == text.count('{"rule":')
            assert parse_nft_json(pieces, source=path.name) == whole, (path.name, size)
            assert not pieces or not whole[0]  # consumed when laid out as nft prints it
        if '{"nftables": [' in text and len(text) > 200:
            cut = Pieces([text[:len(text) // 2]])
            with pytest.raises(RulesetParseError):
                parse_nft_json(cut, source=path.name)
