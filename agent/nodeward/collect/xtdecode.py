"""An iptables-legacy table's kernel blob (IPT_SO_GET_ENTRIES) printed as the exact lines
`iptables-legacy-save -t TABLE` prints, in-process: no child (libiptc holds the blob twice:
237 MiB for a 250,000-rule kube-proxy nat table), and the blob's pages given back as its
entries are printed, so the blob and the parse of its lines never coexist whole.

Only the matches and targets kube-proxy, flannel and k3s rulesets use are printed, each as
iptables 1.8's extension `save` function prints it (libxt_*.c); an entry whose match or
target name or revision is not here raises Undecodable (in layout(), before any line; a
value inside a known one that is not printed here, e.g. conntrack's port options, while
printing) and the caller reads that table with the real tool instead: a line is printed
exactly, or not at all (never a guess).
"""

from __future__ import annotations

import socket
import struct
from array import array
from collections.abc import Callable, Iterator

#: what the entry header (struct ipt_entry / ip6t_entry) holds, per family
_IP4 = struct.Struct("=4s4s4s4s16s16s16s16sHBB")  # ipt_ip: 84 bytes
_IP6 = struct.Struct("=16s16s16s16s16s16s16s16sHBBB")  # ip6t_ip6 (133, padded to 136)
#: target_offset, next_offset (u16 each) and the counters' offset
_OFFS = {4: (88, 90, 96), 6: (140, 142, 152)}
_U16 = struct.Struct("=HH")
_CNT = struct.Struct("=QQ")
_HEAD = struct.Struct("=H29sB")  # xt_entry_match / xt_entry_target: size, name, revision

#: invflags (ipt_ip / ip6t_ip6)
_INV_IN, _INV_OUT, _INV_SRC, _INV_DST, _INV_FRAG, _INV_PROTO = 0x01, 0x02, 0x08, 0x10, 0x20, \
    0x40
#: xtables_chain_protos (iptables-save prints these names; others as /etc/protocols names
#: them, which the decode leaves to the tool)
_PROTOS = {6: "tcp", 132: "sctp", 17: "udp", 136: "udplite", 1: "icmp", 58: "ipv6-icmp",
           50: "esp", 51: "ah", 135: "mh"}
#: standard verdicts (-NF_x - 1)
_VERDICTS = {-1: "DROP", -2: "ACCEPT", -4: "QUEUE", -5: "RETURN"}
_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class Undecodable(Exception):
    """An entry this module does not print exactly: read the table with the tool."""


def save_string(value: str) -> str:
    """xtables_save_string: bare when only [A-Za-z0-9_-], else quoted, \" \\ ' escaped."""
    if value and all(c in _NO_QUOTE for c in value):
        return " " + value
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f' "{out}"'


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("latin-1")


def _bits(mask: bytes) -> int | None:
    """The prefix length of a contiguous netmask, None when it is not one."""
    n = int.from_bytes(mask, "big")
    width = len(mask) * 8
    ones = bin(n).count("1")
    return ones if n == ((1 << width) - 1) ^ ((1 << (width - ones)) - 1) else None


def _addr(family: int, a: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, a)


def _addr_mask(family: int, a: bytes, m: bytes) -> str:
    """`addr/bits` (or `addr/mask` for a non-contiguous one), as the ip header prints."""
    bits = _bits(m)
    return f"{_addr(family, a)}/{bits if bits is not None else _addr(family, m)}"


def _iface(letter: str, name: bytes, mask: bytes, inv: bool) -> str:
    """save_iface: the name's bytes under the mask, `+` when the mask stops early."""
    if not mask[0]:
        return ""
    out = []
    for i in range(16):
        if mask[i]:
            if name[i]:
                out.append(chr(name[i]))
        else:
            if name[i - 1]:
                out.append("+")
            break
    return f"{' !' if inv else ''} -{letter} {''.join(out)}"


def _neg(flag: int) -> str:
    return " !" if flag else ""


# --- matches: (name, revision) -> save text of the data (bytes after the 32-byte header)

