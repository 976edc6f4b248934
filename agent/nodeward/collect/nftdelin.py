"""nf_tables rule expressions (netlink attributes) -> the elements `nft -j` prints.

nft's own "delinearisation", the parts a host firewall uses: payload loads at header
offsets become named fields (`ip saddr`, `tcp dport`; shortened loads are prefixes, merged
loads several fields), meta/ct/fib/numgen/socket loads their keys, cmp/bitwise/range/lookup
on a register a match with the value printed in the field's own type (addresses, protocol
names, ct state words, interface names with `*`), immediate data verdicts and statement
arguments (nat, mark set), and the protocol dependencies nft leaves out of its listing
(`meta nfproto ipv4` before `ip saddr`, `meta l4proto tcp` before `tcp dport`) are left
out here too. An expression not decoded becomes {"netlink <name>": ...}, which
ruleset/nft.py does not know either: the rule becomes uncertain, never accepted or dropped
on a guess. Pure functions of bytes (collect/nftnl.py does the reading).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from socket import AF_INET, AF_INET6, inet_ntop
from typing import Any

_NLA = struct.Struct("=HH")
_U32 = struct.Struct(">I")
_S32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")

def attrs(buf: bytes, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The netlink attributes in buf[start:end] by type (the last of a repeated type)."""
    end = len(buf) if end is None else end
    out: dict[int, bytes] = {}
    while start + 4 <= end:
        ln, typ = _NLA.unpack_from(buf, start)
        if ln < 4:
            break
        out[typ & 0x3FFF] = buf[start + 4:start + ln]
        start += (ln + 3) & ~3
    return out


def attr_list(buf: bytes) -> list[bytes]:
    """The payloads of a nested list (NFTA_LIST_ELEM entries), in order."""
    out = []
    pos = 0
    end = len(buf)
    while pos + 4 <= end:
        ln, _typ = _NLA.unpack_from(buf, pos)
        if ln < 4:
            break
        out.append(buf[pos + 4:pos + ln])
        pos += (ln + 3) & ~3
    return out


def text_attr(b: bytes | None) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace") if b else ""


def u32_attr(b: bytes | None, default: int = 0) -> int:
    return _U32.unpack_from(b)[0] if b and len(b) >= 4 else default


def data_value(b: bytes | None) -> bytes:
    """NFTA_DATA_VALUE of a nested data attribute."""
    return attrs(b).get(1, b"") if b else b""


# -- what the numbers mean (nft's datatypes, as nft 1.0.6 prints them) ------------------------

