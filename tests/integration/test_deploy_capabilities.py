"""The capability set the DaemonSet and the systemd unit grant (NET_ADMIN, NET_RAW,
SYS_PTRACE, DAC_READ_SEARCH) is what socket-to-process attribution needs, measured here:
`nodeward scan` runs as root with its bounding set cut to a candidate set and
no_new_privs (as in the pod: allowPrivilegeEscalation false), against two listeners, one
root process with full capabilities (like kubelet/etcd) and one owned by nobody (like a
non-root hostNetwork pod). Only the full set attributes both; each of SYS_PTRACE and
DAC_READ_SEARCH alone misses one of them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def scan_pids(caps: list[str]) -> dict[int, int | None]:
    exe = Path(sys.executable).with_name("nodeward")
    bounding = "-all," + ",".join(f"+{c}" for c in caps)
    r = subprocess.run([SETPRIV, "--no-new-privs", "--inh-caps=-all",
                        f"--bounding-set={bounding}", str(exe), "scan", "--format", "json"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode in (0, 1), r.stderr
    return {s["port"]: s["pid"] for s in json.loads(r.stdout)["sockets"]
            if s["address"] == "127.0.0.1" and s["protocol"] == "tcp"}


@pytest.mark.parametrize(("extra", "attributed"), [
    ([], set()),
    (["sys_ptrace"], {"root"}),
    (["dac_read_search"], set()),
    (["sys_ptrace", "dac_read_search"], {"root", "nobody"}),
])
def test_attribution_needs_both_capabilities(listeners, extra, attributed):
    pids = scan_pids(BASE + extra)
    got = {name for name, (port, pid) in listeners.items() if pids.get(port) == pid}
    assert got == attributed, (extra, pids, listeners)