def _ports(lo: int, hi: int) -> str:
    return f"{lo}" if lo == hi else f"{lo}:{hi}"


def _tcpudp(d: bytes, tcp: bool) -> str:
    sp0, sp1, dp0, dp1 = struct.unpack_from("=4H", d)
    out = ""
    inv = d[11] if tcp else d[8]
    if sp0 != 0 or sp1 != 0xFFFF:
        out += f"{_neg(inv & 1)} --sport {_ports(sp0, sp1)}"
    if dp0 != 0 or dp1 != 0xFFFF:
        out += f"{_neg(inv & 2)} --dport {_ports(dp0, dp1)}"
    if tcp:
        option, fmask, fcmp = d[8], d[9], d[10]
        if option or inv & 8:
            out += f"{_neg(inv & 8)} --tcp-option {option}"
        if fmask or inv & 4:
            out += f"{_neg(inv & 4)} --tcp-flags {_tcpf(fmask)} {_tcpf(fcmp)}"
    return out


_TCPF = (("FIN", 1), ("SYN", 2), ("RST", 4), ("PSH", 8), ("ACK", 16), ("URG", 32))


def _tcpf(flags: int) -> str:
    if flags == 0x3F:
        return "FIN,SYN,RST,PSH,ACK,URG"
    return ",".join(n for n, f in _TCPF if flags & f) or "NONE"


def _comment(d: bytes, family: int) -> str:
    return " --comment" + save_string(_cstr(d[:256]))


def _mark1(d: bytes, family: int) -> str:
    mark, mask, inv = struct.unpack_from("=IIB", d)
    return f"{_neg(inv)} --mark {_mark(mark, mask)}"


def _mark(mark: int, mask: int) -> str:
    return f"0x{mark:x}" if mask == 0xFFFFFFFF else f"0x{mark:x}/0x{mask:x}"


def _multiport1(d: bytes, family: int) -> str:
    flags, count = d[0], d[1]
    ports = struct.unpack_from("=15H", d, 2)
    pflags = d[32:47]
    inv = d[47]
    kind = {0: "--sports", 1: "--dports", 2: "--ports"}.get(flags)
    if kind is None or count > 15:
        raise Undecodable("multiport flags")
    out, i = [], 0
    while i < count:
        if pflags[i]:
            out.append(f"{ports[i]}:{ports[i + 1]}")
            i += 2
        else:
            out.append(f"{ports[i]}")
            i += 1
    return f"{_neg(inv)} {kind} {','.join(out)}"


_RTN = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
        "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE")


def _types(mask: int) -> str:
    return ",".join(n for i, n in enumerate(_RTN) if mask & (1 << i))


def _addrtype1(d: bytes, family: int) -> str:
    src, dst, flags = struct.unpack_from("=HHI", d)
    out = ""
    if src:
        out += f"{_neg(flags & 1)} --src-type {_types(src)}"
    if dst:
        out += f"{_neg(flags & 2)} --dst-type {_types(dst)}"
    if flags & 4:
        out += " --limit-iface-in"
    if flags & 8:
        out += " --limit-iface-out"
    return out


_CT_STATES = ((1, "INVALID"), (8, "NEW"), (4, "RELATED"), (2, "ESTABLISHED"),
              (0x100, "UNTRACKED"), (0x40, "SNAT"), (0x80, "DNAT"))
_CT_STATUS = ((1, "EXPECTED"), (2, "SEEN_REPLY"), (4, "ASSURED"), (8, "CONFIRMED"))


