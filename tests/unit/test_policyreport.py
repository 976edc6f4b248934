from nodeward.model import Finding, Severity
from nodeward.report import policyreport


def test_build_report():
    f = Finding(id="NW101", severity=Severity.HIGH, title="kubelet-readonly is listening",
                remediation="Set readOnlyPort: 0", component="kubelet-readonly",
                protocol="tcp", address="10.0.0.1", port=10255, scope="node-private",
                pid=42, process="kubelet")
    r = policyreport.build("worker-1", "2026-11-25T04:54:52Z", [f])
    assert r["apiVersion"] == "wgpolicyk8s.io/v1alpha2" and r["kind"] == "ClusterPolicyReport"
    assert r["metadata"]["name"] == "nodeward-worker-1"
    assert r["scope"] == {"apiVersion": "v1", "kind": "Node", "name": "worker-1"}
    assert r["summary"]["fail"] == 1
    (res,) = r["results"]
    assert (res["rule"], res["result"], res["severity"]) == ("NW101", "fail", "high")
    assert res["properties"]["port"] == "10255" and res["properties"]["pid"] == "42"
    assert all(isinstance(v, str) for v in res["properties"].values())
    assert res["timestamp"] == {"seconds": 1795582492, "nanos": 0}


def test_empty_report_is_all_clear():
    r = policyreport.build("n", "2026-11-25T00:00:00Z", [])
    assert r["results"] == [] and r["summary"]["fail"] == 0
