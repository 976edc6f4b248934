"""No secret leaves the process: a real listener started with secret-bearing arguments, then
every output nodeward has — scan table, json, jsonl, log, and `nodeward run`'s log lines,
HTTP sink payload and ClusterPolicyReport (both received by a real local HTTP server in the
lab namespace) — must carry none of them, while still showing that process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nodeward.redact import MASK
from tests.integration.test_daemon_lab import DaemonLog

pytestmark = pytest.mark.lab

NODEWARD = [sys.executable, "-m", "nodeward"]
RECORDER = Path(__file__).resolve().parent.parent / "lab" / "recorder.py"
SECRETS = {
    "password": "pw-Hunter2-x91",
    "token": "tok-9f8e7d6c5b4a",
    "userinfo": "urlpass-Q7w8e9",
    "query": "qtoken-Zx12Cv34",
    "bearer": "eyJhbGciOiJIUzI1NiJ9.bearer-K4j5",
    "etcd_key": "etcdkey-Mn0pQr",
}
SECRET_ARGS = [
    f"--basic-auth-password={SECRETS['password']}",
    "--token", SECRETS["token"],
    f"--etcd-servers=https://root:{SECRETS['userinfo']}@127.0.0.1:2379",
    f"--oidc-issuer-url=https://issuer.example/?client=a&password={SECRETS['query']}",
    f"--audit-webhook-header=Authorization: Bearer {SECRETS['bearer']}",
    "--etcd-keyfile", SECRETS["etcd_key"],
    "--v=2",
]


def assert_clean(text: str, where: str) -> None:
    leaked = [k for k, v in SECRETS.items() if v in text]
    assert not leaked, f"{where} leaks {leaked}"


@pytest.fixture
def node(lab):
    ns = lab.netns("redact")
    lab.pod(ns, "10.244.1.2/24", "10.244.1.1/24", host_if="cali1")
    proc = lab.listen(ns, "kube-apiserver", tcp=["0.0.0.0:6443"], extra=SECRET_ARGS)
    with open(f"/proc/{proc.pid}/cmdline", "rb") as f:  # the secrets are really there
        assert SECRETS["password"].encode() in f.read()
    return lab, ns, proc


def scan(lab, ns, fmt: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("node_name: redact-lab\npod_cidrs: [10.244.0.0/16]\n")
    try:
        r = lab.sh(*NODEWARD, "--config", f.name, "scan", "--format", fmt, ns=ns, check=False,
                   timeout=60)
    finally:
        os.unlink(f.name)
    assert r.returncode in (0, 1), r.stderr
    assert_clean(r.stderr, f"scan --format {fmt} stderr")
    return r.stdout


def test_scan_outputs_carry_no_secret(node):
    lab, ns, proc = node
    doc = json.loads(out := scan(lab, ns, "json"))
    assert_clean(out, "json")
    [sock] = [s for s in doc["sockets"] if s["pid"] == proc.pid]
    # The process and its harmless flags are still shown; only the secrets are masked.
    assert sock["component"] == "kube-apiserver" and "--v=2" in sock["cmdline"]
    assert f"--basic-auth-password={MASK}" in sock["cmdline"]
    assert sock["cmdline"][sock["cmdline"].index("--token") + 1] == MASK
    assert sock["cmdline"][sock["cmdline"].index("--etcd-keyfile") + 1] == MASK
    assert f"https://root:{MASK}@127.0.0.1:2379" in " ".join(sock["cmdline"])
    [nw102] = [f for f in doc["findings"] if f["id"] == "NW102" and f["pid"] == proc.pid]
    assert MASK in nw102["evidence"]["cmdline"]
    for fmt in ("jsonl", "log", "table"):
        out = scan(lab, ns, fmt)
        assert_clean(out, fmt)
        assert "kube-apiserver" in out, fmt  # the finding is there, only masked
    assert MASK in scan(lab, ns, "jsonl")


def test_daemon_log_sink_and_policy_report_carry_no_secret(node, tmp_path):
    lab, ns, proc = node
    received = tmp_path / "received.jsonl"
    rec = subprocess.Popen([sys.executable, str(RECORDER), "--netns", ns.name, str(received)],
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    lab.procs.append(rec)
    port = int(rec.stdout.readline().split()[1])
    token = tmp_path / "token"
    token.write_text("lab-api-token\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "node_name: redact-lab\npod_cidrs: [10.244.0.0/16]\ninterval: 1\n"
        "metrics_address: 127.0.0.1:9737\n"
        "daemon:\n  policy_report: true\n"
        f"  sink: {{url: 'http://127.0.0.1:{port}/v1/findings', "
        f"spool_dir: '{tmp_path / 'spool'}', timeout: 2}}\n"
        f"cluster:\n  kubernetes: {{api_url: 'http://127.0.0.1:{port}', "
        f"token_file: '{token}', timeout: 2, retries: 0}}\n")
    log = DaemonLog.start(lab, ns, cfg)
    try:
        log.wait_for(lambda e: e["event"] == "policy_report_written", 30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            reqs = [json.loads(x) for x in received.read_text().splitlines()] \
                if received.exists() else []
            if any(r["method"] == "POST" for r in reqs) and any(
                    r["method"] == "PATCH" for r in reqs):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"sink and API got {[r['method'] for r in reqs]}")
    finally:
        log.proc.terminate()
        log.proc.wait(10)
    rest = log.partial.decode() + log.proc.stdout.read()
    daemon_out = "\n".join(json.dumps(e) for e in log.events) + rest
    assert_clean(daemon_out, "daemon log")
    opened = [e for e in log.events if e["event"] == "finding_opened" and e["pid"] == proc.pid]
    assert opened and MASK in opened[0]["evidence"]["cmdline"]
    sink = [r for r in reqs if r["method"] == "POST"]
    report = [r for r in reqs if r["method"] == "PATCH"]
    assert_clean(received.read_text(), "sink payload / PolicyReport")
    events = [e for r in sink for e in json.loads(r["body"])["events"]]
    mine = [e for e in events if e.get("pid") == proc.pid]
    assert mine and MASK in mine[0]["evidence"]["cmdline"]  # the field was shipped, masked
    body = json.loads(report[0]["body"])
    assert body["kind"] == "ClusterPolicyReport"
    assert any(r["properties"].get("pid") == str(proc.pid) for r in body["results"])
