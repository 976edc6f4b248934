"""Exposure checks on snapshots built from fixtures: no root, no sockets."""

from nodeward import catalog
from nodeward.checks import run_checks
from nodeward.checks.exposure import exposure_findings
from nodeward.config import Config, Suppression
from nodeward.model import BindScope, Interface, NodeSnapshot, ProcessInfo, Severity, Socket

CAT = catalog.load_default()
POD_IF = Interface("cali1", 5, pod_facing=True)


def sock(port, scope, proc=None, proto="tcp", addr=None):
    addr = addr or {"wildcard": "0.0.0.0", "loopback": "127.0.0.1"}.get(scope, "10.0.0.1")
    p = ProcessInfo(pid=100 + port % 1000, name=proc, comm=proc) if proc else None
    return Socket(proto, 4, addr, port, inode=port, uid=0, process=p, scope=BindScope(scope))


def snap(*socks, pods=True):
    return NodeSnapshot("n", "2026-01-01T00:00:00Z", sockets=socks,
                        interfaces=(POD_IF,) if pods else ())


def ids(findings):
    return sorted((f.id, f.component, f.port) for f in findings)


def test_quiet_node_has_no_findings():
    s = snap(sock(10250, "node-private", "kubelet"), sock(10248, "loopback", "kubelet"),
             sock(2379, "loopback", "etcd"), sock(2379, "node-private", "etcd"),
             sock(6443, "node-private", "kube-apiserver"), sock(10257, "loopback",
                                                                "kube-controller-manager"),
             sock(4789, "wildcard", None, "udp"), sock(22, "wildcard", "sshd"))
    assert exposure_findings(s, CAT) == []


def test_readonly_port_flagged_at_all():
    f = exposure_findings(snap(sock(10255, "loopback", "kubelet")), CAT)
    assert ids(f) == [("NW101", "kubelet-readonly", 10255)]
    assert f[0].severity == Severity.LOW  # loopback only
    f = exposure_findings(snap(sock(10255, "node-private", "kubelet")), CAT)
    assert ids(f) == [("NW101", "kubelet-readonly", 10255), ("NW102", "kubelet-readonly", 10255)]
    assert {x.severity for x in f} == {Severity.HIGH}


def test_etcd_beyond_private():
    for scope in ("node", "pod", "wildcard", "unknown"):
        f = [x for x in exposure_findings(snap(sock(2379, scope, "etcd")), CAT)
             if x.id == "NW102"]
        assert len(f) == 1 and f[0].severity == Severity.CRITICAL, scope


def test_apiserver_wildcard_only():
    assert ids(exposure_findings(snap(sock(6443, "wildcard", "kube-apiserver")), CAT)) == [
        ("NW102", "kube-apiserver", 6443)]
    assert exposure_findings(snap(sock(6443, "node", "kube-apiserver")), CAT) == []


def test_unauthenticated_on_pod_facing():
    f = ids(exposure_findings(snap(sock(10249, "pod", "kube-proxy")), CAT))
    assert ("NW103", "kube-proxy-metrics", 10249) in f
    # wildcard is pod-facing only when the node has pod interfaces
    assert ("NW103", "kube-proxy-healthz", 10256) in ids(
        exposure_findings(snap(sock(10256, "wildcard", "kube-proxy")), CAT))
    assert exposure_findings(snap(sock(10256, "wildcard", "kube-proxy"), pods=False), CAT) == []
    # authenticated components never give NW103
    assert "NW103" not in {x.id for x in exposure_findings(
        snap(sock(10250, "pod", "kubelet")), CAT)}


def test_squatter_on_strict_port():
    f = exposure_findings(snap(sock(10250, "wildcard", "python3")), CAT)
    assert ids(f) == [("NW104", "kubelet", 10250)]
    assert f[0].process == "python3" and "python3" in f[0].title
    # unknown owner (kernel socket or unreadable): judged by port
    assert ids(exposure_findings(snap(sock(10250, "wildcard")), CAT)) == [
        ("NW102", "kubelet", 10250)]


def test_evidence_and_fields():
    f = exposure_findings(snap(sock(2380, "wildcard", "etcd")), CAT)[0]
    d = f.to_dict()
    assert set(d) == {"id", "severity", "title", "component", "protocol", "address", "port",
                      "scope", "pid", "process", "remediation", "evidence"}
    assert d["evidence"]["bind_scope"] == "wildcard"
    assert d["evidence"]["identified_by"] == "process"
    assert d["severity"] == "high" and d["pid"] == 100 + 380


def test_suppression_by_id_port_component():
    s = snap(sock(6443, "wildcard", "kube-apiserver"), sock(10255, "loopback", "kubelet"))
    cfg = Config(suppress=(Suppression("NW102", "LB", port=6443),
                           Suppression("NW101", "legacy", component="kubelet-readonly")))
    r = run_checks(s, cfg)
    assert r.findings == ()
    assert sorted(x[1].reason for x in r.suppressed) == ["LB", "legacy"]
    r = run_checks(s, Config(suppress=(Suppression("NW102", "wrong port", port=10250),)))
    assert ids(r.findings) == [("NW101", "kubelet-readonly", 10255),
                               ("NW102", "kube-apiserver", 6443)]


def test_findings_sorted_by_severity():
    r = run_checks(snap(sock(6443, "wildcard", "kube-apiserver"),
                        sock(2379, "wildcard", "etcd")), Config())
    sev = [f.severity for f in r.findings]
    assert sev == sorted(sev, reverse=True)
