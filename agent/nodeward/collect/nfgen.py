"""The nf_tables generation id of the calling thread's network namespace.

The kernel bumps it on every committed nf_tables transaction (iptables-nft, nft, kube-proxy,
Calico all write through one), so an unchanged id means an unchanged nf_tables ruleset and
nothing needs reading. One NFT_MSG_GETGEN request over NETLINK_NETFILTER, decoded with
`struct` (~10 us; `nft list ruleset` at 50,000 rules takes seconds). Read-only.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big endian)
_NLA = struct.Struct("=HH")


def parse_newgen(data: bytes, seq: int) -> int | None:
    """The NFTA_GEN_ID of an NFT_MSG_NEWGEN answer to request `seq`; None when the buffer
    holds an error or no such answer. Pure (tested on bytes built by hand)."""
    off = 0
    while off + _HDR.size <= len(data):
        length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            return None
        if mseq == seq and mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
            a, end = off + _HDR.size + _NFGEN.size, off + length
            while a + _NLA.size <= end:
                nla_len, nla_type = _NLA.unpack_from(data, a)
                if nla_len < _NLA.size:
                    return None
                if nla_type & 0x3FFF == NFTA_GEN_ID and nla_len >= 8:
                    return struct.unpack_from(">I", data, a + _NLA.size)[0]
                a += (nla_len + 3) & ~3
            return None
        if mtype == NLMSG_ERROR:
            return None
        off += (length + 3) & ~3
    return None


def generation_id(timeout: float = 1.0) -> int | None:
    """The current nf_tables generation id, or None when it cannot be read (no nf_tables,
    not CAP_NET_ADMIN, a seccomp profile): the caller then reads the ruleset every time."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError:
        return None
    with sock:
        try:
            sock.settimeout(timeout)
            sock.bind((0, 0))
            body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
            seq = 1
            sock.send(_HDR.pack(_HDR.size + len(body), (NFNL_SUBSYS_NFTABLES << 8)
                                | NFT_MSG_GETGEN, NLM_F_REQUEST, seq, 0) + body)
            return parse_newgen(sock.recv(4096), seq)
        except OSError:
            return None


NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFTA_TABLE_NAME = 1
NLM_F_DUMP = 0x300
NLMSG_DONE = 3
#: nfgenmsg.nfgen_family -> the family word nft prints
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


def parse_tables(data: bytes, seq: int, out: list[tuple[str, str]]) -> bool:
    """Append (family, name) of each NFT_MSG_NEWTABLE in `data` to `out`; True at the end
    of the dump. Raises OSError on a netlink error. Pure."""
    off = 0
    while off + _HDR.size <= len(data):
        length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            raise OSError("corrupt netlink message")
        if mtype == NLMSG_DONE:
            return True
        if mtype == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, off + _HDR.size)
            if err:
                raise OSError(-err, "nf_tables table dump refused")
            return True
        if mseq == seq and mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE:
            (fam, _v, _r) = _NFGEN.unpack_from(data, off + _HDR.size)
            a, end = off + _HDR.size + _NFGEN.size, off + length
            while a + _NLA.size <= end:
                nla_len, nla_type = _NLA.unpack_from(data, a)
                if nla_len < _NLA.size:
                    break
                if nla_type & 0x3FFF == NFTA_TABLE_NAME:
                    name = bytes(data[a + _NLA.size:a + nla_len]).split(b"\0", 1)[0]
                    out.append((FAMILIES.get(fam, str(fam)), name.decode()))
                    break
                a += (nla_len + 3) & ~3
        off += (length + 3) & ~3
    return False


