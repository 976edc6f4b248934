"""NW109 from the fd walk's refusals: only when something was refused and sockets are left
without an owner; the finding names the capability each kind of refusal shows."""

from __future__ import annotations

from nodeward.checks.attribution import attribution_findings
from nodeward.model import AttributionGaps, BindScope, NodeSnapshot, ProcessInfo, Socket


def sock(port: int, owned: bool) -> Socket:
    proc = ProcessInfo(pid=7, name="kubelet", comm="kubelet", exe="", cmdline=(), uid=0,
                       cgroup="", container_id="", pod_uid="") if owned else None
    return Socket(protocol="tcp", family=4, address="10.0.0.1", port=port, inode=port, uid=0,
                  interface="", process=proc, scope=BindScope.NODE, scope_interface="",
                  v6only=False)


def snap(gaps: AttributionGaps, *socks: Socket) -> NodeSnapshot:
    return NodeSnapshot(node="n", scanned_at="2026-01-01T00:00:00Z", sockets=socks,
                        attribution=gaps)


def test_no_refusal_no_finding_even_with_ownerless_sockets():
    # Kernel-owned sockets (no process holds them) are not a permissions problem.
    assert attribution_findings(snap(AttributionGaps(unresolved=1), sock(51820, False))) == []


def test_refusal_without_ownerless_sockets_is_not_a_finding():
    assert attribution_findings(snap(AttributionGaps(fd_link_denied=3), sock(10250, True))) == []


def test_each_refusal_names_its_capability():
    f, = attribution_findings(snap(AttributionGaps(fd_dir_denied=2, fd_link_denied=1),
                                   sock(10250, True), sock(2379, False)))
    assert f.id == "NW109" and int(f.severity) == int(f.severity.MEDIUM)
    assert f.evidence["missing_capabilities"] == ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"]
    assert f.evidence["sockets"] == ["10.0.0.1:2379/tcp"]
    assert f.evidence["unattributed_sockets"] == 1
    f, = attribution_findings(snap(AttributionGaps(fd_link_denied=1), sock(2379, False)))
    assert f.evidence["missing_capabilities"] == ["CAP_SYS_PTRACE"]
    assert "CAP_SYS_PTRACE" in f.title and "CAP_DAC_READ_SEARCH" not in f.title
