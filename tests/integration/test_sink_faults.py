"""The HTTP sink attacked as a hostile collector, a full disk and a local user would.

Every case runs against a real HTTP(S) server on 127.0.0.1 (and a real tmpfs for the full
disk) and checks the accounting invariant `produced + recovered == delivered + dropped +
backlog`, with the figures printed; after each fault the same sender (no restart) delivers
what is left once the collector behaves.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodeward.daemon_settings import SinkSettings
from nodeward.report.logs import make_logger
from nodeward.report.metrics import Metrics, StatusServer
from nodeward.report.sink import HttpSink
from tests.lab.collector import Collector, events, wait

CI = os.environ.get("CI") == "true"


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


def make_sink(url: str, spool: Path, **kw) -> tuple[HttpSink, io.StringIO]:
    settings = SinkSettings(url=url, spool_dir=str(spool), **{
        "spool_max_bytes": 1 << 20, "batch_size": 20, "timeout": 1.0, "max_backoff": 0.5,
        **kw})
    out = io.StringIO()
    metrics = Metrics()
    sink = HttpSink(settings, "n1", make_logger("n1", out), on_change=metrics.sink_changed)
    sink.test_metrics = metrics  # what /metrics would show, checked by invariant()
    return sink, out


def log_events(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def invariant(case: str, sink: HttpSink, collector: Collector | None = None) -> None:
    """produced + recovered == delivered + dropped + backlog, printed; and the collector
    holds each delivered event exactly once after dedup by event_id."""
    produced = sink.produced + sink.recovered
    print(f"[{case}] produced={produced} delivered={sink.delivered} dropped={sink.dropped} "
          f"backlog={sink.backlog}")
    assert produced == sink.delivered + sink.dropped + sink.backlog
    scraped = {s.name: s.value for fam in text_string_to_metric_families(
        sink.test_metrics.exposition().decode()) for s in fam.samples}
    assert scraped["nodeward_sink_dropped_events_total"] == sink.dropped
    assert scraped["nodeward_sink_backlog_events"] == sink.backlog
    if collector is not None:
        ids = {e["event_id"] for e in collector.accepted}
        assert len(ids) == sink.delivered


def test_redirect_is_not_followed_and_is_retried(collector, tmp_path):
    flips = iter(["redirect"] * 3)
    collector.behave = lambda: next(flips, "ok")
    sink, out = make_sink(collector.url, tmp_path / "spool")
    sink.start()
    try:
        sink.submit(events(60))
        wait(lambda: sink.backlog == 0, 20)
    finally:
        sink.close()
    assert collector.gets == 0  # a followed redirect is a GET that "acks" the batch
    assert sink.delivered == 60 and sink.dropped == 0
    refused = [e for e in log_events(out) if e["event"] == "sink_redirect_refused"]
    assert len(refused) == 3
    # The redirect target's credentials and query are not logged either.
    assert "pw" not in out.getvalue() and "k=v" not in out.getvalue()
    invariant("redirect", sink, collector)


def test_trickling_collector_cannot_stall_delivery(collector, tmp_path):
    flips = iter(["trickle"] * 2)
    collector.behave = lambda: next(flips, "ok")
    sink, out = make_sink(collector.url, tmp_path / "spool", timeout=1.0)
    sink.start()
    start = time.monotonic()
    try:
        sink.submit(events(40))
        wait(lambda: sink.backlog == 0, 20)
    finally:
        sink.close()
    took = time.monotonic() - start
    unreachable = [e for e in log_events(out) if e["event"] == "sink_unreachable"]
    assert len(unreachable) == 2 and all(e["error"] == "TimeoutError" for e in unreachable)
    # Two whole-request deadlines of 1 s plus short backoffs; a per-read timeout would
    # wait forever (the collector sends a byte every 0.3 s for 15 s per request).
    assert took < 6, took
    invariant("trickle", sink, collector)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        if CI:
            raise AssertionError(f"mount tmpfs: {r.stderr}")
        pytest.skip(f"cannot mount tmpfs: {r.stderr.strip()}")


def test_full_disk_counts_every_lost_event_and_leaves_no_tmp(collector, tmp_path):
    spool = tmp_path / "tmpfs"
    _mount_tmpfs(spool, "48k")
    try:
        collector.behave = lambda: "503"
        # The spool bound is far above the disk: ENOSPC comes first.
        sink, out = make_sink(collector.url, spool, spool_max_bytes=4 << 20)
        sink.start()
        try:
            for k in range(40):
                sink.submit(events(20, k * 20))
            failed = [e for e in log_events(out) if e["event"] == "sink_spool_write_failed"]
            assert failed and failed[0]["error"].startswith("ENOSPC")
            assert not list(spool.glob("*.tmp"))
            assert sink.dropped > 0 and sink.backlog > 0
            invariant("enospc, collector down", sink)
            ok, why = sink.health()
            assert not ok and "ENOSPC" in why  # /healthz: events are being lost
            collector.behave = lambda: "ok"
            wait(lambda: sink.backlog == 0, 30)
            # The disk has room again: the same sender takes new events.
            sink.submit(events(20, 10_000))
            wait(lambda: sink.backlog == 0, 10)
            assert sink.health() == (True, "ok")
        finally:
            sink.close()
        assert any(e["seq"] == 10_000 for e in collector.accepted)
        assert not list(spool.glob("*.tmp"))
        invariant("enospc, recovered", sink, collector)
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def test_sender_survives_bad_spool_files_ca_and_token_and_health_says_so(tmp_path):
    """Faults that used to kill the sender thread for good: a truncated batch file, a
    deleted batch file, a missing ca_file, a token that is not latin-1. Each is logged,
    the same thread goes on, /healthz (the real status server) says 503 while delivery
    is stalled and 200 again once it flows."""
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(certs / "key.pem"), "-out", str(certs / "cert.pem")],
                   check=True, capture_output=True)
    collector = Collector(tls=(str(certs / "cert.pem"), str(certs / "key.pem")))
    token = tmp_path / "token"
    token.write_text("tök€n\n")  # not latin-1: used to raise UnicodeEncodeError
    ca = tmp_path / "ca.pem"  # missing for now
    sink, out = make_sink(collector.url, tmp_path / "spool", token_file=str(token),
                          ca_file=str(ca), stall_after=1.0)
    metrics = Metrics()
    status = StatusServer("127.0.0.1:0", metrics, sink.health,
                          lambda: (sink.sender_alive(), "ok"))
    status.start()

    def healthz(path: str = "/healthz") -> int:
        try:
            with urllib.request.urlopen(f"http://{status.address}{path}", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    sink.start()
    thread = sink._thread
    try:
        sink.submit(events(60))
        wait(lambda: any(e["event"] == "sink_token_invalid" for e in log_events(out)), 5)
        wait(lambda: healthz() == 503, 5)
        assert healthz("/livez") == 200  # stalled delivery, but the agent is alive
        token.write_text("good-token\n")
        wait(lambda: any(e["event"] == "sink_unreachable" for e in log_events(out)), 5)
        # Truncate the oldest batch and delete the next one under the sender.
        batches = sorted((tmp_path / "spool").glob("*.jsonl"))
        batches[0].write_bytes(batches[0].read_bytes()[:-7])
        batches[1].unlink()
        shutil.copy(certs / "cert.pem", ca)
        wait(lambda: sink.backlog == 0, 20)
        wait(lambda: healthz() == 200, 5)
        assert thread.is_alive() and sink._thread is thread
    finally:
        sink.close()
        status.close()
        collector.close()
    names = [e["event"] for e in log_events(out)]
    assert "sink_spool_quarantined" in names
    assert sink.delivered == 20 and sink.dropped == 40  # one truncated, one deleted
    assert all(h.get("Authorization") == "Bearer good-token" for h in collector.headers)
    assert "tök" not in out.getvalue()
    invariant("bad files, ca, token", sink, collector)


def test_stray_and_corrupt_files_at_start_are_quarantined_not_fatal(collector, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    (spool / "notes.jsonl").write_text("operator notes\n")
    (spool / "000000000003.jsonl").write_bytes(b'{"event_id": "x"}\n{"trunc')
    good = [{"event_id": f"g{i}", "event": "finding_opened"} for i in range(3)]
    (spool / "000000000004.jsonl").write_text("".join(json.dumps(e) + "\n" for e in good))
    (spool / "000000000005.tmp").write_text("half")
    sink, out = make_sink(collector.url, spool)
    sink.start()
    try:
        wait(lambda: sink.backlog == 0, 10)
    finally:
        sink.close()
    assert [e["event_id"] for e in collector.accepted] == ["g0", "g1", "g2"]
    quarantined = sorted(p.name.split("-", 1)[1] for p in (spool / "quarantine").iterdir())
    assert quarantined == ["000000000003.jsonl", "notes.jsonl"]
    assert not (spool / "000000000005.tmp").exists()
    logged = [e["file"] for e in log_events(out) if e["event"] == "sink_spool_quarantined"]
    assert sorted(logged) == quarantined
    # Recovered = the good batch; the torn one is unreadable so never entered the count.
    invariant("stray files", sink, collector)


def test_spool_dir_owned_by_another_user_is_refused_and_nothing_outside_is_touched(
        collector, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown the spool dir to another user")
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o755)
    victim = tmp_path / "victim"  # a root-only file the other user wants overwritten
    victim.write_text("root only\n")
    victim.chmod(0o600)
    secret = tmp_path / "secret"  # a root-only file the other user wants sent out
    secret.write_text('{"event_id": "SECRET-CONTENT"}\n')
    secret.chmod(0o600)
    for seq in range(1, 40):
        os.symlink(victim, spool / f"{seq:012d}.tmp")
    os.symlink(secret, spool / "000000000000.jsonl")
    os.chown(spool, 65534, 65534)  # nobody
    for p in spool.iterdir():
        os.lchown(p, 65534, 65534)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (victim, secret)}
    sink, out = make_sink(collector.url, spool)
    sink.start()
    try:
        sink.submit(events(30))
        time.sleep(0.5)
    finally:
        sink.close()
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (victim, secret)} == before
    assert collector.posts == 0
    assert not any(b"SECRET" in b for b in collector.bodies)
    assert all(p.is_symlink() for p in spool.iterdir())  # not even removed: not ours
    first = log_events(out)[0]
    assert first["event"] == "sink_spool_unusable" and "owned by uid 65534" in first["error"]
    assert not sink.health()[0]
    assert sink.dropped == 30
    invariant("foreign spool dir", sink, collector)


def test_symlinks_planted_in_own_spool_are_never_followed(collector, tmp_path):
    """The dir checks pass (a race, or root planted them): O_NOFOLLOW and the owner/link
    checks on each file still keep every file outside the spool unread and unwritten."""
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("do not overwrite\n")
    secret = tmp_path / "secret"
    secret.write_text('{"event_id": "SECRET-CONTENT"}\n')
    sink, _out = make_sink(collector.url, spool)
    # Planted after start-up, where the next writes and reads will look.
    for seq in range(1, 10):
        os.symlink(victim, spool / f"{seq:012d}.tmp")
    os.symlink(secret, spool / "000000000000.jsonl")
    sink.spool._files["000000000000.jsonl"] = (10, 1)  # as if listed before the swap
    sink.recovered += 1
    os.link(secret, spool / "000000000099.jsonl")  # a hard link: nlink 2, refused too
    sink.spool._files["000000000099.jsonl"] = (10, 1)
    sink.recovered += 1
    sink.start()
    try:
        sink.submit(events(50))
        wait(lambda: sink.backlog == 0, 10)
    finally:
        sink.close()
    assert victim.read_text() == "do not overwrite\n"
    assert not any(b"SECRET" in b for b in collector.bodies)
    assert sink.delivered == 50 and sink.dropped == 2
    invariant("planted symlinks", sink, collector)


def test_fds_and_threads_stay_flat_over_200_sends_with_faults(collector, tmp_path):
    """Each request has its own watchdog and connection: none may be left behind, whatever
    the collector answered."""
    modes = iter(["503", "redirect", "ok", "400", "ok"] * 60)
    collector.behave = lambda: next(modes, "ok")
    sink, _ = make_sink(collector.url, tmp_path / "spool", batch_size=1, max_backoff=0.02)
    sink.start()

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    try:
        sink.submit(events(5))
        wait(lambda: sink.backlog == 0, 20)
        base_fds, base_threads = fds(), threading.active_count()
        sink._wake.set()
        for k in range(6):
            sink.submit(events(20, 100 + k * 20))
        wait(lambda: sink.backlog == 0 and collector.posts >= 200, 120)
        time.sleep(0.2)
        after_fds, after_threads = fds(), threading.active_count()
    finally:
        sink.close()
    print(f"{collector.posts} posts (503/302/200/400 mixed): fds {base_fds} -> {after_fds}, "
          f"threads {base_threads} -> {after_threads}")
    assert after_fds <= base_fds + 2 and after_threads <= base_threads + 1
    invariant("200 mixed sends", sink, collector)


def in_ns(ns: str, fn):
    """fn() on a fresh thread moved into network namespace `ns` (setns is per thread):
    sockets it creates, and threads it starts, live there."""
    from tests.lab.netns import setns

    box: dict = {}

    def run() -> None:
        try:
            setns(ns)
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.lab
def test_daemon_healthz_follows_a_stalled_sink_and_livez_does_not(lab, tmp_path):
    """`nodeward run` itself, in a lab node with two open findings (pods reach the metadata
    endpoints): while the collector only redirects, /healthz turns 503 after stall_after
    and /livez stays 200; once it accepts, both 200 and every event is delivered."""
    node = lab.node("node", "10.82.0.1/24")
    lab.pod(node, "10.244.5.2/24", "10.244.5.1/24", host_if="calis1")
    collector = in_ns(node.name, Collector)
    state = {"mode": "redirect"}
    collector.behave = lambda: state["mode"]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "node_name: stall-node\nnode_cidrs: [10.82.0.0/24]\ninterval: 1\n"
        "metrics_address: 127.0.0.1:9737\n"
        f"daemon:\n  full_report_every: 1\n  sink: {{url: '{collector.url}', stall_after: 2,"
        f" max_backoff: 0.5, spool_dir: '{tmp_path / 'spool'}'}}\n")
    import subprocess
    import sys

    proc = lab.spawn(node, [sys.executable, "-m", "nodeward", "--config", str(cfg), "run"],
                     stdout=subprocess.PIPE)

    def get(path: str) -> tuple[int, str]:
        def fetch() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:9737{path}", timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
            except OSError as e:
                return 0, str(e)
        return in_ns(node.name, fetch)

    try:
        wait(lambda: "delivery stalled" in get("/healthz")[1], 30)
        assert get("/healthz")[0] == 503
        assert get("/livez") == (200, "ok\n")
        state["mode"] = "ok"
        wait(lambda: get("/healthz")[0] == 200, 20)
    finally:
        proc.send_signal(15)
        out, _ = proc.communicate(timeout=20)
        collector.close()
    assert proc.returncode == 0
    assert collector.gets == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert any(e["event"] == "sink_redirect_refused" for e in lines)
    produced = sum(1 for e in lines if e["event"].startswith("finding"))
    ids = {e["event_id"] for e in collector.accepted}
    spooled = sum(len(p.read_text().splitlines()) for p in (tmp_path / "spool").glob("*.jsonl"))
    print(f"daemon: /healthz 503 while redirected, 200 after; produced {produced} = "
          f"delivered {len(ids)} + spooled for the next start {spooled}")
    assert produced == len(ids) + spooled and len(collector.accepted) == len(ids)


def test_spool_dir_removed_under_the_sink_is_recreated(collector, tmp_path):
    collector.behave = lambda: "503"
    spool = tmp_path / "spool"
    sink, out = make_sink(collector.url, spool)
    sink.start()
    try:
        sink.submit(events(40))
        while spool.exists():  # an operator cleaning up (racing the sender's quarantine)
            shutil.rmtree(spool, ignore_errors=True)
        sink.submit(events(40, 40))
        collector.behave = lambda: "ok"
        wait(lambda: sink.backlog == 0, 20)
    finally:
        sink.close()
    # The first 40 went with the directory, except a batch the sender already held in
    # memory, which is delivered if its retry comes after the collector is back.
    assert sink.dropped in (20, 40) and sink.delivered == 80 - sink.dropped
    assert any(e["event"] == "sink_spool_recreated" for e in log_events(out))
    assert {e["seq"] for e in collector.accepted} >= set(range(40, 80))
    invariant("spool dir removed", sink, collector)
