"""What the relay serves: per kind, the projected objects and the events that changed them,
numbered by the relay's own resourceVersion counter.

The resourceVersions agents see are the relay's, `<epoch>.<n>`: the epoch is random per
relay process, so an agent holding a version from a relay that restarted (or from the other
replica) is answered 410 Gone and lists again, never served events from another history.
An upstream change whose projection equals what is stored produces no event at all (the
kubelet's heartbeat re-posts of a Node). An upstream re-list (after the API's 410) is
diffed against the store, so agents receive only what changed and need not re-list.
Each event is encoded once and the same bytes go to every watcher.
"""

from __future__ import annotations

import bisect
import json
import secrets
import threading
from dataclasses import dataclass, field

#: events kept per kind; an agent further behind than this is told 410 and lists again
HISTORY = 4096


class Expired(Exception):
    """The version asked for is not in this relay's history (too old, another epoch)."""


@dataclass
class KindState:
    kind: str
    path: str = ""  # the upstream path that answered; agents are served there
    served: bool = True
    synced: bool = False
    objects: dict[str, tuple[int, dict]] = field(default_factory=dict)  # key -> (n, obj)
    numbers: list[int] = field(default_factory=list)  # history: event numbers, ascending
    events: list[bytes] = field(default_factory=list)  # history: encoded event lines
    oldest: int = 0  # a watch may start from any n >= oldest
    cond: threading.Condition = field(default_factory=threading.Condition)
    unhealthy: str = ""  # why the upstream view is not current (set by the Relay)
    snapshot: tuple[int, list[bytes]] | None = None  # (n, encoded items) of the last list


@dataclass
class StoreStats:
    upstream_changes: int = 0  # changes the upstream watch applied
    unchanged: int = 0  # of those, projections equal to what was stored: not forwarded
    events: int = 0  # events forwarded (stored in history)
    relists: int = 0  # upstream re-lists diffed into events


class RelayStore:
    """A collect.watch.WatchSink: the ClusterWatcher feeding it holds its own lock while
    calling, so changes arrive in order."""

    def __init__(self, kinds: list[str], history: int = HISTORY) -> None:
        self.epoch = secrets.token_hex(4)
        self.n = 0
        self.history = history
        self.lock = threading.Lock()
        self.kinds = {k: KindState(k) for k in kinds}
        self.stats = StoreStats()

    # -- versions -------------------------------------------------------------------------

    def version(self, n: int) -> str:
        return f"{self.epoch}.{n}"

    def parse(self, version: str) -> int:
        """The counter value of one of this relay's versions; Expired for anything else
        ("0" and "" too: a watch without a version would mean "from any state")."""
        epoch, _, n = version.partition(".")
        if epoch != self.epoch or not n.isdigit():
            raise Expired(version)
        return int(n)

    # -- the sink -------------------------------------------------------------------------

    def listed(self, kind: str, path: str, objects: dict[str, dict] | None) -> None:
        ks = self.kinds[kind]
        with ks.cond:
            if objects is None:
                ks.served, ks.synced, ks.path = False, True, ""
                ks.cond.notify_all()
                return
            if not ks.synced or path != ks.path:  # first list: the state, no events
                with self.lock:
                    self.n += 1
                    n = self.n
                ks.objects = {k: (n, o) for k, o in objects.items()}
                ks.numbers, ks.events, ks.oldest = [], [], n
                ks.path, ks.served, ks.synced, ks.snapshot = path, True, True, None
                ks.cond.notify_all()
                return
            self.stats.relists += 1
            for key in [k for k in ks.objects if k not in objects]:
                self._apply(ks, key, None)
            for key, obj in objects.items():
                self._apply(ks, key, obj)
            ks.cond.notify_all()

    def changed(self, kind: str, key: str, obj: dict | None) -> None:
        ks = self.kinds[kind]
        with ks.cond:
            if not ks.synced:
                return
            self.stats.upstream_changes += 1
            if not self._apply(ks, key, obj):
                self.stats.unchanged += 1
            ks.cond.notify_all()

    def _apply(self, ks: KindState, key: str, obj: dict | None) -> bool:
        """Store one projected change as an event; False when nothing changed."""
        old = ks.objects.get(key)
        if obj is None and old is None:
            return False
        if obj is not None and old is not None and old[1] == obj:
            return False
        with self.lock:
            self.n += 1
            n = self.n
        if obj is None:
            assert old is not None
            del ks.objects[key]
            kind, body = "DELETED", old[1]
        else:
            kind, body = ("MODIFIED" if old else "ADDED"), obj
            ks.objects[key] = (n, obj)
        ks.numbers.append(n)
        ks.events.append(json.dumps({"type": kind, "object": self._stamped(body, n)},
                                    separators=(",", ":")).encode() + b"\n")
        if len(ks.numbers) > self.history:
            drop = len(ks.numbers) - self.history
            ks.oldest = ks.numbers[drop - 1]
            del ks.numbers[:drop], ks.events[:drop]
        self.stats.events += 1
        return True

    def _stamped(self, obj: dict, n: int) -> dict:
        meta = {**(obj.get("metadata") or {}), "resourceVersion": self.version(n)}
        return {**obj, "metadata": meta}

    # -- what the server reads (each under ks.cond) ----------------------------------------

    def items(self, ks: KindState) -> tuple[str, list[bytes]]:
        """The current list (encoded once per version of the kind, shared by every agent
        listing it) and its resourceVersion."""
        with self.lock:
            now = self.n
        last = ks.numbers[-1] if ks.numbers else ks.oldest
        if ks.snapshot is None or ks.snapshot[0] != last:
            ks.snapshot = (last, [json.dumps(self._stamped(o, n), separators=(",", ":"))
                                  .encode() for _k, (n, o) in sorted(ks.objects.items())])
        return self.version(now), ks.snapshot[1]

    def after(self, ks: KindState, since: int) -> list[tuple[int, bytes]]:
        """Events of the kind numbered after `since`; Expired when history lacks some."""
        if since < ks.oldest or since > self.n:
            raise Expired(str(since))
        i = bisect.bisect_right(ks.numbers, since)
        return list(zip(ks.numbers[i:], ks.events[i:], strict=True))

    def now(self) -> int:
        with self.lock:
            return self.n
