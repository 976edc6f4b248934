"""TCP connects from inside another network namespace, without moving the agent there.

The connects run in a forked child that calls setns(2) on itself and writes its results
to a pipe: the agent's own process (and every thread it has) stays in its namespace
whatever happens in the child. The child connects non-blocking, a new connect every
1/rate seconds, so N targets cost about max(N/rate, timeout) rather than N * timeout.

Outcomes, as the kernel reports them to a connecting socket:
  open     the handshake completed
  refused  ECONNREFUSED: a TCP reset, or an ICMP port unreachable (REJECT's default)
  rejected EHOSTUNREACH/ENETUNREACH/EACCES/EPERM: an ICMP unreachable/prohibited, or a
           local rule in the pod's own namespace
  dropped  nothing came back within the timeout
  no-route the pod has no route to the address (nothing was sent)
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import selectors
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
MAX_INFLIGHT = 64
OUTCOMES = ("open", "refused", "rejected", "dropped", "no-route", "error")
_REJECTED = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM,
             errno.EHOSTDOWN}


@dataclass(frozen=True)
class Outcome:
    outcome: str  # one of OUTCOMES
    source: str = ""  # the pod's source address for this target ("" when unknown)
    detail: str = ""  # errno name, or the error text
    seconds: float = 0.0


class ProbeError(OSError):
    """The namespace could not be entered or the child failed (one line)."""


def classify(err: int) -> str:
    if err == 0:
        return "open"
    if err == errno.ECONNREFUSED:
        return "refused"
    if err in _REJECTED:
        return "rejected"
    if err == errno.ETIMEDOUT:
        return "dropped"
    return "error"


def _source_for(host: str, port: int) -> tuple[str, int]:
    """The source address the pod's routing picks (a UDP connect sends nothing)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))
        except OSError as e:
            return "", e.errno or errno.EINVAL
        return s.getsockname()[0], 0


def connect_all(targets: Sequence[tuple[str, int]], timeout: float,
                rate: float) -> list[Outcome]:
    """Connect to every (host, port) from the current namespace, paced at `rate`/s."""
    results: list[Outcome | None] = [None] * len(targets)
    sel = selectors.DefaultSelector()
    pending: dict[int, tuple[socket.socket, float, str]] = {}  # index -> sock, start, src
    interval = 1.0 / rate if rate > 0 else 0.0
    next_start = time.monotonic()
    i = 0

    def finish(idx: int, err: int, src: str, started: float, detail: str = "") -> None:
        kind = classify(err)
        name = errno.errorcode.get(err, str(err)) if err else ""
        results[idx] = Outcome(kind, src, detail or name, round(time.monotonic() - started, 3))

    while i < len(targets) or pending:
        now = time.monotonic()
        while i < len(targets) and now >= next_start and len(pending) < MAX_INFLIGHT:
            host, port = targets[i]
            src, rerr = _source_for(host, port)
            if rerr:
                results[i] = Outcome("no-route", "", errno.errorcode.get(rerr, str(rerr)))
            else:
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                s = socket.socket(fam, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex((host, port))
                if err == errno.EINPROGRESS:
                    pending[i] = (s, now, src)
                    sel.register(s, selectors.EVENT_WRITE, i)
                else:
                    finish(i, err, src, now)
                    s.close()
            next_start += interval
            i += 1
        deadlines = [start + timeout for _s, start, _src in pending.values()]
        wake = min(deadlines) if deadlines else next_start
        if i < len(targets):
            wake = min(wake, next_start)
        for key, _ev in sel.select(max(0.0, wake - time.monotonic())):
            idx = key.data
            s, start, src = pending.pop(idx)
            sel.unregister(s)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                src = s.getsockname()[0]
            finish(idx, err, src, start)
            s.close()
        now = time.monotonic()
        for idx, (s, start, src) in list(pending.items()):
            if now >= start + timeout:
                del pending[idx]
                sel.unregister(s)
                s.close()
                results[idx] = Outcome("dropped", src, "timeout",
                                       round(now - start, 3))
    sel.close()
    return [r if r is not None else Outcome("error", "", "not run") for r in results]


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")
    finally:
        os.close(fd)


def probe_in(ns_path: str, targets: Sequence[tuple[str, int]], timeout: float,
             rate: float) -> list[Outcome]:
    """connect_all() inside the network namespace at `ns_path` (a /proc/PID/ns/net or
    /run/netns/NAME file), in a forked child. Raises ProbeError."""
    if not targets:
        return []
    try:  # fail in the parent, with a clear reason, when the file cannot even be opened
        os.close(os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as e:
        raise ProbeError(e.errno, f"{ns_path}: {e.strerror}") from None
    budget = len(targets) / max(rate, 0.001) + timeout + 10
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(r)
            _setns(ns_path)
            out = {"results": [o.__dict__ for o in connect_all(targets, timeout, rate)]}
        except BaseException as e:
            out, code = {"error": str(e) or type(e).__name__}, 1
        try:
            data = json.dumps(out).encode()
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(code)
    os.close(w)
    chunks, deadline = [], time.monotonic() + budget
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(r, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    os.kill(pid, signal.SIGKILL)
                    raise ProbeError(errno.ETIMEDOUT, f"{ns_path}: probe took over "
                                                      f"{budget:.0f}s; killed")
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    try:
        out = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        raise ProbeError(errno.EIO, f"{ns_path}: the probe child died") from None
    if "error" in out or "results" not in out:
        raise ProbeError(errno.EIO, f"{ns_path}: {out.get('error', 'no result')}")
    return [Outcome(**o) for o in out["results"]]