@lru_cache(maxsize=1)
def protocols() -> dict[int, str]:
    """/etc/protocols, which nft itself prints protocol numbers through."""
    out = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 41: "ipv6", 47: "gre", 50: "esp",
           51: "ah", 58: "ipv6-icmp", 132: "sctp", 136: "udplite", 33: "dccp"}
    try:
        with open("/etc/protocols", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 2 and parts[1].isdigit():
                    out.setdefault(int(parts[1]), parts[0])
    except OSError:
        pass
    return out


META_KEYS = ("length", "protocol", "priority", "mark", "iif", "oif", "iifname", "oifname",
             "iiftype", "oiftype", "skuid", "skgid", "nftrace", "rtclassid", "secmark",
             "nfproto", "l4proto", "ibrname", "obrname", "pkttype", "cpu", "iifgroup",
             "oifgroup", "cgroup", "random", "ipsec", "iifkind", "oifkind", "ibrpvid",
             "ibrvproto", "time", "day", "hour", "sdif", "sdifname", "broute")
CT_KEYS = ("state", "direction", "status", "mark", "secmark", "expiration", "helper",
           "l3proto", "saddr", "daddr", "protocol", "proto-src", "proto-dst", "label",
           "packets", "bytes", "avgpkt", "zone", "event", "ip saddr", "ip daddr",
           "ip6 saddr", "ip6 daddr", "id")
CT_STATES = ((1, "invalid"), (2, "established"), (4, "related"), (8, "new"),
             (64, "untracked"))
CT_STATUS = ((1, "expected"), (2, "seen-reply"), (4, "assured"), (8, "confirmed"),
             (16, "snat"), (32, "dnat"), (512, "dying"))
TCP_FLAGS = ((1, "fin"), (2, "syn"), (4, "rst"), (8, "psh"), (16, "ack"), (32, "urg"),
             (64, "ecn"), (128, "cwr"))
PKTTYPES = {0: "host", 1: "broadcast", 2: "multicast", 3: "other"}
NFPROTO = {2: "ipv4", 10: "ipv6", 1: "inet", 3: "arp", 7: "bridge", 5: "netdev"}
FIB_TYPES = ("unspec", "unicast", "local", "broadcast", "anycast", "multicast", "blackhole",
             "unreachable", "prohibit")
ICMP_TYPES = {0: "echo-reply", 3: "destination-unreachable", 4: "source-quench",
              5: "redirect", 8: "echo-request", 9: "router-advertisement",
              10: "router-solicitation", 11: "time-exceeded", 12: "parameter-problem",
              13: "timestamp-request", 14: "timestamp-reply", 15: "info-request",
              16: "info-reply", 17: "address-mask-request", 18: "address-mask-reply"}
ICMP6_TYPES = {1: "destination-unreachable", 2: "packet-too-big", 3: "time-exceeded",
               4: "parameter-problem", 128: "echo-request", 129: "echo-reply",
               130: "mld-listener-query", 131: "mld-listener-report",
               132: "mld-listener-done", 133: "nd-router-solicit", 134: "nd-router-advert",
               135: "nd-neighbor-solicit", 136: "nd-neighbor-advert", 137: "nd-redirect",
               138: "router-renumbering", 141: "ind-neighbor-solicit",
               142: "ind-neighbor-advert", 143: "mld2-listener-report"}
ETHERTYPES = {0x0800: "ip", 0x86DD: "ip6", 0x0806: "arp", 0x8100: "8021q", 0x88A8: "8021ad"}
#: nft datatype ids (datatype.h) -> the type word nft prints for a set, and the bytes a value
#: takes in a register
DATATYPES = {1: ("verdict", 4), 2: ("nf_proto", 1), 4: ("integer", 4), 5: ("string", 16),
             7: ("ipv4_addr", 4), 8: ("ipv6_addr", 16), 9: ("ether_addr", 6),
             10: ("ether_type", 2), 12: ("inet_proto", 1), 13: ("inet_service", 2),
             14: ("icmp_type", 1), 15: ("tcp_flag", 1), 19: ("mark", 4),
             20: ("iface_index", 4), 24: ("uid", 4), 25: ("gid", 4), 26: ("ct_state", 4),
             27: ("ct_dir", 1), 28: ("ct_status", 4), 29: ("icmpv6_type", 1),
             31: ("pkt_type", 1), 35: ("devgroup", 4), 36: ("dscp", 1), 38: ("fib_addrtype", 4),
             39: ("boolean", 1), 41: ("ifname", 16)}
#: (header, offset, length) -> field, per header nft knows by name
FIELDS = {
    "ip": {(1, 1): "dscp", (9, 1): "protocol", (12, 4): "saddr", (16, 4): "daddr",
           (8, 1): "ttl", (2, 2): "length", (4, 2): "id", (6, 2): "frag-off",
           (10, 2): "checksum"},
    "ip6": {(0, 1): "dscp", (6, 1): "nexthdr", (8, 16): "saddr", (24, 16): "daddr",
            (7, 1): "hoplimit", (4, 2): "length"},
    "tcp": {(0, 2): "sport", (2, 2): "dport", (4, 4): "sequence", (8, 4): "ackseq",
            (13, 1): "flags", (14, 2): "window", (16, 2): "checksum", (18, 2): "urgptr"},
    "udp": {(0, 2): "sport", (2, 2): "dport", (4, 2): "length", (6, 2): "checksum"},
    "udplite": {(0, 2): "sport", (2, 2): "dport"},
    "sctp": {(0, 2): "sport", (2, 2): "dport", (4, 4): "vtag"},
    "dccp": {(0, 2): "sport", (2, 2): "dport"},
    "th": {(0, 2): "sport", (2, 2): "dport"},
    "ether": {(0, 6): "daddr", (6, 6): "saddr", (12, 2): "type"},
    "icmp": {(0, 1): "type", (1, 1): "code", (2, 2): "checksum", (4, 2): "id",
             (6, 2): "sequence"},
    "icmpv6": {(0, 1): "type", (1, 1): "code", (2, 2): "checksum", (4, 2): "id",
               (6, 2): "sequence"},
}
L4 = {6: "tcp", 17: "udp", 136: "udplite", 132: "sctp", 33: "dccp", 1: "icmp",
      58: "icmpv6"}
HOOKS = ("prerouting", "input", "forward", "output", "postrouting", "ingress")
REJECT_CODES = {
    "icmp": {0: "net-unreachable", 1: "host-unreachable", 2: "prot-unreachable",
             3: "port-unreachable", 9: "net-prohibited", 10: "host-prohibited",
             13: "admin-prohibited"},
    "icmpv6": {0: "no-route", 1: "admin-prohibited", 3: "addr-unreachable",
               4: "port-unreachable", 5: "policy-fail", 6: "reject-route"},
    "icmpx": {0: "no-route", 1: "port-unreachable", 2: "host-unreachable",
              3: "admin-prohibited"}}
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop",
            -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}


def _bits(value: int, names) -> list[str]:
    return [n for bit, n in names if value & bit]


def _words(ws: list[str]) -> Any:
    return ws[0] if len(ws) == 1 else ws


@dataclass
class Kind:
    """What a register holds, enough to print a value compared with it as nft does."""

    expr: Any  # the nft JSON expression
    typ: str  # a DATATYPES word, or "addr4"/"addr6"/"be"/"le"/"raw"
    size: int
    l3: str = ""  # "ip"/"ip6" when this is a network-header field


def _value(kind: Kind, data: bytes, flags: bool = False) -> Any:
    """A constant compared with (or looked up by) `kind`, as nft -j prints it."""
    t = kind.typ
    if t in ("ipv4_addr", "addr4") and len(data) == 4:
        return inet_ntop(AF_INET, data)  # as nft prints it (and ~10x ipaddress's speed)
    if t in ("ipv6_addr", "addr6") and len(data) == 16:
        return inet_ntop(AF_INET6, data)
    if t == "ifname":
        return text_attr(data)
    if t in ("inet_proto",):
        n = data[0] if data else 0
        return protocols().get(n, n)
    if t == "nf_proto":
        n = data[0] if data else 0
        return NFPROTO.get(n, n)
    if t == "pkt_type":
        n = data[0] if data else 0
        return PKTTYPES.get(n, n)
    if t == "icmp_type":
        n = data[0] if data else 0
        return ICMP_TYPES.get(n, n)
    if t == "icmpv6_type":
        n = data[0] if data else 0
        return ICMP6_TYPES.get(n, n)
    if t == "ct_state":
        n = int.from_bytes(data[:4], "little")
        ws = _bits(n, CT_STATES)
        return _words(ws) if ws else n
    if t == "ct_status":
        n = int.from_bytes(data[:4], "little")
        ws = _bits(n, CT_STATUS)
        return _words(ws) if ws else n
    if t == "tcp_flag":
        n = data[0] if data else 0
        ws = _bits(n, TCP_FLAGS)
        return _words(ws) if ws else n
    if t == "fib_addrtype":
        n = int.from_bytes(data[:4], "little")
        return FIB_TYPES[n] if n < len(FIB_TYPES) else n
    if t == "boolean":
        return bool(data and data[0])
    if t == "ether_type":
        n = int.from_bytes(data[:2], "big")
        return ETHERTYPES.get(n, n)
    if t in ("mark", "le", "uid", "gid", "iface_index", "devgroup", "integer"):
        return int.from_bytes(data[:kind.size or len(data)], "little")
    if t == "verdict":
        return int.from_bytes(data[:4], "little")
    return int.from_bytes(data[:kind.size or len(data)], "big")


