"""The cluster view kept current by list-then-watch, as client-go's reflector does.

A daemon that LISTs every Node and six Calico kinds each cycle costs the API server what
Calico built Typha to avoid: at 5,000 nodes, 5,000 agents each fetching 5,000 Node objects
every minute. Here each kind is listed once, then watched from the list's resourceVersion
(bookmarks keep it fresh); a 410 Gone lists again; a broken stream is re-watched with
backoff. The steady-state cost is the events themselves, whatever the cycle interval.

Objects are trimmed on arrival to what the checks read (a Node keeps its name, role
labels, the Calico/Cilium annotations, pod CIDRs and addresses), so a 5,000-node view
stays small. `view()` builds an immutable ClusterView from the current state; a kind not
yet listed, or whose watch is failing, is named in `view.unknown`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..kubeapi import ApiUnavailable, Gone, KubeApi, NotFound
from ..memtrim import give_back
from ..report.logs import get_logger
from .cluster import CALICO_KINDS, ClusterView, build_view, trim_node

log = get_logger("nodeward.watch")

NODES = "/api/v1/nodes"


def trim_calico(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    return {"apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""),
            "metadata": {"name": meta.get("name", ""), "labels": meta.get("labels") or {}},
            "spec": obj.get("spec") or {}}


def _key(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class WatchSink(Protocol):
    """Told every applied change, under the watcher's lock and in order (the relay's
    store: nodeward.relay.store)."""

    def listed(self, kind: str, path: str, objects: dict[str, dict] | None) -> None:
        """A (re-)list of `kind` answered at `path`; None: the kind is not served."""

    def changed(self, kind: str, key: str, obj: dict | None) -> None:
        """One object's trimmed new state; None: deleted."""


@dataclass
class WatchStats:
    lists: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    relists_after_gone: int = 0
    errors: int = 0


@dataclass
class ResourceWatch:
    """One kind: the paths tried in order (Calico's CRD shape, then the v3 API)."""

    kind: str
    paths: tuple[str, ...]
    trim: Callable[[dict], dict]
    objects: dict[str, dict] = field(default_factory=dict)
    version: str = ""
    path: str = ""  # the one that answered
    synced: bool = False  # listed at least once: the view holds its objects
    relist: bool = True  # the next round lists (first time, after 410 Gone)
    served: bool = True  # False: every path 404 (no Calico here)
    error: str = ""
    changes: int = 0  # bumped on every applied change, for cheap "did it change" tests


