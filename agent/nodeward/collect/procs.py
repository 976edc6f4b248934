"""Attribute sockets to processes by socket inode.

The inode -> pid map is built by walking /proc/PID/fd, the only place the kernel exposes
socket ownership. The walk stops as soon as every wanted inode is found; it goes through
processes of this network namespace first (where its sockets live) and, within each group,
small processes (few fds) before large ones, so the fd tables of a proxy holding 20,000
connections are read last if at all. Reading other users' fd directories needs
CAP_DAC_READ_SEARCH (listing another user's fd directory) and reading its links needs
CAP_SYS_PTRACE (the kernel's ptrace access check); each refusal is counted by kind
(AttributionGaps), never swallowed: the checks turn sockets left unattributed that way
into finding NW109.

A daemon keeps an OwnerMemo across cycles: each socket's pid and fd from the last cycle are
checked with one readlink (the socket is still there: done), and sockets a complete walk
found in no process at all (kernel-owned tunnel sockets: VXLAN, WireGuard, Geneve) are not
waited for again, so they no longer force a walk of every process every cycle. Process
details are read from /proc directly (name first: comm, then argv[0] only when comm is
truncated) and kept per (pid, start time, comm) while the process lives unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from ..model import AttributionGaps, ProcessInfo
from ..redact import redact_argv

_CONTAINER_RE = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")
_POD_RE = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


class OwnerMemo:
    """What the last cycle's walk learnt, for the next one (one per daemon)."""

    __slots__ = ("fdless", "full_walks", "infos", "owners", "verified")

    def __init__(self) -> None:
        self.owners: dict[int, tuple[int, str]] = {}  # inode -> (pid, fd name)
        self.fdless: set[int] = set()  # inodes a complete walk found in no process
        self.infos: dict[tuple[int, str], ProcessInfo | None] = {}  # (pid, start) -> info
        self.verified = 0  # sockets confirmed by their remembered fd (last cycle)
        self.full_walks = 0


def _netns_of(proc: str, pid: int | str) -> int:
    try:
        return os.stat(f"{proc}/{pid}/ns/net").st_ino
    except OSError:
        return 0