def _net_value(kind: Kind, data: bytes, plen: int) -> Any:
    """An address compared under a prefix mask."""
    addr = _value(kind, data)
    full = 32 if kind.typ in ("ipv4_addr", "addr4") else 128
    if plen >= full:
        return addr
    return {"prefix": {"addr": addr, "len": plen}}


def _prefix_len(mask: bytes) -> int | None:
    n = int.from_bytes(mask, "big")
    bits = len(mask) * 8
    plen = bin(n).count("1")
    return plen if n == ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1) else None


# -- sets -----------------------------------------------------------------------------------

@dataclass
class SetInfo:
    name: str
    flags: int
    key_types: list[tuple[str, int]]  # (type word, bytes)
    key_len: int
    data_type: int
    data_len: int
    elems: list[Any] = field(default_factory=list)  # nft -j elements
    ok: bool = True  # every element decoded

    @property
    def is_map(self) -> bool:
        return bool(self.flags & 0x8)

    @property
    def verdict_map(self) -> bool:
        return self.is_map and self.data_type == 0xFFFFFF00

    @property
    def anonymous(self) -> bool:
        return bool(self.flags & 0x1)

    def type_json(self) -> Any:
        words = [t for t, _ in self.key_types]
        return words[0] if len(words) == 1 else words


def key_types(key_type: int, key_len: int, fields: list[int]) -> list[tuple[str, int]]:
    """A set's key datatype id -> its parts (concatenations pack 6-bit ids)."""
    parts: list[int] = []
    if key_type in DATATYPES or key_type < 64:
        parts = [key_type]
    else:
        t = key_type
        while t:
            parts.append(t & 0x3F)
            t >>= 6
        parts.reverse()
    out = []
    for i, p in enumerate(parts):
        word, size = DATATYPES.get(p, (f"type{p}", 0))
        if fields and i < len(fields):
            size = fields[i]
        elif not size:
            size = key_len if len(parts) == 1 else 0
        out.append((word, size))
    if len(out) == 1 and not fields:
        out = [(out[0][0], key_len if out[0][0] in ("integer", "string") else out[0][1])]
    return out


def _elem_value(word: str, size: int, data: bytes) -> Any:
    return _value(Kind(None, word, size), data[:size], flags=False)


def _split_key(info: SetInfo, data: bytes) -> list[Any] | None:
    vals = []
    pos = 0
    for word, size in info.key_types:
        if not size:
            return None
        vals.append(_elem_value(word, size, data[pos:pos + size]))
        pos += (size + 3) & ~3
    return vals


def _range_value(word: str, size: int, lo: bytes, hi: bytes) -> Any:
    """[lo, hi] (inclusive) as nft prints it: the value, a prefix, or a range."""
    a, b = _elem_value(word, size, lo), _elem_value(word, size, hi)
    if a == b:
        return a
    if word in ("ipv4_addr", "ipv6_addr"):
        nets = list(ipaddress.summarize_address_range(ipaddress.ip_address(a),
                                                      ipaddress.ip_address(b)))
        if len(nets) == 1:
            return {"prefix": {"addr": str(nets[0].network_address),
                               "len": nets[0].prefixlen}}
    return {"range": [a, b]}


PERIODS = {1: "second", 60: "minute", 3600: "hour", 86400: "day", 604800: "week"}


def _unit(n: int) -> tuple[int, str]:
    """Bytes as nft prints them: the largest unit that divides them."""
    for unit, size in (("mbytes", 1 << 20), ("kbytes", 1 << 10)):
        if n and n % size == 0:
            return n // size, unit
    return n, "bytes"


_BIG_ENDIAN = {"ipv4_addr", "ipv6_addr", "inet_service", "ether_addr", "ether_type",
               "inet_proto", "icmp_type", "icmpv6_type", "tcp_flag", "pkt_type", "nf_proto",
               "dscp"}


def _verdict(b: bytes) -> Any:
    v = attrs(b)
    code = _S32.unpack_from(v[1])[0] if 1 in v else None
    word = VERDICTS.get(code)
    if word in ("jump", "goto"):
        return {word: {"target": text_attr(v.get(2))}}
    if word is None:
        return {"verdict": code}
    return {word: None}


def elem_order(info: SetInfo):
    """The sort key of finish_elems' raw elements (not interval sets of one field): nft
    lists elements sorted by value, host-order types compared as such."""
    single = len(info.key_types) == 1
    order = "big" if info.key_types[0][0] in _BIG_ENDIAN or not single else "little"
    return lambda x: int.from_bytes(x[0], order)


