"""Safety net: refuse plans that lock an operator out, and roll back an unhealthy apply.

"Failsafe removed" means: `failsafe_ports` is empty, or it lacks the port the node's SSH
daemon listens on (the snapshot's `sshd` sockets; tcp/22 when none is seen). Either way
nodeward refuses to apply before any change (exit 2).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence

from ..config import Config, ConfigError
from ..model import NodeSnapshot
from .plan import Packet, Plan, verdict
from .settings import EnforceSettings

SSH_PROCESSES = frozenset({"sshd", "dropbear"})
#: Sources a failsafe port must stay open from: a pod, a stranger, a peer.
PROBE_SOURCES = {4: ("10.244.99.9", "203.0.113.7", "192.168.1.5"),
                 6: ("fd00:244::9", "2001:db8::7")}


class Refused(ValueError):
    """The plan or config would be unsafe; one line, nothing was changed."""


def check_config(cfg: Config, settings: EnforceSettings, snapshot: NodeSnapshot) -> None:
    """Cross-field checks that need top-level keys; raises ConfigError (exit 2)."""
    where = f"{cfg.source}: failsafe_ports"
    if not cfg.failsafe_ports:
        raise ConfigError(f"{where}: empty: enforcement needs at least one failsafe port "
                          "(e.g. ['tcp/22']) so an operator can always get in")
    ssh_ports = sorted({("tcp", s.port) for s in snapshot.sockets
                        if s.protocol == "tcp" and s.process is not None
                        and s.process.names() & SSH_PROCESSES}) or [("tcp", 22)]
    if not any(p in cfg.failsafe_ports for p in ssh_ports):
        listed = ", ".join(f"{p}/{n}" for p, n in ssh_ports)
        raise ConfigError(f"{where}: must include the SSH port ({listed}): removing it "
                          "could lock operators out")


def check_plan(plan: Plan, cfg: Config, settings: EnforceSettings,
               snapshot: NodeSnapshot) -> None:
    """Evaluate our own rules: failsafe ports open from anywhere; the API server path kept."""
    pod_if = next((g.rstrip("*") + "0" for g in cfg.pod_interfaces), "cali0")
    for fam in plan.families:
        local = next((a.address for i in snapshot.interfaces for a in i.addresses
                      if a.family == fam and i.name != "lo"), "10.0.0.1" if fam == 4 else "fd00::1")
        for proto, port in cfg.failsafe_ports:
            for src in PROBE_SOURCES[fam]:
                for iif in ("eth0", pod_if):
                    pkt = Packet(fam, proto, port, src, local, iif)
                    if verdict(plan, "input", pkt) == "drop":
                        raise Refused(f"plan would close failsafe port {proto}/{port} "
                                      f"(from {src} on {iif}); refusing")
    if settings.api_server is None:
        return
    addr, port = settings.api_server
    fam = addr.version
    if fam not in plan.families:
        return
    local_addrs = {ipaddress.ip_address(a.address) for i in snapshot.interfaces
                   for a in i.addresses}
    # The node's own connection to the API server: replies must come back in.
    here = str(next((a for a in local_addrs if a.version == fam), addr))
    reply = Packet(fam, "tcp", 40000, str(addr), here, "eth0", ct="established")
    if verdict(plan, "input", reply) == "drop":
        raise Refused(f"plan would drop replies from the API server {addr}:{port}; refusing")
    # The API server reaching this node's kubelet (exec, logs, port-forward).
    if any(name == "kubelet" for name, _p, _ports in plan.protected):
        pkt = Packet(fam, "tcp", 10250, str(addr), str(addr), "eth0")
        if verdict(plan, "input", pkt) == "drop":
            raise Refused(f"plan would cut the API server {addr} off this node's kubelet; "
                          "refusing")
    # When the API server is this node, other nodes must still reach it.
    if addr in local_addrs:
        sources = [n for n in (*cfg.node_cidrs, *settings.control_plane) if n.version == fam]
        if not sources:
            raise Refused(f"the API server {addr}:{port} is on this node but neither "
                          "node_cidrs nor enforce.control_plane is set: the plan would cut "
                          "every other node off; refusing")
        for net in sources:
            src = str(next(iter(net.hosts()), net.network_address))
            pkt = Packet(fam, "tcp", port, src, str(addr), "eth0")
            if verdict(plan, "input", pkt) == "drop":
                raise Refused(f"plan would cut {net} off the API server {addr}:{port}; "
                              "refusing")


def tcp_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def health_targets(settings: EnforceSettings) -> list[tuple[str, int]]:
    out = [(str(a), p) for a, p in settings.probes]
    if settings.api_server is not None:
        out.insert(0, (str(settings.api_server[0]), settings.api_server[1]))
    return out


def confirm(targets: Sequence[tuple[str, int]], timeout: float,
            check: Callable[[str, int, float], bool] = tcp_ok,
            interval: float = 0.5) -> list[tuple[str, int]]:
    """Dead-man check: every target must connect at least once within `timeout` seconds.
    Returns the targets that never did (empty: healthy)."""
    pending = list(targets)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        pending = [t for t in pending if not check(t[0], t[1], min(1.0, max(0.1, left)))]
        if pending:
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    return pending


class Watchdog:
    """The dead-man half that survives us: a forked child (own session) that restores the
    saved rules unless told "ok" on a pipe. If `nodeward apply` is killed during the
    confirm window the pipe closes and the child rolls back; if apply hangs, it rolls back
    after the deadline."""

    def __init__(self, restore: Callable[[], None], deadline: float) -> None:
        import os

        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.close(w)
                os.setsid()
                import select

                ready, _, _ = select.select([r], [], [], deadline)
                word = os.read(r, 2) if ready else b""
                if word != b"ok":
                    restore()
                    import sys

                    print("nodeward: watchdog: apply was not confirmed; previous rules "
                          "restored", file=sys.stderr, flush=True)
                    code = 3
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(r)
        self.pid, self.fd = pid, w

    def dismiss(self) -> None:
        import os

        try:
            os.write(self.fd, b"ok")
        finally:
            os.close(self.fd)
            os.waitpid(self.pid, 0)
