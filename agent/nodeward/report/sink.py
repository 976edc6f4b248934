"""Deliver finding events to a central HTTP collector, at least once, through outages.

Events go to a bounded on-disk spool first (one file per batch, written with rename so a
crash never leaves half a batch), and a supervised sender thread POSTs the oldest batch until
the collector takes it. Every event carries an `event_id` that stays the same across
retries, so the collector deduplicates by it. The spool never grows past `spool_max_bytes`:
when it would, the oldest batches are dropped, counted and logged.

Every way an event can be lost is counted (`dropped`) and logged, so that at any moment
`produced + recovered == delivered + dropped + backlog`: a spool bound, a full disk or any
I/O error while spooling, a corrupt or foreign spool file (quarantined), a 4xx rejection.
What the sender refuses to do, because each one lost or leaked events before:

- follow a redirect (a 302 answered by a GET's 200 acked batches nobody received): a 3xx is
  logged and retried;
- wait on a collector forever: a watchdog shuts the socket down at `timeout` for the whole
  request, however slowly the collector trickles its answer;
- follow a symlink or read a file it does not own in the spool dir (O_NOFOLLOW, fstat);
- die: any exception is logged in one line and the loop restarts; a stalled sender makes
  /healthz unhealthy (see `HttpSink.health`);
- log a credential: URLs are logged without userinfo and query, the token never.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import json
import os
import random
import re
import socket
import ssl
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from ..daemon_settings import SinkSettings
from ..redact import scrub
from ..settings_load import SettingsError, read_bytes

RETRY_STATUS = {401, 403, 408, 425, 429}  # maybe transient: token rotation, rate limit
BATCH_NAME = re.compile(r"^\d{12}\.jsonl$")
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 b64token
QUARANTINE = "quarantine"
QUARANTINE_KEEP = 20  # quarantined files kept for inspection; older ones are deleted
MAX_REPLY = 64 * 1024  # bytes of a collector's reply we read at most


class SpoolError(Exception):
    """The spool cannot be used (insecure directory, or unusable)."""


def redact_url(url: str) -> str:
    """scheme://host[:port]/path — without userinfo, query and fragment, for logs."""
    try:
        p = urlsplit(url)
        host = p.hostname or ""
        port = f":{p.port}" if p.port else ""
    except ValueError:
        return "<unparseable url>"
    if ":" in host:
        host = f"[{host}]"
    user = "***@" if p.username or p.password else ""
    query = "?***" if p.query else ""
    return f"{p.scheme}://{user}{host}{port}{p.path}{query}"


