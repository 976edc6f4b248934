"""The Ansible role's meta/argument_specs.yml: it names every variable of defaults/main.yml
with the same default, its choices are the agent's own, and Ansible itself rejects a wrong
value with the variable's name before any task runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodeward import config as config_mod

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "nodeward"
BIN = Path(sys.executable).parent


def spec() -> dict:
    return yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"]["main"]


def test_every_default_is_specified_with_the_same_value():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    options = spec()["options"]
    assert set(options) == set(defaults)
    for name, opt in options.items():
        assert opt["default"] == defaults[name], name
        assert opt.get("description"), name


def test_choices_are_the_agents():
    options = spec()["options"]
    assert tuple(options["nodeward_mode"]["choices"]) == config_mod.MODES
    assert tuple(options["nodeward_backend"]["choices"]) == config_mod.BACKENDS


def test_ansible_validates_the_arguments(tmp_path):
    playbook_bin = shutil.which("ansible-playbook", path=str(BIN)) or \
        shutil.which("ansible-playbook")
    if playbook_bin is None:
        pytest.skip("ansible-core not installed (pip install ansible-core)")
    roles = tmp_path / "roles"
    roles.mkdir()
    (roles / "nodeward").symlink_to(ROLE)
    play = tmp_path / "play.yml"
    # Bad values only: Ansible's argument check is the role's first task, so nothing else
    # runs (no apt, no pip) when it fails.
    play.write_text("- hosts: localhost\n  gather_facts: false\n  roles:\n"
                    "    - nodeward\n")
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(roles), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}

    def run(*extra: str) -> str:
        r = subprocess.run([playbook_bin, "-i", "localhost,", "-c", "local", str(play),
                            *extra], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode != 0, r.stdout
        assert "Validation of arguments failed" in r.stdout, r.stdout
        assert "ok=0    changed=0" in r.stdout, r.stdout  # no task ran
        return r.stdout

    out = run("-e", "nodeward_mode=bogus")
    assert "nodeward_mode must be one of: report, audit, enforce" in out, out
    out = run("-e", "nodeward_interval=soon")
    assert "nodeward_interval" in out and "int" in out, out
    out = run("-e", '{"nodeward_suppress": "NW101"}')
    assert "nodeward_suppress" in out, out
