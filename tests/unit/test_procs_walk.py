"""Socket -> process attribution across daemon cycles: remembered owners are checked with one
readlink, kernel-owned sockets (no fd anywhere) stop forcing a walk of every process once a
complete walk has shown they have no owner, small fd tables are read first, and process
details read from /proc agree with psutil's."""

from __future__ import annotations

import os

import psutil

from nodeward.collect import procs
from nodeward.collect.procs import OwnerMemo, attribute, inode_owners, process_info


def fake_proc(tmp_path, tables: dict[int, dict[str, int]]):
    """/proc/PID/fd/N -> socket:[INODE] symlinks (other fds point at files)."""
    for pid, fds in tables.items():
        d = tmp_path / str(pid) / "fd"
        d.mkdir(parents=True)
        for name, inode in fds.items():
            os.symlink(f"socket:[{inode}]" if inode else "/dev/null", d / name)
    return str(tmp_path)


class CountingReadlink:
    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        real = os.readlink

        def counted(*a, **kw):
            self.calls += 1
            return real(*a, **kw)

        monkeypatch.setattr(procs.os, "readlink", counted)


def test_kernel_sockets_no_longer_defeat_the_early_stop(tmp_path, monkeypatch) -> None:
    # pid 10: a proxy with 500 connections; pid 20: a small server; inode 999 (a VXLAN
    # socket) is in no process at all
    big = {str(i): 5000 + i for i in range(500)}
    proc = fake_proc(tmp_path, {10: big, 20: {"3": 111, "4": 0}})
    memo = OwnerMemo()
    owners, denied = inode_owners([111, 999], proc, memo)
    assert owners == {111: 20} and denied.denied == 0
    assert memo.fdless == {999} and memo.full_walks == 1  # had to read everything once
    # next cycle: a new socket in the small process; 999 is not waited for
    os.symlink("socket:[112]", tmp_path / "20" / "fd" / "5")
    counter = CountingReadlink(monkeypatch)
    owners, _ = inode_owners([111, 112, 999], proc, memo)
    assert owners == {111: 20, 112: 20}
    assert memo.verified == 1 and memo.full_walks == 1
    assert counter.calls < 10  # the 500-fd table was never read
    # steady state: every owner confirmed where it was, no walk at all
    counter.calls = 0
    monkeypatch.setattr(procs, "_walk", lambda *a: (_ for _ in ()).throw(AssertionError))
    assert inode_owners([111, 112, 999], proc, memo)[0] == {111: 20, 112: 20}
    assert counter.calls == 2 and memo.verified == 2


def test_moved_socket_is_found_again(tmp_path) -> None:
    proc = fake_proc(tmp_path, {10: {"3": 111}, 20: {"7": 0}})
    memo = OwnerMemo()
    assert inode_owners([111], proc, memo)[0] == {111: 10}
    os.remove(tmp_path / "10" / "fd" / "3")  # closed in 10, now held by 20 (fd passing)
    os.remove(tmp_path / "20" / "fd" / "7")
    os.symlink("socket:[111]", tmp_path / "20" / "fd" / "7")
    assert inode_owners([111], proc, memo)[0] == {111: 20} and memo.verified == 0


def test_without_memo_same_answer(tmp_path) -> None:
    proc = fake_proc(tmp_path, {10: {"3": 111, "4": 112}, 20: {"3": 113}})
    assert inode_owners([111, 112, 113, 0], proc)[0] == {111: 10, 112: 10, 113: 20}


def test_process_info_matches_psutil() -> None:
    import subprocess
    import sys

    # a child whose comm is truncated (15 characters) and whose argv[0] extends it
    code = ("import time; open('/proc/self/comm', 'w').write('a-rather-long-process-name');"
            " print('ready', flush=True); time.sleep(30)")
    child = subprocess.Popen(["a-rather-long-process-name", "-c", code],
                             executable=sys.executable, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert process_info(child.pid).name == "a-rather-long-process-name"
        for pid in (os.getpid(), child.pid):
            _compare(pid)
    finally:
        child.kill()
        child.wait()
    assert process_info(2**22 + 7) is None


def _compare(pid: int) -> None:
    mine = process_info(pid)
    p = psutil.Process(pid)
    assert mine is not None and mine.name == p.name() and mine.comm
    assert mine.exe == p.exe() and mine.cmdline == tuple(p.cmdline())
    assert mine.uid == p.uids().real


def test_attribute_keeps_process_details_while_the_process_lives() -> None:
    memo = OwnerMemo()
    calls = []
    real = procs.process_info

    def counted(pid, proc="/proc"):
        calls.append(pid)
        return real(pid, proc)

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        inode = os.fstat(s.fileno()).st_ino
        procs.process_info = counted
        try:
            first, _, _ = attribute([inode], memo)
            second, _, _ = attribute([inode], memo)
        finally:
            procs.process_info = real
    assert first[inode].pid == os.getpid() and second[inode] is first[inode]
    assert calls == [os.getpid()]


def test_exec_is_noticed_by_the_process_memo() -> None:
    """An exec keeps pid and start time; the memo still reads the process again (comm)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    code = ("import os, socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
            "s.listen(); os.set_inheritable(s.fileno(), True); print(s.fileno(), "
            "os.fstat(s.fileno()).st_ino, flush=True); sys.stdin.readline(); "
            "os.execv('/bin/sleep', ['sleep', '30'])")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        _fd, inode = map(int, child.stdout.readline().split())
        memo = OwnerMemo()
        before, _, _ = attribute([inode], memo)
        assert before[inode].pid == child.pid and before[inode].comm.startswith("python")
        child.stdin.write("\n")
        child.stdin.flush()
        for _ in range(100):
            if Path(f"/proc/{child.pid}/comm").read_text().strip() == "sleep":
                break
            time.sleep(0.02)
        after, _, _ = attribute([inode], memo)
        assert after[inode].pid == child.pid and after[inode].name == "sleep"
    finally:
        child.kill()
        child.wait()
