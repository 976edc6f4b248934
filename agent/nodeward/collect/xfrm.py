"""IPsec (xfrm) states and policies as frozen values. States are dumped over NETLINK_XFRM
(XFRM_MSG_GETSA, decoded here with struct: pyroute2 0.9.7 has no XFRM state messages), which
gives exact lifetimes and counters; policies are parsed from `ip xfrm policy` text (iproute2
6.1 ignores `-j` for xfrm). `parse_states` reads `ip [-s] xfrm state` text (fixtures,
offline files).

Read-only. Key material is skipped at decode/parse time and never stored.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass


class XfrmError(Exception):
    pass


@dataclass(frozen=True)
class XfrmTmpl:
    src: str
    dst: str
    proto: str = "esp"
    reqid: int = 0
    mode: str = "transport"
    optional: bool = False  # `level use`: an SA is used when there is one, never required


@dataclass(frozen=True)
class XfrmPolicy:
    src: str  # selector CIDRs
    dst: str
    dir: str  # in | out | fwd
    action: str = "allow"
    priority: int = 0
    tmpls: tuple[XfrmTmpl, ...] = ()


@dataclass(frozen=True)
class XfrmState:
    src: str
    dst: str
    proto: str
    spi: int
    reqid: int = 0
    mode: str = "transport"
    algorithms: tuple[tuple[str, str], ...] = ()  # (kind, name): ("enc", "cbc(aes)"); no keys
    lifetime: XfrmLifetime | None = None  # None when the source does not say (plain text)


@dataclass(frozen=True)
class XfrmLifetime:
    """Limits (0 = none) and current use of one SA, as the kernel keeps them."""

    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = 0
    hard_packets: int = 0
    soft_add_s: int = 0  # seconds after `add_time`
    hard_add_s: int = 0
    soft_use_s: int = 0  # seconds after `use_time` (first use)
    hard_use_s: int = 0
    bytes: int = 0
    packets: int = 0
    add_time: int = 0  # epoch seconds
    use_time: int = 0  # epoch seconds, 0 = never used

    def soft_expired(self, now: float) -> list[str]:
        """Which soft limits are reached: the kernel has asked the IKE daemon to rekey."""
        out = []
        if self.soft_bytes and self.bytes >= self.soft_bytes:
            out.append(f"bytes {self.bytes} >= soft {self.soft_bytes}")
        if self.soft_packets and self.packets >= self.soft_packets:
            out.append(f"packets {self.packets} >= soft {self.soft_packets}")
        if self.soft_add_s and self.add_time and now - self.add_time >= self.soft_add_s:
            out.append(f"age {int(now - self.add_time)}s >= soft {self.soft_add_s}s")
        if self.soft_use_s and self.use_time and now - self.use_time >= self.soft_use_s:
            out.append(f"in use {int(now - self.use_time)}s >= soft {self.soft_use_s}s")
        return out


def _blocks(text: str) -> list[list[str]]:
    """Records start at column 0; their attribute lines are indented."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            blocks.append([])
        if not blocks:
            raise XfrmError(f"indented line before any record: {line.strip()[:40]!r}")
        blocks[-1].append(line.strip())
    return blocks


def _kv(words: list[str]) -> dict[str, str]:
    return {words[i]: words[i + 1] for i in range(0, len(words) - 1)}


def _num(text: str, base: int = 10) -> int:
    """`ip -s` prints numbers with their other base in parentheses: `1(0x00000001)`,
    `0x00000003(3)`. Raises ValueError on anything else."""
    return int(text.split("(", 1)[0], base)