def _conntrack(rev: int) -> Callable[[bytes, int], str]:
    def save(d: bytes, family: int) -> str:
        n = 16 if family == 6 else 4
        addrs = [d[i * 16:i * 16 + n] for i in range(8)]
        emin, emax, l4, mflags, iflags = struct.unpack_from("=IIH8xHH", d, 128)
        if rev == 1:
            state, status = d[150], d[151]
        else:
            state, status = struct.unpack_from("=HH", d, 150)
        if mflags & (1 << 13):
            raise Undecodable("-m state alias")
        if mflags & 0xF00:  # --ctorigsrcport etc.: their byte order differs by option
            raise Undecodable("conntrack port options")
        out = ""
        if mflags & 1:
            out += f"{_neg(iflags & 1)} --ctstate " + ",".join(
                s for b, s in _CT_STATES if state & b)
        if mflags & 2:
            out += f"{_neg(iflags & 2)} --ctproto {l4}"
        for bit, opt, i in ((4, "ctorigsrc", 0), (8, "ctorigdst", 2), (16, "ctreplsrc", 4),
                            (32, "ctrepldst", 6)):
            if mflags & bit:
                bits = _bits(addrs[i + 1])
                mask = "" if bits == n * 8 else f"/{bits}" if bits is not None else \
                    f"/{_addr(family, addrs[i + 1])}"
                out += f"{_neg(iflags & bit)} --{opt} {_addr(family, addrs[i])}{mask}"
        if mflags & 64:
            out += f"{_neg(iflags & 64)} --ctstatus " + (",".join(
                s for b, s in _CT_STATUS if status & b) or "NONE")
        if mflags & 128:
            span = f"{emin}" if emin == emax else f"{emin}:{emax}"
            out += f"{_neg(iflags & 128)} --ctexpire {span}"
        if mflags & (1 << 12):
            out += " --ctdir " + ("REPLY" if iflags & (1 << 12) else "ORIGINAL")
        return out
    return save


def _statistic(d: bytes, family: int) -> str:
    mode, flags, a, b, _c = struct.unpack_from("=HHIII", d)
    inv = " !" if flags & 1 else ""
    if mode == 0:
        return f" --mode random{inv} --probability {a / 0x80000000:.11f}"
    if mode == 1:
        return f" --mode nth{inv} --every {a + 1} --packet {b}"
    raise Undecodable("statistic mode")


def _recent(rev: int) -> Callable[[bytes, int], str]:
    def save(d: bytes, family: int) -> str:
        seconds, hits, check, inv = struct.unpack_from("=IIBB", d)
        name = _cstr(d[10:210])
        side = d[210]
        out = _neg(inv)
        for bit, opt in ((2, " --set"), (1, " --rcheck"), (4, " --update"), (8, " --remove")):
            if check & bit:
                out += opt
        if seconds:
            out += f" --seconds {seconds}"
        if check & 32:
            out += " --reap"
        if hits:
            out += f" --hitcount {hits}"
        if check & 16:
            out += " --rttl"
        out += f" --name {name}"
        if rev == 1:
            out += f" --mask {_addr(family, d[212:212 + (4 if family == 4 else 16)])}"
        if side == 0:
            out += " --rsource"
        elif side == 1:
            out += " --rdest"
        return out
    return save


def _physdev(d: bytes, family: int) -> str:
    inv, bits = d[64], d[65]
    out = ""
    if bits & 8:
        out += f"{_neg(inv & 8)} --physdev-is-in"
    if bits & 1:
        out += f"{_neg(inv & 1)} --physdev-in {_cstr(d[0:16])}"
    if bits & 16:
        out += f"{_neg(inv & 16)} --physdev-is-out"
    if bits & 2:
        out += f"{_neg(inv & 2)} --physdev-out {_cstr(d[32:48])}"
    if bits & 4:
        out += f"{_neg(inv & 4)} --physdev-is-bridged"
    return out


_LIMIT_RATES = (("day", 10000 * 86400), ("hour", 10000 * 3600), ("min", 10000 * 60),
                ("sec", 10000))


def _limit(d: bytes, family: int) -> str:
    avg, burst = struct.unpack_from("=II", d)
    if avg == 0:
        raise Undecodable("limit 0")
    i = 1
    while i < len(_LIMIT_RATES):
        mult = _LIMIT_RATES[i][1]
        if avg > mult or mult // avg < mult % avg:
            break
        i += 1
    name, mult = _LIMIT_RATES[i - 1]
    out = f" --limit {mult // avg}/{name}"
    if burst != 5:
        out += f" --limit-burst {burst}"
    return out


