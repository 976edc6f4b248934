"""The iptables-legacy (x_tables) tables asked of the kernel directly, read-only.

`iptables-legacy-save` reads a table through libiptc, which holds the kernel's blob twice
(the copy it was given and one allocation per rule): 238 MiB for a 250,000-rule kube-proxy
nat table, before it prints a line, so the child alone nearly fills a DaemonSet's 256 MiB
(a container's limit counts its children). Asked here over the same raw socket:

- IPT_SO_GET_INFO (84 bytes per table): its entry count and blob size, so the rule ceiling
  (`firewall_max_rules`) is enforced, and the cost known, before any child runs;
- IPT_SO_GET_ENTRIES: the blob itself, once, into an anonymous mapping that is unmapped
  after use (pages back to the system at once), digested with each entry's packet/byte
  counters zeroed (they change on every packet): equal digests mean equal rules, so an
  unchanged table never spawns the save.

Both need CAP_NET_RAW (a raw socket) and CAP_NET_ADMIN, as the save itself does; every
failure is an XtablesUnreadable the caller reports, never a silent "no rules".
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import socket
import struct
from dataclasses import dataclass

#: getsockopt levels / names (linux/netfilter_ipv4/ip_tables.h, ipv6/ip6_tables.h)
SO_GET_INFO = 64  # IPT_BASE_CTL, IP6T_BASE_CTL
SO_GET_ENTRIES = 65
_LEVEL = {4: socket.IPPROTO_IP, 6: socket.IPPROTO_IPV6}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
#: struct ipt_getinfo / ip6t_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5],
#: num_entries, size
_INFO = struct.Struct("=32sI5I5III")
#: sizeof(struct ipt_get_entries): name[32], size, padded to the entries' 8-byte alignment
_GET_HEAD = 40
#: offsets in struct ipt_entry / ip6t_entry: next_offset (u16), counters (2 x u64)
_NEXT = {4: 90, 6: 142}
_COUNTERS = {4: 96, 6: 152}
_ENTRY_MIN = {4: 112, 6: 168}
_ZERO = bytes(16)


class XtablesUnreadable(Exception):
    """The kernel did not answer for a table (no permission, no such table, a blob that
    does not walk): its rules are unknown, which the caller must report."""


@dataclass(frozen=True)
class TableInfo:
    """IPT_SO_GET_INFO's answer: what a read of the table will cost."""

    family: int
    name: str
    entries: int  # rules plus the chain heads/policies and the table's ERROR tail
    size: int  # bytes of the blob IPT_SO_GET_ENTRIES gives (libiptc holds it twice)
    hooks: tuple[int, ...]  # valid_hooks, hook_entry[5], underflow[5]


class BlobTooBig(XtablesUnreadable):
    """A table whose blob is past what the rule ceiling allows to fetch: not read."""

    def __init__(self, info: TableInfo) -> None:
        super().__init__(f"IPv{info.family} table {info.name}: {info.size:,} bytes")
        self.info = info


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _getsockopt(sock: socket.socket, family: int, opt: int, buf: ctypes.Array | ctypes.c_char,
                size: int) -> None:
    """getsockopt with a caller-filled buffer (Python's own takes none in and at most 1 KB
    out)."""
    libc = _libc()
    length = ctypes.c_uint(size)
    rc = libc.getsockopt(sock.fileno(), _LEVEL[family], opt, ctypes.byref(buf),
                         ctypes.byref(length))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, errno.errorcode.get(err, str(err)))


