"""What enforcement keeps outside the kernel: one writer lock, an apply journal and the
pending rollback, under /run/nodeward (tmpfs: gone with a reboot, like the rules).

- The lock (flock) is held by every nodeward writer around its read-modify-write, so two
  applies cannot both see "no jump" and both insert one, or replace each other's rules
  half-way. iptables-restore takes the xtables lock itself (-w), libiptc under ours.
- The journal names an apply that is writing its families one by one (iptables backends):
  if it is still there, that apply died between the families; `plan`/`status` say so and
  the next apply (or daemon cycle) completes it.
- The pending rollback is the previous state of our objects plus a deadline, written
  before an unconfirmed change: whoever starts next (apply, uninstall, the daemon, or the
  detached watchdog) puts it back once the deadline has passed or its owner is gone.

Files are per network namespace (named by the netns inode), so labs and nodes never
restore each other's rules.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

RUN_DIR_ENV = "NODEWARD_RUN_DIR"
DEFAULT_RUN_DIR = "/run/nodeward"


class LockBusy(RuntimeError):
    """Another nodeward writer held the lock for the whole wait."""


def run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)


def _netns_id() -> str:
    try:
        return str(os.stat("/proc/self/ns/net").st_ino)
    except OSError:
        return "host"


def _path(kind: str) -> Path:
    return run_dir() / f"{kind}-{_netns_id()}.json"


def flock_within(fd: int, timeout: float, poll: float) -> bool:
    """Take an exclusive flock on `fd`, trying every `poll` seconds; False when it stayed
    held for `timeout` seconds (the xtables lock and nodeward's own writer lock alike)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)


@contextmanager
def writer_lock(timeout: float = 30.0) -> Iterator[None]:
    """nodeward's own lock around every read-modify-write of netfilter (per namespace)."""
    d = run_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(d / f"lock-{_netns_id()}", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        if not flock_within(fd, timeout, 0.02):
            raise LockBusy(f"another nodeward writer held {d}/lock for {timeout:g}s")
        yield
    finally:
        os.close(fd)  # releases the flock


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- journal ---------------------------------------------------------------------------

#: Test hook: seconds to pause between two families, so a lab test can kill an apply
#: exactly there (unset in production).
PAUSE_ENV = "NODEWARD_TEST_FAMILY_PAUSE"


def between_families() -> None:
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def journal_begin(backend: str, families: tuple[int, ...]) -> None:
    _write(_path("journal"), {"backend": backend, "families": list(families),
                              "pid": os.getpid(), "started": time.time()})


def journal_end() -> None:
    _path("journal").unlink(missing_ok=True)


def interrupted() -> dict | None:
    """The journal of an apply that died between families (its pid is gone), if any."""
    j = _read(_path("journal"))
    if j is None or _alive(j.get("pid", 0)):
        return None
    return j


# -- pending rollback --------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    backend: str  # Backend.name, e.g. "iptables-nft"
    families: tuple[int, ...]
    saved: str  # Backend.snapshot_all() before the change
    deadline: float  # wall clock (time.time())
    pid: int
    log_rate: int = 10


def arm(p: Pending) -> None:
    _write(_path("rollback"), {**asdict(p), "families": list(p.families)})


def disarm() -> None:
    _path("rollback").unlink(missing_ok=True)


def pending() -> Pending | None:
    d = _read(_path("rollback"))
    if d is None:
        return None
    try:
        return Pending(str(d["backend"]), tuple(int(f) for f in d["families"]), str(d["saved"]),
                       float(d["deadline"]), int(d["pid"]), int(d.get("log_rate", 10)))
    except (KeyError, TypeError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def due(p: Pending, now: float | None = None) -> bool:
    """Roll back now: the deadline passed, or the apply that armed it is gone."""
    return (now or time.time()) >= p.deadline or not _alive(p.pid)
