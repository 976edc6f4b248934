"""The DaemonSet's operator hygiene and the optional monitoring component (kubernetes/
monitoring): the kube-rbac-proxy scrape path as kube-prometheus runs it for node-exporter,
validated offline — Kubernetes kinds by kubernetes-validate (strict), the Prometheus
Operator's ServiceMonitor and PrometheusRule by their CRD schemas (tests/schemas, vendored
from kube-prometheus). With kubectl present, kustomize renders it and a config change
renames the generated ConfigMap, which is what rolls the pods."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from nodeward import config as config_mod

kv = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed (pip install it)")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "kubernetes"
MON = K8S / "monitoring"
SCHEMAS = ROOT / "tests" / "schemas"
VERSIONS = ("1.30.0", kv.latest_version())


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def daemonset() -> dict:
    (ds,) = [d for d in load(K8S / "daemonset.yaml") if d["kind"] == "DaemonSet"]
    return ds


def with_sidecar() -> dict:
    """The DaemonSet with the component's patch applied as kustomize merges it (containers
    by name)."""
    ds = copy.deepcopy(daemonset())
    (patch,) = load(MON / "daemonset-rbac-proxy.yaml")
    containers = ds["spec"]["template"]["spec"]["containers"]
    for c in patch["spec"]["template"]["spec"]["containers"]:
        assert c["name"] not in {x["name"] for x in containers}
        containers.append(c)
    return ds


def test_daemonset_operator_hygiene():
    spec = daemonset()["spec"]["template"]["spec"]
    assert spec["securityContext"]["appArmorProfile"] == {"type": "RuntimeDefault"}
    # A blanket toleration: custom taints (dedicated=..., a cloud's own) do not leave a
    # node unwatched.
    assert {"operator": "Exists"} in spec["tolerations"]
    (agent,) = spec["containers"]
    assert agent["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_configmap_manifest_is_the_generated_config():
    (cm,) = load(K8S / "configmap.yaml")
    assert cm["data"]["config.yaml"] == (K8S / "config" / "config.yaml").read_text()
    config_mod.from_mapping(yaml.safe_load(cm["data"]["config.yaml"]), "config.yaml")


@pytest.mark.parametrize("version", VERSIONS)
def test_monitoring_kubernetes_kinds_validate_strictly(version):
    kv.validate(with_sidecar(), version, strict=True)
    for name in ("service.yaml", "rbac-proxy.yaml"):
        for doc in load(MON / name):
            kv.validate(doc, version, strict=True)


def _crd_validator(name: str) -> jsonschema.protocols.Validator:
    (crd,) = load(SCHEMAS / name)
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(ver["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize(("manifest", "crd"), [
    ("servicemonitor.yaml", "monitoring.coreos.com_servicemonitors.yaml"),
    ("prometheusrule.yaml", "monitoring.coreos.com_prometheusrules.yaml"),
])
def test_operator_resources_validate_against_their_crds(manifest, crd):
    (doc,) = load(MON / manifest)
    v = _crd_validator(crd)
    errors = list(v.iter_errors(doc))
    assert not errors, errors[0]
    bad = copy.deepcopy(doc)
    if doc["kind"] == "ServiceMonitor":
        bad["spec"]["endpoints"][0]["scheme"] = "gopher"
    else:
        bad["spec"]["groups"][0]["rules"][0]["for"] = "soon"
    assert list(v.iter_errors(bad)), "the CRD schema check can fail"


def test_scrape_path_keeps_metrics_off_the_pod_network():
    agent_cfg = config_mod.from_mapping(
        yaml.safe_load((K8S / "config" / "config.yaml").read_text()), "config.yaml")
    assert agent_cfg.metrics_address.startswith("127.0.0.1:")
    ds = with_sidecar()
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    proxy = next(c for c in spec["containers"] if c["name"] == "kube-rbac-proxy")
    args = dict(a.lstrip("-").split("=", 1) for a in proxy["args"])
    # listens on the node address (status.podIP under hostNetwork), never a wildcard
    assert args["secure-listen-address"] == "[$(IP)]:9738"
    env = {e["name"]: e for e in proxy["env"]}
    assert env["IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert args["upstream"] == f"http://{agent_cfg.metrics_address}/"
    assert args["allow-paths"] == "/metrics"  # not /healthz, nothing else
    sc = proxy["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    (port,) = proxy["ports"]
    (svc,) = load(MON / "service.yaml")
    (sm,) = load(MON / "servicemonitor.yaml")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    (sport,) = svc["spec"]["ports"]
    assert sport["targetPort"] == port["name"] and sport["port"] == port["containerPort"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == sport["name"] and ep["scheme"] == "https" and ep["bearerTokenFile"]
    roles = {d["metadata"]["name"]: d for d in load(MON / "rbac-proxy.yaml")
             if d["kind"] == "ClusterRole"}
    auth = roles["nodeward-metrics-auth"]["rules"]
    assert sorted((r["apiGroups"][0], r["resources"][0], tuple(r["verbs"])) for r in auth) == [
        ("authentication.k8s.io", "tokenreviews", ("create",)),
        ("authorization.k8s.io", "subjectaccessreviews", ("create",))]
    assert roles["nodeward-metrics-reader"]["rules"] == [
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]


def test_monitoring_files_are_tidy_yaml():
    linter = pytest.importorskip("yamllint.linter", reason="yamllint not installed")
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig("{extends: default, rules: {line-length: {max: 100}}}")
    for path in sorted([*MON.glob("*.yaml"), *MON.glob("*.yml")]):
        problems = list(linter.run(path.read_text(), conf, str(path)))
        assert not problems, "\n".join(f"{path.name}:{p.line}: {p.message}" for p in problems)


KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None,
                                   reason="kubectl not installed (kustomize render)")


def kustomize(tree: Path) -> list[dict]:
    r = subprocess.run([KUBECTL, "kustomize", str(tree)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@needs_kubectl
def test_config_change_renames_the_configmap_and_rolls_the_daemonset(tmp_path):
    tree = tmp_path / "kubernetes"
    shutil.copytree(K8S, tree)

    def render() -> tuple[str, str]:
        docs = kustomize(tree)
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
        (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
        vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
        return cm["metadata"]["name"], vols["config"]["configMap"]["name"]

    before = render()
    assert before[0] == before[1] and before[0].startswith("nodeward-config-")
    cfg = tree / "config" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("mode: report", "mode: audit"))
    after = render()
    assert after[0] == after[1] and after[0] != before[0]


@needs_kubectl
def test_monitoring_component_renders_and_validates(tmp_path):
    tree = tmp_path / "kubernetes"
    shutil.copytree(K8S, tree)
    kust = tree / "kustomization.yaml"
    text = kust.read_text()
    assert "# components:\n#   - monitoring\n" in text
    kust.write_text(text.replace("# components:\n#   - monitoring\n",
                                 "components:\n  - monitoring\n"))
    docs = kustomize(tree)
    kinds = sorted(d["kind"] for d in docs)
    assert {"ServiceMonitor", "PrometheusRule", "Service"} <= set(kinds)
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    assert sorted(c["name"] for c in ds["spec"]["template"]["spec"]["containers"]) == [
        "kube-rbac-proxy", "nodeward"]
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com"):
            continue
        kv.validate(d, VERSIONS[-1], strict=True)
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nodeward"


def test_the_agents_own_ports_are_in_its_catalog():
    """With the component on, nodeward scans its own sidecar: the catalog knows both ports,
    so the proxy on the node address is no NW203 'unknown host service' and a status server
    moved off loopback is a finding."""
    from nodeward.catalog import load_default
    from nodeward.model import BindScope, ProcessInfo

    cat = load_default()
    proxy = ProcessInfo(pid=1, name="kube-rbac-proxy", comm="kube-rbac-proxy")
    ident = cat.identify("tcp", 9738, proxy)
    assert ident.component is not None and ident.component.name == "nodeward-metrics-proxy"
    assert not ident.component.exceeds(BindScope.NODE_PRIVATE)
    agent = ProcessInfo(pid=2, name="nodeward", comm="nodeward")
    status = cat.identify("tcp", 9737, agent).component
    assert status.name == "nodeward-status" and status.exceeds(BindScope.WILDCARD)
    assert not status.exceeds(BindScope.LOOPBACK) and status.auth is False