def list_tables(timeout: float = 1.0) -> list[tuple[str, str]] | None:
    """(family, name) of every nf_tables table, from one netlink dump: `nft list tables`
    fetches every rule of the ruleset first (1.5 s at 50,000 rules). None when it cannot
    be read."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError:
        return None
    out: list[tuple[str, str]] = []
    with sock:
        try:
            sock.settimeout(timeout)
            sock.bind((0, 0))
            body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
            seq = 2
            sock.send(_HDR.pack(_HDR.size + len(body), (NFNL_SUBSYS_NFTABLES << 8)
                                | NFT_MSG_GETTABLE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                      + body)
            while not parse_tables(sock.recv(1 << 16), seq, out):
                pass
        except OSError:
            return None
    return out


NFT_MSG_GETRULE = 7
NFTA_RULE_TABLE = 1
#: nft family word -> nfgenmsg.nfgen_family
FAMILY_NUMBERS = {v: k for k, v in FAMILIES.items()}


NLM_F_DUMP_INTR = 0x10


class NetlinkReadFailed(Exception):
    """The netlink read could not be completed (refused, cut, not understood): the caller
    falls back to `nft -j`."""


class DumpVanished(NetlinkReadFailed):
    """ENOENT from a dump of one named object (a set's elements): it went between being
    listed and being dumped, so a write raced the read (kube-proxy deletes a service's
    numgen vmap when it flushes the chain); the read is started again, not given up."""


class DumpSocket:
    """One NETLINK_NETFILTER socket for nf_tables dump requests: the rule count, the chain
    list (collect/nfchanges.py) and the native-table reader (collect/nftnl.py) share it."""

    def __init__(self, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind((0, 0))
        self.seq = 100
        self.interrupted = False

    def _ask(self, msg: int, family: int, body: bytes, flags: int) -> Iterator[tuple]:
        """Send one request; (type, flags, buffer, offset, length) of each answer to it."""
        self.seq += 1
        seq = self.seq
        payload = _NFGEN.pack(family, 0, 0) + body
        self.sock.send(_HDR.pack(_HDR.size + len(payload), (NFNL_SUBSYS_NFTABLES << 8) | msg,
                                 NLM_F_REQUEST | flags, seq, 0) + payload)
        while True:
            data = self.sock.recv(1 << 17)
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, mflags, mseq, _p = _HDR.unpack_from(data, off)
                if length < _HDR.size or off + length > len(data):
                    raise NetlinkReadFailed("corrupt netlink message")
                if mseq == seq:
                    yield mtype, mflags, data, off, length
                off += (length + 3) & ~3
            del data

    def dump(self, msg: int, family: int, body: bytes = b"") -> Iterator[tuple[int, bytes]]:
        """(nfgen family, attributes) of each answer to a dump request."""
        for mtype, flags, data, off, length in self._ask(msg, family, body, NLM_F_DUMP):
            if mtype == NLMSG_DONE:
                return
            if mtype == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, off + _HDR.size)
                if err:
                    raise (DumpVanished if err == -2 else NetlinkReadFailed)(
                        f"{socket.errno.errorcode.get(-err, err)} from the nf_tables dump")
                return
            if flags & NLM_F_DUMP_INTR:  # a write during the dump (any table)
                self.interrupted = True
            yield data[off + _HDR.size], data[off + _HDR.size + 4:off + length]

    def get(self, msg: int, family: int, body: bytes) -> bytes | None:
        """The attributes of the one object a GET request names (a chain, a set: the
        kernel looks it up by name, no dump); None when it does not exist (ENOENT)."""
        for mtype, _flags, data, off, length in self._ask(msg, family, body, 0):
            if mtype == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, off + _HDR.size)
                if err == -2:  # ENOENT
                    return None
                raise NetlinkReadFailed(f"{socket.errno.errorcode.get(-err, err)}"
                                        " from an nf_tables get")
            return data[off + _HDR.size + 4:off + length]
        return None  # not reached: _ask reads until an answer

    def close(self) -> None:
        self.sock.close()


def count_rules(family: str, table: str, limit: int | None = None,
                timeout: float = 30.0) -> int | None:
    """How many rules nf_tables table `family table` holds, from a netlink dump the kernel
    filters by table (messages counted, not decoded: ~30 ms at 50,000 rules). The caller
    checks it against the rule ceiling before running `nft`, whose own memory grows by ~7 KB
    a rule for JSON output (370 MB at 50,000). The kernel resumes such a dump by skipping
    what it sent, so it costs what nft's own does (~17 s at 200,000 rules): it stops as
    soon as the count passes `limit`. None when it cannot be read."""
    fam = FAMILY_NUMBERS.get(family)
    if fam is None:
        return None
    name = table.encode() + b"\0"
    attr = _NLA.pack(_NLA.size + len(name), NFTA_RULE_TABLE) + name
    attr += b"\0" * (-len(attr) % 4)
    count = 0
    try:
        sk = DumpSocket(timeout)
    except OSError:
        return None
    try:
        for _fam, _attrs in sk.dump(NFT_MSG_GETRULE, fam, attr):
            count += 1
            if limit is not None and count > limit:
                return count
        return count
    except (OSError, NetlinkReadFailed):
        return None
    finally:
        sk.close()
