"""kubernetes/: every manifest validates offline against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields are errors), and the DaemonSet and RBAC have
the security properties the deployment promises."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from nodeward import config as config_mod

kv = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed (pip install it)")

K8S = Path(__file__).resolve().parents[2] / "kubernetes"
# Oldest still-supported minor we care about and the newest schema the package ships.
VERSIONS = ("1.30.0", kv.latest_version())
READ_VERBS = {"get", "list", "watch"}
CAPS = ["NET_ADMIN", "NET_RAW", "SYS_PTRACE", "DAC_READ_SEARCH"]
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def all_docs() -> list[dict]:
    return [d for name in MANIFESTS for d in docs(name)]


def one(kind: str, name: str | None = None) -> dict:
    found = [d for d in all_docs() if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec() -> dict:
    return one("DaemonSet", "nodeward")["spec"]["template"]["spec"]


def container() -> dict:
    (c,) = pod_spec()["containers"]
    return c


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_strictly(name, version):
    found = docs(name)
    assert found, f"{name} has no documents"
    for doc in found:
        kv.validate(doc, version, strict=True)


def test_validator_rejects_a_broken_daemonset():
    """The validation above can fail: a misspelt field and a wrong type are caught."""
    ds = copy.deepcopy(one("DaemonSet"))
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, VERSIONS[-1], strict=True)
    ds = copy.deepcopy(one("DaemonSet"))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = "no"
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, VERSIONS[-1], strict=True)


def test_kustomization_lists_the_manifests():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    resources = set(kust["resources"])
    assert all((K8S / r).is_file() for r in resources)
    # Everything but the optional report writer is applied by default; the ConfigMap is
    # generated from config/config.yaml (configmap.yaml is its plain-manifest twin).
    assert resources == set(MANIFESTS) - {"rbac-policyreport.yaml", "configmap.yaml"}
    (gen,) = kust["configMapGenerator"]
    assert gen["name"] == one("ConfigMap")["metadata"]["name"]
    assert gen["files"] == ["config/config.yaml"] and (K8S / gen["files"][0]).is_file()
    assert "disableNameSuffixHash" not in gen.get("options", {})  # the hash rolls the pods
    assert kust["namespace"] == "nodeward"
    for doc in all_docs():
        if "namespace" in doc["metadata"]:
            assert doc["metadata"]["namespace"] == "nodeward"


def test_daemonset_host_access():
    spec = pod_spec()
    assert spec["hostNetwork"] is True
    assert spec["hostPID"] is True
    assert not spec.get("hostIPC", False)
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    ds = one("DaemonSet")
    strategy = ds["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 1
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("key", ["node-role.kubernetes.io/control-plane",
                                 "node-role.kubernetes.io/master"])
def test_daemonset_tolerates_control_plane(key):
    assert any(t["key"] == key and t["operator"] == "Exists" and t["effect"] == "NoSchedule"
               for t in pod_spec()["tolerations"])


def test_container_is_not_privileged_and_caps_are_exactly_the_needed_ones():
    sc = container()["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_spec()["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == sorted(CAPS)
    assert "procMount" not in sc


def test_resources_requests_and_limits():
    res = container()["resources"]
    for kind in ("cpu", "memory"):
        assert kind in res["requests"] and kind in res["limits"]


def test_volumes_and_mounts():
    spec, c = pod_spec(), container()
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {m["name"] for m in c["volumeMounts"]} == set(volumes)
    host_paths = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    # No host root, /proc, /sys or /lib/modules: hostPID gives /proc, nothing else needed.
    # /run/nodeward: enforcement's writer lock and pending-rollback journal, so a restarted
    # container can finish a rollback its predecessor armed
    assert host_paths == {"/run/xtables.lock", "/var/run/wireguard", "/var/lib/nodeward",
                          "/run/nodeward"}
    assert mounts["/var/run/wireguard"]["readOnly"] is True
    assert mounts["/etc/nodeward"]["readOnly"] is True
    tmp = volumes[mounts["/tmp"]["name"]]
    assert tmp["emptyDir"]["medium"] == "Memory" and tmp["emptyDir"]["sizeLimit"]
    assert volumes[mounts["/etc/nodeward"]["name"]]["configMap"]["name"] == \
        one("ConfigMap")["metadata"]["name"]


def test_node_name_from_downward_api():
    env = {e["name"]: e for e in container()["env"]}
    assert env[config_mod.NODE_NAME_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_configmap_is_a_valid_agent_config_and_probes_reach_it():
    cfg = config_mod.from_mapping(yaml.safe_load(one("ConfigMap")["data"]["config.yaml"]),
                                  "configmap")
    host, _, port = cfg.metrics_address.rpartition(":")
    assert host == "127.0.0.1", "metrics must stay on loopback"
    assert cfg.mode == "report"
    c = container()
    assert c["command"][-1] == "run" and "/etc/nodeward/config.yaml" in c["command"]
    # liveness must not restart the agent for a collector outage (/healthz is 503 while
    # delivery stalls; /livez is the agent's own loop: tests/integration/test_sink_faults.py)
    paths = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/healthz"}
    for probe, path in paths.items():
        get = c[probe]["httpGet"]
        assert (get["host"], str(get["port"]), get["path"]) == (host, port, path)


def test_unknown_config_key_would_be_rejected():
    """The ConfigMap check above can fail: the agent rejects keys it does not know."""
    with pytest.raises(config_mod.ConfigError):
        config_mod.from_mapping({"mode": "report", "metrics_adress": "127.0.0.1:1"}, "x")


def test_rbac_read_only_except_optional_report_role():
    roles = {d["metadata"]["name"]: d for d in all_docs() if d["kind"] == "ClusterRole"}
    assert set(roles) == {"nodeward-read", "nodeward-policyreport-writer"}
    for rule in roles["nodeward-read"]["rules"]:
        assert set(rule["verbs"]) <= READ_VERBS, rule
        assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "secrets" not in rule["resources"]
    groups = {g for r in roles["nodeward-read"]["rules"] for g in r["apiGroups"]}
    assert groups == {"", "crd.projectcalico.org", "projectcalico.org"}
    (writer,) = roles["nodeward-policyreport-writer"]["rules"]
    assert writer["apiGroups"] == ["wgpolicyk8s.io"]
    assert writer["resources"] == ["clusterpolicyreports"]
    assert "delete" not in writer["verbs"]
    # The writer lives in its own file, outside the default kustomization.
    assert all(d["kind"] != "ClusterRole" or d["metadata"]["name"] == "nodeward-read"
               for d in docs("rbac.yaml"))
    sa = one("ServiceAccount")
    for binding in (d for d in all_docs() if d["kind"] == "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] in roles
        assert binding["subjects"] == [{"kind": "ServiceAccount",
                                        "name": sa["metadata"]["name"],
                                        "namespace": sa["metadata"]["namespace"]}]


def test_namespace_allows_the_privileged_pod_security_level():
    labels = one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_dockerfile():
    """Text-level only; tests/deploy/test_image.py builds and runs it."""
    text = (K8S / "Dockerfile").read_text()
    # Both stages from one pinned (dated) Debian base: the venv built in the first one
    # links to the second one's /usr/bin/python3.
    assert re.search(r"^ARG BASE=docker\.io/library/debian:bookworm-\d{8}-slim$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]
    for pkg in ("iptables", "nftables", "ipset", "iproute2", "conntrack"):
        assert f" {pkg}" in text
    assert "rm -rf /var/lib/apt/lists/*" in text
    assert "--no-install-recommends" in text
    # What the image copies is enough to pip install the agent: the Ansible test installs
    # from a copy of exactly these paths.
    copied = [ln.split()[1:-1] for ln in text.splitlines()
              if ln.startswith("COPY") and "--from" not in ln]
    assert sorted(p for group in copied for p in group) == [
        "README.md", "agent", "kubernetes/constraints.txt", "pyproject.toml"]


def test_manifests_are_tidy_yaml():
    linter = pytest.importorskip("yamllint.linter", reason="yamllint not installed")
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig("{extends: default, rules: {line-length: {max: 100}}}")
    for path in sorted(K8S.glob("*.yaml")):
        problems = list(linter.run(path.read_text(), conf, str(path)))
        assert not problems, "\n".join(f"{path.name}:{p.line}: {p.message}" for p in problems)