def parse_policies(text: str) -> tuple[XfrmPolicy, ...]:
    out: list[XfrmPolicy] = []
    for b in _blocks(text):
        head = _kv(b[0].split())
        if "src" not in head or "dst" not in head:
            raise XfrmError(f"policy without src/dst: {b[0][:60]!r}")
        direction, action, prio = "", "allow", 0
        tmpls: list[XfrmTmpl] = []
        for line in b[1:]:
            w = line.split()
            kv = _kv(w)
            if w[0] in ("dir", "socket"):
                direction = w[1] if w[0] == "dir" else f"socket-{w[1]}"
                action = kv.get("action", action)
                try:
                    prio = _num(kv.get("priority", "0"))
                except ValueError:
                    raise XfrmError(f"bad priority: {line[:60]!r}") from None
            elif w[0] == "tmpl":
                tmpls.append(XfrmTmpl(kv.get("src", ""), kv.get("dst", "")))
            elif w[0] == "proto" and tmpls:
                t = tmpls[-1]
                try:
                    reqid = _num(kv.get("reqid", "0"))
                except ValueError:
                    raise XfrmError(f"bad reqid: {line[:60]!r}") from None
                tmpls[-1] = XfrmTmpl(t.src, t.dst, kv.get("proto", "esp"), reqid,
                                     kv.get("mode", "transport"), t.optional)
            elif w[0] == "level" and tmpls and len(w) > 1:
                tmpls[-1] = dataclasses.replace(tmpls[-1], optional=w[1] == "use")
        if not direction:
            raise XfrmError(f"policy without dir: {b[0][:60]!r}")
        out.append(XfrmPolicy(head["src"], head["dst"], direction, action, prio, tuple(tmpls)))
    return tuple(out)


ALG_KINDS = ("enc", "auth", "auth-trunc", "aead", "comp")


def parse_states(text: str) -> tuple[XfrmState, ...]:
    out: list[XfrmState] = []
    for b in _blocks(text):
        head = _kv(b[0].split())
        if "src" not in head or "dst" not in head:
            raise XfrmError(f"state without src/dst: {b[0][:60]!r}")
        proto, spi, reqid, mode = "", 0, 0, "transport"
        algs: list[tuple[str, str]] = []
        for line in b[1:]:
            w = line.split()
            if w[0] == "proto":
                kv = _kv(w)
                proto = kv.get("proto", "")
                try:
                    spi = _num(kv.get("spi", "0"), 0)
                    reqid = _num(kv.get("reqid", "0"))
                except ValueError:
                    raise XfrmError(f"bad spi/reqid: {line[:60]!r}") from None
                mode = kv.get("mode", mode)
            elif w[0] in ALG_KINDS and len(w) >= 2:
                algs.append((w[0], w[1]))  # w[2] is the key: never kept
        if not proto:
            raise XfrmError(f"state without proto: {b[0][:60]!r}")
        out.append(XfrmState(head["src"], head["dst"], proto, spi, reqid, mode, tuple(algs)))
    return tuple(out)


