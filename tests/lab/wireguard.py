"""WireGuard in lab namespaces through Debian's wireguard-go over TUN (the kernel here has
no WireGuard module). Each device gets a unique name, because UAPI sockets in
/var/run/wireguard are shared by all namespaces; teardown kills the daemon and removes the
socket even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .netns import Lab, Netns

UAPI_DIR = Path("/var/run/wireguard")


def have_wireguard_go() -> str | None:
    """None when userspace WireGuard can run here, else why not."""
    for tool in ("wireguard-go", "wg"):
        if not shutil.which(tool):
            return f"needs {tool}"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def genkey() -> tuple[str, str]:
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True,
                          check=True).stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                         check=True).stdout.strip()
    return priv, pub


@dataclass
class WgNode:
    ns: Netns
    ifname: str
    private_key: str
    public_key: str
    port: int
    proc: subprocess.Popen

    @property
    def sock(self) -> Path:
        return UAPI_DIR / f"{self.ifname}.sock"


class WgLab:
    """Start, configure and always tear down wireguard-go devices in a Lab."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.nodes: list[WgNode] = []
        self._n = 0

    def device(self, ns: Netns, address: str, port: int = 51820) -> WgNode:
        self._n += 1
        ifname = f"{self.lab.prefix}wg{self._n}"[:15]
        env = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
        proc = self.lab.spawn(ns, ["wireguard-go", "-f", ifname], env=env)
        node = WgNode(ns, ifname, *genkey(), port, proc)
        self.nodes.append(node)
        deadline = time.monotonic() + 10
        while not node.sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go {ifname} did not create {node.sock}")
            time.sleep(0.05)
        keyfile = Path(f"/tmp/{ifname}.key")
        fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(node.private_key + "\n")
        try:
            self.lab.run(ns, ["wg", "set", ifname, "listen-port", str(port),
                              "private-key", str(keyfile)])
        finally:
            keyfile.unlink()
        self.lab.run(ns, ["ip", "addr", "add", address, "dev", ifname])
        self.lab.run(ns, ["ip", "link", "set", ifname, "up"])
        return node

    def peer(self, on: WgNode, other_public_key: str, allowed_ips: list[str],
             endpoint: str | None = None) -> None:
        argv = ["wg", "set", on.ifname, "peer", other_public_key,
                "allowed-ips", ",".join(allowed_ips)]
        if endpoint:
            argv += ["endpoint", endpoint]
        self.lab.run(on.ns, argv)

    def remove_peer(self, on: WgNode, other_public_key: str) -> None:
        self.lab.run(on.ns, ["wg", "set", on.ifname, "peer", other_public_key, "remove"])

    def close(self) -> None:
        for node in self.nodes:
            self.lab.stop(node.proc)
            with contextlib.suppress(FileNotFoundError):
                node.sock.unlink()
        self.nodes.clear()

    def __enter__(self) -> WgLab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
