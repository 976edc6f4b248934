"""Attribute sockets to processes by socket inode.

The inode -> pid map is built once per scan by walking /proc/PID/fd, the only place the
kernel exposes socket ownership. Pids are walked in ascending order and the walk stops as
soon as every wanted inode is found, so a socket shared by a parent and its forked workers
is attributed to the parent (the lowest pid). Listing the fd directory of another user's
process needs CAP_DAC_READ_SEARCH; reading its links (readlink /proc/PID/fd/N, the kernel's
ptrace access check) needs CAP_SYS_PTRACE when the process is another user's or holds
capabilities we lack. Each refusal is counted by kind (AttributionGaps), never swallowed:
the checks turn sockets left unattributed that way into finding NW109.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import psutil

from ..model import AttributionGaps, ProcessInfo

_CONTAINER_RE = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")
_POD_RE = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def inode_owners(wanted: Iterable[int],
                 proc: str = "/proc") -> tuple[dict[int, int], AttributionGaps]:
    """Map each wanted socket inode to the lowest pid holding it.

    Returns (map, the processes whose fds could not be read, by refusal).
    """
    remaining = {i for i in wanted if i}
    owners: dict[int, int] = {}
    denied = links_denied = 0
    if not remaining:
        return owners, AttributionGaps()
    pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    readlink = os.readlink
    for pid in pids:
        # readlink relative to an open fd directory: the kernel walks one path component
        # per fd instead of four, which halves the cost of the walk.
        try:
            dfd = os.open(f"{proc}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue  # exited meanwhile, or a kernel thread
        try:
            for name in os.listdir(dfd):
                try:
                    target = readlink(name, dir_fd=dfd)
                except PermissionError:
                    # The ptrace check is per process: every other link is refused too.
                    links_denied += 1
                    break
                except OSError:
                    continue  # fd closed meanwhile
                if target[:8] == "socket:[":  # "socket:[12345]"
                    inode = int(target[8:-1])
                    if inode in remaining:
                        owners[inode] = pid
                        remaining.discard(inode)
        except PermissionError:
            denied += 1
        finally:
            os.close(dfd)
        if not remaining:
            break
    return owners, AttributionGaps(fd_dir_denied=denied, fd_link_denied=links_denied,
                                   unresolved=len(remaining))


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


def process_info(pid: int, proc: str = "/proc") -> ProcessInfo | None:
    """Details of one process; None if it vanished. Missing fields stay empty, because a
    partially attributed socket is still worth reporting."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            name = p.name()
            try:
                exe = p.exe()
            except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
                exe = ""
            try:
                cmdline = tuple(p.cmdline())
            except (psutil.AccessDenied, psutil.ZombieProcess):
                cmdline = ()
            try:
                uid = p.uids().real
            except psutil.AccessDenied:
                uid = None
    except psutil.NoSuchProcess:
        return None
    try:
        with open(f"{proc}/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = name
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            cgroup, cid, pod = container_ids(f.read())
    except OSError:
        cgroup, cid, pod = "", "", ""
    return ProcessInfo(pid=pid, name=name, comm=comm, exe=exe, cmdline=cmdline, uid=uid,
                       cgroup=cgroup, container_id=cid, pod_uid=pod)


def attribute(inodes: Iterable[int]
              ) -> tuple[dict[int, ProcessInfo], list[str], AttributionGaps]:
    """inode -> ProcessInfo for every socket inode we can attribute, notes, and what the
    walk was refused."""
    owners, gaps = inode_owners(inodes)
    infos: dict[int, ProcessInfo] = {}
    by_pid: dict[int, ProcessInfo | None] = {}
    for inode, pid in owners.items():
        if pid not in by_pid:
            by_pid[pid] = process_info(pid)
        info = by_pid[pid]
        if info is not None:
            infos[inode] = info
    notes = []
    if gaps.denied:
        notes.append(f"could not read the fds of {gaps.denied} processes "
                     f"({gaps.missing_text()}): {gaps.unresolved} sockets are unattributed")
    return infos, notes, gaps
