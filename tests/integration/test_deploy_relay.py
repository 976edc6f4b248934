"""kubernetes/relay, the opt-in fan-out relay component: it renders with the base, every
object validates strictly against the Kubernetes schemas, the agents' config is the base
config plus `cluster.relay` (and loads), and the pieces agree with each other: the URL
names the Service, the CA and token paths are what the DaemonSet mounts, the token's
audience is the one the relay checks, and the relay's RBAC is list/watch plus
TokenReview only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from nodeward import config as config_mod

kv = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed (pip install it)")

K8S = Path(__file__).resolve().parents[2] / "kubernetes"
RELAY = K8S / "relay"
KUBECTL = shutil.which("kubectl")


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> dict:
    (d,) = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return d


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl not installed (kustomize render)")
    tree = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(K8S, tree)
    kust = tree / "kustomization.yaml"
    kust.write_text(kust.read_text() + "components:\n  - relay\n")
    r = subprocess.run([KUBECTL, "kustomize", str(tree)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def test_component_renders_and_validates(rendered):
    for d in rendered:
        kv.validate(d, kv.latest_version(), strict=True)
        kv.validate(d, "1.30.0", strict=True)
    dep = by_kind(rendered, "Deployment", "nodeward-relay")
    assert dep["spec"]["replicas"] == 2
    # the generated ConfigMap is the relay config, and the DaemonSet mounts that one
    (cm,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    ds = by_kind(rendered, "DaemonSet", "nodeward")
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert vols["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert cm["data"]["config.yaml"] == (RELAY / "config.yaml").read_text()


def test_agent_config_is_the_base_plus_the_relay_and_loads(rendered):
    base = yaml.safe_load((K8S / "config" / "config.yaml").read_text())
    relay = yaml.safe_load((RELAY / "config.yaml").read_text())
    assert {k: v for k, v in relay.items() if k != "cluster"} == \
        {k: v for k, v in base.items() if k != "cluster"}
    assert set(relay["cluster"]) == set(base["cluster"]) | {"relay"}
    cfg = config_mod.from_mapping(relay, "relay/config.yaml")
    settings = cfg.section("cluster").relay
    svc = by_kind(rendered, "Service", "nodeward-relay")
    (port,) = svc["spec"]["ports"]
    assert settings.url == f"https://{svc['metadata']['name']}.{svc['metadata']['namespace']}" \
        f".svc:{port['port']}"
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    # CA and token are where the DaemonSet puts them, the token for the relay's audience
    ds = by_kind(rendered, "DaemonSet", "nodeward")
    spec = ds["spec"]["template"]["spec"]
    (agent,) = [c for c in spec["containers"] if c["name"] == "nodeward"]
    mount = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}["relay"]
    sources = {v["name"]: v for v in spec["volumes"]}["relay"]["projected"]["sources"]
    ca = next(s["configMap"] for s in sources if "configMap" in s)
    tok = next(s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s)
    assert settings.ca_file == f"{mount}/{ca['items'][0]['path']}"
    assert settings.token_file == f"{mount}/{tok['path']}"
    dep = by_kind(rendered, "Deployment", "nodeward-relay")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert f"--audience={tok['audience']}" in c["command"]
    assert "--allow=system:serviceaccount:nodeward:nodeward" in c["command"]
    sa = spec["serviceAccountName"]
    assert f"--allow=system:serviceaccount:nodeward:{sa}" in c["command"]


def test_relay_runs_unprivileged_with_list_watch_and_tokenreview_only(rendered):
    dep = by_kind(rendered, "Deployment", "nodeward-relay")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and not pod.get("hostNetwork")
    (c,) = pod["containers"]
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    role = by_kind(rendered, "ClusterRole", "nodeward-relay")
    for rule in role["rules"]:
        if rule["apiGroups"] == ["authentication.k8s.io"]:
            assert rule["resources"] == ["tokenreviews"] and rule["verbs"] == ["create"]
        else:
            assert set(rule["verbs"]) == {"list", "watch"}
    binding = by_kind(rendered, "ClusterRoleBinding", "nodeward-relay")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


def test_relay_files_are_tidy_yaml():
    linter = pytest.importorskip("yamllint.linter", reason="yamllint not installed")
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig("{extends: default, rules: {line-length: {max: 100}}}")
    for path in sorted(p for p in RELAY.glob("*.yaml") if p.name != "config.yaml"):
        problems = list(linter.run(path.read_text(), conf, str(path)))
        assert not problems, "\n".join(f"{path.name}:{p.line}: {p.message}" for p in problems)