def _icmp(d: bytes, family: int) -> str:
    typ, lo, hi, inv = d[0], d[1], d[2], d[3]
    out = _neg(inv & 1)
    if typ == 0xFF:
        return out + " --icmp-type any"
    out += f" --icmp-type {typ}"
    if lo != 0 or hi != 0xFF:
        out += f"/{lo}"
    return out


def _nfacct(d: bytes, family: int) -> str:
    # libxt_nfacct: printf(" --nfacct-name "), then xtables_save_string's own space
    return " --nfacct-name " + save_string(_cstr(d[:32]))


MATCHES: dict[tuple[str, int], Callable[[bytes, int], str]] = {
    ("comment", 0): _comment,
    ("mark", 1): _mark1,
    ("tcp", 0): lambda d, f: _tcpudp(d, True),
    ("udp", 0): lambda d, f: _tcpudp(d, False),
    ("multiport", 1): _multiport1,
    ("addrtype", 1): _addrtype1,
    ("conntrack", 1): _conntrack(1),
    ("conntrack", 2): _conntrack(2),
    ("conntrack", 3): _conntrack(3),
    ("statistic", 0): _statistic,
    ("recent", 0): _recent(0),
    ("recent", 1): _recent(1),
    ("physdev", 0): _physdev,
    ("limit", 0): _limit,
    ("icmp", 0): _icmp,
    ("nfacct", 0): _nfacct,
    ("nfacct", 1): _nfacct,
}


# --- targets: (name, revision) -> save text after ` -j NAME`

def _mark_tg2(d: bytes, family: int) -> str:
    mark, mask = struct.unpack_from("=II", d)
    return f" --set-xmark 0x{mark:x}/0x{mask:x}"


def _nat_range(family: int, flags: int, amin: bytes, amax: bytes, pmin: int, pmax: int,
               base: int | None, opt: str) -> str:
    """libxt_NAT's sprint_range and flags, for --to-destination / --to-source."""
    out = ""
    if flags & 1:  # NF_NAT_RANGE_MAP_IPS
        brackets = family == 6 and flags & 2
        out += "[" if brackets else ""
        out += _addr(family, amin)
        if amin != amax:
            out += "-" + _addr(family, amax)
        out += "]" if brackets else ""
    if flags & 2:  # NF_NAT_RANGE_PROTO_SPECIFIED
        out += f":{pmin}"
        if pmax != pmin:
            out += f"-{pmax}"
        if flags & 32 and base is not None:  # NF_NAT_RANGE_PROTO_OFFSET
            out += f"/{base}"
    text = f" {opt} {out}" if out else ""
    if flags & 4:
        text += " --random"
    if flags & 16:
        text += " --random-fully"
    if flags & 8:
        text += " --persistent"
    return text


def _nat_compat(opt: str) -> Callable[[bytes, int], str]:
    def save(d: bytes, family: int) -> str:
        size, flags, amin, amax, pmin, pmax = struct.unpack_from("=II4s4sHH", d)
        if size != 1:
            raise Undecodable("NAT rangesize")
        return _nat_range(4, flags, amin, amax, socket.ntohs(pmin), socket.ntohs(pmax),
                          None, opt)
    return save


def _nat_range12(opt: str, rev: int) -> Callable[[bytes, int], str]:
    def save(d: bytes, family: int) -> str:
        flags, amin, amax, pmin, pmax = struct.unpack_from("=I16s16sHH", d)
        n = 4 if family == 4 else 16
        base = socket.ntohs(struct.unpack_from("=H", d, 40)[0]) if rev == 2 else None
        return _nat_range(family, flags, amin[:n], amax[:n], socket.ntohs(pmin),
                          socket.ntohs(pmax), base, opt)
    return save


def _masquerade(d: bytes, family: int) -> str:
    if family == 4:
        size, flags, _a, _b, pmin, pmax = struct.unpack_from("=II4s4sHH", d)
        if size != 1:
            raise Undecodable("MASQUERADE rangesize")
    else:
        flags, _a, _b, pmin, pmax = struct.unpack_from("=I16s16sHH", d)
    pmin, pmax = socket.ntohs(pmin), socket.ntohs(pmax)
    out = ""
    if flags & 2:
        out += f" --to-ports {pmin}" + (f"-{pmax}" if pmax != pmin else "")
    if flags & 4:
        out += " --random"
    if flags & 16:
        out += " --random-fully"
    return out


