"""vagrant/: the lab cannot be booted here (no Vagrant, no hypervisor). What is checked:
the Vagrantfile is valid Ruby (`ruby -c`), and evaluated against a recording stand-in for
Vagrant's configuration API it defines 1 control plane + 2 workers on Debian 12, with the
kubeadm/Calico provision scripts (valid bash, WireGuard on) and an Ansible provisioner
that runs ansible/site.yml over all three with variables the role defines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"
RUBY = shutil.which("ruby")
needs_ruby = pytest.mark.skipif(RUBY is None, reason="ruby missing (apt-get install ruby)")

# Records every call made on `config` (and on the objects its blocks receive).
STUB = r'''
require "json"
CALLS = []
class Rec
  def initialize(path)
    @path = path
  end

  def respond_to_missing?(*)
    true
  end

  def method_missing(name, *args, **kw, &blk)
    path = "#{@path}.#{name}"
    args += [kw] unless kw.empty?
    CALLS << { "path" => path, "args" => args }
    child = Rec.new(args.first.is_a?(String) && blk ? "#{path}[#{args.first}]" : path)
    blk&.call(child)
    child
  end
end
module Vagrant
  def self.configure(version)
    raise "configure(#{version})" unless version == "2"
    yield Rec.new("config")
  end
end
load ARGV[0]
puts JSON.generate(CALLS)
'''


@needs_ruby
def test_vagrantfile_ruby_syntax():
    r = subprocess.run([RUBY, "-c", str(VAGRANT / "Vagrantfile")], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0 and "Syntax OK" in r.stdout, r.stderr


@needs_ruby
def test_ruby_syntax_check_can_fail(tmp_path):
    bad = tmp_path / "Vagrantfile"
    bad.write_text((VAGRANT / "Vagrantfile").read_text().replace("end\nend", "end\n", 1)
                   + "\nVagrant.configure(\"2\") do |c|\n")
    r = subprocess.run([RUBY, "-c", str(bad)], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode != 0


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    """The Vagrantfile evaluated in a copy of vagrant/ (its token file lands there)."""
    if RUBY is None:
        pytest.skip("ruby missing (apt-get install ruby)")
    tmp = tmp_path_factory.mktemp("vagrant")
    shutil.copytree(VAGRANT, tmp / "vagrant", ignore=shutil.ignore_patterns(".vagrant"))
    (tmp / "stub.rb").write_text(STUB)
    r = subprocess.run([RUBY, str(tmp / "stub.rb"), str(tmp / "vagrant/Vagrantfile")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    token = (tmp / "vagrant/.vagrant/kubeadm-token").read_text()
    yield json.loads(r.stdout), token
    shutil.rmtree(tmp, ignore_errors=True)


def find(calls, pattern):
    return [c for c in calls if re.fullmatch(pattern, c["path"])]


def test_three_debian_nodes(calls):
    recorded, _ = calls
    assert find(recorded, r"config\.vm\.box=")[0]["args"] == ["debian/bookworm64"]
    names = [c["args"][0] for c in find(recorded, r"config\.vm\.define")]
    assert names == ["cp1", "w1", "w2"]
    ips = [c["args"][1]["ip"] for c in find(recorded, r"config\.vm\.define\[\w+\]\.vm\.network")
           if c["args"][0] == "private_network"]
    assert len(set(ips)) == 3


def test_kubeadm_and_calico_provisioning(calls):
    recorded, token = calls
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token)
    shells = [c for c in find(recorded, r"config\.vm\.define\[\w+\]\.vm\.provision")
              if c["args"][1].get("type") == "shell"]
    by_node: dict[str, list[str]] = {}
    for c in shells:
        node = re.search(r"define\[(\w+)\]", c["path"]).group(1)
        by_node.setdefault(node, []).append(c["args"][0])
        script = VAGRANT / c["args"][1]["path"]
        assert script.is_file()
        assert c["args"][1]["env"]["KUBEADM_TOKEN"] == token
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                           timeout=30, check=False)
        assert r.returncode == 0, r.stderr
    assert by_node == {"cp1": ["kubernetes-node", "control-plane"],
                       "w1": ["kubernetes-node", "join"], "w2": ["kubernetes-node", "join"]}
    cp = (VAGRANT / "provision/control-plane.sh").read_text()
    assert "kubeadm init" in cp and "tigera-operator" in cp
    assert re.search(r'"wireguardEnabled": true', cp)
    assert "kubeadm join" in (VAGRANT / "provision/worker.sh").read_text()


def test_ansible_provisioner_runs_site_yml_on_all_nodes(calls):
    recorded, _ = calls
    (prov,) = [c for c in find(recorded, r"config\.vm\.define\[\w+\]\.vm\.provision")
               if c["args"][0] == "nodeward"]
    assert prov["args"][1]["type"] == "ansible"
    assert "define[w2]" in prov["path"], "runs after the last machine is up"
    settings = {c["path"].rsplit(".", 1)[1]: c["args"][0]
                for c in find(recorded, r".*\[nodeward\]\.\w+=")}
    assert (VAGRANT / settings["playbook="]).resolve() == REPO / "ansible/site.yml"
    assert (VAGRANT / settings["config_file="]).is_file()
    assert settings["limit="] == "all"
    assert settings["groups="] == {"nodeward": ["cp1", "w1", "w2"]}
    defaults = yaml.safe_load((REPO / "ansible/roles/nodeward/defaults/main.yml").read_text())
    extra = settings["extra_vars="]
    assert set(extra) - {"ansible_python_interpreter"} <= set(defaults)
    assert extra["nodeward_mode"] in ("report", "audit", "enforce")
    for host_vars in settings["host_vars="].values():
        assert set(host_vars) <= set(defaults)