def inode_owners(wanted: Iterable[int], proc: str = "/proc",
                 memo: OwnerMemo | None = None) -> tuple[dict[int, int], AttributionGaps]:
    """Map each wanted socket inode to a pid holding it (the first found; with a memo, the
    one found before while it still holds it).

    Returns (map, the processes whose fds could not be read, by refusal).
    """
    remaining = {i for i in wanted if i}
    owners: dict[int, int] = {}
    fds: dict[int, tuple[int, str]] = {}
    denied = links_denied = 0
    readlink = os.readlink
    if memo is not None:
        memo.verified = 0
        by_pid: dict[int, list[tuple[int, str]]] = {}
        for inode, (pid, fd) in memo.owners.items():
            if inode in remaining:
                by_pid.setdefault(pid, []).append((inode, fd))
        for pid, held in by_pid.items():
            try:  # one directory open per process, then one readlink per socket in it
                dfd = os.open(f"{proc}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue  # gone: its sockets are looked for below
            try:
                for inode, fd in held:
                    try:
                        ok = readlink(fd, dir_fd=dfd) == f"socket:[{inode}]"
                    except OSError:
                        ok = False
                    if ok:
                        owners[inode] = pid
                        fds[inode] = (pid, fd)
                        remaining.discard(inode)
                memo.verified += sum(1 for inode, _ in held if inode in fds)
            finally:
                os.close(dfd)
    # known fd-less (kernel) sockets are not waited for: the walk can stop without them
    pending = remaining - memo.fdless if memo is not None else set(remaining)
    walked_all = False
    if pending:
        own = _netns_of(proc, "self")
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
        ns = {p: _netns_of(proc, p) for p in pids}
        for group in ([p for p in pids if ns[p] == own], [p for p in pids if ns[p] != own]):
            d, ld = _walk(proc, group, remaining, pending, owners, fds)
            denied, links_denied = denied + d, links_denied + ld
            if not pending:
                break
        else:
            walked_all = True
    if memo is not None:
        memo.owners = fds
        if walked_all:  # every process was read: what is left has no fd anywhere
            memo.fdless = set(remaining)
            memo.full_walks += 1
        else:
            memo.fdless &= remaining
    return owners, AttributionGaps(fd_dir_denied=denied, fd_link_denied=links_denied,
                                   unresolved=len(remaining))


def _walk(proc: str, pids: list[int], remaining: set[int], pending: set[int],
          owners: dict[int, int], fds: dict[int, tuple[int, str]]) -> tuple[int, int]:
    """Read the fds of `pids`, small fd tables first, until `pending` is empty. Returns
    (processes whose fd directory could not be listed, processes whose fd links were
    refused)."""
    readlink = os.readlink
    sizes: list[tuple[int, int, list[str]]] = []
    denied = links_denied = 0
    for pid in pids:
        try:
            names = os.listdir(f"{proc}/{pid}/fd")
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue  # exited meanwhile, or a kernel thread
        if names:
            sizes.append((len(names), pid, names))
    sizes.sort()
    for _size, pid, names in sizes:
        # readlink relative to an open fd directory: the kernel walks one path component
        # per fd instead of four, which halves the cost of the walk.
        try:
            dfd = os.open(f"{proc}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue  # exited since
        try:
            for name in names:
                try:
                    target = readlink(name, dir_fd=dfd)
                except PermissionError:  # ptrace access check: the rest will fail too
                    links_denied += 1
                    break
                except OSError:
                    continue
                if target[:8] == "socket:[":  # "socket:[12345]"
                    inode = int(target[8:-1])
                    if inode in remaining:
                        owners[inode] = pid
                        fds[inode] = (pid, name)
                        remaining.discard(inode)
                        pending.discard(inode)
        finally:
            os.close(dfd)
        if not pending:
            break
    return denied, links_denied


def container_ids(cgroup_text: str) -> tuple[str, str, str]:
    """(cgroup path, container id, pod uid) from /proc/PID/cgroup text; pure."""
    path = ""
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[0] == "0" or "name=systemd" in parts[1] or not path):
            path = parts[2]
            if parts[0] == "0":
                break
    cid = ""
    for comp in reversed(path.split("/")):
        m = _CONTAINER_RE.search(comp)
        if m:
            cid = m.group(1)
            break
    pm = _POD_RE.search(path)
    pod = pm.group(1).replace("_", "-") if pm else ""
    return path, cid, pod


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _identity(proc: str, pid: int) -> str | None:
    """Start time (field 22 of /proc/PID/stat, in ticks) and comm from one read: with the
    pid, what survives pid reuse, and exec too (an exec keeps the pid and the start time
    but renames the process)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    head, _, tail = stat.rpartition(b")")
    fields = tail.split()
    if len(fields) < 20:
        return None
    return f"{fields[19].decode()}:{head.partition(b'(')[2].decode('utf-8', 'replace')}"


def process_info(pid: int, proc: str = "/proc") -> ProcessInfo | None:
    """Details of one process, read from /proc (no psutil: a third of its cost); None if it
    vanished. Missing fields stay empty, because a partially attributed socket is still worth
    reporting. The name comes first: comm, or argv[0]'s basename when comm is truncated
    (15 characters) and argv[0] extends it, as psutil names processes."""
    base = f"{proc}/{pid}"
    try:
        comm = _read(f"{base}/comm").rstrip("\n")
    except OSError:
        return None
    try:
        raw = _read(f"{base}/cmdline")
        cmdline = redact_argv(tuple(raw.split("\0")[:-1] if raw.endswith("\0")
                                    else raw.split("\0"))) if raw else ()
    except OSError:
        cmdline = ()
    name = comm
    if len(comm) >= 15 and cmdline:
        ext = os.path.basename(cmdline[0])
        if ext.startswith(comm):
            name = ext
    try:
        exe = os.readlink(f"{base}/exe")
    except OSError:
        exe = ""
    uid = None
    try:
        for line in _read(f"{base}/status").splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
                break
    except (OSError, ValueError, IndexError):
        uid = None
    try:
        cgroup, cid, pod = container_ids(_read(f"{base}/cgroup"))
    except OSError:
        cgroup, cid, pod = "", "", ""
    return ProcessInfo(pid=pid, name=name, comm=comm, exe=exe, cmdline=cmdline, uid=uid,
                       cgroup=cgroup, container_id=cid, pod_uid=pod)


def attribute(inodes: Iterable[int], memo: OwnerMemo | None = None,
              proc: str = "/proc"
              ) -> tuple[dict[int, ProcessInfo], list[str], AttributionGaps]:
    """inode -> ProcessInfo for every socket inode we can attribute, notes, and what the
    walk was refused. With a memo (a daemon), owners and process details carry over from
    the last cycle."""
    owners, gaps = inode_owners(inodes, proc, memo)
    infos: dict[int, ProcessInfo] = {}
    by_pid: dict[int, ProcessInfo | None] = {}
    kept: dict[tuple[int, str], ProcessInfo | None] = {}
    for inode, pid in owners.items():
        if pid not in by_pid:
            if memo is None:
                by_pid[pid] = process_info(pid, proc)
            else:
                ident = _identity(proc, pid)
                key = (pid, ident or "")
                info = memo.infos[key] if ident and key in memo.infos else \
                    process_info(pid, proc)
                by_pid[pid] = kept[key] = info
        info = by_pid[pid]
        if info is not None:
            infos[inode] = info
    if memo is not None:
        memo.infos = kept  # processes gone (or without sockets now) drop out
    notes = []
    if gaps.denied:
        notes.append(f"could not read the fds of {gaps.denied} processes "
                     f"({gaps.missing_text()}): {gaps.unresolved} sockets are unattributed")
    return infos, notes, gaps