_REJECT4 = {0: "icmp-net-unreachable", 1: "icmp-host-unreachable",
            2: "icmp-proto-unreachable", 3: "icmp-port-unreachable",
            5: "icmp-net-prohibited", 6: "icmp-host-prohibited", 7: "tcp-reset",
            8: "icmp-admin-prohibited"}
_REJECT6 = {0: "icmp6-no-route", 1: "icmp6-adm-prohibited", 3: "icmp6-addr-unreachable",
            4: "icmp6-port-unreachable", 6: "tcp-reset", 7: "icmp6-policy-fail",
            8: "icmp6-reject-route"}


def _reject(d: bytes, family: int) -> str:
    (with_,) = struct.unpack_from("=I", d)
    name = (_REJECT4 if family == 4 else _REJECT6).get(with_)
    if name is None:
        raise Undecodable("REJECT with")
    return f" --reject-with {name}"


def _log(d: bytes, family: int) -> str:
    level, flags = d[0], d[1]
    prefix = _cstr(d[2:32])
    out = ""
    if prefix:
        out += " --log-prefix" + save_string(prefix)
    if level != 4:
        out += f" --log-level {level}"
    for bit, opt in ((1, " --log-tcp-sequence"), (2, " --log-tcp-options"),
                     (4, " --log-ip-options"), (8, " --log-uid"), (32, " --log-macdecode")):
        if flags & bit:
            out += opt
    return out


def _nflog(d: bytes, family: int) -> str:
    length, group, threshold, flags = struct.unpack_from("=IHHH", d)
    prefix = _cstr(d[12:76])
    out = ""
    if prefix:
        out += " --nflog-prefix" + save_string(prefix)
    if group:
        out += f" --nflog-group {group}"
    if flags & 1:
        out += f" --nflog-size {length}"
    elif length:
        out += f" --nflog-range {length}"
    if threshold:  # deprecated: how 1.8.9 prints one was not checked against it
        raise Undecodable("NFLOG threshold")
    return out


TARGETS: dict[tuple[str, int], Callable[[bytes, int], str]] = {
    ("MARK", 2): _mark_tg2,
    ("MASQUERADE", 0): _masquerade,
    ("DNAT", 0): _nat_compat("--to-destination"),
    ("SNAT", 0): _nat_compat("--to-source"),
    ("DNAT", 1): _nat_range12("--to-destination", 1),
    ("SNAT", 1): _nat_range12("--to-source", 1),
    ("DNAT", 2): _nat_range12("--to-destination", 2),
    ("REJECT", 0): _reject,
    ("LOG", 0): _log,
    ("NFLOG", 0): _nflog,
}


class Layout:
    """What the first walk of a blob learns, before a line is printed: the chains in
    order (built-ins with policy and counters), where their rules begin and end, and the
    chain a jump's offset names. Arrays, not tuples: 100,000 kube-proxy chains."""

    __slots__ = ("ends", "jumps", "lines", "names", "policies", "rules", "starts")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.starts = array("l")  # offset of a chain's first rule
        self.ends = array("l")  # offset of its tail (policy / RETURN), not printed
        self.policies: dict[int, tuple[str, int, int]] = {}  # chain index -> policy, counters
        self.jumps: dict[int, str] = {}  # a user chain's first rule offset -> its name
        self.lines = 0  # the save's lines (without its comments)
        self.rules = 0  # its -A lines

    def add(self, name: str, start: int, end: int) -> None:
        self.names.append(name)
        self.starts.append(start)
        self.ends.append(end)