def _ip(*args: str, netns: str | None = None, timeout: float = 5.0) -> str:
    argv = ["ip", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise XfrmError(f"{' '.join(args)}: {e}") from None
    if r.returncode != 0:
        raise XfrmError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


# -- NETLINK_XFRM state dump ------------------------------------------------------------------

NETLINK_XFRM = 6
XFRM_MSG_NEWSA, XFRM_MSG_GETSA = 0x10, 0x12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
XFRM_INF = (1 << 64) - 1
#: struct xfrm_usersa_info (224 bytes on 64-bit): selector (56), id {daddr, spi (be),
#: proto} (24), saddr (16), lifetime_cfg (8 x u64), lifetime_cur (4 x u64), stats
#: (3 x u32), seq, reqid, family (u16), mode, replay_window, flags, padding.
_USERSA = struct.Struct("=56x16sIB3x16s8Q4Q12xIIHBBB7x")
#: attribute type -> (kind as `ip xfrm state` prints it, bytes after the 64-byte name)
_ALGS = {2: "enc", 1: "auth", 20: "auth-trunc", 18: "aead", 3: "comp"}
_MODES = {0: "transport", 1: "tunnel", 2: "ro", 3: "in_trigger", 4: "beet"}
_PROTOS = {50: "esp", 51: "ah", 108: "comp", 43: "route2", 60: "hao"}


def _addr(raw: bytes, family: int) -> str:
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return socket.inet_ntop(socket.AF_INET, raw[:4])


def _lim(v: int) -> int:
    return 0 if v == XFRM_INF else v


def decode_sa(payload: bytes) -> XfrmState:
    """One XFRM_MSG_NEWSA payload. Algorithm attributes give their names only: the key
    bytes that follow are never read."""
    if len(payload) < _USERSA.size:
        raise XfrmError(f"short xfrm_usersa_info ({len(payload)} bytes)")
    (daddr, spi_be, proto, saddr, *lft, _seq, reqid, family, mode, _rw,
     _flags) = _USERSA.unpack_from(payload)
    cfg, cur = lft[:8], lft[8:12]
    algs: list[tuple[str, str]] = []
    off = _USERSA.size
    while off + 4 <= len(payload):
        alen, atype = struct.unpack_from("=HH", payload, off)
        if alen < 4:
            break
        kind = _ALGS.get(atype & 0x3FFF)
        if kind and alen >= 4 + 64:
            name = payload[off + 4:off + 68].split(b"\0", 1)[0].decode("ascii", "replace")
            algs.append((kind, name))
        off += (alen + 3) & ~3
    names = {n for k, n in algs if k == "auth-trunc"}
    algs = [(k, n) for k, n in algs if not (k == "auth" and n in names)]  # same alg twice
    order = {k: i for i, k in enumerate(("aead", "auth-trunc", "auth", "enc", "comp"))}
    algs.sort(key=lambda a: order[a[0]])
    lifetime = XfrmLifetime(
        soft_bytes=_lim(cfg[0]), hard_bytes=_lim(cfg[1]), soft_packets=_lim(cfg[2]),
        hard_packets=_lim(cfg[3]), soft_add_s=cfg[4], hard_add_s=cfg[5],
        soft_use_s=cfg[6], hard_use_s=cfg[7],
        bytes=cur[0], packets=cur[1], add_time=cur[2], use_time=cur[3])
    return XfrmState(_addr(saddr, family), _addr(daddr, family),
                     _PROTOS.get(proto, str(proto)), socket.ntohl(spi_be), reqid,
                     _MODES.get(mode, str(mode)), tuple(algs), lifetime)


def _setns_socket(netns: str) -> socket.socket:
    """A NETLINK_XFRM socket created in namespace `netns` (by a short-lived thread, so the
    caller's own namespace is untouched); a socket stays in the namespace it was made in."""
    box: list = []

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, 0x40000000) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({netns})")
            finally:
                os.close(fd)
            box.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM))
        except OSError as e:
            box.append(e)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if isinstance(box[0], OSError):
        raise box[0]
    return box[0]


def dump_states(netns: str | None = None, timeout: float = 5.0) -> tuple[XfrmState, ...]:
    """Every SA of the namespace over NETLINK_XFRM. Raises XfrmError."""
    try:
        s = _setns_socket(netns) if netns else socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
    except OSError as e:
        raise XfrmError(f"NETLINK_XFRM socket: {e}") from None
    out: list[XfrmState] = []
    try:
        s.settimeout(timeout)
        s.bind((0, 0))
        seq = 1
        s.send(struct.pack("=IHHII", 16, XFRM_MSG_GETSA, NLM_F_REQUEST | NLM_F_DUMP, seq, 0))
        while True:
            data = s.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                ln, typ, _flags, mseq, _pid = struct.unpack_from("=IHHII", data, off)
                if ln < 16:
                    raise XfrmError(f"bad netlink message length {ln}")
                body = data[off + 16:off + ln]
                off += (ln + 3) & ~3
                if mseq != seq:
                    continue
                if typ == NLMSG_DONE:
                    return tuple(out)
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", body)[0]
                    if err:
                        raise XfrmError(f"XFRM_MSG_GETSA: {os.strerror(err)}")
                    return tuple(out)
                if typ == XFRM_MSG_NEWSA:
                    out.append(decode_sa(body))
    except OSError as e:
        raise XfrmError(f"XFRM_MSG_GETSA: {e}") from None
    finally:
        s.close()


def collect_xfrm(netns: str | None = None) -> tuple[tuple[XfrmState, ...],
                                                    tuple[XfrmPolicy, ...], tuple[str, ...]]:
    """States, policies and errors (an error leaves that half empty; the scan goes on)."""
    errors: list[str] = []
    states: tuple[XfrmState, ...] = ()
    policies: tuple[XfrmPolicy, ...] = ()
    try:
        states = dump_states(netns)
    except XfrmError as e:
        errors.append(f"xfrm state: {e}")
    try:
        policies = parse_policies(_ip("xfrm", "policy", netns=netns))
    except XfrmError as e:
        errors.append(f"xfrm policy: {e}")
    return states, policies, tuple(errors)
