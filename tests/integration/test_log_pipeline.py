"""The daemon's stdout through a real log pipeline, as most clusters collect it.

`nodeward run` in a node namespace writes its JSON lines to a file (as the container runtime
or journald would); Debian's rsyslog in that namespace tails it (imfile), checks each line
is JSON (mmjsonparse) and forwards it over TCP (omfwd, disk-assisted queue) to a central
rsyslog in another namespace, which writes what it receives to a file. A kubelet port opens
and closes meanwhile. Every line the agent wrote must arrive exactly once, byte for byte,
parseable, with the stable schema's fields. Both rsyslogd run with their own config, pid
and work dirs under the test's tmp dir, never the system's.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

HEAD = ("timestamp", "level", "event", "node")
FINDING = ("finding_id", "severity", "title", "component", "protocol", "address", "port",
           "scope", "remediation", "evidence")
PORT = 10514

CENTRAL = """
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imtcp" MaxSessions="16")
template(name="line" type="string" string="%rawmsg%\\n")
ruleset(name="in") {{
  action(type="omfile" file="{out}" template="line" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" port="{port}" address="{addr}" ruleset="in")
"""

NODE = """
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imfile" mode="polling" PollingInterval="1")
module(load="mmjsonparse")
template(name="line" type="string" string="%rawmsg%\\n")
ruleset(name="fwd") {{
  action(type="mmjsonparse" cookie="" useRawMsg="on")
  if $parsesuccess == "OK" then {{
    action(type="omfwd" target="{central}" port="{port}" protocol="tcp" template="line"
           queue.type="LinkedList" queue.filename="fwdq" queue.saveOnShutdown="on"
           action.resumeRetryCount="-1" action.resumeInterval="1")
  }} else {{
    action(type="omfile" file="{unparsed}" template="line")
  }}
}}
input(type="imfile" File="{log}" Tag="nodeward" ruleset="fwd" addMetadata="off"
      freshStartTail="off" reopenOnTruncate="on")
"""


def _rsyslogd(lab, ns, base: Path, name: str, conf: str, **fmt: object):
    d = base / name
    (d / "work").mkdir(parents=True)
    (d / "rsyslog.conf").write_text(conf.format(work=d / "work", **fmt))
    check = lab.sh("rsyslogd", "-N1", "-f", str(d / "rsyslog.conf"), ns=ns, check=False)
    assert check.returncode == 0, check.stderr + check.stdout
    return lab.spawn(ns, ["rsyslogd", "-n", "-f", str(d / "rsyslog.conf"),
                          "-i", str(d / "rsyslogd.pid")])


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_daemon_lines_arrive_once_each_through_rsyslog(lab, tmp_path):
    if shutil.which("rsyslogd") is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("rsyslogd missing (apt package rsyslog)")
        pytest.skip("needs rsyslogd (apt package rsyslog)")
    node = lab.node("node", "10.81.0.1/24")
    central = lab.node("central", "10.81.0.2/24")
    lab.pod(node, "10.244.9.2/24", "10.244.9.1/24", host_if="calip1")
    agent_log, received = tmp_path / "agent.log", tmp_path / "central.log"
    _rsyslogd(lab, central, tmp_path, "central", CENTRAL, out=received, port=PORT,
              addr="10.81.0.2")
    _wait(lambda: lab.connect(node, "10.81.0.2", PORT), 15, "the central rsyslog")
    agent_log.touch()
    _rsyslogd(lab, node, tmp_path, "node", NODE, central="10.81.0.2", port=PORT,
              log=agent_log, unparsed=tmp_path / "unparsed.log")

    cfg = tmp_path / "config.yaml"
    cfg.write_text("node_name: pipeline-node\nnode_cidrs: [10.81.0.0/24]\ninterval: 1\n"
                   "metrics_address: 127.0.0.1:9737\ndaemon: {full_report_every: 3}\n")
    with agent_log.open("a") as out:
        daemon = lab.spawn(node, [sys.executable, "-m", "nodeward", "--config", str(cfg),
                                  "run"], stdout=out)

    def seen(pred) -> bool:
        return any(pred(json.loads(x)) for x in _lines(agent_log))

    _wait(lambda: seen(lambda e: e["event"] == "scan_complete"), 20, "the first scan")
    kubelet = lab.listen(node, "kubelet", tcp=["10.244.9.1:10255"])
    _wait(lambda: seen(lambda e: e["event"] == "finding_opened"
                       and e.get("finding_id") == "NW101"), 15, "NW101 opened")
    lab.stop(kubelet)
    _wait(lambda: seen(lambda e: e["event"] == "finding_resolved"
                       and e.get("finding_id") == "NW101"), 15, "NW101 resolved")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0

    sent = _lines(agent_log)
    _wait(lambda: len(_lines(received)) >= len(sent), 30,
          f"{len(sent)} lines at the central rsyslog")
    time.sleep(1.5)  # anything extra (a duplicate) would arrive by now
    got = _lines(received)
    counts = collections.Counter(got)
    assert len(set(sent)) == len(sent)  # each line is its own identity (timestamp, event)
    assert counts == collections.Counter(sent), (
        f"missing {len(set(sent) - set(got))}, unexpected {len(set(got) - set(sent))}, "
        f"duplicated {sum(1 for n in counts.values() if n > 1)}")
    events = [json.loads(x) for x in got]
    findings = [e for e in events if e["event"] in ("finding_opened", "finding_resolved",
                                                    "finding")]
    for e in events:
        assert list(e)[:4] == list(HEAD), e  # the fixed keys first, in order
    for e in findings:
        assert all(k in e for k in FINDING), e
    kinds = collections.Counter(e["event"] for e in events)
    assert kinds["finding_opened"] >= 1 and kinds["finding_resolved"] >= 1
    assert not _lines(tmp_path / "unparsed.log")
    print(f"rsyslog imfile -> mmjsonparse -> omfwd/TCP -> central: {len(got)} of "
          f"{len(sent)} lines arrived, each exactly once; {dict(kinds)}")