def layout(mm, base: int, size: int, family: int, hooks: tuple[int, ...],
           names: tuple[str, ...]) -> Layout:
    """Walk the blob once, reading only headers: the chains, and Undecodable at once for
    an extension (or a structure) that the print would not handle."""
    t_at, _n_at, _ = _OFFS[family]
    least = 112 if family == 4 else 168
    valid, entry, under = hooks[0], hooks[1:6], hooks[6:11]
    builtin = {entry[h]: h for h in range(5) if valid & (1 << h)}
    policies = {under[h]: h for h in range(5) if valid & (1 << h)}
    lay = Layout()
    off = entries = skipped = 0
    cur: list | None = None  # [name, user chain?, offset of its first rule]
    prev: tuple[int, bool] | None = None  # (offset, a plain RETURN: a user chain's tail)
    last: tuple[str, bool] | None = None  # the chain before (name, user chain?)
    while off < size:
        p = base + off
        tgt, nxt = _U16.unpack_from(mm, p + t_at)
        if nxt < least or off + nxt > size or tgt > nxt or tgt < least:
            raise Undecodable("the blob does not walk")
        (proto,) = _U16.unpack_from(mm, p + (80 if family == 4 else 128))[:1]
        if proto and proto not in _PROTOS:
            raise Undecodable(f"protocol {proto}")
        q = p + least
        while q < p + tgt:  # matches
            msize, mname, mrev = _HEAD.unpack_from(mm, q)
            key = (_cstr(mname), mrev)
            if key not in MATCHES or msize < 32:
                raise Undecodable(f"match {key[0]} revision {mrev}")
            q += msize
        _tsize, tname_b, trev = _HEAD.unpack_from(mm, p + tgt)
        tname = _cstr(tname_b)
        verdict = 0
        outside = True  # unless it heads a chain or ends one
        if off in builtin:
            if cur is not None:
                raise Undecodable("a chain does not end where the next begins")
            cur = [names[builtin[off]], False, off]
        if tname == "ERROR":
            if cur is not None:  # the user chain before ends in the entry before
                if not cur[1] or prev is None or not prev[1] or prev[0] < cur[2]:
                    raise Undecodable("a user chain without its RETURN tail")
                lay.add(cur[0], cur[2], prev[0])
                skipped += 1
                last, cur = (cur[0], True), None
            err = _cstr(bytes(mm[p + tgt + 32:p + tgt + 64]))
            if off + nxt == size:
                if err != "ERROR":
                    raise Undecodable("the table does not end in ERROR")
                off += nxt
                break
            if last is not None and last[1] and err.encode("latin-1") <= \
                    last[0].encode("latin-1"):
                raise Undecodable("user chains not in libiptc's order")
            cur = [err, True, off + nxt]
            lay.jumps[off + nxt] = err  # libiptc's jumps name the chain's first rule
            skipped += 1
            outside = False
        elif tname == "":
            (verdict,) = struct.unpack_from("=i", mm, p + tgt + 32)
            if off in policies:
                if cur is None or cur[1] or verdict not in (-1, -2) or tgt != least:
                    raise Undecodable("a built-in chain's policy")
                pcnt, bcnt = _CNT.unpack_from(mm, p + _OFFS[family][2])
                lay.policies[len(lay.names)] = (_VERDICTS[verdict], pcnt, bcnt)
                lay.add(cur[0], cur[2], off)
                skipped += 1
                last, cur = (cur[0], False), None
                outside = False
        elif (tname, trev) not in TARGETS:
            raise Undecodable(f"target {tname} revision {trev}")
        if cur is None and outside:
            raise Undecodable("an entry outside any chain")
        prev = (off, tname == "" and verdict == -5 and tgt == least and
                _tail_plain(mm, p, family))
        off += nxt
        entries += 1
    if off != size or cur is not None:
        raise Undecodable("the blob does not end in ERROR")
    lay.rules = entries - skipped
    lay.lines = 2 + len(lay.names) + lay.rules
    return lay


def _tail_plain(mm, p: int, family: int) -> bool:
    """A user chain's tail is a RETURN with an all-zero ip header (else: a rule)."""
    n = 84 if family == 4 else 136
    return not any(mm[p:p + n])


