"""The HTTP sink against a real local HTTP server that fails for a while, then recovers:
every event arrives, none twice after dedup by event_id, and the spool stays bounded."""

from __future__ import annotations

import io
import time

import pytest

from nodeward.daemon_settings import SinkSettings
from nodeward.report.logs import make_logger
from nodeward.report.sink import HttpSink, Spool
from tests.lab.collector import Collector, events, wait


@pytest.fixture
def collector():
    c = Collector(token="s3cret")
    c.down = True
    yield c
    c.close()


def test_outage_then_recovery_delivers_everything_once(collector, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    spool_dir = tmp_path / "spool"
    settings = SinkSettings(url=collector.url, token_file=str(token), spool_dir=str(spool_dir),
                            spool_max_bytes=1 << 20, batch_size=7, timeout=2)
    seen_backlog = []
    sink = HttpSink(settings, "n1", make_logger("n1", io.StringIO()),
                    on_change=lambda backlog, dropped: seen_backlog.append((backlog, dropped)))
    sink.start()
    try:
        for k in range(10):  # 10 cycles of 25 events while the collector is down
            sink.submit(events(25, k * 25))
            time.sleep(0.05)
        assert collector.posts > 0 and not collector.accepted
        assert sink.spool.events == 250
        assert sum(p.stat().st_size for p in spool_dir.iterdir()) <= settings.spool_max_bytes
        collector.down = False
        wait(lambda: sink.spool.events == 0, 30)
    finally:
        sink.close()
    ids = [e["event_id"] for e in collector.accepted]
    unique = {e["event_id"]: e for e in collector.accepted}
    assert sorted(e["seq"] for e in unique.values()) == list(range(250))  # every one
    assert len(ids) == len(unique)  # and none twice
    assert all(d == 0 for _, d in seen_backlog) and seen_backlog[-1][0] == 0
    assert collector.bad_auth == 0
    assert list(spool_dir.iterdir()) == []


def test_spool_survives_restart_and_resends_same_ids(collector, tmp_path):
    settings = SinkSettings(url=collector.url, token_file="", spool_dir=str(tmp_path / "s"),
                            spool_max_bytes=1 << 20, timeout=1)
    log = make_logger("n1", io.StringIO())
    first = HttpSink(settings, "n1", log)
    first.submit(events(5))  # not started: as if the agent died before sending
    spooled = [e["event_id"] for e in first.spool.oldest()[1]]
    collector.down = False
    restarted = HttpSink(settings, "n1", log)  # a restarted agent finds the spool
    assert restarted.spool.events == 5
    restarted.start()
    try:
        wait(lambda: collector.posts > 0, 10)
        time.sleep(0.3)
    finally:
        restarted.close()
    # No token configured and the collector wants one: 401 is retried, nothing lost.
    assert collector.bad_auth > 0 and restarted.spool.events == 5
    assert [e["event_id"] for e in restarted.spool.oldest()[1]] == spooled


def test_spool_bound_drops_oldest_and_counts(tmp_path):
    spool = Spool(str(tmp_path), max_bytes=4096)
    dropped = 0
    for k in range(50):
        dropped += spool.put(events(5, k * 5))
        assert spool.bytes <= 4096
        assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 4096
    kept = []
    while (item := spool.oldest()) is not None:
        kept += [e["seq"] for e in item[1]]
        spool.ack(item[0])
    assert dropped + len(kept) == 250
    assert kept == list(range(250 - len(kept), 250))  # the newest are kept, in order
