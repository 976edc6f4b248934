"""Authentication evidence against real servers in lab namespaces.

Debian's etcd with TLS and --client-cert-auth (certificates made here with openssl) and
without TLS; a kubelet-shaped HTTPS server (tests/lab/kubelet_server.py, argv[0] and comm
"kubelet") with anonymous auth on and off in the --config file it names. Each namespace has
a pod-facing interface, so a wildcard bind is reachable from pods. The scan must word each
finding by what it verified, rank it by exposure x authentication, and name the flag, the
config file line or the probe that decided.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.lab.authlab import (
    KUBELET_CONFIG,
    KUBELET_SERVER,
    etcd_tls_args,
    make_pki,
    start_etcd,
    start_kubelet,
)

pytestmark = pytest.mark.lab

NODEWARD = [sys.executable, "-m", "nodeward"]
CONFIG = "node_name: auth-lab\npod_cidrs: [10.244.0.0/16]\n"


def need_etcd() -> None:
    if not shutil.which("etcd"):
        if os.environ.get("CI") == "true":
            pytest.fail("etcd (etcd-server) is missing: tests/run.sh installs it")
        pytest.skip("etcd not installed (apt-get install etcd-server)")


def scan(lab, ns, probe: bool = True, *extra: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(CONFIG + ("" if probe else "auth_probe: false\n"))
    try:
        r = lab.sh(*NODEWARD, "--config", f.name, "scan", "--format", "json", *extra, ns=ns,
                   check=False, timeout=60)
    finally:
        os.unlink(f.name)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def node_with_pod(lab, role: str):
    ns = lab.netns(role)
    lab.pod(ns, "10.244.1.2/24", "10.244.1.1/24", host_if="cali1")
    return ns


def findings_for(doc: dict, component: str) -> dict[str, dict]:
    return {f["id"]: f for f in doc["findings"] if f["component"] == component}


def socket_auth(doc: dict, component: str, port: int) -> dict:
    [f] = [f for f in doc["findings"] if f["component"] == component and f["port"] == port
           and f["id"] == "NW102"]
    return f["evidence"]["authentication"]


def https_get(lab, ns, url: str, pki: Path, client_cert: bool) -> int:
    """Status of a GET from inside the namespace, with or without the client certificate."""
    cert = (f"ctx.load_cert_chain({str(pki / 'client.crt')!r}, {str(pki / 'client.key')!r})\n"
            if client_cert else "")
    code = ("import ssl,urllib.request,urllib.error\n"
            f"ctx=ssl.create_default_context(cafile={str(pki / 'ca.crt')!r})\n{cert}"
            f"try:\n print(urllib.request.urlopen({url!r},context=ctx,timeout=5).status)\n"
            "except urllib.error.HTTPError as e:\n print(e.code)\n"
            "except (urllib.error.URLError, OSError) as e:\n print(0)\n")
    return int(lab.sh(sys.executable, "-c", code, ns=ns).stdout.strip())


def test_etcd_demanding_client_certs_is_one_level_lower_and_says_why(lab, pki, tmp_path):
    need_etcd()
    ns = node_with_pod(lab, "etcdtls")
    start_etcd(lab, ns, tmp_path / "data", "https://0.0.0.0:2379", *etcd_tls_args(pki))
    # The oracle: etcd serves a client with a certificate, refuses one without.
    assert https_get(lab, ns, "https://127.0.0.1:2379/version", pki, client_cert=True) == 200
    assert https_get(lab, ns, "https://127.0.0.1:2379/version", pki, client_cert=False) == 0

    doc = scan(lab, ns)
    client = findings_for(doc, "etcd-client")
    assert "NW103" not in client  # not "unauthenticated ... reachable from pods"
    assert set(client) >= {"NW102", "NW201"}  # bound wide, and no firewall stops pods
    for f in client.values():
        assert f["severity"] == "high", f  # critical by catalog, one level lower
        assert "requires authentication" in f["title"], f["title"]
        assert "unauthenticated" not in f["title"]
    ev = client["NW102"]["evidence"]["authentication"]
    assert ev["state"] == "required"
    assert ev["decided_by"].startswith("probe: TLS handshake with ")
    assert "without a client certificate refused" in ev["decided_by"]
    assert ev["probe"]["tls"] == "client certificate required" and "status" not in ev["probe"]
    assert ev["settings"]["--client-cert-auth"] == "true"
    # The key file path is kept (a path is not a secret), and no key material is anywhere.
    assert "BEGIN" not in json.dumps(doc)

    flags_only = scan(lab, ns, probe=False)
    ev = socket_auth(flags_only, "etcd-client", 2379)
    assert ev["state"] == "required" and ev["probe"] == {}
    assert ev["decided_by"] == ("--client-cert-auth=true with --trusted-ca-file: client "
                                "certificates are required")


def test_etcd_without_tls_is_verified_unauthenticated(lab, tmp_path):
    need_etcd()
    ns = node_with_pod(lab, "etcdplain")
    start_etcd(lab, ns, tmp_path / "data", "http://0.0.0.0:2379")
    doc = scan(lab, ns)
    client = findings_for(doc, "etcd-client")
    nw103 = client["NW103"]
    assert nw103["severity"] == "critical"
    assert nw103["title"].startswith("unauthenticated etcd-client on ")
    ev = nw103["evidence"]["authentication"]
    assert ev["state"] == "none"
    assert ev["decided_by"].startswith("probe: GET http://"), ev
    assert ev["decided_by"].endswith("/version without credentials -> 200 with a body")
    assert ev["probe"]["body"] is True and ev["probe"]["tls"] == "no"
    assert "etcdserver" not in json.dumps(doc)  # the body itself is never in a finding
    ev = socket_auth(scan(lab, ns, probe=False), "etcd-client", 2379)
    assert ev["state"] == "none"
    assert ev["decided_by"] == ("--listen-client-urls http://0.0.0.0:2379: plain HTTP, no TLS "
                                "and no client certificates")


@pytest.mark.parametrize("anon", [True, False], ids=["anonymous", "hardened"])
def test_kubelet_anonymous_on_and_off(lab, pki, tmp_path, anon):
    ns = node_with_pod(lab, "kla" if anon else "klh")
    config = tmp_path / "config.yaml"
    config.write_text(KUBELET_CONFIG.format(anon=str(anon).lower(),
                                          mode="AlwaysAllow" if anon else "Webhook"))
    p = start_kubelet(lab, ns, pki, config)
    doc = scan(lab, ns)
    [sock] = [s for s in doc["sockets"] if s["port"] == 10250]
    assert (sock["component"], sock["pid"], sock["scope"]) == ("kubelet", p.pid, "wildcard")
    kubelet = findings_for(doc, "kubelet")
    ev = kubelet["NW102"]["evidence"]["authentication"]
    assert ev["settings"]["--config"] == str(config)
    line = 5  # authentication.anonymous.enabled in KUBELET_CONFIG
    assert ev["settings"][f"{config}:{line} authentication.anonymous.enabled"] == str(anon).lower()
    if anon:
        assert kubelet["NW103"]["severity"] == "critical"  # anonymous kubelet, pods reach it
        assert kubelet["NW103"]["title"].startswith("unauthenticated kubelet on ")
        assert kubelet["NW102"]["severity"] == "critical"
        assert ev["state"] == "none"
        assert ev["decided_by"].startswith("probe: GET https://127.0.0.1:10250/pods without "
                                           "credentials -> 200 with a body")
        assert "secret-pod" not in json.dumps(doc)  # the PodList is never in a finding
    else:
        assert "NW103" not in kubelet
        assert kubelet["NW102"]["severity"] == "high"
        assert "requires authentication" in kubelet["NW102"]["title"]
        assert ev["state"] == "required"
        assert ev["decided_by"] == ("probe: GET https://127.0.0.1:10250/pods without "
                                    "credentials -> 401 (authentication required)")
    # Without the probe, the config file line decides, and says so.
    ev = socket_auth(scan(lab, ns, probe=False), "kubelet", 10250)
    where = f"{config}:{line} authentication.anonymous.enabled"
    if anon:
        assert ev["state"] == "none"
        assert ev["decided_by"].startswith(f"{where}=true and {config}:7 authorization.mode="
                                           "AlwaysAllow")
    else:
        assert ev["state"] == "required"
        assert ev["decided_by"].startswith(f"{where}=false")


def test_fake_kubelet_that_answers_nothing_is_not_verified(lab):
    """A socket named kubelet that never answers: no claim either way."""
    ns = node_with_pod(lab, "klmute")
    lab.listen(ns, "kubelet", tcp=["0.0.0.0:10250"])
    start = time.monotonic()
    doc = scan(lab, ns)
    took = time.monotonic() - start
    kubelet = findings_for(doc, "kubelet")
    ev = kubelet["NW102"]["evidence"]["authentication"]
    assert ev["state"] == "unknown" and ev["probe"]["tls"] == "no answer"
    assert "authentication not verified" in kubelet["NW102"]["title"]
    assert kubelet["NW102"]["severity"] == "high" and "NW103" not in kubelet
    assert took < 15


def test_config_file_of_a_containerised_kubelet_is_read_through_its_root(lab, pki, tmp_path):
    """The kubelet runs in its own mount namespace, where its --config file lives on a
    tmpfs the host cannot see at that path (as in a static pod): nodeward finds the file
    through /proc/PID/root and names its line."""
    if not shutil.which("unshare"):
        if os.environ.get("CI") == "true":
            pytest.fail("unshare (util-linux) is missing: tests/run.sh installs it")
        pytest.skip("needs unshare (util-linux)")
    ns = node_with_pod(lab, "klctr")
    private = tmp_path / "ctr"
    private.mkdir()
    config = private / "config.yaml"
    text = KUBELET_CONFIG.format(anon="false", mode="Webhook")
    script = (f"mount -t tmpfs tmpfs {private} && cat > {config} <<'EOF'\n{text}EOF\n"
              f"exec -a kubelet {sys.executable} {KUBELET_SERVER} --netns {ns.name} "
              f"--config {config} --tls-cert-file {pki / 'server.crt'} "
              f"--tls-private-key-file {pki / 'server.key'}\n")
    p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                          script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True,
                         env={**os.environ, "PYTHONHOME": sys.base_prefix})
    lab.procs.append(p)
    lab._wait_line(p, "ready", 10)
    assert not config.exists()  # not at that path in the host's mount namespace
    ev = socket_auth(scan(lab, ns, probe=False), "kubelet", 10250)
    assert ev["state"] == "required"
    assert ev["decided_by"].startswith(f"{config}:5 authentication.anonymous.enabled=false")
