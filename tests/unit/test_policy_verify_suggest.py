"""verify and suggest without root: settings, namespace discovery over a /proc-shaped tree,
the conntrack / kernel-log parsers, counters, and the Calico YAML against Calico's CRDs."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from nodeward import cli
from nodeward.config import ConfigError, from_mapping
from nodeward.policy import netns_probe, suggest, verify, verify_settings
from tests.integration.test_suggest_lab import assert_calico_valid

# What `conntrack -L -f ipv4 -o extended` printed in a lab namespace (conntrack-tools 1.4.7),
# and an IPv6 entry in the same shape.
CONNTRACK = """\
ipv4     2 tcp      6 119 TIME_WAIT src=10.244.1.2 dst=10.77.0.1 sport=60980 dport=10250 \
src=10.77.0.1 dst=10.244.1.2 sport=10250 dport=60980 [ASSURED] mark=0 use=1 id=1092412403
ipv4     2 tcp      6 431999 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=60982 dport=10250 \
src=127.0.0.1 dst=127.0.0.1 sport=10250 dport=60982 [ASSURED] mark=0 use=1 id=3610265459
ipv4     2 udp      17 29 src=10.77.0.2 dst=10.77.0.1 sport=5353 dport=8472 [UNREPLIED] \
src=10.77.0.1 dst=10.77.0.2 sport=8472 dport=5353 mark=0 use=1
ipv4     2 icmp     1 29 src=10.77.0.2 dst=10.77.0.1 type=8 code=0 id=7 src=10.77.0.1 \
dst=10.77.0.2 type=0 code=0 id=7 mark=0 use=1
ipv6     10 tcp      6 117 TIME_WAIT src=fd00::2 dst=fd00::1 sport=40000 dport=2379 \
src=fd00::1 dst=fd00::2 sport=2379 dport=40000 [ASSURED] mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 4 flow entries have been shown.
"""
# The kernel's LOG target format (nf_log_syslog), as journalctl -k prints it.
KLOG = """\
Dec 01 10:00:01 node1 kernel: nodeward-audit: IN=cali0 OUT= MAC=ee:ee:ee:ee:ee:ee:6a:3b:\
08:00 SRC=10.244.1.2 DST=10.77.0.1 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=4242 DF PROTO=TCP \
SPT=51234 DPT=10250 WINDOW=64240 RES=0x00 SYN URGP=0
Dec 01 10:00:02 node1 kernel: IN=eth0 OUT= SRC=10.77.0.9 DST=10.77.0.1 PROTO=TCP SPT=1 DPT=22
Dec 01 10:00:03 node1 kernel: nodeward-audit: IN=eth0 OUT= MAC=aa SRC=10.77.0.3 \
DST=10.77.0.1 LEN=60 PROTO=UDP SPT=5000 DPT=2379 LEN=40
Dec 01 10:00:04 node1 kernel: nodeward-audit: IN=eth0 OUT= SRC=10.77.0.3 DST=10.77.0.1 \
PROTO=ICMP TYPE=8 CODE=0
"""


def test_conntrack_lines_become_original_direction_flows():
    flows = suggest.parse_conntrack(CONNTRACK)
    assert [(f.family, f.proto, f.src, f.dst, f.dport) for f in flows] == [
        (4, "tcp", "10.244.1.2", "10.77.0.1", 10250),
        (4, "tcp", "127.0.0.1", "127.0.0.1", 10250),
        (4, "udp", "10.77.0.2", "10.77.0.1", 8472),
        (6, "tcp", "fd00::2", "fd00::1", 2379)]


def test_audit_log_lines_only_with_the_prefix():
    flows = suggest.parse_audit_log(KLOG, "nodeward-audit: ")
    assert [(f.proto, f.src, f.dport, f.iif, f.via) for f in flows] == [
        ("tcp", "10.244.1.2", 10250, "cali0", "log"), ("udp", "10.77.0.3", 2379, "eth0", "log")]


def test_observe_groups_sources_and_skips_the_node_itself():
    flows = suggest.parse_conntrack(CONNTRACK) + suggest.parse_audit_log(KLOG,
                                                                         "nodeward-audit:")
    protected = [("kubelet", "tcp", ((10250, 10250),)), ("etcd-client", "tcp",
                                                          ((2379, 2380),))]
    ports = suggest.observe(flows, protected, {"10.77.0.1", "127.0.0.1", "fd00::1"},
                            lambda f: f.src.startswith("10.244."))
    kubelet, etcd = ports
    assert {a: (s.flows, s.audited, s.via) for a, s in kubelet.sources.items()} == {
        "10.244.1.2": (2, 2, {"conntrack", "log"})}
    assert set(etcd.sources) == {"fd00::2"}  # UDP 2379 is not the tcp component
    assert suggest.allow_map(ports) == {"kubelet": ["10.244.1.2/32"],
                                        "etcd-client": ["fd00::2/128"]}


def test_counters_per_component_take_the_larger_of_log_and_count_rules():
    C = SimpleNamespace
    counters = [C(chain="ipv4 NODEWARD-INPUT", comment="nodeward: kubelet closed", packets=2),
                C(chain="ipv4 NODEWARD-INPUT", comment="nodeward: kubelet closed", packets=5),
                C(chain="ipv4 NODEWARD-POD", comment="nodeward: pod to kubelet", packets=3),
                C(chain="ipv4 NODEWARD-POD", comment="nodeward: pod to metadata", packets=9),
                C(chain="ipv4 NODEWARD-INPUT", comment="nodeward: loopback", packets=99)]
    assert suggest.counters_by_component(counters, "nodeward") == {"kubelet": 8}


def test_calico_yaml_is_valid_for_ranges_udp_ipv6_and_no_sources():
    ports = [suggest.Port("kubelet", "tcp", ((10250, 10250),)),
             suggest.Port("nodeport-range", "tcp", ((30000, 32767),)),
             suggest.Port("vxlan", "udp", ((4789, 4789), (8472, 8472)))]
    ports[0].sources["fd00::7"] = suggest.Source("fd00::7", 2, 1, {"conntrack"})
    ports[2].sources["10.0.0.9"] = suggest.Source("10.0.0.9", 1, 0, {"log"})
    for kind in ("StagedGlobalNetworkPolicy", "GlobalNetworkPolicy"):
        text = suggest.calico_yaml("node-1", ports, ["10.0.0.1", "fd00::1"], kind, 10,
                                   ["header: it's a comment"])
        docs = list(yaml.safe_load_all(text))
        assert_calico_valid(docs)
        ingress = docs[1]["spec"]["ingress"]
        assert ingress[0] == {"action": "Allow", "protocol": "TCP",
                              "source": {"nets": ["fd00::7/128"]},
                              "destination": {"ports": [10250]}}
        assert {"action": "Deny", "protocol": "TCP",
                "destination": {"ports": ["30000:32767"]}} in ingress
        assert {"action": "Allow", "protocol": "UDP", "source": {"nets": ["10.0.0.9/32"]},
                "destination": {"ports": [4789, 8472]}} in ingress
    # and the schema check itself rejects what Calico would: a rule with a typo'd key
    docs[1]["spec"]["ingress"][0]["acton"] = "Allow"
    with pytest.raises(AssertionError):
        assert_calico_valid(docs)


def test_allow_config_keeps_the_config_and_extends_allow():
    p = suggest.Port("kubelet", "tcp", ((10250, 10250),))
    p.sources["10.244.1.2"] = suggest.Source("10.244.1.2", 1, 1, {"conntrack"})
    raw = {"mode": "audit", "enforce": {"allow": {"kubelet": ["10.9.0.0/16"]},
                                        "ipv6": False}}
    text = suggest.allow_config(raw, [p], ["hdr"])
    data = yaml.safe_load(text)
    assert data == {"mode": "audit", "enforce": {"allow": {"kubelet": ["10.9.0.0/16",
                                                                     "10.244.1.2/32"]},
                                                 "ipv6": False}}
    from_mapping(data, "suggested")  # a config nodeward loads


def test_verify_settings_and_their_errors():
    cfg = from_mapping({"verify": {"expect_open": ["10.96.0.10:53"], "timeout": 0.5,
                                   "metadata": ["[fd00:ec2::254]:80"]}}, "t")
    vs = cfg.section("verify")
    assert vs.expect_open == (("10.96.0.10", 53),) and vs.timeout == 0.5
    assert vs.metadata == (("fd00:ec2::254", 80),)
    for bad, msg in [({"expect_open": ["db:5432"]}, "not an IP address"),
                     ({"expect_open": ["10.0.0.1:0"]}, "no valid port"),
                     ({"timeout": 0}, "between"), ({"rate": True}, "between"),
                     ({"max_pods": float("nan")}, "between"), ({"prods": 1}, "unknown key")]:
        with pytest.raises(ConfigError, match=msg):
            from_mapping({"verify": bad}, "t")


@pytest.mark.parametrize("argv", [["verify", "--expect-open", "nonsense"],
                                  ["verify", "--max-pods", "0"],
                                  ["verify", "--timeout", "99"],
                                  ["suggest", "--kind", "calico"]])
def test_bad_arguments_exit_2_with_one_line(argv, capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    assert cli.main(["--config", str(cfg), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nodeward: ") and err.count("\n") == 1, err


def _proc_tree(tmp_path, entries):
    proc = tmp_path / "proc"
    for pid, cgroup, ns in entries:
        d = proc / str(pid) / "ns"
        d.mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(cgroup)
        target = tmp_path / "nsfiles" / ns
        target.parent.mkdir(exist_ok=True)
        if not target.exists():
            target.write_text("")
        (d / "net").symlink_to(target)
    return proc


def test_discover_one_entry_per_pod_netns(tmp_path):
    uid = "0f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
    proc = _proc_tree(tmp_path, [
        # systemd driver: dashes of the UID become underscores
        (10, f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
             f"{uid.replace('-', '_')}.slice/cri-containerd-abc.scope\n", "a"),
        (11, f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
             f"{uid.replace('-', '_')}.slice/cri-containerd-def.scope\n", "a"),  # same pod
        # cgroupfs driver, cgroup v1 lines
        (12, "12:pids:/kubepods/burstable/pod11111111-2222-3333-4444-555555555555/ctr\n"
             "0::/\n", "b"),
        (13, "0::/system.slice/sshd.service\n", "c"),  # not a pod
        (14, "0::/kubepods/pod99999999-2222-3333-4444-555555555555/c\n", "host"),  # hostNet
    ])
    run = tmp_path / "netns"
    run.mkdir()
    (run / "cni-1234").write_text("")
    (run / "dup").symlink_to(tmp_path / "nsfiles" / "b")  # same namespace as pid 12
    own = (tmp_path / "nsfiles" / "host").stat().st_ino
    found = verify.discover(str(proc), str(run), own_inode=own)
    assert [(p.name, p.source) for p in found] == [
        ("netns cni-1234", "run-netns"),
        ("pod 0f3c2a1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b", "cgroup"),
        ("pod 11111111-2222-3333-4444-555555555555", "cgroup")]
    assert found[1].path == f"{proc}/10/ns/net"


def test_connect_all_open_and_refused_on_loopback():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: the kernel resets
    try:
        out = netns_probe.connect_all([("127.0.0.1", srv.getsockname()[1]),
                                       ("127.0.0.1", closed.getsockname()[1])], 1.0, 100)
    finally:
        srv.close()
        closed.close()
    assert [(o.outcome, o.source) for o in out] == [("open", "127.0.0.1"),
                                                    ("refused", "127.0.0.1")]
    assert out[1].detail == "ECONNREFUSED"


def test_probe_in_a_missing_namespace_is_an_error_not_a_result():
    with pytest.raises(netns_probe.ProbeError, match="No such file"):
        netns_probe.probe_in("/run/netns/nodeward-no-such-ns", [("127.0.0.1", 1)], 0.1, 10)


def test_verify_settings_cli_overrides():
    args = SimpleNamespace(metadata=[("169.254.170.2", 80)], expect_open=[("10.0.0.1", 1)],
                           expect_blocked=None, max_pods=3, timeout=None, rate=None)
    vs = verify_settings.merged(verify_settings.VerifySettings(
        expect_open=(("10.0.0.2", 2),)), args)
    assert vs.metadata == (("169.254.170.2", 80),) and vs.max_pods == 3
    assert vs.expect_open == (("10.0.0.2", 2), ("10.0.0.1", 1))


def test_default_sources_that_sent_nothing_are_warned_about():
    from nodeward.enforce.plan import MARKER, build_plan
    from nodeward.model import NodeSnapshot

    cfg = from_mapping({"node_cidrs": ["10.77.0.0/24"],
                        "enforce": {"control_plane": ["10.0.0.0/24"],
                                    "api_server": "10.77.0.1:6443"}}, "t")
    plan = build_plan(NodeSnapshot("n", "t"), cfg.catalog, cfg, cfg.section("enforce"))
    ports = [suggest.Port(n, p, tuple(r)) for n, p, r in plan.protected]
    by_name = {p.component: p for p in ports}
    by_name["kubelet"].sources["10.0.0.5"] = suggest.Source("10.0.0.5", 1)
    listening = {("tcp", 10250), ("tcp", 2379), ("tcp", 6443)}
    notes = suggest.unobserved_defaults(plan, ports, MARKER, listening, {"10.77.0.1"})
    # kubelet: the control plane was seen, the API server is the node itself (loopback);
    # etcd and the API server's sources sent nothing; 9091 etc. do not listen here
    assert notes == [
        "etcd-client: etcd-members 10.0.0.0/24 is a nodeward default source but sent nothing "
        "during audit; the Calico policy denies it",
        "kube-apiserver: node-cidrs 10.77.0.0/24 is a nodeward default source but sent "
        "nothing during audit; the Calico policy denies it",
        "kube-apiserver: control-plane 10.0.0.0/24 is a nodeward default source but sent "
        "nothing during audit; the Calico policy denies it"]


def test_targets_are_listening_components_at_the_addresses_they_answer_on():
    from nodeward.model import Address, BindScope, Interface, NodeSnapshot, ProcessInfo, Socket

    def sock(name, addr, port, scope, v6only=None):
        fam = 6 if ":" in addr else 4
        return Socket("tcp", fam, addr, port, port, 0, process=ProcessInfo(1, name, name),
                      scope=scope, v6only=v6only)

    snap = NodeSnapshot("n", "t", sockets=(
        sock("kubelet", "0.0.0.0", 10250, BindScope.WILDCARD),
        sock("etcd", "10.0.0.1", 2379, BindScope.NODE_PRIVATE),
        sock("kube-scheduler", "127.0.0.1", 10259, BindScope.LOOPBACK),
        sock("sshd", "0.0.0.0", 22, BindScope.WILDCARD),
        sock("kube-apiserver", "::", 6443, BindScope.WILDCARD, v6only=True),
        sock("node_exporter", "::", 9100, BindScope.WILDCARD, v6only=False),
        sock("nginx", "0.0.0.0", 10255, BindScope.WILDCARD),  # squats a strict port
    ), interfaces=(
        Interface("lo", 1, addresses=(Address("lo", 4, "127.0.0.1", 8),)),
        Interface("eth0", 2, addresses=(Address("eth0", 4, "10.0.0.1", 24),
                                        Address("eth0", 6, "fd00::1", 64),
                                        Address("eth0", 6, "fe80::1", 64))),
        Interface("tunl0", 3, addresses=(Address("tunl0", 4, "10.244.0.1", 32),)),
    ))
    cfg = from_mapping({}, "t")
    got = [(t.host, t.port, t.kind, t.component)
           for t in verify.targets_for(snap, cfg, verify_settings.VerifySettings())]
    assert got == [
        ("10.0.0.1", 2379, "component", "etcd-client"),
        ("10.0.0.1", 9100, "component", "node-exporter"),
        ("10.244.0.1", 9100, "component", "node-exporter"),
        ("10.0.0.1", 10250, "component", "kubelet"),
        ("10.244.0.1", 10250, "component", "kubelet"),
        ("169.254.169.254", 80, "metadata", "metadata")]
    six = verify.targets_for(snap, cfg, verify_settings.VerifySettings(ipv6=True))
    assert ("fd00::1", 6443) in {(t.host, t.port) for t in six}
    assert ("fd00::1", 2379) not in {(t.host, t.port) for t in six}


def test_suggest_with_an_unknown_allow_component_is_a_one_line_config_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("enforce: {allow: {kubelett: [10.0.0.0/8]}}\n")
    assert cli.main(["--config", str(cfg), "suggest", "--no-conntrack"]) == 2
    err = capsys.readouterr().err
    assert "kubelett" in err and err.count("\n") == 1, err


REALWORLD = Path(__file__).resolve().parents[2] / ".." / "shared" / "realworld" / "yaml"
HOST_KINDS = ("HostEndpoint", "GlobalNetworkPolicy", "StagedGlobalNetworkPolicy")


def _realworld_host_objects() -> list[dict]:
    out = []
    for f in sorted(REALWORLD.rglob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if not isinstance(doc, dict):
                continue
            items = doc.get("items") or [] if doc.get("kind", "").endswith("List") else [doc]
            out += [x for x in items if isinstance(x, dict) and x.get("kind") in HOST_KINDS]
    return out


def test_the_schema_check_accepts_real_calico_objects():
    """The strict CRD check that suggest's YAML passes is no stricter than Calico: every
    HostEndpoint and GlobalNetworkPolicy from Calico's docs and repo passes it, and each
    policy passes the staged schema too (same spec)."""
    objs = _realworld_host_objects()
    kinds = [o["kind"] for o in objs]
    assert kinds.count("HostEndpoint") >= 4 and kinds.count("GlobalNetworkPolicy") >= 10
    assert_calico_valid(objs)
    assert_calico_valid([{**o, "kind": "StagedGlobalNetworkPolicy"} for o in objs
                         if o["kind"] == "GlobalNetworkPolicy"])


def test_read_conntrack_says_whether_anything_was_read():
    def missing(argv, **kw):
        raise FileNotFoundError(argv[0])

    def v6_fails(argv, **kw):
        if "ipv6" in argv:
            return SimpleNamespace(returncode=1, stdout="", stderr="Operation not permitted\n")
        return SimpleNamespace(returncode=0, stdout=CONNTRACK.splitlines()[0], stderr="")

    assert suggest.read_conntrack(missing) == (
        [], ["conntrack: command not found (install conntrack-tools)"], False)
    flows, notes, ok = suggest.read_conntrack(v6_fails)
    assert ok and len(flows) == 1
    assert notes == ["conntrack -f ipv6: exit 1: Operation not permitted"]


def test_suggest_with_no_readable_source_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no conntrack (nor anything else) on PATH
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    out = tmp_path / "calico.yaml"
    rc = cli.main(["--config", str(cfg), "suggest", "--calico-out", str(out)])
    assert rc == 1 and not out.exists()
    assert "nothing written" in capsys.readouterr().err