def lines(mm, base: int, size: int, family: int, table: str, lay: Layout,
          release: Callable[[int], None] | None = None) -> Iterator[str]:
    """The save's lines (without its `#` comment lines), in its order: `*table`, the
    chain heads (built-ins with policy and counters, user chains `- [0:0]`), every chain's
    rules, `COMMIT`. `release(offset)` is called as the walk passes through the blob
    (bytes before `offset` are not read again)."""
    yield f"*{table}"
    for i, name in enumerate(lay.names):
        pol = lay.policies.get(i)
        yield f":{name} {pol[0]} [{pol[1]}:{pol[2]}]" if pol else f":{name} - [0:0]"
    t_at, _n_at, _ = _OFFS[family]
    least = 112 if family == 4 else 168
    hdr = _IP4 if family == 4 else _IP6
    ip_to_end = 84 if family == 4 else 136
    jumps = lay.jumps
    for name, off, end in zip(lay.names, lay.starts, lay.ends, strict=True):
        head = f"-A {name}"
        while off < end:
            p = base + off
            tgt, nxt = _U16.unpack_from(mm, p + t_at)
            yield head + _rule(mm, p, off, tgt, nxt, family, hdr, least, ip_to_end, jumps)
            off += nxt
            if release is not None:
                release(base + off)
    yield "COMMIT"


def _rule(mm, p: int, off: int, tgt: int, nxt: int, family: int, hdr: struct.Struct,
          least: int, ip_end: int, jumps: dict[int, str]) -> str:
    f = hdr.unpack_from(mm, p)
    if family == 4:
        src, dst, smsk, dmsk, inif, outif, inm, outm, proto, flags, inv = f
        goto = flags & 0x02
    else:
        src, dst, smsk, dmsk, inif, outif, inm, outm, proto, _tos, flags, inv = f
        goto = flags & 0x04
    out = ""
    zero = bytes(len(src))
    # save_ipv4_addr prints an address unless all of it is zero; save_ipv6_addr unless
    # its mask is (a /0 with an address is left out)
    if (smsk != zero or (family == 4 and src != zero)) or inv & _INV_SRC:
        out += f"{_neg(inv & _INV_SRC)} -s {_addr_mask(family, src, smsk)}"
    if (dmsk != zero or (family == 4 and dst != zero)) or inv & _INV_DST:
        out += f"{_neg(inv & _INV_DST)} -d {_addr_mask(family, dst, dmsk)}"
    out += _iface("i", inif, inm, bool(inv & _INV_IN))
    out += _iface("o", outif, outm, bool(inv & _INV_OUT))
    if proto:
        pname = _PROTOS.get(proto)
        if pname is None:  # the save asks getprotobynumber (/etc/protocols, NSS): not us
            raise Undecodable(f"protocol {proto}")
        out += f"{_neg(inv & _INV_PROTO)} -p {pname}"
    if family == 4 and flags & 0x01:
        out += f"{_neg(inv & _INV_FRAG)} -f"
    q = p + least
    while q < p + tgt:
        msize, mname, mrev = _HEAD.unpack_from(mm, q)
        name = _cstr(mname)
        out += f" -m {name}" + MATCHES[(name, mrev)](bytes(mm[q + 32:q + msize]), family)
        q += msize
    tsize, tname_b, trev = _HEAD.unpack_from(mm, p + tgt)
    tname = _cstr(tname_b)
    if tname == "":
        (verdict,) = struct.unpack_from("=i", mm, p + tgt + 32)
        if verdict < 0:
            word = _VERDICTS.get(verdict)
            if word is None:
                raise Undecodable(f"verdict {verdict}")
            return out + f" -j {word}"
        if verdict == off + nxt:
            return out  # a fall-through: libiptc prints no target
        chain = jumps.get(verdict)
        if chain is None:
            raise Undecodable("a jump to no chain head")
        return out + f" -{'g' if goto else 'j'} {chain}"
    d = bytes(mm[p + tgt + 32:p + tgt + tsize])
    return out + f" -j {tname}" + TARGETS[(tname, trev)](d, family)