def raw_socket(family: int) -> socket.socket:
    """The raw socket the x_tables queries go through (CAP_NET_RAW)."""
    try:
        return socket.socket(_AF[family], socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as e:
        raise XtablesUnreadable(f"no raw socket for the IPv{family} x_tables query "
                                f"({e.strerror})") from None


def table_info(family: int, name: str, sock: socket.socket | None = None) -> TableInfo:
    """IPT_SO_GET_INFO for one table of this thread's network namespace."""
    own = sock is None
    s = raw_socket(family) if sock is None else sock
    try:
        buf = ctypes.create_string_buffer(_INFO.pack(name.encode()[:31], *(0,) * 13),
                                          _INFO.size)
        try:
            _getsockopt(s, family, SO_GET_INFO, buf, _INFO.size)
        except OSError as e:
            raise XtablesUnreadable(f"IPT_SO_GET_INFO for IPv{family} table {name}: "
                                    f"{e.strerror}") from None
        got = _INFO.unpack(buf.raw)
        return TableInfo(family, name, got[12], got[13], tuple(got[1:12]))
    finally:
        if own:
            s.close()


def table_names(family: int, proc: str = "/proc/thread-self/net") -> list[str] | None:
    """The legacy tables that exist in this thread's namespace; None: cannot tell."""
    path = f"{proc}/{'ip_tables_names' if family == 4 else 'ip6_tables_names'}"
    try:
        with open(path) as f:
            return [x for x in f.read().split() if x]
    except FileNotFoundError:
        return []
    except OSError:
        return None


@dataclass(frozen=True)
class TableDigest:
    """A table's blob digested: what it holds, without holding it."""

    info: TableInfo
    digest: str  # sha256 of the hooks and the blob with every entry's counters zeroed
    rules: int  # rules, as iptables-save prints them (-A lines)
    chains: int  # user-defined chains


def table_digest(family: int, name: str, sock: socket.socket | None = None,
                 info: TableInfo | None = None) -> TableDigest:
    """A table's kernel blob digested with every entry's counters zeroed: equal digests
    mean equal rules, chain heads and policies. The blob (~350 bytes an entry for
    kube-proxy's) lives in an anonymous mapping only while it is digested. Asks again
    (twice) if the table was replaced between the size query and the read (EAGAIN)."""
    own = sock is None
    s = raw_socket(family) if sock is None else sock
    try:
        for attempt in range(3):
            if info is None or attempt:
                info = table_info(family, name, s)
            try:
                return _digest_blob(s, info)
            except BlockingIOError:
                continue  # rewritten between GET_INFO and GET_ENTRIES: ask again
        raise XtablesUnreadable(f"IPv{family} table {name} kept changing while it was read")
    finally:
        if own:
            s.close()


def _digest_blob(s: socket.socket, info: TableInfo) -> TableDigest:
    family = info.family
    total = _GET_HEAD + info.size
    mm = mmap.mmap(-1, max(total, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        _fetch(s, info, mm)
        nxt, cnt, least = _NEXT[family], _COUNTERS[family], _ENTRY_MIN[family]
        unpack = struct.Struct("=HH").unpack_from
        off, end, n, errors = _GET_HEAD, total, 0, 0
        while off < end:
            target, step = unpack(mm, off + nxt - 2)
            # struct xt_entry_target: u16 target_size, then the name: "ERROR" heads a user
            # chain (and ends the table)
            if mm[off + target + 2:off + target + 8] == b"ERROR\0":
                errors += 1
            if step < least or off + step > end:
                raise XtablesUnreadable(f"IPv{family} table {info.name}: entry {n} at "
                                        f"{off - _GET_HEAD} has next_offset {step}: the "
                                        "blob does not walk")
            mm[off + cnt:off + cnt + 16] = _ZERO
            off += step
            n += 1
        if n != info.entries:
            raise XtablesUnreadable(f"IPv{family} table {info.name}: {n} entries walked, "
                                    f"the kernel said {info.entries}")
        h = hashlib.sha256(struct.pack(f"=i{len(info.hooks)}I", family, *info.hooks))
        with memoryview(mm) as view:
            h.update(view[_GET_HEAD:total])
        builtin = bin(info.hooks[0]).count("1")  # each built-in chain ends in its policy
        chains = max(0, errors - 1)  # user chain: ERROR head, rules, RETURN tail
        return TableDigest(info, h.hexdigest(), n - builtin - 2 * chains - 1, chains)
    finally:
        mm.close()


class DecodedLines:
    """A table's `iptables-legacy-save -t TABLE` lines decoded from its blob as they are
    read (collect/xtdecode.py), for parse_iptables_save, which reads them in order once:
    the blob's pages are given back behind the reader (MADV_DONTNEED every few MiB) and
    the mapping closed at the end, so the blob, the lines and the parse never coexist whole.
    `digest` (the same as table_digest's for the same blob) is known once all are read."""

    __slots__ = ("_at", "_gen", "_line", "_mm", "digest", "info", "layout", "rules")

    def __init__(self, mm: mmap.mmap, info: TableInfo, lay, hashed) -> None:
        from . import xtdecode

        self._mm, self.info, self.layout, self.rules = mm, info, lay, lay.rules
        self.digest = ""
        self._at, self._line = -1, ""
        self._gen = self._walk(xtdecode, hashed)

    def _walk(self, xtdecode, h):
        mm, done, page = self._mm, _GET_HEAD, mmap.PAGESIZE
        view = memoryview(mm)

        def release(upto: int) -> None:
            nonlocal done
            if upto - done >= PIECE:
                cut = upto // page * page
                h.update(view[done:cut])
                mm.madvise(mmap.MADV_DONTNEED, done // page * page, cut - done // page * page)
                done = cut
        try:
            yield from xtdecode.lines(mm, _GET_HEAD, self.info.size, self.info.family,
                                      self.info.name, self.layout, release)
            h.update(view[done:_GET_HEAD + self.info.size])
            self.digest = h.hexdigest()
        finally:
            view.release()
            mm.close()

    def __len__(self) -> int:
        return self.layout.lines

    def __getitem__(self, k: int) -> str:
        if k == self._at:
            return self._line
        if k != self._at + 1:
            raise IndexError("decoded lines are read in order, once")
        self._line = next(self._gen)
        self._at = k
        if k == self.layout.lines - 1:  # the last: the walk ends (digest, unmap) now
            for _ in self._gen:
                raise XtablesUnreadable("decoded more lines than the layout counted")
        return self._line

    def close(self) -> None:
        self._gen.close()


#: bytes of blob given back at a time while it is decoded
PIECE = 4 << 20


def table_lines(family: int, name: str, sock: socket.socket | None = None,
                info: TableInfo | None = None) -> DecodedLines:
    """A table's blob fetched once and printed as iptables-legacy-save prints it, lazily
    (DecodedLines). Raises xtdecode.Undecodable (before any line) when an entry's match or
    target is not one the decoder prints exactly: the caller then runs the save."""
    from . import xtdecode

    own = sock is None
    s = raw_socket(family) if sock is None else sock
    try:
        for attempt in range(3):
            if info is None or attempt:
                info = table_info(family, name, s)
            # private: a shared anonymous mapping is shmem, whose pages MADV_DONTNEED
            # would not free (the memory cgroup would still count the whole blob)
            mm = mmap.mmap(-1, max(_GET_HEAD + info.size, 1),
                           flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            try:
                _fetch(s, info, mm)
                lay = xtdecode.layout(mm, _GET_HEAD, info.size, family, info.hooks,
                                      _HOOK_NAMES)
                _zero_counters(mm, info)
            except BlockingIOError:
                mm.close()
                continue
            except BaseException:
                mm.close()
                raise
            h = hashlib.sha256(struct.pack(f"=i{len(info.hooks)}I", family, *info.hooks))
            return DecodedLines(mm, info, lay, h)
        raise XtablesUnreadable(f"IPv{family} table {name} kept changing while it was read")
    finally:
        if own:
            s.close()


_HOOK_NAMES = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def _fetch(s: socket.socket, info: TableInfo, mm: mmap.mmap) -> None:
    """IPT_SO_GET_ENTRIES into `mm` (BlockingIOError: the table changed size meanwhile)."""
    struct.pack_into("=32sI", mm, 0, info.name.encode()[:31], info.size)
    cbuf = ctypes.c_char.from_buffer(mm)
    try:
        _getsockopt(s, info.family, SO_GET_ENTRIES, cbuf, _GET_HEAD + info.size)
    except OSError as e:
        if e.errno == errno.EAGAIN:
            raise BlockingIOError from None
        raise XtablesUnreadable(f"IPT_SO_GET_ENTRIES for IPv{info.family} table "
                                f"{info.name}: {e.strerror}") from None
    finally:
        del cbuf


def _zero_counters(mm: mmap.mmap, info: TableInfo) -> None:
    """Every entry's counters zeroed in place (walked by next_offset; layout() checked it)."""
    nxt, cnt = _NEXT[info.family], _COUNTERS[info.family]
    unpack = struct.Struct("=H").unpack_from
    off, end = _GET_HEAD, _GET_HEAD + info.size
    while off < end:
        mm[off + cnt:off + cnt + 16] = _ZERO
        off += unpack(mm, off + nxt)[0]
