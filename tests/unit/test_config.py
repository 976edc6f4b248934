import ipaddress

import pytest

from nodeward import config
from nodeward.config import ConfigError


def write(tmp_path, text):
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return str(p)


def test_empty_and_missing_default_give_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv(config.NODE_NAME_ENV, raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.yaml"))
    cfg = config.load(None)
    assert cfg.source == "<defaults>" and cfg.mode == "report" and cfg.backend == "auto"
    assert cfg.failsafe_ports == (("tcp", 22),)
    assert "cali*" in cfg.pod_interfaces and cfg.node_name
    assert config.load(write(tmp_path, "")).mode == "report"


def test_full_config(tmp_path, monkeypatch):
    monkeypatch.delenv(config.NODE_NAME_ENV, raising=False)
    cfg = config.load(write(tmp_path, """
node_name: n1
node_cidrs: [10.0.0.0/16, "fd00::/64"]
pod_cidrs: [10.244.0.0/16]
pod_interfaces: ["cali*", "eth9"]
failsafe_ports: [tcp/22, udp/68]
mode: audit
backend: nftables
suppress:
  - {id: NW102, port: 6443, reason: LB health checks}
  - {id: NW101, component: kubelet-readonly, reason: legacy monitoring until Q3}
catalog:
  - {name: kubelet, ports: [10350]}
interval: 30
metrics_address: "127.0.0.1:9999"
"""))
    assert cfg.node_name == "n1"
    assert cfg.node_cidrs == (ipaddress.ip_network("10.0.0.0/16"),
                              ipaddress.ip_network("fd00::/64"))
    assert cfg.failsafe_ports == (("tcp", 22), ("udp", 68))
    assert (cfg.mode, cfg.backend, cfg.interval) == ("audit", "nftables", 30.0)
    assert cfg.suppress[0].matches("NW102", 6443, "kube-apiserver")
    assert not cfg.suppress[0].matches("NW102", 10250, "kubelet")
    assert cfg.suppress[1].matches("NW101", 10255, "kubelet-readonly")
    assert cfg.catalog.get("kubelet").ports == ((10350, 10350),)


def test_env_overrides_node_name(tmp_path, monkeypatch):
    monkeypatch.setenv(config.NODE_NAME_ENV, "from-env")
    assert config.load(write(tmp_path, "node_name: file")).node_name == "from-env"


@pytest.mark.parametrize(("text", "message"), [
    ("node_cidrs: [10.0.0.0/33]", "{p}: node_cidrs: '10.0.0.0/33' is not a valid CIDR"),
    ("pod_cidrs: 10.0.0.0/8", "{p}: pod_cidrs: expected a list of CIDRs"),
    ("colour: blue", "{p}: colour: unknown key (known: node_name, node_cidrs, pod_cidrs, "
     "pod_interfaces, failsafe_ports, mode, backend, suppress, catalog, interval, "
     "metrics_address, firewall, auth_probe, firewall_max_rules, enforce, cluster, daemon, "
     "verify)"),
    ("firewall_max_rules: 0", "{p}: firewall_max_rules: expected an integer between 1 and "
     "10000000, got 0"),
    ("firewall_max_rules: true", "{p}: firewall_max_rules: expected an integer between 1 and "
     "10000000, got True"),
    ("mode: destroy", "{p}: mode: 'destroy' is not one of report|audit|enforce"),
    ("backend: pf", "{p}: backend: 'pf' is not one of auto|iptables|nftables|python-iptables"),
    ("failsafe_ports: [ssh]", "{p}: failsafe_ports: 'ssh' is not a port like 'tcp/22'"),
    ("failsafe_ports: [tcp/70000]", "{p}: failsafe_ports: 'tcp/70000' is not a port like "
     "'tcp/22'"),
    ("suppress: [{id: NW101}]", "{p}: suppress[0].reason: required: say why this finding "
     "is accepted"),
    ("suppress: [{reason: x}]", "{p}: suppress[0].id: required (a finding ID such as NW101)"),
    ("suppress: [{id: NW101, reason: x, until: 2027}]", "{p}: suppress[0].until: unknown "
     "key (known: id, reason, port, component)"),
    ("suppress: [{id: NW101, reason: x, port: http}]", "{p}: suppress[0].port: 'http' is not "
     "a port number"),
    ("catalog: [{name: x}]", "{p}: catalog[0]: new component 'x' needs 'ports'"),
    ("interval: 0", "{p}: interval: expected a number of seconds between 1 and 86400, got 0"),
    ("firewall: maybe", "{p}: firewall: expected true or false"),
    ("metrics_address: localhost:80", "{p}: metrics_address: 'localhost' is not an IP address"),
    ("- a\n- b", "{p}: expected a mapping of settings at the top level"),
    ("mode: [\n", "{p}: line 2: invalid YAML: expected the node content, but found "
     "'<stream end>'"),
    ("a: b: c", "{p}: line 1: invalid YAML: mapping values are not allowed here"),
])
def test_errors_are_one_exact_line(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert str(e.value) == message.format(p=p)
    assert "\n" not in str(e.value)


def test_explicit_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"absent.yaml: no such file$"):
        config.load(str(tmp_path / "absent.yaml"))


@pytest.mark.parametrize("name", ["../../x", "a/b", "Worker_1", "x" * 254, "-a", "a..b"])
def test_node_name_must_be_dns1123_from_file_env_and_cluster(tmp_path, monkeypatch, name):
    """It goes into the PolicyReport's API path and name: no path, no uppercase."""
    monkeypatch.delenv("NODEWARD_NODE_NAME", raising=False)
    with pytest.raises(config.ConfigError, match="not a valid node name"):
        config.from_mapping({"node_name": name}, "f")
    with pytest.raises(config.ConfigError, match="not a valid node name"):
        config.from_mapping({"cluster": {"node_name": name}}, "f")
    monkeypatch.setenv("NODEWARD_NODE_NAME", name)
    with pytest.raises(config.ConfigError, match="NODEWARD_NODE_NAME"):
        config.from_mapping({}, "f")
