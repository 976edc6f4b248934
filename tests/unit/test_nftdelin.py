"""collect/nftdelin.py without a kernel: set elements as the kernel dumps them (the bytes
`nft --debug=netlink list set` showed for tests/lab/nft_shapes.nft) against what `nft -j`
printed for the same set, and garbage never escaping as anything but the errors
read_table turns into a fallback to nft. The whole reader against the real nft -j:
tests/integration/test_nftnl_lab.py."""

from __future__ import annotations

import json
import random
import struct

from nodeward.collect.nftdelin import SetInfo, decode_rule, finish_elems, key_types
from nodeward.collect.nftnl import NetlinkReadFailed
from nodeward.ruleset.nft import parse_nft_json

# nft -j list set inet shapes allowed4 (nft 1.0.6), and the kernel's elements for it:
# (key, end-of-interval flag), in dump order
ALLOWED4_NFT = [{"prefix": {"addr": "10.0.0.0", "len": 8}}, "172.16.0.5",
                {"range": ["192.168.1.1", "192.168.1.20"]}]
ALLOWED4_KERNEL = [("c0a80115", 1), ("c0a80101", 0), ("ac100006", 1), ("ac100005", 0),
                   ("0b000000", 1), ("0a000000", 0), ("00000000", 1)]


def test_interval_set_elements_pair_as_nft_lists_them():
    info = SetInfo("allowed4", 0x4, key_types(7, 4, []), 4, 0, 0)
    finish_elems(info, [(bytes.fromhex(k), None, f, None) for k, f in ALLOWED4_KERNEL])
    assert info.ok and info.elems == ALLOWED4_NFT


def test_concatenated_keys_split_by_field():
    # ipv4_addr . inet_proto . inet_service: 7 << 12 | 12 << 6 | 13, fields 4, 1, 2
    info = SetInfo("svc", 0, key_types(7 << 12 | 12 << 6 | 13, 12, [4, 1, 2]), 12, 0, 0)
    raw = [(bytes.fromhex("0a60000a" "11000000" "00350000"), None, 0, None),
           (bytes.fromhex("0a600001" "06000000" "01bb0000"), None, 0, None)]
    finish_elems(info, raw)
    assert info.type_json() == ["ipv4_addr", "inet_proto", "inet_service"]
    assert sorted(map(json.dumps, info.elems)) == sorted(map(json.dumps, [
        {"concat": ["10.96.0.10", "udp", 53]}, {"concat": ["10.96.0.1", "tcp", 443]}]))


def test_a_set_of_interface_names_parses():
    # nft -j list set inet shapes ifs: it used to fail the whole table ("malformed set")
    doc = {"nftables": [
        {"table": {"family": "inet", "name": "shapes"}},
        {"set": {"family": "inet", "name": "ifs", "table": "shapes", "type": "ifname",
                 "handle": 11, "elem": ["lo", "eth0"]}}]}
    _tables, sets = parse_nft_json(json.dumps(doc))
    s = sets["nft:inet:shapes:ifs"]
    assert s.members == () and {k for k, _v in s.elements} == {(("lo", "lo"),),
                                                              (("eth0", "eth0"),)}


def _nla(typ: int, value: bytes) -> bytes:
    b = struct.pack("=HH", 4 + len(value), typ) + value
    return b + b"\0" * (-len(b) % 4)


def test_garbage_is_an_error_the_reader_falls_back_on_or_an_uncertain_rule():
    """Whatever a dump holds, decoding raises only what read_table turns into
    NetlinkReadFailed (then nft -j reads the table), or gives a rule."""
    rnd = random.Random(17)
    caught = (struct.error, IndexError, KeyError, ValueError, TypeError, AttributeError)
    for _ in range(3000):
        exprs = b"".join(_nla(1, _nla(1, rnd.choice([b"payload", b"cmp", b"meta", b"lookup",
                                                     b"immediate", b"bitwise", b"nat",
                                                     b"bogus"]) + b"\0")
                                 + _nla(2, rnd.randbytes(rnd.randrange(0, 40))))
                         for _ in range(rnd.randrange(1, 5)))
        msg = _nla(1, rnd.choice([b"t\0", b"u\0"])) + _nla(2, b"c\0") + _nla(4, exprs)
        if rnd.random() < 0.3:
            msg = msg[:rnd.randrange(len(msg))]
        try:
            r = decode_rule("inet", "t", msg, {}, _Hash())
        except caught:
            continue
        assert isinstance(r["expr"], list)
    assert issubclass(NetlinkReadFailed, Exception)


class _Hash:
    def update(self, b: bytes) -> None:
        pass
