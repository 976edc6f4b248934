"""The redaction rules (nodeward.redact): what each rule masks, what it must leave alone."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest

from nodeward.model import Finding, Severity
from nodeward.redact import MASK, redact_argv, redact_text, scrub
from nodeward.report import policyreport
from nodeward.report.logs import log_finding, make_logger

SECRET = "hunter2-Zq9"


@pytest.mark.parametrize("text", [
    f"--basic-auth-password={SECRET}",
    f"--token={SECRET}",
    f"--etcd-keyfile-data={SECRET}",
    f"--client-secret={SECRET} --v=2",
    f"--aws-credentials={SECRET}",
    f"https://admin:{SECRET}@etcd.example:2379/v2/keys",
    f"postgres://u:{SECRET}@db/x",
    f"http://h:80/path?user=a&password={SECRET}&x=1",
    f"http://h/cb?access_token={SECRET}",
    f"ETCD_PASSWORD={SECRET} etcd",
    f"Authorization: Bearer {SECRET}",
    f"authorization=Basic {SECRET}",
    f"curl -H 'Authorization: Bearer {SECRET}' http://x",
    f"the kubelet got bearer eyJhbGciOi.{SECRET}.sig from the file",
    f'{{"api_key": "x", "token={SECRET}"}}',
    f"kube-apiserver --v=2 --token {SECRET} --x",
    f"etcd --peer-key\t{SECRET}",
])
def test_text_rules_mask_the_secret(text):
    out = redact_text(text)
    assert SECRET not in out and MASK in out, out


@pytest.mark.parametrize("text", [
    "--tls-private-key-file=/etc/kubernetes/pki/apiserver.key",
    "--service-account-key-file=/etc/kubernetes/pki/sa.pub",
    "--token-auth-file=/etc/kubernetes/tokens.csv",
    "--client-cert-auth=true --trusted-ca-file=/etc/ssl/ca.pem",
    "https://10.0.0.1:2379,http://127.0.0.1:2379",
    "Keep --anonymous-auth=false and --authorization-mode=Webhook",
    "bearer tokens and basic authentication are not secrets by name",
    "kubelet --config=/var/lib/kubelet/config.yaml --v=2",
    "user@host.example",
    "kube-apiserver --service-account-key-file /etc/kubernetes/pki/sa.pub --v=2",
    "--enable-bootstrap-token-auth --v=2",
])
def test_text_rules_leave_non_secrets(text):
    assert redact_text(text) == text


def test_argv_both_option_forms():
    argv = ["kube-apiserver", "--basic-auth-password", SECRET, f"--oidc-client-secret={SECRET}",
            "--token", SECRET, "--enable-token-auth", "--v=2", "--etcd-keyfile",
            "/etc/etcd/key.pem", "--key", SECRET, "positional"]
    out = redact_argv(argv)
    assert SECRET not in " ".join(out)
    assert out == ("kube-apiserver", "--basic-auth-password", MASK,
                   f"--oidc-client-secret={MASK}", "--token", MASK, "--enable-token-auth",
                   "--v=2", "--etcd-keyfile", "/etc/etcd/key.pem", "--key", MASK, "positional")


def test_argv_secret_in_an_embedded_command():
    out = redact_argv(["sh", "-c", f"exec etcd --password={SECRET} --peer-url=http://a:b@h"])
    assert SECRET not in " ".join(out) and ":b@" not in " ".join(out)


def test_lists_of_sentences_are_not_taken_for_command_lines():
    path = ["-m comment --comment token-bucket -j ACCEPT", "filter INPUT policy DROP"]
    assert scrub({"rule_path": path}) == {"rule_path": path}


def test_scrub_walks_documents_and_secret_named_keys():
    doc = {"a": [{"cmdline": ["x", "--password", SECRET]}], "token": SECRET,
           "key_file": "/etc/k.pem", "n": 3, "note": f"http://u:{SECRET}@h"}
    out = scrub(doc)
    assert SECRET not in json.dumps(out)
    assert out["key_file"] == "/etc/k.pem" and out["n"] == 3


def _finding() -> Finding:
    return Finding("NW102", Severity.HIGH, f"x on http://u:{SECRET}@h", "fix it",
                   component="kubelet", process="kubelet",
                   evidence={"cmdline": f"kubelet --token={SECRET}"})


def test_log_lines_and_policy_report_carry_no_secret():
    buf = io.StringIO()
    log = make_logger("n1", buf)
    log_finding(log, _finding())
    log.info("anything", detail=f"Authorization: Bearer {SECRET}")
    assert SECRET not in buf.getvalue() and MASK in buf.getvalue()
    report = policyreport.build("n1", "2026-12-01T00:00:00Z", [_finding()])
    assert SECRET not in json.dumps(report)


def test_policy_report_carries_the_authentication_decision():
    f = Finding("NW103", Severity.CRITICAL, "unauthenticated kubelet on 0.0.0.0:10250/tcp",
                "fix", component="kubelet", evidence={"authentication": {
                    "state": "none", "decided_by": "probe: GET https://127.0.0.1:10250/pods "
                    "without credentials -> 200 with a body"}})
    [r] = policyreport.build("n1", "2026-12-01T00:00:00Z", [f])["results"]
    assert r["properties"]["authentication"] == "none"
    assert r["properties"]["authentication_decided_by"].endswith("-> 200 with a body")


def test_collected_process_command_line_is_redacted_at_the_source():
    """A real process with a secret in its argv: the ProcessInfo the collector builds for
    it (what every later stage sees) holds the mask, not the secret."""
    from nodeward.collect.procs import process_info

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                          f"--db-password={SECRET}", "--token", SECRET])
    try:
        for _ in range(50):  # until the exec has happened and the argv is the child's
            info = process_info(p.pid)
            if info is not None and f"--db-password={MASK}" in info.cmdline:
                break
            time.sleep(0.02)
        assert info is not None and SECRET not in " ".join(info.cmdline)
        assert info.cmdline[-2:] == ("--token", MASK)
    finally:
        p.kill()
        p.wait()