def finish_elems(info: SetInfo, raw: list[tuple[bytes, bytes | None, int, bytes | None]]
                  ) -> None:
    """Raw (key, data, flags, key_end) -> info.elems as nft -j lists them; interval sets
    pair each start with the next end (the kernel stores end + 1, flagged)."""
    if not info.key_types:
        info.ok = False
        return
    single = len(info.key_types) == 1
    word, size = info.key_types[0]
    try:
        if info.flags & 0x4 and single and not info.is_map:  # interval, one field
            pts = sorted(((int.from_bytes(k[:size], "big"), f & 1, k[:size])
                          for k, _d, f, _e in raw), key=lambda x: (x[0], -x[1]))
            start: bytes | None = None
            for _n, end, k in pts:
                if end:
                    if start is not None:
                        hi = (int.from_bytes(k, "big") - 1).to_bytes(size, "big")
                        info.elems.append(_range_value(word, size, start, hi))
                    start = None
                else:
                    if start is not None:  # a start after a start: the last reaches the end
                        info.elems.append(_range_value(word, size, start, start))
                    start = k
            if start is not None:
                info.elems.append(_range_value(word, size, start, b"\xff" * size))
            return
        for k, d, f, kend in sorted(raw, key=elem_order(info)):
            # nft lists elements sorted by value (host-order types compare as such)
            if f & 1:
                continue  # interval ends of a map/concat: key_end carries the range
            if kend is not None and single:
                key: Any = _range_value(word, size, k[:size], kend[:size])
            elif kend is not None:
                parts = []
                pos = 0
                for w, s in info.key_types:
                    parts.append(_range_value(w, s, k[pos:pos + s], kend[pos:pos + s]))
                    pos += (s + 3) & ~3
                key = {"concat": parts}
            else:
                vals = _split_key(info, k)
                if vals is None:
                    info.ok = False
                    return
                key = vals[0] if single else {"concat": vals}
            if info.is_map:
                if d is None:
                    info.ok = False
                    return
                dv = attrs(d)
                if 2 in dv:
                    info.elems.append([key, _verdict(dv[2])])
                else:
                    info.elems.append([key, int.from_bytes(dv.get(1, b""), "big")])
            else:
                info.elems.append(key)
    except (ValueError, IndexError, struct.error):
        info.ok = False
        info.elems = []


# -- rules ----------------------------------------------------------------------------------

def _slot(reg: int) -> int:
    """A register number -> its 4-byte slot (NFT_REG_1..4 are 16 bytes each)."""
    return (reg - 1) * 4 if 1 <= reg <= 4 else reg - 8


