"""The capability set the DaemonSet and the systemd unit grant (NET_ADMIN, NET_RAW,
SYS_PTRACE, DAC_READ_SEARCH) is what socket-to-process attribution needs, measured here:
`nodeward scan` runs as root with its bounding set cut to a candidate set and
no_new_privs (as in the pod: allowPrivilegeEscalation false), against two listeners, one
root process with full capabilities (like kubelet/etcd) and one owned by nobody (like a
non-root hostNetwork pod). Only the full set attributes both; each of SYS_PTRACE and
DAC_READ_SEARCH alone misses one of them, and the scan says which capability it lacked
(NW109). Then the daemon is run the way the pod runs it
(read-only root, tmpfs /tmp, those capabilities, no_new_privs) and must pass its probe."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

SETPRIV = shutil.which("setpriv")
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
LISTENER = ("import socket, sys, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "print(s.getsockname()[1], flush=True); time.sleep(120)\n")
BASE = ["net_admin", "net_raw"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None,
                                reason="needs root and setpriv (util-linux)")


@pytest.fixture(scope="module")
def listeners():
    procs = {
        "root": subprocess.Popen([PY, "-c", LISTENER], stdout=subprocess.PIPE, text=True),
        "nobody": subprocess.Popen([SETPRIV, "--reuid=65534", "--regid=65534",
                                    "--clear-groups", PY, "-c", LISTENER],
                                   stdout=subprocess.PIPE, text=True),
    }
    try:
        ports = {name: int(p.stdout.readline()) for name, p in procs.items()}
        yield {name: (ports[name], procs[name].pid) for name in procs}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def scan(caps: list[str]) -> dict:
    exe = Path(sys.executable).with_name("nodeward")
    bounding = "-all," + ",".join(f"+{c}" for c in caps)
    r = subprocess.run([SETPRIV, "--no-new-privs", "--inh-caps=-all",
                        f"--bounding-set={bounding}", str(exe), "scan", "--format", "json"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize(("extra", "attributed", "missing"), [
    ([], set(), {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}),
    (["sys_ptrace"], {"root"}, {"CAP_DAC_READ_SEARCH"}),
    (["dac_read_search"], set(), {"CAP_SYS_PTRACE"}),
    (["sys_ptrace", "dac_read_search"], {"root", "nobody"}, set()),
])
def test_attribution_needs_both_capabilities(listeners, extra, attributed, missing):
    """Which listeners get their pid, and NW109 naming exactly the capability whose refusal
    left the others anonymous (none with the full set)."""
    out = scan(BASE + extra)
    pids = {s["port"]: s["pid"] for s in out["sockets"]
            if s["address"] == "127.0.0.1" and s["protocol"] == "tcp"}
    got = {name for name, (port, pid) in listeners.items() if pids.get(port) == pid}
    assert got == attributed, (extra, pids, listeners)
    # The host's other processes are noise here (a process outside this test may refuse
    # even the full set): the finding must cover at least what this test's listeners show,
    # and never name a listener that was attributed.
    nw109 = [f for f in out["findings"] if f["id"] == "NW109"]
    assert len(nw109) == (1 if missing else len(nw109)) <= 1, out["findings"]
    if not nw109:
        return
    ev = nw109[0]["evidence"]
    assert missing <= set(ev["missing_capabilities"]), ev
    assert nw109[0]["severity"] == "medium"
    for name, (port, _) in listeners.items():
        listed = f"127.0.0.1:{port}/tcp" in ev["sockets"]
        assert listed == (name not in attributed) or ev["unattributed_sockets"] > len(
            ev["sockets"]), (name, ev)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_daemon_runs_like_the_pod():
    """The DaemonSet's runtime, approximated without a container runtime: read-only root
    filesystem (a private mount namespace with / remounted read-only), a tmpfs /tmp, the
    four capabilities, no_new_privs, NODEWARD_NODE_NAME set. `nodeward run` with the
    ConfigMap's config must serve /healthz on loopback (what the probes GET) and exit 0 on
    SIGTERM. Not covered: seccomp RuntimeDefault, cgroup limits, the image itself."""
    k8s = Path(__file__).resolve().parents[2] / "kubernetes"
    configmap = yaml.safe_load((k8s / "configmap.yaml").read_text())
    cfg = yaml.safe_load(configmap["data"]["config.yaml"])
    port = _free_port()
    cfg["metrics_address"] = f"127.0.0.1:{port}"  # the ConfigMap's 9737 may be taken here
    exe = Path(sys.executable).with_name("nodeward")
    # The pod's writable /tmp is an emptyDir; here a tmpfs on a directory of its own (a
    # tmpfs over /tmp would hide a checkout that lives under /tmp), named by TMPDIR.
    scratch = Path(tempfile.mkdtemp(prefix="nw-podtmp-", dir="/var/tmp"))
    script = ("mount --make-rprivate / && mount -o remount,bind,ro / "
              f"&& mount -t tmpfs -o size=16m tmpfs {scratch} "
              f"&& export TMPDIR={scratch} "
              f"&& printf '%s\\n' \"$NW_CFG\" > {scratch}/config.yaml "
              "&& if touch /nodeward-rw-probe 2>/dev/null; then exit 97; fi "
              f"&& exec {SETPRIV} --no-new-privs --inh-caps=-all "
              "--bounding-set=-all,+net_admin,+net_raw,+sys_ptrace,+dac_read_search "
              f"{exe} --config {scratch}/config.yaml run")
    env = {**os.environ, "NW_CFG": yaml.safe_dump(cfg), "NODEWARD_NODE_NAME": "pod-node",
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        status = None
        # the first cycle scans the whole host: on a loaded 2-core machine it
        # may take more than 30 s (seen once as a failure of this test under load)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                            timeout=2) as resp:
                    status, body = resp.status, resp.read()
                # 200 "starting" comes before the first scan; a SIGTERM then stops the
                # daemon before it scanned (the race this test lost under load): wait for
                # the "ok" of a scan done
                if body == b"ok\n":
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert status == 200, f"rc={proc.poll()}"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        scratch.rmdir()  # the tmpfs lived in the child's mount namespace only
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "scan_complete" and e.get("node") == "pod-node"
               for e in events), out