def _dir_problem(st: os.stat_result) -> str:
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by the agent (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return ""


class Spool:
    """A directory of `<seq>.jsonl` batches, oldest first. Not thread-safe by itself: the
    sink serialises access with its lock.

    Every file operation goes through a descriptor of the directory (opened with
    O_NOFOLLOW, its owner and mode checked) and never follows a symlink: a spool dir that
    another user can write to could otherwise make root overwrite or send any file."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.path = directory
        self.max_bytes = max_bytes
        os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            self.dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                  | os.O_CLOEXEC)
        except OSError as e:
            raise SpoolError(f"spool_dir {directory}: {e.strerror}") from None
        problem = _dir_problem(os.fstat(self.dir_fd))
        if problem:
            os.close(self.dir_fd)
            raise SpoolError(f"spool_dir {directory}: {problem}")
        self.lost = 0  # events of batches quarantined by the last oldest()
        self.quarantined: list[str] = []  # names moved aside at start or when unreadable
        self.recovered_dropped = 0  # events of quarantined batch files (counted as dropped)
        self._files: dict[str, tuple[int, int]] = {}  # name -> (bytes, events)
        for name in sorted(os.listdir(self.dir_fd)):
            if name == QUARANTINE:
                continue
            if name.endswith(".tmp"):  # a crash mid-write: that batch was never acked
                self._unlink(name)
                continue
            try:
                st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            if BATCH_NAME.match(name) and self._own_regular(st):
                lines = self._count_lines(name)
                if lines is not None:
                    self._files[name] = (st.st_size, lines)
                    continue
            self.recovered_dropped += self.quarantine(name)
        self._seq = max((int(n[:12]) for n in self._files), default=0)
        self.recovered = self.events

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def _own_regular(st: os.stat_result) -> bool:
        return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.dir_fd)

    def _open_read(self, name: str) -> bytes:
        """The file's bytes, refusing symlinks, foreign or linked files and oversized ones."""
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=self.dir_fd)
        try:
            st = os.fstat(fd)
            if not self._own_regular(st):
                raise OSError(errno.EPERM, "not a regular file owned by the agent")
            if st.st_size > self.max_bytes:
                raise OSError(errno.EFBIG, "larger than spool_max_bytes")
            chunks = []
            while data := os.read(fd, 1 << 20):
                chunks.append(data)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _count_lines(self, name: str) -> int | None:
        try:
            return len(_parse(self._open_read(name)))
        except (OSError, ValueError):
            return None

    def quarantine(self, name: str) -> int:
        """Move `name` aside into quarantine/ (renaming never follows a symlink); returns
        how many events it held if it was one of our batches, else 0."""
        events = self._files.pop(name, (0, 0))[1]
        with contextlib.suppress(FileExistsError):
            os.mkdir(QUARANTINE, 0o700, dir_fd=self.dir_fd)
        try:
            qfd = os.open(QUARANTINE, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                          | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except OSError:
            self._unlink(name)  # cannot keep it aside: at least do not trip on it again
            self.quarantined.append(name)
            return events
        try:
            os.rename(name, f"{time.time_ns()}-{name}", src_dir_fd=self.dir_fd,
                      dst_dir_fd=qfd)
            kept = sorted(os.listdir(qfd))
            for old in kept[:-QUARANTINE_KEEP]:
                with contextlib.suppress(IsADirectoryError):
                    os.unlink(old, dir_fd=qfd)
        except OSError:
            self._unlink(name)
        finally:
            os.close(qfd)
        self.quarantined.append(name)
        return events

    # -- the spool ------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return sum(b for b, _ in self._files.values())

    @property
    def events(self) -> int:
        return sum(n for _, n in self._files.values())

    def put(self, events: list[dict[str, Any]]) -> int:
        """Append one batch; returns how many older events were dropped to stay bounded.
        Raises OSError (after removing its temp file) when the batch cannot be written."""
        data = "".join(json.dumps(e, default=str, separators=(",", ":")) + "\n"
                       for e in events).encode()
        dropped = 0
        while self._files and self.bytes + len(data) > self.max_bytes:
            oldest = min(self._files)
            dropped += self._files.pop(oldest)[1]
            self._unlink(oldest)
        if len(data) > self.max_bytes:
            return dropped + len(events)  # a batch larger than the whole spool
        self._seq += 1
        name = f"{self._seq:012d}.jsonl"
        tmp = f"{self._seq:012d}.tmp"
        self._unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=self.dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self._unlink(tmp)
            raise
        os.close(fd)
        try:
            os.rename(tmp, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except BaseException:
            self._unlink(tmp)
            raise
        self._files[name] = (len(data), len(events))
        return dropped

    def oldest(self) -> tuple[str, list[dict[str, Any]]] | None:
        """The oldest readable batch; unreadable or corrupt ones are quarantined first
        (their events counted in `lost`)."""
        self.lost = 0
        while self._files:
            name = min(self._files)
            try:
                return name, _parse(self._open_read(name))
            except (OSError, ValueError):
                self.lost += self.quarantine(name)
        return None

    def ack(self, name: str) -> None:
        if self._files.pop(name, None) is not None:
            self._unlink(name)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.dir_fd)


def _parse(data: bytes) -> list[dict[str, Any]]:
    """A batch file: one JSON object per line, the last line complete."""
    if data and not data.endswith(b"\n"):
        raise ValueError("truncated batch")
    out = []
    for line in data.decode("utf-8").splitlines():
        if line:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not an event object")
            out.append(obj)
    return out


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # path + query, as sent
    basic: str  # "Basic ..." from URL userinfo, or ""


def _target(url: str) -> _Target:
    p = urlsplit(url)
    path = (p.path or "/") + (f"?{p.query}" if p.query else "")
    basic = ""
    if p.username is not None:
        cred = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
        basic = "Basic " + base64.b64encode(cred).decode()
    default = 443 if p.scheme == "https" else 80
    return _Target(p.scheme, p.hostname or "", p.port or default, path, basic)


class HttpSink:
    def __init__(self, settings: SinkSettings, node: str, log: Any,
                 on_change: Callable[[int, int], None] = lambda backlog, dropped: None,
                 ) -> None:
        self.settings = settings
        self.node = node
        self.log = log
        self.on_change = on_change  # (backlog events, newly dropped) for metrics
        self.url = redact_url(settings.url)
        self.target = _target(settings.url)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="nodeward-sink",
                                        daemon=True)
        self.produced = 0
        self.delivered = 0
        self.dropped = 0
        self.crashes = 0
        self.write_error = ""  # the last spool write failed (until one succeeds)
        self._inflight = ""  # the batch the sender is posting (under the lock)
        self.last_progress = time.monotonic()  # last ack, or last moment nothing was due
        self.spool: Spool | None
        try:
            self.spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        except (SpoolError, OSError) as e:
            self.spool = None
            self.spool_error = str(e) if isinstance(e, SpoolError) else \
                f"spool_dir {settings.spool_dir}: {e.strerror}"
            log.error("sink_spool_unusable", error=self.spool_error,
                      hint="the spool dir must be a directory owned by the agent, mode 0700")
        else:
            self.spool_error = ""
            self.recovered = self.spool.recovered
            for name in self.spool.quarantined:
                log.error("sink_spool_quarantined", file=name, reason="not a readable batch")
            self._count_dropped(self.spool.recovered_dropped)
        if self.spool is None:
            self.recovered = 0
        if self.target.scheme == "http" and (settings.token_file or self.target.basic):
            log.warning("sink_cleartext_credentials", url=self.url,
                        hint="the token is sent unencrypted over http://; use https://")

    @property
    def backlog(self) -> int:
        return self.spool.events if self.spool is not None else 0

    def start(self) -> None:
        self._thread.start()

    def _count_dropped(self, n: int) -> None:
        if n:
            self.dropped += n
            self.on_change(self.backlog, n)

    def submit(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        size = self.settings.batch_size
        dropped = failed = 0
        error = ""
        with self._lock:
            self.produced += len(events)
            for i in range(0, len(events), size):
                batch = [{"event_id": uuid.uuid4().hex, **scrub(e)}
                         for e in events[i:i + size]]
                if self.spool is None:
                    failed += len(batch)
                    error = self.spool_error
                    continue
                try:
                    if self._spool_dir_gone():
                        dropped += self._reopen_spool()
                    dropped += self.spool.put(batch)
                    self.write_error = ""
                except OSError as e:
                    failed += len(batch)
                    error = f"{errno.errorcode.get(e.errno or 0, 'EIO')}: {e.strerror}"
                    self.write_error = error
            self.dropped += dropped + failed
            backlog = self.backlog
        if dropped:
            self.log.error("sink_spool_full", dropped_events=dropped,
                           spool_max_bytes=self.settings.spool_max_bytes)
        if failed:
            self.log.error("sink_spool_write_failed", dropped_events=failed, error=error,
                           spool_dir=self.settings.spool_dir)
        self.on_change(backlog, dropped + failed)
        self._wake.set()

    def _spool_dir_gone(self) -> bool:
        """The directory was removed (or replaced) under us: st_nlink of a deleted dir is 0."""
        assert self.spool is not None
        try:
            return os.fstat(self.spool.dir_fd).st_nlink == 0
        except OSError:
            return True

    def _reopen_spool(self) -> int:
        """Open a fresh spool at `spool_dir`; the batches that went with the old directory
        are counted as dropped. Raises OSError/SpoolError when it cannot be recreated."""
        assert self.spool is not None
        # The batch being sent is counted when its answer comes (see _run).
        inflight = self.spool._files.get(self._inflight, (0, 0))[1]
        lost = self.spool.events - inflight
        try:
            fresh = Spool(self.settings.spool_dir, self.settings.spool_max_bytes)
        except SpoolError as e:
            raise OSError(errno.EPERM, str(e)) from None
        self.spool = fresh
        self.recovered += fresh.recovered
        self.log.error("sink_spool_recreated", spool_dir=self.settings.spool_dir,
                       dropped_events=lost, reason="the spool directory was removed")
        return lost

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def sender_alive(self) -> bool:
        return self._thread.ident is None or self._thread.is_alive() or self._stop.is_set()

    def health(self) -> tuple[bool, str]:
        """Unhealthy when the sender is dead or nothing was delivered for `stall_after`
        seconds while events wait (a collector that is down, redirects, rejects the token
        or trickles: the operator must see it, not only a growing backlog)."""
        if self.spool is None:
            return False, f"sink: {self.spool_error}"
        if not self.sender_alive():
            return False, "sink: sender thread is not running"
        if self.write_error:
            return False, f"sink: cannot spool new events ({self.write_error}), dropping them"
        if self.backlog and time.monotonic() - self.last_progress > self.settings.stall_after:
            return False, (f"sink: delivery stalled for "
                           f"{time.monotonic() - self.last_progress:.0f}s, "
                           f"{self.backlog} events waiting")
        return True, "ok"

    # -- sending ----------------------------------------------------------------------------
    def _token(self) -> str | None:
        """The bearer token, "" for none, None when unusable (already logged)."""
        path = self.settings.token_file
        if not path:
            return ""
        try:  # a regular file (a FIFO would block the sender), at most 16 KiB
            raw = read_bytes(path, f"token_file {path}", max_bytes=16 * 1024)
        except (OSError, SettingsError) as e:
            why = e.strerror if isinstance(e, OSError) else str(e).rpartition(": ")[2]
            self.log.error("sink_token_unreadable", path=path, error=why)
            return None
        token = raw.strip()
        if not token or not TOKEN_CHARS.match(token.decode("latin-1")):
            self.log.error("sink_token_invalid", path=path,
                           reason="empty, too long or characters not allowed in a bearer "
                                  "token (RFC 6750)")
            return None
        return token.decode("ascii")

    def _connection(self) -> http.client.HTTPConnection:
        t, timeout = self.target, self.settings.timeout
        if t.scheme == "https":
            ctx = ssl.create_default_context(cafile=self.settings.ca_file or None)
            return http.client.HTTPSConnection(t.host, t.port, timeout=timeout, context=ctx)
        return http.client.HTTPConnection(t.host, t.port, timeout=timeout)

    def _request(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        """One POST under a whole-request deadline: a watchdog shuts the socket down when
        `timeout` has passed, whatever the collector is doing."""
        conn = self._connection()
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(self.settings.timeout, kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request("POST", self.target.path, body=body, headers=headers)
            r = conn.getresponse()
            reply = r.read(MAX_REPLY)
            return r.status, r.getheader("Location") or "", reply
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set():
                raise TimeoutError(f"no complete answer within {self.settings.timeout:g}s") \
                    from None
            raise e
        finally:
            watchdog.cancel()
            conn.close()

    def _post(self, events: list[dict[str, Any]]) -> str:
        """'ok', 'retry' or 'drop'."""
        headers = {"Content-Type": "application/json", "User-Agent": "nodeward"}
        token = self._token()
        if token is None:
            return "retry"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif self.target.basic:
            headers["Authorization"] = self.target.basic
        body = json.dumps({"node": self.node, "events": events}, default=str,
                          separators=(",", ":")).encode()
        try:
            status, location, reply = self._request(body, headers)
        except (OSError, http.client.HTTPException, ssl.SSLError, ValueError) as e:
            detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self.log.warning("sink_unreachable", url=self.url, error=type(e).__name__,
                             detail=detail[:200])
            return "retry"
        if 200 <= status < 300:
            return "ok"
        if 300 <= status < 400:
            self.log.error("sink_redirect_refused", url=self.url, status=status,
                           location=redact_url(location) if location else "",
                           hint="redirects are not followed: set daemon.sink.url to the "
                                "final URL", retry=True)
            return "retry"
        if status >= 500 or status in RETRY_STATUS:
            self.log.warning("sink_rejected", url=self.url, status=status, retry=True)
            return "retry"
        self.log.error("sink_rejected", url=self.url, status=status, retry=False,
                       dropped_events=len(events),
                       body=reply[:200].decode("utf-8", "replace"))
        return "drop"

    def _supervise(self) -> None:
        """Run the send loop; whatever kills it is logged in one line and the loop starts
        again after a pause, so delivery outlives any bad file, reply or setting."""
        pause = 0.5
        while not self._stop.is_set():
            try:
                self._run()
                return
            except Exception as e:  # the sender must not die
                self.crashes += 1
                self.log.error("sink_sender_failed", error=type(e).__name__,
                               detail=str(e)[:200], restarts=self.crashes)
                self._stop.wait(pause)
                pause = min(pause * 2, 30.0)

    def _run(self) -> None:
        first = min(0.5, self.settings.max_backoff)
        backoff = first
        while not self._stop.is_set():
            with self._lock:
                spool = self.spool
                item = spool.oldest() if spool is not None else None
                lost = spool.lost if spool is not None else 0
                if lost:
                    self.dropped += lost
                self._inflight = item[0] if item else ""
            if lost:
                self.log.error("sink_spool_quarantined", dropped_events=lost,
                               reason="unreadable or corrupt batch")
                self.on_change(self.backlog, lost)
            if item is None:
                self.last_progress = time.monotonic()
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            name, events = item
            verdict = self._post(events)
            with self._lock:
                self._inflight = ""
                orphaned = spool is not self.spool  # the directory was recreated meanwhile
                if orphaned:  # the batch exists only here now: delivered, or lost for good
                    if verdict == "ok":
                        self.delivered += len(events)
                    else:
                        self.dropped += len(events)
            if orphaned:
                self.on_change(self.backlog, 0 if verdict == "ok" else len(events))
                continue
            if verdict == "retry":
                # Exponential backoff with jitter, woken early only by stop.
                self._stop.wait(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, self.settings.max_backoff)
                continue
            backoff = first
            with self._lock:
                self.spool.ack(name)  # type: ignore[union-attr]
                backlog = self.spool.events  # type: ignore[union-attr]
                if verdict == "ok":
                    self.delivered += len(events)
                else:
                    self.dropped += len(events)
            self.last_progress = time.monotonic()
            self.on_change(backlog, 0 if verdict == "ok" else len(events))
