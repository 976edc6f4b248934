"""API config sources and settings validation, without a server."""

from __future__ import annotations

import base64

import pytest
import yaml

from nodeward.collect.cluster import ClusterSettings
from nodeward.kubeapi import ApiUnavailable, from_kubeconfig, in_cluster


def _kubeconfig(tmp_path, user: dict, cluster_extra: dict | None = None):
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
           "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:6443/",
                                                  **(cluster_extra or {})}}],
           "users": [{"name": "u", "user": user}]}
    p = tmp_path / "kubeconfig"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_kubeconfig_token_and_inline_ca(tmp_path):
    ca = b"-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n"
    p = _kubeconfig(tmp_path, {"token": "tok"},
                    {"certificate-authority-data": base64.b64encode(ca).decode()})
    cfg = from_kubeconfig(p, read_timeout=1.0)
    assert cfg.url == "https://10.0.0.1:6443" and cfg.token == "tok"
    with open(cfg.ca_file, "rb") as f:
        assert f.read() == ca
    assert "tok" not in repr(cfg)


def test_kubeconfig_client_cert_paths_are_relative_to_file(tmp_path):
    p = _kubeconfig(tmp_path, {"client-certificate": "c.crt", "client-key": "c.key"},
                    {"certificate-authority": "ca.crt"})
    cfg = from_kubeconfig(p)
    assert cfg.client_cert == str(tmp_path / "c.crt")
    assert cfg.client_key == str(tmp_path / "c.key")
    assert cfg.ca_file == str(tmp_path / "ca.crt")


@pytest.mark.parametrize("content,msg", [
    ("::: not yaml", "kubeconfig"),
    ("current-context: nope\ncontexts: []\nclusters: []\n", "StopIteration"),
])
def test_kubeconfig_broken_is_unavailable(tmp_path, content, msg):
    p = tmp_path / "kc"
    p.write_text(content)
    with pytest.raises(ApiUnavailable, match=msg):
        from_kubeconfig(p)


def test_kubeconfig_insecure_refused(tmp_path):
    p = _kubeconfig(tmp_path, {"token": "t"}, {"insecure-skip-tls-verify": True})
    with pytest.raises(ApiUnavailable, match="insecure"):
        from_kubeconfig(p)


def test_in_cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ApiUnavailable, match="not in a cluster"):
        in_cluster(tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    with pytest.raises(ApiUnavailable, match="token"):
        in_cluster(tmp_path)
    (tmp_path / "token").write_text("abc\n")
    cfg = in_cluster(tmp_path)
    assert cfg.url == "https://[fd00::1]:443" and cfg.token == "abc"
    assert cfg.ca_file == str(tmp_path / "ca.crt")


def test_settings_defaults_and_keys():
    s = ClusterSettings.from_dict({})
    # encryption unset: derived from what the cluster announces (nodeward.derive)
    assert (s.encryption, s.timeout, s.retries, s.peers, s.use_api) == ("", 5.0, 2, (), True)
    s = ClusterSettings.from_dict({
        "kubernetes": {"api_url": "https://x", "timeout": 2, "retries": 0},
        "encryption": "wireguard",
        "peers": [{"name": "b", "addresses": ["10.0.0.2"], "pod_cidrs": ["10.244.2.0/24"]}]})
    assert s.api_url == "https://x" and s.timeout == 2.0 and s.peers[0].pod_cidrs == (
        "10.244.2.0/24",)


@pytest.mark.parametrize("d,key", [
    ({"kubernetes": {"timeout": 0}}, "kubernetes.timeout"),
    ({"kubernetes": {"retries": 99}}, "kubernetes.retries"),
    ({"kubernetes": {"api_ur": "x"}}, "kubernetes.api_ur"),
    ({"kubernetes": {"ca_file": 3}}, "kubernetes.ca_file"),
    ({"encryption": "tls"}, "encryption"),
    ({"peers": [{"addresses": []}]}, r"peers\[0\].name"),
    ({"peers": [{"name": "a", "pod_cidrs": "10.0.0.0/8"}]}, r"peers\[0\].pod_cidrs"),
    ({"offline_dir": 1}, "offline_dir"),
    ({"bogus": 1}, "bogus"),
])
def test_settings_errors_name_the_key(d, key):
    with pytest.raises(ValueError, match=key):
        ClusterSettings.from_dict(d)