class _Delin:
    """One rule's expressions -> nft -j elements (nft's netlink_delinearize, the parts a
    host firewall uses)."""

    def __init__(self, family: str, sets: dict[str, SetInfo]) -> None:
        self.family = family
        self.sets = sets
        self.regs: dict[int, Kind] = {}
        self.out: list[Any] = []
        self.l3 = family if family in ("ip", "ip6") else ""
        self.l4 = ""
        self.l2 = ""
        self.deps: dict[str, int] = {}  # "l3"/"l4" -> index in out of the match pinning it

    def kill(self, level: str) -> None:
        """Leave out a dependency match the way nft's listing does (the header expression
        after it implies it; ruleset/nft.py puts it back where it matters)."""
        i = self.deps.pop(level, None)
        if i is not None:
            self.out[i] = None

    def load(self, reg: int, kind: Kind) -> None:
        s = _slot(reg)
        for i in range((max(kind.size, 1) + 3) // 4):
            self.regs.pop(s + i, None)
        self.regs[s] = kind

    def key(self, reg: int, length: int) -> Kind | None:
        """The expression(s) a lookup of `length` bytes from `reg` reads (a concat when
        several loads were packed side by side)."""
        s = _slot(reg)
        parts = []
        while length > 0:
            k = self.regs.get(s)
            if k is None:
                return None
            parts.append(k)
            step = (max(k.size, 1) + 3) // 4
            s += step
            length -= step * 4
        if len(parts) == 1:
            return parts[0]
        return Kind({"concat": [p.expr for p in parts]}, "concat", 0)

    def unknown(self, name: str, detail: str = "") -> None:
        # a statement ruleset/nft.py does not know: the rule's target becomes NFT-<name>
        self.out.append({f"netlink {name}": detail or None})

    def unknown_match(self, name: str, detail: str = "") -> None:
        # a condition not decoded: a match ruleset/nft.py does not know (it may or may not
        # hold; the rule's verdict still counts), as for an nft -j match it cannot model
        self.out.append({"match": {"op": "==", "left": {f"netlink {name}": detail or None},
                                   "right": None}})

    # loads
    def e_payload(self, a: dict[int, bytes]) -> None:
        base, off, ln = u32_attr(a.get(2)), u32_attr(a.get(3)), u32_attr(a.get(4))
        if 5 in a:  # payload write
            src = self.regs.get(_slot(u32_attr(a[5])))
            kind = self._payload_kind(base, off, ln)
            self.out.append({"mangle": {"key": kind.expr,
                                        "value": src.expr if src else None}})
            return
        self.load(u32_attr(a.get(1)), self._payload_kind(base, off, ln))

    def _payload_kind(self, base: int, off: int, ln: int) -> Kind:
        proto = self.l3 if base == 1 else (self.l4 or "th") if base == 2 else \
            self.l2 if base == 0 else ""
        if proto and base == 0:
            self.kill("l2")
        if proto and base in (1, 2):
            if base == 2 and proto in ("icmp", "icmpv6") and "l3" in self.deps and \
                    self.deps["l3"] == self.deps.get("l4", -9) - 1:
                self.kill("l3")  # meta nfproto ipv6 + meta l4proto ipv6-icmp: both implied
            self.kill("l3" if base == 1 else "l4")
        table = FIELDS.get(proto, {})
        fname = table.get((off, ln))
        plen = None
        if fname is None and proto in ("ip", "ip6"):
            for (o, full), f in table.items():  # a prefix nft shortened the load for
                if o == off and ln < full and f in ("saddr", "daddr"):
                    fname, plen = f, ln * 8
        if fname is None and table:
            parts = []
            pos = off
            while pos < off + ln:  # nft merged adjacent fields into one load
                f = next(((o, s, name) for (o, s), name in table.items() if o == pos), None)
                if f is None or pos + f[1] > off + ln:
                    parts = []
                    break
                parts.append(self._payload_kind(base, pos, f[1]))
                pos += f[1]
            if len(parts) > 1:
                return Kind(parts, "multi", ln, proto)
        if fname is None:
            b = {0: "ll", 1: "nh", 2: "th", 3: "ih"}.get(base, str(base))
            return Kind({"payload": {"base": b, "offset": off * 8, "len": ln * 8}}, "be", ln)
        typ = "be"
        if fname in ("saddr", "daddr"):
            typ = "addr4" if proto == "ip" else "addr6"
        elif fname in ("protocol", "nexthdr"):
            typ = "inet_proto"
        elif fname == "flags" and proto == "tcp":
            typ = "tcp_flag"
        elif fname == "type" and proto in ("icmp", "icmpv6"):
            typ = "icmp_type" if proto == "icmp" else "icmpv6_type"
        k = Kind({"payload": {"protocol": proto, "field": fname}}, typ, ln, proto)
        if plen is not None:
            k.size = ln
            k.typ += f"/{plen}"
        return k

    def e_meta(self, a: dict[int, bytes]) -> None:
        n = u32_attr(a.get(2))
        key = META_KEYS[n] if n < len(META_KEYS) else f"meta{n}"
        expr = {"meta": {"key": key}}
        if 3 in a:  # meta set
            src = self.regs.get(_slot(u32_attr(a[3])))
            self.out.append({"mangle": {"key": expr, "value": self._mark_expr(src)}})
            return
        typ, size = {"mark": ("mark", 4), "iifname": ("ifname", 16),
                     "oifname": ("ifname", 16), "l4proto": ("inet_proto", 1),
                     "nfproto": ("nf_proto", 1), "pkttype": ("pkt_type", 1),
                     "protocol": ("ether_type", 2), "iif": ("iface_index", 4),
                     "oif": ("iface_index", 4), "skuid": ("uid", 4),
                     "skgid": ("gid", 4)}.get(key, ("le", 4))
        self.load(u32_attr(a.get(1)), Kind(expr, typ, size))

    def e_ct(self, a: dict[int, bytes]) -> None:
        n = u32_attr(a.get(2))
        key = CT_KEYS[n] if n < len(CT_KEYS) else f"ct{n}"
        expr: dict[str, Any] = {"key": key}
        if 3 in a:
            expr["dir"] = "original" if a[3][:1] == b"\0" else "reply"
        if 4 in a:  # ct set
            src = self.regs.get(_slot(u32_attr(a[4])))
            self.out.append({"mangle": {"key": {"ct": expr}, "value": self._mark_expr(src)}})
            return
        typ, size = {"state": ("ct_state", 4), "mark": ("mark", 4),
                     "status": ("ct_status", 4), "l3proto": ("nf_proto", 1),
                     "protocol": ("inet_proto", 1), "direction": ("ct_dir", 1),
                     "saddr": ("addr4", 4), "daddr": ("addr4", 4),
                     "ip saddr": ("addr4", 4), "ip daddr": ("addr4", 4),
                     "ip6 saddr": ("addr6", 16), "ip6 daddr": ("addr6", 16),
                     "proto-src": ("be", 2), "proto-dst": ("be", 2),
                     "label": ("be", 16), "zone": ("le", 2)}.get(key, ("le", 4))
        self.load(u32_attr(a.get(1)), Kind({"ct": expr}, typ, size))

    def e_fib(self, a: dict[int, bytes]) -> None:
        res = u32_attr(a.get(2))
        fl = u32_attr(a.get(3))
        flags = [w for bit, w in ((1, "saddr"), (2, "daddr"), (4, "mark"), (8, "iif"),
                                  (16, "oif")) if fl & bit]
        result = {1: "oif", 2: "oifname", 3: "type"}.get(res, str(res))
        typ = "fib_addrtype" if res == 3 else "boolean" if fl & 32 else \
            "ifname" if res == 2 else "iface_index"
        self.load(u32_attr(a.get(1)), Kind({"fib": {"result": result, "flags": flags}},
                                       typ, 1 if fl & 32 else 16 if res == 2 else 4))

    def e_numgen(self, a: dict[int, bytes]) -> None:
        mode = "random" if u32_attr(a.get(3)) == 1 else "inc"
        self.load(u32_attr(a.get(1)), Kind({"numgen": {"mode": mode, "mod": u32_attr(a.get(2)),
                                                   "offset": u32_attr(a.get(4))}}, "le", 4))

    def e_socket(self, a: dict[int, bytes]) -> None:
        key = {0: "transparent", 1: "mark", 2: "wildcard", 3: "cgroupv2"}.get(
            u32_attr(a.get(1)), "?")
        self.load(u32_attr(a.get(2)), Kind({"socket": {"key": key}}, "le", 4))

    def e_immediate(self, a: dict[int, bytes]) -> None:
        dreg = u32_attr(a.get(1))
        d = attrs(a.get(2, b""))
        if dreg == 0 and 2 in d:
            self.out.append(_verdict(d[2]))
            return
        val = d.get(1, b"")
        self.load(dreg, Kind(val, "const", len(val)))

    def e_bitwise(self, a: dict[int, bytes]) -> None:
        src = self.regs.get(_slot(u32_attr(a.get(1))))
        ln = u32_attr(a.get(3))
        if src is None or u32_attr(a.get(6)) != 0:  # shifts: not modelled
            self.load(u32_attr(a.get(2)), Kind({"netlink bitwise": None}, "be", ln))
            return
        mask, xor = data_value(a.get(4)), data_value(a.get(5))
        self.load(u32_attr(a.get(2)), Kind(("bitwise", src, mask, xor), "bitwise", ln))

    def _mark_expr(self, k: Kind | None) -> Any:
        """A register written into meta/ct mark -> nft's `value` expression."""
        if k is None:
            return None
        if k.typ == "const":
            return int.from_bytes(k.expr[:4], "little") if len(k.expr) >= 4 else \
                int.from_bytes(k.expr, "little")
        if k.typ == "bitwise":
            _tag, src, mask, xor = k.expr
            m = int.from_bytes(mask[:4], "little")
            x = int.from_bytes(xor[:4], "little")
            inner = src.expr
            if m == 0xFFFFFFFF and not x:
                return inner
            if (m ^ 0xFFFFFFFF) == x and x:
                return {"|": [inner, x]}
            if not x:
                return {"&": [inner, m]}
            if m == 0xFFFFFFFF:
                return {"^": [inner, x]}
            return {"|": [{"&": [inner, m]}, x]} if not (m & x) else \
                {"^": [{"&": [inner, m]}, x]}
        return k.expr

    # comparisons
    def e_cmp(self, a: dict[int, bytes]) -> None:
        k = self.regs.get(_slot(u32_attr(a.get(1))))
        op = ("==", "!=", "<", "<=", ">", ">=")[min(u32_attr(a.get(2)), 5)]
        data = data_value(a.get(3))
        if k is None:
            self.unknown_match("cmp", "register not loaded")
            return
        if k.typ == "bitwise":
            _tag, src, mask, xor = k.expr
            self._masked(src, mask, xor, op, data)
            return
        if k.typ == "multi":
            if op != "==":
                self.unknown_match("cmp", "!= on merged header fields")
                return
            pos = 0
            for part in k.expr:
                self.out.append({"match": {"op": "==", "left": part.expr,
                                           "right": _value(part, data[pos:pos + part.size])}})
                pos += part.size
            return
        if "/" in k.typ:
            typ, plen = k.typ.split("/")
            full = 4 if typ == "addr4" else 16
            base = Kind(k.expr, typ, full)
            right = _net_value(base, data + b"\0" * (full - len(data)), int(plen))
            self.out.append({"match": {"op": op, "left": k.expr, "right": right}})
            return
        if k.typ == "ifname" and len(data) < 16 and not data.endswith(b"\0"):
            right: Any = text_attr(data) + "*"
        else:
            right = _value(k, data)
            if isinstance(right, list):  # several flags compared at once: nft's `a | b`
                right = {"|": right}
        last = self.out[-1] if self.out else None
        if op == "<=" and last and "match" in last and last["match"]["op"] == ">=" and \
                last["match"]["left"] == k.expr:
            # `tcp dport 1000-2000`: nft compiles a range as >= and <=
            last["match"]["op"] = "=="
            last["match"]["right"] = {"range": [last["match"]["right"], right]}
            return
        self.out.append({"match": {"op": op, "left": k.expr, "right": right}})
        if op == "==":
            self._dep(k, data)

    def _dep(self, k: Kind, data: bytes) -> None:
        """Remember the protocol a match pins, for the header fields after it."""
        e = k.expr
        if not isinstance(e, dict) or not data:
            return
        if "meta" in e and e["meta"]["key"] == "iiftype" and len(data) >= 2:
            if int.from_bytes(data[:2], "little") == 1:  # ARPHRD_ETHER: an ether header
                self.l2 = "ether"
                self.deps["l2"] = len(self.out) - 1
        elif "meta" in e and e["meta"]["key"] == "nfproto":
            self.l3 = {2: "ip", 10: "ip6"}.get(data[0], self.l3)
            self.deps["l3"] = len(self.out) - 1
        elif "meta" in e and e["meta"]["key"] == "protocol" and len(data) >= 2:
            self.l3 = {0x0800: "ip", 0x86DD: "ip6"}.get(int.from_bytes(data[:2], "big"),
                                                        self.l3)
            self.deps["l3"] = len(self.out) - 1
        elif ("meta" in e and e["meta"]["key"] == "l4proto") or (
                "payload" in e and e["payload"].get("field") in ("protocol", "nexthdr")
                and e["payload"].get("protocol") in ("ip", "ip6")):
            self.l4 = L4.get(data[0], "th")
            self.deps["l4"] = len(self.out) - 1

    def _masked(self, src: Kind, mask: bytes, xor: bytes, op: str, data: bytes) -> None:
        """cmp of (src & mask) ^ xor: a prefix, a flag test, or a masked value."""
        if any(xor):
            self.unknown_match("bitwise", "xor before a comparison")
            return
        if "/" in src.typ:  # a shortened load under a mask: the prefix of the whole field
            typ = src.typ.split("/")[0]
            full = 4 if typ == "addr4" else 16
            src = Kind(src.expr, typ, full)
            mask, data = (x + b"\0" * (full - len(x)) for x in (mask, data))
        if src.typ in ("addr4", "addr6"):
            plen = _prefix_len(mask)
            if plen is not None:
                self.out.append({"match": {"op": op, "left": src.expr,
                                           "right": _net_value(src, data, plen)}})
                return
        if src.typ in ("ct_state", "ct_status", "tcp_flag") and not any(data) and \
                op in ("==", "!="):
            # `ct state established,related`: (state & bits) != 0
            words = _value(src, mask, flags=True)
            self.out.append({"match": {"op": "in" if op == "!=" else "!=",
                                       "left": src.expr, "right": words}})
            return
        if src.typ == "tcp_flag":
            m = _value(src, mask, flags=True)
            self.out.append({"match": {"op": op, "left": {"&": [src.expr, m if isinstance(
                m, list) else [m] if isinstance(m, str) else m]},
                "right": _value(src, data) if any(data) else 0}})
            return
        if src.typ == "be" and isinstance(src.expr, dict) and "payload" in src.expr and \
                "protocol" in src.expr["payload"]:
            # a header bit field (ip dscp, ip6 flowlabel...): nft prints the field itself
            self.out.append({"match": {"op": op, "left": src.expr,
                                       "right": int.from_bytes(data, "big")}})
            return
        if src.typ in ("mark", "le", "be", "ct_state", "ct_status"):
            order = "big" if src.typ == "be" else "little"
            m = int.from_bytes(mask, order)
            v = int.from_bytes(data, order)
            self.out.append({"match": {"op": op, "left": {"&": [src.expr, m]}, "right": v}})
            return
        self.unknown_match("bitwise", f"mask on {src.typ}")

    def e_range(self, a: dict[int, bytes]) -> None:
        k = self.regs.get(_slot(u32_attr(a.get(1))))
        if k is None or k.typ in ("bitwise", "const"):
            self.unknown_match("range")
            return
        op = "==" if u32_attr(a.get(2)) == 0 else "!="
        lo, hi = data_value(a.get(3)), data_value(a.get(4))
        self.out.append({"match": {"op": op, "left": k.expr,
                                   "right": {"range": [_value(k, lo), _value(k, hi)]}}})

    def e_lookup(self, a: dict[int, bytes]) -> None:
        name = text_attr(a.get(1))
        info = self.sets.get(name)
        inv = u32_attr(a.get(5)) & 1
        # a verdict map not decoded leaves the verdict unknown; a set, only the condition
        fail = self.unknown if 3 in a and u32_attr(a[3]) == 0 else self.unknown_match
        if info is None:
            fail("lookup", f"set {name} not read")
            return
        k = self.key(u32_attr(a.get(2)), info.key_len)
        if k is None or k.typ in ("bitwise", "const"):
            fail("lookup", "key not decoded")
            return
        if info.anonymous:
            if not info.ok:
                fail("lookup", f"elements of {name} not decoded")
                return
            right: Any = {"set": info.elems}
        else:
            right = f"@{name}"
        if 3 in a:  # a map
            dreg = u32_attr(a[3])
            if dreg == 0 and info.verdict_map:
                self.out.append({"vmap": {"key": k.expr, "data": right}})
            else:
                self.load(dreg, Kind({"map": {"key": k.expr, "data": right}}, "map",
                                     info.data_len))
            return
        self.out.append({"match": {"op": "!=" if inv else "==", "left": k.expr,
                                   "right": right}})

    # statements
    def e_counter(self, a: dict[int, bytes]) -> None:
        self.out.append({"counter": None})

    def e_notrack(self, a: dict[int, bytes]) -> None:
        self.out.append({"notrack": None})

    def e_log(self, a: dict[int, bytes]) -> None:
        self.out.append({"log": {"prefix": text_attr(a.get(2))} if 2 in a else None})

    def e_limit(self, a: dict[int, bytes]) -> None:
        rate = _U64.unpack_from(a[1])[0] if 1 in a else 0
        per = _U64.unpack_from(a[2])[0] if 2 in a else 0
        out: dict[str, Any] = {"rate": rate, "burst": u32_attr(a.get(3)),
                               "per": PERIODS.get(per, per)}
        if u32_attr(a.get(4)) == 1:  # bytes
            out["rate"], out["rate_unit"] = _unit(rate)
            out["burst"], out["burst_unit"] = _unit(out["burst"])
            if not out["burst"]:
                del out["burst"], out["burst_unit"]
        if u32_attr(a.get(5)) & 1:
            out["inv"] = True
        self.out.append({"limit": out})

    def e_quota(self, a: dict[int, bytes]) -> None:
        val, unit = _unit(_U64.unpack_from(a[1])[0] if 1 in a else 0)
        out: dict[str, Any] = {"val": val, "val_unit": unit}
        if u32_attr(a.get(3)) & 1:
            out["inv"] = True
        self.out.append({"quota": out})

    def e_byteorder(self, a: dict[int, bytes]) -> None:
        src = self.regs.get(_slot(u32_attr(a.get(1))))
        if src is not None:  # the value is the same; only its byte order changes
            self.load(u32_attr(a.get(2)), src)

    def e_rt(self, a: dict[int, bytes]) -> None:
        key = {0: "classid", 1: "nexthop", 2: "nexthop", 3: "mtu", 4: "ipsec"}.get(
            u32_attr(a.get(2)), "?")
        self.load(u32_attr(a.get(1)), Kind({"rt": {"key": key}}, "le", 4))

    def e_exthdr(self, a: dict[int, bytes]) -> None:
        op = u32_attr(a.get(6))  # 0 ipv6, 1 tcp option, 2 ip option, 3 sctp
        typ = a.get(2, b"\0")[0]
        name = {1: "tcp option", 2: "ip option", 3: "sctp chunk"}.get(op, "exthdr")
        field = {(1, 2): ("maxseg", "size")}.get((op, typ), (str(typ), str(u32_attr(a.get(3)))))
        expr = {name: {"name": field[0], "field": field[1]}}
        if 5 in a:  # write
            src = self.regs.get(_slot(u32_attr(a[5])))
            self.out.append({"mangle": {"key": expr, "value": src.expr if src else None}})
            return
        self.load(u32_attr(a.get(1)), Kind(expr, "be", u32_attr(a.get(4))))

    def e_reject(self, a: dict[int, bytes]) -> None:
        typ = u32_attr(a.get(1))
        code = a.get(2, b"\0")[0]
        if typ == 1:
            self.kill("l4")
            self.out.append({"reject": {"type": "tcp reset"}})
            return
        if typ == 2:
            word = "icmpx"
            names = REJECT_CODES["icmpx"]
        else:
            self.kill("l3")
            word = "icmpv6" if self.l3 == "ip6" else "icmp"
            names = REJECT_CODES[word]
        self.out.append({"reject": {"type": word, "expr": names.get(code, code)}})

    def _reg_value(self, reg_attr: bytes | None, as_addr: str = "") -> Any:
        if reg_attr is None:
            return None
        k = self.regs.get(_slot(u32_attr(reg_attr)))
        if k is None:
            return None
        if k.typ == "const":
            if as_addr == "ip" and len(k.expr) >= 4:
                return inet_ntop(AF_INET, k.expr[:4])
            if as_addr == "ip6" and len(k.expr) >= 16:
                return inet_ntop(AF_INET6, k.expr[:16])
            if as_addr:
                return None
            return int.from_bytes(k.expr[:2], "big")
        return k.expr

    def _port(self, a: dict[int, bytes], lo: int, hi: int) -> Any:
        p = self._reg_value(a.get(lo))
        q = self._reg_value(a.get(hi)) if hi in a and a.get(hi) != a.get(lo) else p
        if p is None or p == q:
            return p
        return {"range": [p, q]}

    def e_nat(self, a: dict[int, bytes]) -> None:
        typ = "snat" if u32_attr(a.get(1)) == 0 else "dnat"
        fam = {2: "ip", 10: "ip6"}.get(u32_attr(a.get(2)), "")
        out: dict[str, Any] = {}
        if fam and self.family == "inet":
            self.kill("l3")
            out["family"] = fam
        if 3 in a:
            addr = self._reg_value(a[3], fam or "ip")
            if 4 in a and a[4] != a[3]:
                hi = self._reg_value(a[4], fam or "ip")
                addr = {"range": [addr, hi]} if hi != addr else addr
            out["addr"] = addr
        port = self._port(a, 5, 6)
        if port is not None:
            out["port"] = port
        self.out.append({typ: out or None})

    def e_masq(self, a: dict[int, bytes]) -> None:
        port = self._port(a, 2, 3)
        self.out.append({"masquerade": {"port": port} if port is not None else None})

    def e_redir(self, a: dict[int, bytes]) -> None:
        port = self._port(a, 1, 2)
        self.out.append({"redirect": {"port": port} if port is not None else None})

    def e_tproxy(self, a: dict[int, bytes]) -> None:
        port = self._reg_value(a.get(3))
        self.out.append({"tproxy": {"port": port if port is not None else 0}})

    def e_match(self, a: dict[int, bytes]) -> None:
        self.out.append({"xt": {"type": "match", "name": text_attr(a.get(1))}})

    def e_target(self, a: dict[int, bytes]) -> None:
        self.out.append({"xt": {"type": "target", "name": text_attr(a.get(1))}})

    def e_dynset(self, a: dict[int, bytes]) -> None:
        # add/update @set from the packet path: sets state, decides nothing
        self.out.append({"set": {"op": "update", "set": "@" + text_attr(a.get(1))}})

    def e_objref(self, a: dict[int, bytes]) -> None:
        typ = u32_attr(a.get(1))
        word = {1: "counter", 2: "quota", 3: "ct helper", 4: "limit", 5: "ct timeout",
                6: "secmark", 7: "ct expectation", 8: "synproxy"}.get(typ, "objref")
        self.out.append({word: text_attr(a.get(2))})

    def e_last(self, a: dict[int, bytes]) -> None:
        self.out.append({"counter": None})  # `last`: when it last matched; decides nothing


#: Expressions whose dumps carry live state (counts, timestamps): left out of the digest.
_STATEFUL = {"counter", "quota", "last", "connlimit"}
#: Decoded expressions kept for reuse within one read (most rules share most of theirs).
MEMO_SIZE = 4096


def decode_rule(family: str, table: str, msg: bytes, sets: dict[str, SetInfo],
                h: Any, memo: dict[bytes, Any] | None = None) -> dict[str, Any]:
    """One NFT_MSG_NEWRULE's attributes -> the rule as nft -j lists it. `memo` maps an
    expression's bytes to its decoded attributes and handler."""
    a = attrs(msg)
    if text_attr(a.get(1)) != table:  # the kernel filters by table; a reply that did not is
        raise ValueError(f"a rule of table {text_attr(a.get(1))!r} in the dump of {table!r}")
    chain = text_attr(a.get(2))
    handle = _U64.unpack_from(a[3])[0] if 3 in a else 0
    d = _Delin(family, sets)
    h.update(a.get(2, b""))
    memo = {} if memo is None else memo
    for e in attr_list(a.get(4, b"")):
        got = memo.get(e)
        if got is None:
            ea = attrs(e)
            name = ea.get(1, b"").split(b"\0", 1)[0].decode("ascii", "replace")
            fn = getattr(_Delin, "e_" + name, None)
            got = (name, fn, attrs(ea.get(2, b"")), name in _STATEFUL)
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[e] = got
        name, fn, ea, stateful = got
        h.update(name.encode() if stateful else e)
        if fn is None:
            d.unknown(name)
        else:
            fn(d, ea)
    r: dict[str, Any] = {"family": family, "table": table, "chain": chain,
                         "handle": handle, "expr": [x for x in d.out if x is not None]}
    if 7 in a:
        h.update(a[7])
    return r


