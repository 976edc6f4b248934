"""The settings table (nodeward.settings_table) is the one owner of every key.

For every key of every section, each value its kind must refuse (wrong type, out of range,
one entry past the list cap) gives exit 2 and one line naming the file and the key through
`nodeward config check`; every documented default is a value the key accepts; the shipped
configs (the DaemonSet's, the Ansible role's rendered template) pass; docs/settings.md is
the table rendered; and derive.with_derived fills exactly the keys the table marks derived.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodeward import cli, config, derive, settings_docs, settings_table
from nodeward.settings_schema import ListOf, Section

ROOT = Path(__file__).resolve().parents[2]

#: A valid entry for each list of mappings (and the sink, whose url is required), so a bad
#: value of one of its keys is refused for that key alone.
BASES = {"suppress[]": {"id": "NW101", "reason": "accepted"},
         "catalog[]": {"name": "my-agent", "ports": [9100]},
         "cluster.peers[]": {"name": "peer-1"},
         "daemon.probe_peers.peers[]": {"name": "peer-1", "addresses": ["10.0.0.2"]},
         "daemon.sink": {"url": "https://collector.example/v1"},
         "cluster.relay": {"url": "https://nodeward-relay.nodeward.svc:5443"}}


def _keys() -> list[tuple[str, object, str]]:
    """(path of the key's container, Key, the name the message uses) for every key."""
    out = []

    def walk(section: Section, path: str, shown: str) -> None:
        for k in section.keys:
            here = f"{shown}.{k.name}" if shown else k.name
            out.append((path, k, here))
            inner = k.kind.item if isinstance(k.kind, ListOf) else k.kind
            if isinstance(inner, Section):
                sub = f"{path}.{k.name}" if path else k.name
                if inner is k.kind:
                    walk(inner, sub, here)
                else:
                    walk(inner, sub + "[]", here + "[0]")

    walk(settings_table.TOP, "", "")
    return out


def _data_with(container: str, name: str, value: object) -> dict:
    """A config whose only problem is `value` at `name` inside `container`."""
    if not container:
        return {name: value}
    parts = container.split(".")
    data: dict = {}
    node = data
    path = ""
    for i, part in enumerate(parts):
        listed = part.endswith("[]")
        key = part.removesuffix("[]")
        path = f"{path}.{part}" if path else part
        inner = dict(BASES.get(path, {}))
        node[key] = [inner] if listed else inner
        node = inner
        if i == len(parts) - 1:
            node[name] = value
    return data


CASES = [(container, k.name, shown, bad)
         for container, k, shown in _keys() for bad in k.kind.bad]


def test_every_list_of_mappings_has_a_base_entry():
    containers = {c for c, _, _ in _keys()}
    listed = {c for c in containers if c.endswith("[]")}
    assert listed <= set(BASES), sorted(listed - set(BASES))
    assert len(CASES) > 250  # every key, several refused values each


def test_every_refused_value_is_exit_2_one_line_naming_the_key(tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.delenv(config.NODE_NAME_ENV, raising=False)
    p = tmp_path / "c.yaml"
    wrong = []
    for container, name, shown, bad in CASES:
        p.write_text(json.dumps(_data_with(container, name, bad)))
        rc = cli.main(["config", "check", "--config", str(p)])
        out, err = capsys.readouterr()
        where = f"nodeward: config error: {p}: {shown}"
        if rc != 2 or out or err.count("\n") != 1 or not err.startswith(where):
            wrong.append((shown, bad if len(repr(bad)) < 60 else "...", rc, err[:200]))
    assert not wrong, wrong[:5]


def test_every_list_and_number_is_bounded():
    """No key takes an unbounded list or number: the caps the refusals above probe."""
    from nodeward.settings_schema import MapOf, Num

    for _, k, shown in _keys():
        if isinstance(k.kind, ListOf | MapOf):
            assert 1 <= k.kind.cap <= 5000, shown
        if isinstance(k.kind, Num):
            assert k.kind.hi <= 1e9, shown


def test_each_base_entry_alone_is_valid(tmp_path, capsys):
    """So the refusals above are the bad value's, not the scaffolding's."""
    for container in BASES:
        p = tmp_path / "c.yaml"
        data = _data_with(container, "", None)
        _drop_empty_key(data)
        p.write_text(json.dumps(data))
        assert cli.main(["config", "check", "--config", str(p)]) == 0, (container,
                                                                         capsys.readouterr())
    capsys.readouterr()


def _drop_empty_key(node: object) -> None:
    if isinstance(node, dict):
        node.pop("", None)
        for v in node.values():
            _drop_empty_key(v)
    elif isinstance(node, list):
        for v in node:
            _drop_empty_key(v)


def test_every_documented_default_is_accepted_by_its_key():
    """The default as `config keys` shows it, written back into a file, parses to the
    default itself: the docs' defaults are real values."""
    for _, k, shown in _keys():
        if k.default in (None, "") or k.required or isinstance(k.kind, Section) \
                or k.factory:
            continue  # none, "" (unset: what the default_doc says applies) or computed
        text = yaml.safe_dump({"v": k.kind.show(k.default)})
        assert k.kind.parse(yaml.safe_load(text)["v"], shown) == k.default, shown


@pytest.mark.parametrize(("n", "rc"), [(256, 0), (257, 2)])
def test_pod_interfaces_cap(tmp_path, capsys, n, rc):
    """170,000 patterns once passed and made 340,000 rules."""
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps({"pod_interfaces": [f"if{i}" for i in range(n)]}))
    assert cli.main(["config", "check", "--config", str(p)]) == rc
    if rc:
        assert capsys.readouterr().err == (f"nodeward: config error: {p}: pod_interfaces: "
                                           f"{n} entries, more than the limit of 256\n")


@pytest.mark.parametrize("key", ["a\nb", "x" * 1000, "\u202e"])
def test_unknown_keys_are_named_on_one_short_line(tmp_path, capsys, key):
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps({"daemon": {key: 1}}))
    assert cli.main(["config", "check", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nodeward: config error: {p}: daemon.") and err.count("\n") == 1
    assert len(err) < 400 and err[:-1].isprintable(), err


def test_the_console_script_refuses_the_same_way(tmp_path):
    """A few cases through the installed `nodeward` executable, not cli.main."""
    exe = shutil.which("nodeward", path=str(Path(sys.executable).parent))
    assert exe, "the venv has no nodeward console script"
    for data, key in [({"enforce": {"log_rate": 1e9}}, "enforce.log_rate"),
                      ({"daemon": {"probe_peers": {"peers": [{"name": "a"}]}}},
                       "daemon.probe_peers.peers[0].addresses"),
                      ({"cluster": {"kubernetes": {"timeout": "soon"}}},
                       "cluster.kubernetes.timeout")]:
        p = tmp_path / "c.yaml"
        p.write_text(json.dumps(data))
        r = subprocess.run([exe, "config", "check", "--config", str(p)], capture_output=True,
                           text=True, timeout=60, check=False)
        assert r.returncode == 2 and r.stdout == "", r
        assert r.stderr.startswith(f"nodeward: config error: {p}: {key}: "), r.stderr
        assert r.stderr.count("\n") == 1


def test_shipped_configs_pass(tmp_path, capsys):
    shipped = [ROOT / "kubernetes" / "config" / "config.yaml"]
    cm = yaml.safe_load((ROOT / "kubernetes" / "configmap.yaml").read_text())
    (tmp_path / "configmap.yaml").write_text(cm["data"]["config.yaml"])
    shipped.append(tmp_path / "configmap.yaml")
    for path in shipped:
        assert cli.main(["config", "check", "--config", str(path)]) == 0, capsys.readouterr()
    capsys.readouterr()


def test_ansible_template_rendered_passes(tmp_path, capsys):
    """The role's template with its defaults, and with a kubeconfig and extra config (the
    host-install case with cluster checks): what the role writes to /etc/nodeward."""
    jinja2 = pytest.importorskip("jinja2")
    role = ROOT / "ansible" / "roles" / "nodeward"
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    env.filters["to_nice_yaml"] = lambda v, indent=2: yaml.safe_dump(v, indent=indent)
    template = env.from_string((role / "templates" / "config.yaml.j2").read_text())
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    variants = [{}, {"nodeward_kubeconfig": "/etc/kubernetes/kubelet.conf",
                     "nodeward_node_name": "worker-1", "nodeward_pod_cidrs": ["10.244.0.0/16"],
                     "nodeward_suppress": [{"id": "NW102", "port": 6443, "reason": "LB"}],
                     "nodeward_extra_config": {"daemon": {"full_report_every": 5}}}]
    for extra in variants:
        text = template.render(**{**defaults, **extra, "ansible_managed": "Ansible managed"})
        p = tmp_path / "config.yaml"
        p.write_text(text)
        assert cli.main(["config", "check", "--config", str(p)]) == 0, (text,
                                                                         capsys.readouterr())
        out = capsys.readouterr().out
        if extra:
            assert "  set      cluster.kubernetes.kubeconfig: /etc/kubernetes/kubelet.conf" \
                in out.splitlines()


def test_docs_settings_md_is_generated_from_the_table(capsys):
    assert cli.main(["config", "keys", "--markdown"]) == 0
    assert capsys.readouterr().out == (ROOT / "docs" / "settings.md").read_text(), \
        "regenerate: nodeward config keys --markdown > docs/settings.md"


def test_every_key_is_documented():
    for _, k, shown in _keys():
        assert k.doc and k.kind.what, shown
    text = settings_docs.text()
    assert "enforce.log_rate  (integer, 1 to 10000; default 10)" in text
    assert "daemon.sink.url  (an http(s) URL; default (required))" in text


def test_derived_keys_agree_with_derive():
    """The table's derived keys are Derived's fields, and every Derived value the view
    yields has a key in the table."""
    table = {k.derived for _, k, _ in _keys() if k.derived}
    fields = {f.name for f in dataclasses.fields(derive.Derived)} - {"sources"}
    assert table == fields


def test_with_derived_fills_only_what_the_config_leaves_unset(monkeypatch):
    monkeypatch.setenv(config.NODE_NAME_ENV, "worker-1")
    import ipaddress

    nets = lambda *xs: tuple(ipaddress.ip_network(x) for x in xs)  # noqa: E731
    d = derive.Derived(node_addresses=nets("10.0.0.1/32"), pod_cidrs=nets("10.244.0.0/16"),
                       control_plane=nets("10.0.0.1/32"), etcd_members=nets("10.0.0.1/32"),
                       sources={"node_addresses": "Node addresses (1 nodes)"})
    cfg = config.from_mapping({"pod_cidrs": ["10.9.0.0/16"],
                               "enforce": {"etcd_members": ["10.8.0.0/24"]}}, "t")
    out = derive.with_derived(cfg, d)
    assert out.node_cidrs == nets("10.0.0.1/32") and out.pod_cidrs == nets("10.9.0.0/16")
    assert out.section("enforce").control_plane == nets("10.0.0.1/32")
    assert out.section("enforce").etcd_members == nets("10.8.0.0/24")
    assert cfg.node_cidrs == () and derive.with_derived(cfg, None) is cfg
    assert [(p, s) for p, _, s in settings_docs.derived_keys(cfg, d)] == [
        ("node_cidrs", "Node addresses (1 nodes)"), ("enforce.control_plane", "")]


def test_config_check_offline_shows_derived_values(tmp_path, capsys, monkeypatch):
    """A real IPPool from the corpus (when present), two Kubernetes Nodes and a
    FelixConfiguration with WireGuard on: config check says what each unset key becomes."""
    monkeypatch.delenv(config.NODE_NAME_ENV, raising=False)
    off = tmp_path / "cluster"
    off.mkdir()
    real = ROOT.parent / "shared" / "realworld" / "yaml" / "tigera-docs" / \
        "reference-resources-ippool.yaml"
    pool = "10.1.0.0/16"
    if real.is_file():
        shutil.copy(real, off / "ippool.yaml")
    else:
        (off / "ippool.yaml").write_text(json.dumps({
            "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": pool}}))
    docs = [{"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": "cp-1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
             "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}},
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-1"},
             "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}},
            {"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
             "metadata": {"name": "default"}, "spec": {"wireguardEnabled": True}}]
    (off / "cluster.yaml").write_text("---\n".join(json.dumps(d) + "\n" for d in docs))
    p = tmp_path / "c.yaml"
    p.write_text("node_name: worker-1\ncluster: {}\nenforce: {etcd_members: [10.9.0.0/24]}\n")
    assert cli.main(["config", "check", "--config", str(p), "--offline", str(off)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  set      enforce.etcd_members: [10.9.0.0/24]" in lines
    assert "  derived  node_cidrs: [10.0.0.1/32, 10.0.0.2/32] (from Node addresses (2 nodes))" \
        in lines
    assert f"  derived  pod_cidrs: [{pool}] (from IPPool)" in lines
    assert any(x.startswith("  derived  enforce.control_plane: [10.0.0.1/32] (from node-role")
               for x in lines)
    assert "  derived  cluster.encryption: wireguard (from FelixConfiguration default " \
        "wireguardEnabled: true)" in lines
    assert not any("etcd_members" in x for x in lines if "derived" in x)  # config wins


def test_config_check_offline_needs_a_directory(tmp_path, capsys):
    assert cli.main(["config", "check", "--config", "/dev/null", "--offline",
                     str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nodeward: ") and "not a directory" in err and err.count("\n") == 1


def test_config_check_never_echoes_url_credentials(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("daemon: {sink: {url: 'https://user:s3cret@c.example/x?token=t0k'}}\n"
                 "cluster: {kubernetes: {api_url: 'https://a:s3cret@[fd00::1]:6443'}}\n")
    assert cli.main(["config", "check", "--config", str(p)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "t0k" not in out
    assert "  set      daemon.sink.url: https://c.example/x" in out.splitlines()
