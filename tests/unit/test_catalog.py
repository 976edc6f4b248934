import pytest

from nodeward import catalog
from nodeward.catalog import Catalog, CatalogError
from nodeward.model import BindScope, ProcessInfo, Severity

CAT = catalog.load_default()
REQUIRED = {
    ("tcp", 10250): "kubelet", ("tcp", 10255): "kubelet-readonly",
    ("tcp", 10248): "kubelet-healthz", ("tcp", 6443): "kube-apiserver",
    ("tcp", 2379): "etcd-client", ("tcp", 2380): "etcd-peer", ("tcp", 2381): "etcd-metrics",
    ("tcp", 10256): "kube-proxy-healthz", ("tcp", 10249): "kube-proxy-metrics",
    ("tcp", 10257): "kube-controller-manager", ("tcp", 10259): "kube-scheduler",
    ("tcp", 10258): "cloud-controller-manager", ("tcp", 4149): "cadvisor",
    ("tcp", 30000): "kubernetes-dashboard", ("tcp", 31234): "nodeport-range",
    ("udp", 32767): "nodeport-range", ("tcp", 9099): "calico-felix-health",
    ("tcp", 9091): "calico-felix-metrics", ("tcp", 179): "bgp", ("tcp", 5473): "calico-typha",
    ("udp", 4789): "vxlan", ("udp", 51820): "wireguard", ("udp", 51821): "wireguard",
}


@pytest.mark.parametrize(("key", "name"), REQUIRED.items())
def test_required_ports_identified_by_port(key, name):
    ident = CAT.identify(key[0], key[1], None)
    assert ident.component is not None and ident.component.name == name
    assert ident.by == "port" and not ident.unexpected_process


def test_every_component_documented():
    for c in CAT.components:
        assert c.description and c.remediation, c.name


def proc(name, exe="", argv0=""):
    return ProcessInfo(pid=10, name=name, comm=name[:15], exe=exe,
                       cmdline=(argv0,) if argv0 else ())


def test_process_first_then_port():
    assert CAT.identify("tcp", 10250, proc("kubelet")).by == "process"
    # kubelet on a non-default port is still the kubelet
    ident = CAT.identify("tcp", 11250, proc("kubelet"))
    assert (ident.component.name, ident.by) == ("kubelet", "process-only")
    # an unknown process on 10250 is its own finding
    ident = CAT.identify("tcp", 10250, proc("nc"))
    assert ident.component.name == "kubelet" and ident.unexpected_process
    # a non-strict port held by another process identifies nothing
    assert CAT.identify("tcp", 8080, proc("nginx")).component is None
    # a process without a primary component on a random port is not identified
    assert CAT.identify("tcp", 40000, proc("kube-proxy")).component is None


def test_truncated_comm_matched_by_exe_or_argv0():
    p = ProcessInfo(pid=1, name="kube-controller", comm="kube-controller",
                    exe="/usr/local/bin/kube-controller-manager")
    assert CAT.identify("tcp", 10257, p).component.name == "kube-controller-manager"
    p = ProcessInfo(pid=1, name="x", comm="x", cmdline=("/opt/bin/etcd", "--name"))
    assert CAT.identify("tcp", 2380, p).component.name == "etcd-peer"


def test_most_specific_port_wins():
    assert CAT.by_port("tcp", 30000).name == "kubernetes-dashboard"
    assert CAT.by_port("tcp", 30001).name == "nodeport-range"


def test_exceeds_scope_order():
    kubelet = CAT.get("kubelet")  # max node
    assert not kubelet.exceeds(BindScope.NODE)
    assert kubelet.exceeds(BindScope.POD) and kubelet.exceeds(BindScope.WILDCARD)
    etcd = CAT.get("etcd-client")  # max node-private
    assert not etcd.exceeds(BindScope.NODE_PRIVATE) and etcd.exceeds(BindScope.NODE)
    assert not CAT.get("vxlan").exceeds(BindScope.WILDCARD)


def test_override_and_extend():
    cat = Catalog.from_entries(
        [{"name": "kubelet", "ports": [10350]},
         {"name": "my-agent", "ports": ["7000-7001"], "processes": ["agentd"],
          "severity": "critical", "max_scope": "loopback"}], "cfg", CAT)
    k = cat.get("kubelet")
    assert k.ports == ((10350, 10350),) and k.severity == Severity.HIGH  # rest kept
    assert cat.identify("tcp", 7001, proc("agentd")).component.name == "my-agent"
    assert len(cat.components) == len(CAT.components) + 1


@pytest.mark.parametrize(("entries", "message"), [
    ([{"name": "x"}], "cfg[0]: new component 'x' needs 'ports'"),
    ([{"name": "x", "ports": [70000]}], "cfg[0].ports: 70000 is outside 1-65535"),
    ([{"name": "x", "ports": ["a-b"]}], "cfg[0].ports: 'a-b' is not a port or a range"),
    ([{"name": "x", "ports": [1], "severity": "huge"}],
     "cfg[0].severity: unknown severity 'huge' (expected info|low|medium|high|critical)"),
    ([{"name": "x", "ports": [1], "max_scope": "planet"}],
     "cfg[0].max_scope: 'planet' is not one of loopback|node-private|node|any"),
    ([{"name": "x", "ports": [1], "colour": "red"}],
     "cfg[0].colour: unknown key (known: name, ports, protocols, processes, strict, primary, "
     "severity, auth, max_scope, always, description, remediation, auth_rule, probe_path)"),
    ([{"ports": [1]}], "cfg[0].name: required (the component to add or override)"),
    ([{"name": "x", "ports": [1], "protocols": ["sctp"]}],
     "cfg[0].protocols: 'sctp' is not one of tcp|udp"),
])
def test_catalog_errors_are_one_clear_line(entries, message):
    with pytest.raises(CatalogError) as e:
        Catalog.from_entries(entries, "cfg", CAT)
    assert str(e.value) == message