class ClusterWatcher:
    """Nodes and the Calico kinds, each listed once and then watched in its own thread."""

    def __init__(self, api: KubeApi, *, watch_timeout_s: int = 300,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 sink: WatchSink | None = None) -> None:
        self.api = api
        self.sink = sink
        self.watch_timeout_s = watch_timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stats = WatchStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.kinds = [ResourceWatch("Node", (NODES,), trim_node)] + [
            ResourceWatch(k, paths, trim_calico) for k, paths in CALICO_KINDS.items()]
        # the last view and what it was built from: a quiet cluster's view is not built
        # again each cycle (5,000 nodes: ~110 ms of parsing the held objects)
        self._view_memo: tuple[tuple, ClusterView] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> ClusterWatcher:
        for rw in self.kinds:
            t = threading.Thread(target=self._run, args=(rw,), daemon=True,
                                 name=f"nodeward-watch-{rw.kind}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self.api.close()  # unblocks streams waiting for the next line
        for t in self._threads:
            t.join(timeout)

    def wait_synced(self, timeout: float) -> bool:
        """Wait until every kind has been listed, found not served, or failed once (the
        first cycle then reports the failure instead of waiting it out); True when all
        were listed."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if all(rw.synced or not rw.served or rw.error for rw in self.kinds):
                    break
            self._stop.wait(0.05)
        with self._lock:
            return all(rw.synced or not rw.served for rw in self.kinds)

    # -- the reflector loop ---------------------------------------------------------------

    def _run(self, rw: ResourceWatch) -> None:
        delay = self.backoff_s
        while not self._stop.is_set():
            try:
                if rw.relist:
                    self._list(rw)
                    if not rw.served:
                        return  # kind not served by this cluster: nothing to watch
                self._watch(rw)
                delay = self.backoff_s  # a watch that ended normally: renew at once
            except Gone:
                with self._lock:
                    self.stats.relists_after_gone += 1
                    rw.relist = True  # the view keeps the last state until the list is back
                log.info("watch_relist", kind=rw.kind, reason="410 Gone")
            except ApiUnavailable as e:
                with self._lock:
                    self.stats.errors += 1
                    rw.error = e.reason
                    if isinstance(e, NotFound):
                        rw.relist = True  # the kind went away: find it again
                if self._stop.is_set():
                    return
                log.warning("watch_failed", kind=rw.kind, reason=e.reason,
                            retry_in_s=round(delay, 2))
                self._stop.wait(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.max_backoff_s)

    def _list(self, rw: ResourceWatch) -> None:
        for path in rw.paths:
            try:
                # small pages: a page of big Nodes is parsed whole before it is trimmed
                items, version = self.api.list_versioned(path, limit=100, transform=rw.trim)
            except NotFound:
                continue
            with self._lock:
                self.stats.lists += 1
                rw.objects = {_key(o): o for o in items}
                rw.version, rw.path, rw.error = version, path, ""
                rw.synced, rw.relist, rw.served = True, False, True
                rw.changes += 1
                if self.sink is not None:
                    self.sink.listed(rw.kind, path, rw.objects)
            # a LIST's pages were parsed whole in this thread's malloc arena; hand the freed
            # pages back (5,000 nodes: ~2 MB of RSS; a list is rare: start-up, a 410)
            del items
            give_back()
            return
        with self._lock:
            rw.served, rw.synced, rw.relist = False, True, False
            if self.sink is not None:
                self.sink.listed(rw.kind, "", None)

    def _watch(self, rw: ResourceWatch) -> None:
        with self._lock:
            self.stats.watches += 1
        for event in self.api.watch(rw.path, rw.version, self.watch_timeout_s, self._stop):
            obj = event["object"]
            kind = event.get("type")
            version = str((obj.get("metadata") or {}).get("resourceVersion") or rw.version)
            with self._lock:
                rw.error = ""
                if kind == "BOOKMARK":
                    self.stats.bookmarks += 1
                elif kind in ("ADDED", "MODIFIED"):
                    self.stats.events += 1
                    key, trimmed = _key(obj), rw.trim(obj)
                    # a kubelet's status re-post (every node every 5 minutes: N/300 events a
                    # second) trims to what is held: the view, and so the checks, unchanged
                    if rw.objects.get(key) != trimmed:
                        rw.changes += 1
                    rw.objects[key] = trimmed
                    if self.sink is not None:
                        self.sink.changed(rw.kind, key, trimmed)
                elif kind == "DELETED":
                    self.stats.events += 1
                    rw.objects.pop(_key(obj), None)
                    rw.changes += 1
                    if self.sink is not None:
                        self.sink.changed(rw.kind, _key(obj), None)
                rw.version = version

    # -- what the daemon reads ------------------------------------------------------------

    def generation(self) -> tuple[int, ...]:
        """Changes per kind: equal tuples mean an unchanged view."""
        with self._lock:
            return tuple(rw.changes for rw in self.kinds)

    def failing(self) -> dict[str, str]:
        """Kind -> why it is not current (not listed yet, or its list/watch failing)."""
        with self._lock:
            return {rw.kind: rw.error or "not listed yet" for rw in self.kinds
                    if rw.served and (not rw.synced or rw.error)}

    def view(self, node: str) -> ClusterView:
        with self._lock:
            nodes_rw = self.kinds[0]
            failing = [rw for rw in self.kinds if rw.served and (not rw.synced or rw.error)]
            if nodes_rw in failing:  # no nodes: the API itself is the problem, say it once
                failing = [nodes_rw]
            unknown = [rw.error or f"{rw.kind}: not listed yet" for rw in failing]
            served = tuple((rw.served, rw.path) for rw in self.kinds[1:])
            key = (node, tuple(rw.changes for rw in self.kinds), tuple(unknown), served)
            memo = self._view_memo
            if memo is not None and memo[0] == key:
                return memo[1]
            node_objs = list(nodes_rw.objects.values())
            objects = {rw.kind: list(rw.objects.values()) for rw in self.kinds[1:]
                       if rw.served and rw.path}
            calico = any(rw.served and rw.path for rw in self.kinds[1:])
        view = build_view(node, "api-watch", node_objs, objects, unknown, calico)
        with self._lock:
            self._view_memo = (key, view)
        return view
