"""`nodeward audit` against a local API server (tests/lab/fakeapi.py, real list protocol):
namespaces, pods, Kubernetes and Calico policies listed once, items stamped with their kind
(list responses leave it out), a kind the cluster does not serve skipped, the report the
same as from files."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.lab.fakeapi import FakeApi

TOKEN = "audit-token"


def test_audit_reads_the_api(tmp_path):
    api = FakeApi(token=TOKEN).start()
    try:
        def put(path, kind, api_version, name, ns="", **extra):
            meta = {"name": name, **({"namespace": ns} if ns else {})}
            obj = {"metadata": {**meta, **extra.pop("meta", {})}, **extra}
            api.put(path, obj)  # stored without kind/apiVersion, as list items come back

        put("/api/v1/namespaces", "Namespace", "v1", "shop")
        put("/api/v1/pods", "Pod", "v1", "web-1", "shop", meta={"labels": {"app": "web"}})
        put("/apis/networking.k8s.io/v1/networkpolicies", "NetworkPolicy",
            "networking.k8s.io/v1", "deny-in", "shop",
            spec={"podSelector": {}, "policyTypes": ["Ingress"]})
        put("/apis/crd.projectcalico.org/v1/globalnetworkpolicies", "GlobalNetworkPolicy",
            "crd.projectcalico.org/v1", "world",
            spec={"selector": "app == 'web'", "types": ["Egress"],
                  "egress": [{"action": "Allow", "destination": {"nets": ["0.0.0.0/0"]}}]})
        put("/apis/crd.projectcalico.org/v1/globalnetworkpolicies", "GlobalNetworkPolicy",
            "crd.projectcalico.org/v1", "typo", spec={"selector": "app == 'wbe'"})
        (tmp_path / "token").write_text(TOKEN)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(json.dumps({"node_name": "n1", "cluster": {"kubernetes": {
            "api_url": api.url, "token_file": str(tmp_path / "token"), "retries": 0}}}))
        (tmp_path / "token").chmod(0o600)
        r = subprocess.run([sys.executable, "-m", "nodeward", "--config", str(cfg), "audit",
                            "--format", "json", "--fail-on", "critical"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        refs = sorted(p["ref"] for p in doc["policies"])
        assert refs == ["GlobalNetworkPolicy/typo", "GlobalNetworkPolicy/world",
                        "KubernetesNetworkPolicy/shop/deny-in"]
        ids = sorted((f["id"], f["component"]) for f in doc["findings"])
        assert ids == [("NW521", "namespace/shop"), ("NW523", "GlobalNetworkPolicy/world"),
                       ("NW525", "GlobalNetworkPolicy/typo")]
        assert doc["unknown"] == []
        assert any(k.startswith("LIST /api/v1/pods") for k in api.requests)
        assert not any(k.startswith("WATCH") for k in api.requests), "one-shot: no watch"
    finally:
        api.stop()
