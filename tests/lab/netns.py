"""A lab of network namespaces: nodes on a bridge, a pod namespace behind each node.

Every namespace, interface and process the lab creates carries a unique prefix and is removed
by `Lab.close()` (also registered with atexit), so a failing test never leaves debris behind.
Traffic stays inside the namespaces the lab made.

    with Lab() as lab:
        a = lab.node("a", "10.77.0.1/24")
        pod = lab.pod(a, "10.244.1.2/24", gateway="10.244.1.1/24", host_if="cali")
        lab.spawn(a, ["etcd", ...])
        lab.run(pod, ["ip", "route"])
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
HERE = Path(__file__).resolve().parent
LISTENER = HERE / "listener.py"


def have_netns() -> str | None:
    """None when the lab can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2 (ip)"
    probe = f"nwprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def setns(name: str) -> None:
    """Move the calling thread into namespace `name` (used in child processes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Netns:
    name: str
    role: str
    addresses: list[str] = field(default_factory=list)  # "10.77.0.1/24" forms

    @property
    def ip(self) -> str:
        return self.addresses[0].split("/")[0] if self.addresses else ""


class Lab:
    _counter = 0

    def __init__(self, prefix: str | None = None) -> None:
        Lab._counter += 1
        # Short: interface names are limited to 15 characters.
        self.prefix = prefix or f"nw{os.getpid() % 100000}{Lab._counter}"
        self.namespaces: list[Netns] = []
        self.procs: list[subprocess.Popen] = []
        self._switch: Netns | None = None
        self._ifcount = 0
        atexit.register(self.close)

    # -- plumbing -------------------------------------------------------------------------
    def sh(self, *argv: str, ns: Netns | str | None = None, check: bool = True,
           timeout: float = 30) -> subprocess.CompletedProcess:
        cmd = list(argv)
        if ns is not None:
            name = ns.name if isinstance(ns, Netns) else ns
            cmd = ["ip", "netns", "exec", name, *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def run(self, ns: Netns, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return self.sh(*argv, ns=ns, **kw)

    def _ifname(self, tag: str) -> str:
        self._ifcount += 1
        name = f"{self.prefix}{tag}{self._ifcount}"
        if len(name) > 15:
            raise ValueError(f"interface name too long: {name}")
        return name

    def netns(self, role: str) -> Netns:
        ns = Netns(f"{self.prefix}-{role}", role)
        self.sh("ip", "netns", "add", ns.name)
        self.namespaces.append(ns)
        self.sh("ip", "link", "set", "lo", "up", ns=ns)
        return ns

    def veth(self, a: Netns, a_if: str, b: Netns, b_if: str) -> None:
        """A veth pair with ends named a_if in a and b_if in b, both up."""
        tmp_a, tmp_b = self._ifname("x"), self._ifname("y")
        self.sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        self.sh("ip", "link", "set", tmp_a, "netns", a.name)
        self.sh("ip", "link", "set", tmp_b, "netns", b.name)
        self.sh("ip", "link", "set", tmp_a, "name", a_if, ns=a)
        self.sh("ip", "link", "set", tmp_b, "name", b_if, ns=b)
        self.sh("ip", "link", "set", a_if, "up", ns=a)
        self.sh("ip", "link", "set", b_if, "up", ns=b)

    def addr(self, ns: Netns, ifname: str, cidr: str) -> None:
        fam = "-6" if ":" in cidr else "-4"
        extra = ["nodad"] if ":" in cidr else []
        self.sh("ip", fam, "addr", "add", cidr, "dev", ifname, *extra, ns=ns)
        ns.addresses.append(cidr)

    def sysctl(self, ns: Netns, key: str, value: str) -> None:
        self.sh("sysctl", "-qw", f"{key}={value}", ns=ns)

    # -- topology -------------------------------------------------------------------------
    @property
    def switch(self) -> Netns:
        if self._switch is None:
            self._switch = self.netns("sw")
            self.sh("ip", "link", "add", "br0", "type", "bridge", ns=self._switch)
            self.sh("ip", "link", "set", "br0", "up", ns=self._switch)
        return self._switch

    def node(self, role: str, cidr: str, ifname: str = "eth0") -> Netns:
        """A namespace plugged into the lab bridge with `cidr` on `ifname`."""
        ns = self.netns(role)
        port = f"p{len(self.namespaces)}"
        self.veth(ns, ifname, self.switch, port)
        self.sh("ip", "link", "set", port, "master", "br0", ns=self.switch)
        self.addr(ns, ifname, cidr)
        return ns

    def pod(self, node: Netns, cidr: str, gateway: str, host_if: str = "cali0",
            role: str | None = None) -> Netns:
        """A pod namespace behind `node`: `host_if` in the node holds `gateway`, the pod
        routes everything through it, and the node forwards."""
        ns = self.netns(role or f"pod{len(self.namespaces)}")
        self.veth(node, host_if, ns, "eth0")
        self.addr(node, host_if, gateway)
        self.addr(ns, "eth0", cidr)
        gw = gateway.split("/")[0]
        fam = "-6" if ":" in gw else "-4"
        self.sh("ip", fam, "route", "add", "default", "via", gw, ns=ns)
        self.sysctl(node, "net.ipv4.ip_forward", "1")
        return ns

    def route(self, ns: Netns, dest: str, via: str) -> None:
        fam = "-6" if ":" in dest else "-4"
        self.sh("ip", fam, "route", "replace", dest, "via", via, ns=ns)

    # -- processes --------------------------------------------------------------------------
    def spawn(self, ns: Netns, argv: list[str], wait_for: str | None = None,
              timeout: float = 20.0, **popen) -> subprocess.Popen:
        """Start a long-running process in `ns`; optionally wait for a line on stdout."""
        kw = {"stdout": subprocess.PIPE if wait_for else subprocess.DEVNULL,
              "stderr": subprocess.DEVNULL, "text": True, "start_new_session": True,
              **popen}
        p = subprocess.Popen(["ip", "netns", "exec", ns.name, *argv], **kw)
        self.procs.append(p)
        if wait_for:
            self._wait_line(p, wait_for, timeout)
        return p

    def listen(self, ns: Netns, name: str, tcp: list[str] = (), udp: list[str] = (),
               timeout: float = 10.0, device: str | None = None,
               extra: list[str] = ()) -> subprocess.Popen:
        """A listener process named `name` (comm and argv[0]) bound to each ADDR:PORT.

        Exec'd directly (not through `ip netns exec`) so argv[0] is exactly `name`;
        the child enters the namespace itself.
        """
        args = [name, str(LISTENER), "--netns", ns.name]
        for spec in tcp:
            args += ["--tcp", spec]
        for spec in udp:
            args += ["--udp", spec]
        if device:
            args += ["--device", device]
        args += list(extra)  # flags a real component would carry (listener.py ignores them)
        # Python locates its stdlib from argv[0]; a name that is also on PATH (say
        # wireguard-go) would send it to the wrong prefix, so pin it.
        env = {**os.environ, "PYTHONHOME": sys.base_prefix}
        p = subprocess.Popen(args, executable=sys.executable, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env=env)
        self.procs.append(p)
        self._wait_line(p, "ready", timeout)
        return p

    @staticmethod
    def _wait_line(p: subprocess.Popen, marker: str, timeout: float) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                err = p.stderr.read() if p.stderr else ""
                raise RuntimeError(f"process exited ({p.returncode}) before {marker!r}: {err}")
            if sel.select(timeout=0.2):
                line = p.stdout.readline()
                if marker in line:
                    return
        raise TimeoutError(f"no {marker!r} within {timeout}s")

    def stop(self, p: subprocess.Popen) -> None:
        """SIGTERM, then SIGKILL, to the process group when it leads one (Lab-started
        processes do), else to the process."""

        def signal_it(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(p.pid) == p.pid:
                    os.killpg(p.pid, sig)
                else:
                    os.kill(p.pid, sig)

        if p.poll() is None:
            signal_it(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                signal_it(signal.SIGKILL)
                p.wait(5)
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()

    # -- probes -----------------------------------------------------------------------------
    def connect(self, ns: Netns, host: str, port: int, timeout: float = 1.0) -> bool:
        """True when a TCP connect from `ns` to host:port completes."""
        code = (
            "import socket,sys\n"
            f"s=socket.socket(socket.AF_INET6 if ':' in {host!r} else socket.AF_INET)\n"
            f"s.settimeout({timeout})\n"
            f"sys.exit(0 if s.connect_ex(({host!r},{port}))==0 else 1)\n"
        )
        r = self.sh(sys.executable, "-c", code, ns=ns, check=False, timeout=timeout + 10)
        return r.returncode == 0

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            # Kill anything still inside (e.g. a daemon that forked away from us).
            r = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True)
            for pid in r.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
        self.namespaces.clear()
        self._switch = None

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

