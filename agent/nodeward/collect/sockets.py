"""Listening sockets of the current network namespace.

Read over NETLINK_SOCK_DIAG with a state filter, so the kernel sends only listening TCP and
unconnected (bound) UDP sockets, and decode `struct inet_diag_msg` with `struct`: it has a
fixed layout, and a generic netlink attribute parser costs ~5x more than the read itself at
10,000 sockets. Where the kernel refuses sock_diag (no inet_diag/udp_diag, a seccomp
profile, an old kernel) fall back to /proc/net/{tcp,udp}{,6} and say so.

Both sources describe the namespace of the *calling thread*, which is what makes the agent
work unchanged in the host namespace or inside any namespace it is started in.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable
from typing import NamedTuple

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3

TCP_ESTABLISHED = 1
TCP_CLOSE = 7
TCP_LISTEN = 10

INET_DIAG_SKV6ONLY = 11

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
#: Which kernel state means "accepts new peers": LISTEN for TCP, unconnected for UDP.
#: A connected UDP socket only talks to its peer, so it is not an exposed service.
WANTED_STATE = {"tcp": TCP_LISTEN, "udp": TCP_CLOSE}

_NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid.
_REQ = struct.Struct("=BBBxI4x32sI8x")
# inet_diag_msg: family, state, timer, retrans, sport, dport (big endian, swapped below),
# src[16], dst[16], if, cookie[2], expires, rqueue, wqueue, uid, inode.
_MSG = struct.Struct("=BBBBHH16s16sI8xIIIII")
_NLA = struct.Struct("=HH")


class RawSocket(NamedTuple):
    """A socket as the kernel reports it, before attribution and classification.

    A NamedTuple rather than a frozen dataclass: one is built per socket on the hot path,
    and tuple construction costs a fifth of a frozen dataclass's (10,000 sockets).
    """

    protocol: str
    family: int  # 4 | 6
    address: str
    port: int
    inode: int
    uid: int
    ifindex: int = 0
    v6only: bool | None = None


class SockDiagUnavailable(OSError):
    """sock_diag refused for this family/protocol (the caller falls back to procfs)."""


def _request(family: int, proto: int, state: int, seq: int) -> bytes:
    body = _REQ.pack(family, proto, 0, 1 << state, b"\0" * 32, 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_diag_messages(data: bytes | memoryview, protocol: str,
                        out: list[RawSocket]) -> bool:
    """Decode a buffer of netlink messages into `out`; True once NLMSG_DONE is seen.

    Pure, so it is tested on messages the tests build byte by byte.
    """
    mv = memoryview(data)
    off, end = 0, len(mv)
    ntop = socket.inet_ntop
    unpack_hdr, unpack_msg = _NLMSGHDR.unpack_from, _MSG.unpack_from
    hdr_size, msg_size = _NLMSGHDR.size, _MSG.size
    names: dict[bytes, str] = {}  # most sockets share a handful of bind addresses
    append = out.append
    while off + hdr_size <= end:
        length, mtype, _flags, _seq, _pid = unpack_hdr(mv, off)
        if length < hdr_size:
            raise ValueError(f"corrupt netlink message length {length}")
        if mtype == SOCK_DIAG_BY_FAMILY:
            body = off + hdr_size
            (fam, _state, _t, _r, sport, _dport, src, _dst, ifindex,
             _exp, _rq, _wq, uid, inode) = unpack_msg(mv, body)
            v6only = None
            if fam == socket.AF_INET6:
                addr = names.get(src) or names.setdefault(src, ntop(socket.AF_INET6, src))
                a = body + msg_size
                msg_end = off + length
                while a + _NLA.size <= msg_end:
                    nla_len, nla_type = _NLA.unpack_from(mv, a)
                    if nla_len < _NLA.size:
                        break
                    if nla_type == INET_DIAG_SKV6ONLY:
                        v6only = bool(mv[a + _NLA.size])
                    a += (nla_len + 3) & ~3
                family = 6
            else:
                addr = names.get(src) or names.setdefault(src, ntop(socket.AF_INET, src[:4]))
                family = 4
            append(RawSocket(protocol, family, addr, ((sport & 0xFF) << 8) | (sport >> 8),
                             inode, uid, ifindex, v6only))
        elif mtype == NLMSG_DONE:
            return True
        elif mtype == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", mv, off + hdr_size)
            if err:
                raise SockDiagUnavailable(-err, os.strerror(-err))
            return True
        off += (length + 3) & ~3
    return False


def _dump(sock: socket.socket, family: int, protocol: str, out: list[RawSocket],
          seq: int) -> None:
    sock.send(_request(family, IPPROTO[protocol], WANTED_STATE[protocol], seq))
    buf = bytearray(1 << 17)
    while True:
        n = sock.recv_into(buf)
        if n == 0:
            raise SockDiagUnavailable(errno.EIO, "netlink socket closed mid-dump")
        if parse_diag_messages(memoryview(buf)[:n], protocol, out):
            return


def read_netlink(protocols: Iterable[str] = ("tcp", "udp"),
                 families: Iterable[int] = (4, 6)) -> tuple[list[RawSocket], list[str]]:
    """Dump over sock_diag. Returns sockets and the (protocol, family) pairs it could not
    read, as "tcp6"-style names, so the caller can fall back for just those."""
    out: list[RawSocket] = []
    failed: list[str] = []
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    except OSError:
        return out, [f"{p}{'' if f == 4 else '6'}" for p in protocols for f in families]
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        seq = 0
        for proto in protocols:
            for fam in families:
                seq += 1
                part: list[RawSocket] = []
                try:
                    _dump(sock, socket.AF_INET6 if fam == 6 else socket.AF_INET, proto,
                          part, seq)
                except (SockDiagUnavailable, OSError, ValueError):
                    failed.append(f"{proto}{'' if fam == 4 else '6'}")
                    continue
                out.extend(part)
    return out, failed


# -- /proc fallback ------------------------------------------------------------------------


def _proc_addr(text: str, family: int) -> tuple[str, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word in host byte order.
    words = [raw[i:i + 4][::-1] if _LITTLE else raw[i:i + 4] for i in range(0, len(raw), 4)]
    packed = b"".join(words)
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    return socket.inet_ntop(af, packed), int(port, 16)


_LITTLE = struct.pack("=H", 1) == b"\x01\x00"


def parse_proc_net(text: str, protocol: str, family: int) -> list[RawSocket]:
    """Parse /proc/net/{tcp,udp}{,6}; keep LISTEN (tcp) / unconnected (udp) sockets."""
    want = f"{WANTED_STATE[protocol]:02X}"
    out = []
    for lineno, line in enumerate(text.splitlines()[1:], start=2):
        fields = line.split()
        if len(fields) < 10:
            continue
        if fields[3] != want:
            continue
        try:
            addr, port = _proc_addr(fields[1], family)
            out.append(RawSocket(protocol, family, addr, port, int(fields[9]), int(fields[7])))
        except (ValueError, IndexError) as e:
            raise ValueError(f"/proc/net/{protocol}{'6' if family == 6 else ''} line "
                             f"{lineno}: cannot parse {line.strip()!r}: {e}") from None
    return out


def read_procfs(names: Iterable[str], root: str = "/proc/self/net") -> list[RawSocket]:
    out: list[RawSocket] = []
    for name in names:
        proto, family = name.rstrip("6"), 6 if name.endswith("6") else 4
        try:
            with open(os.path.join(root, name)) as f:
                out.extend(parse_proc_net(f.read(), proto, family))
        except FileNotFoundError:
            continue  # no IPv6 in this kernel/namespace
    return out


def collect_sockets(force_procfs: bool = False) -> tuple[list[RawSocket], str, list[str]]:
    """All listening sockets: (sockets, source, notes). `source` is "netlink", "procfs" or
    "netlink+procfs" when only some protocol/family pairs fell back."""
    names = ["tcp", "tcp6", "udp", "udp6"]
    if force_procfs:
        return read_procfs(names), "procfs", ["sock_diag not used (forced): read /proc/net, "
                                              "which cannot show SO_BINDTODEVICE"]
    socks, failed = read_netlink()
    if not failed:
        return socks, "netlink", []
    socks.extend(read_procfs(failed))
    source = "procfs" if len(failed) == len(names) else "netlink+procfs"
    note = (f"netlink sock_diag refused for {', '.join(failed)}: read /proc/net instead "
            "(which cannot show SO_BINDTODEVICE: device-bound sockets are judged by address)")
    return socks, source, [note]
