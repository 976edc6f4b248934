"""Deliver finding events to a central HTTP collector, at least once, through outages.

Events go to a bounded on-disk spool first (one file per batch, written with rename so a
crash never leaves half a batch), and a sender thread POSTs the oldest batch until the
collector takes it. Every event carries an `event_id` that stays the same across retries,
so the collector deduplicates by it. The spool never grows past `spool_max_bytes`: when it
would, the oldest batches are dropped, counted and logged — an outage longer than the bound
loses the oldest events, never the newest, and never the agent.
"""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from ..daemon_settings import SinkSettings
from ..redact import scrub

RETRY_STATUS = {401, 403, 408, 425, 429}  # maybe transient: token rotation, rate limit


class Spool:
    """A directory of `<seq>.jsonl` batches, oldest first. Not thread-safe by itself: the
    sink serialises access with its lock."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # a crash mid-write: that batch was never acked
        self._files: dict[Path, tuple[int, int]] = {}  # path -> (bytes, events)
        for p in sorted(self.dir.glob("*.jsonl")):
            data = p.read_bytes()
            self._files[p] = (len(data), data.count(b"\n"))
        self._seq = max((int(p.stem) for p in self._files), default=0)

    @property
    def bytes(self) -> int:
        return sum(b for b, _ in self._files.values())

    @property
    def events(self) -> int:
        return sum(n for _, n in self._files.values())

    def put(self, events: list[dict[str, Any]]) -> int:
        """Append one batch; returns how many older events were dropped to stay bounded."""
        data = "".join(json.dumps(e, default=str, separators=(",", ":")) + "\n"
                       for e in events).encode()
        dropped = 0
        while self._files and self.bytes + len(data) > self.max_bytes:
            oldest = min(self._files)
            dropped += self._files.pop(oldest)[1]
            oldest.unlink(missing_ok=True)
        if len(data) > self.max_bytes:
            return dropped + len(events)  # a batch larger than the whole spool
        self._seq += 1
        path = self.dir / f"{self._seq:012d}.jsonl"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._files[path] = (len(data), len(events))
        return dropped

    def oldest(self) -> tuple[Path, list[dict[str, Any]]] | None:
        if not self._files:
            return None
        path = min(self._files)
        lines = path.read_text().splitlines()
        return path, [json.loads(x) for x in lines if x]

    def ack(self, path: Path) -> None:
        if self._files.pop(path, None) is not None:
            path.unlink(missing_ok=True)


class HttpSink:
    def __init__(self, settings: SinkSettings, node: str, log: Any,
                 on_change: Callable[[int, int], None] = lambda backlog, dropped: None,
                 session: requests.Session | None = None) -> None:
        self.settings = settings
        self.node = node
        self.log = log
        self.on_change = on_change  # (backlog events, newly dropped) for metrics
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        self.session = session or requests.Session()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nodeward-sink", daemon=True)
        self.delivered = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        size = self.settings.batch_size
        dropped = 0
        with self._lock:
            for i in range(0, len(events), size):
                batch = [{"event_id": uuid.uuid4().hex, **scrub(e)} for e in events[i:i + size]]
                dropped += self.spool.put(batch)
            backlog = self.spool.events
        if dropped:
            self.log.error("sink_spool_full", dropped_events=dropped,
                           spool_max_bytes=self.settings.spool_max_bytes)
        self.on_change(backlog, dropped)
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _token(self) -> str:
        if not self.settings.token_file:
            return ""
        try:
            return Path(self.settings.token_file).read_text().strip()
        except OSError as e:
            self.log.error("sink_token_unreadable", path=self.settings.token_file,
                           error=e.strerror)
            return ""

    def _post(self, events: list[dict[str, Any]]) -> str:
        """'ok', 'retry' or 'drop'."""
        headers = {"Content-Type": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            r = self.session.post(self.settings.url, json={"node": self.node, "events": events},
                                  headers=headers, timeout=self.settings.timeout,
                                  verify=self.settings.ca_file or True)
        except requests.RequestException as e:
            self.log.warning("sink_unreachable", url=self.settings.url,
                             error=type(e).__name__, detail=str(e)[:200])
            return "retry"
        if 200 <= r.status_code < 300:
            return "ok"
        if r.status_code >= 500 or r.status_code in RETRY_STATUS:
            self.log.warning("sink_rejected", url=self.settings.url, status=r.status_code,
                             retry=True)
            return "retry"
        self.log.error("sink_rejected", url=self.settings.url, status=r.status_code,
                       retry=False, body=r.text[:200])
        return "drop"

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            with self._lock:
                item = self.spool.oldest()
            if item is None:
                self._wake.wait()
                self._wake.clear()
                continue
            path, events = item
            verdict = self._post(events)
            if verdict == "retry":
                # Exponential backoff with jitter, woken early only by stop.
                self._stop.wait(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, 60.0)
                continue
            backoff = 0.5
            with self._lock:
                self.spool.ack(path)
                backlog = self.spool.events
            if verdict == "ok":
                self.delivered += len(events)
                self.on_change(backlog, 0)
            else:
                self.on_change(backlog, len(events))
