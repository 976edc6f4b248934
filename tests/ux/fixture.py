"""A lab node's scan from fixtures (no root): the README's example node — kubelet, API
server, etcd, sshd, a pod interface — judged against a real kubeadm + flannel worker's
iptables-save from ../shared/realworld. Used by the output-format tests, in process and
from a child process on a pseudo-terminal (`python -m tests.ux.fixture ARGS...` runs the
real CLI with this snapshot in place of the live one)."""

from __future__ import annotations

import sys
from pathlib import Path

from nodeward.checks import CheckResult, run_checks
from nodeward.config import Config, parse_cidrs
from nodeward.model import Address, BindScope, Interface, NodeSnapshot, ProcessInfo, Socket
from nodeward.ruleset import Ruleset
from nodeward.ruleset.iptables import parse_iptables_save

REALWORLD = Path(__file__).resolve().parents[2] / ".." / "shared" / "realworld"
DUMP = REALWORLD / "ipt" / "flannel-kubeadm-worker1.iptables"

CFG = Config(node_name="worker-1", node_cidrs=parse_cidrs(["10.77.0.0/24"], "t"),
             pod_cidrs=parse_cidrs(["10.244.0.0/16"], "t"))
IFS = (Interface("lo", 1, addresses=(Address("lo", 4, "127.0.0.1", 8),)),
       Interface("eth0", 2, addresses=(Address("eth0", 4, "10.77.0.1", 24),)),
       Interface("cali1a2b", 5, pod_facing=True,
                 addresses=(Address("cali1a2b", 4, "10.244.1.1", 32),)))


def _proc(name: str, pid: int) -> ProcessInfo:
    return ProcessInfo(pid=pid, name=name, comm=name, exe=f"/usr/bin/{name}",
                       cmdline=(name,))


SOCKETS = (
    Socket("tcp", 4, "0.0.0.0", 22, 11, 0, process=_proc("sshd", 17466),
           scope=BindScope.WILDCARD),
    Socket("tcp", 4, "10.77.0.1", 2379, 12, 0, process=_proc("etcd", 17467),
           scope=BindScope.NODE_PRIVATE, scope_interface="eth0"),
    Socket("tcp", 6, "::", 2380, 13, 0, process=_proc("etcd", 17467),
           scope=BindScope.WILDCARD),
    Socket("tcp", 6, "::", 6443, 14, 0, process=_proc("kube-apiserver", 17468),
           scope=BindScope.WILDCARD),
    Socket("tcp", 4, "127.0.0.1", 10248, 15, 0, process=_proc("kubelet", 17469),
           scope=BindScope.LOOPBACK, scope_interface="lo"),
    Socket("tcp", 4, "0.0.0.0", 10250, 16, 0, process=_proc("kubelet", 17469),
           scope=BindScope.WILDCARD),
    Socket("tcp", 4, "10.244.1.1", 10255, 17, 0, process=_proc("kubelet", 17469),
           scope=BindScope.POD, scope_interface="cali1a2b"),
    Socket("udp", 4, "0.0.0.0", 8472, 18, 0, scope=BindScope.WILDCARD),
)


def snapshot() -> NodeSnapshot:
    rs = Ruleset(parse_iptables_save(DUMP.read_text()))
    return NodeSnapshot("worker-1", "2026-11-25T07:45:31Z", sockets=SOCKETS, interfaces=IFS,
                        ruleset=rs)


def scan(cfg: Config = CFG) -> tuple[NodeSnapshot, CheckResult]:
    snap = snapshot()
    return snap, run_checks(snap, cfg)


def main(argv: list[str]) -> int:
    """The real CLI, with this snapshot for the live one (config from argv as usual, the
    fixture's CIDRs added when it gives none)."""
    from nodeward import cli

    def take_snapshot(cfg, **_kw):
        return snapshot()

    cli.take_snapshot = take_snapshot
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
