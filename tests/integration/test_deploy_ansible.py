"""ansible/: ansible-lint (production profile) is clean, and site.yml installs the agent on
localhost (connection local) into a temporary prefix: virtualenv, config validated by the
agent's own parser, units with this install's paths, the post-batch health check (one
scan). The service is not started: the inventory sets nodeward_manage_service false, and
the tasks that start it also need systemd as PID 1.

The agent is installed from a copy of the working tree (pyproject, README, agent/) so the
build leaves nothing in the repository; its dependencies come from pip's configured
index/cache (the same ones the test venv was installed from)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodeward import config as config_mod

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LINT = shutil.which("ansible-lint", path=str(BIN)) or shutil.which("ansible-lint")
PLAYBOOK = shutil.which("ansible-playbook", path=str(BIN)) or shutil.which("ansible-playbook")
UNITS = ("nodeward.service", "nodeward-scan.service", "nodeward-scan.timer")


def copy_deploy_tree(dest: Path) -> Path:
    """ansible/ alone: the role carries its own unit files (no link out of it)."""
    shutil.copytree(REPO / "ansible", dest / "ansible", symlinks=True)
    return dest / "ansible"


def test_role_is_self_contained_and_its_units_are_the_shipped_ones():
    """The role's files/systemd are copies of systemd/ (a role installed from Galaxy or a
    tarball has no ../systemd to follow), byte for byte, and nothing in it links out."""
    role = REPO / "ansible" / "roles" / "nodeward"
    links = [p for p in role.rglob("*") if p.is_symlink()]
    assert links == []
    for name in UNITS:
        assert (role / "files" / "systemd" / name).read_bytes() == \
            (REPO / "systemd" / name).read_bytes(), name


def env_for(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ANSIBLE_HOME=str(tmp / "ansible-home"), ANSIBLE_LOCAL_TEMP=str(tmp / "lt"),
               ANSIBLE_REMOTE_TEMP=str(tmp / "rt"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", PATH=f"{BIN}:{env['PATH']}")
    return env


def lint(project: Path, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--profile", "production", "--offline", "--nocolor",
                           "--project-dir", str(project), "site.yml", "roles"],
                          cwd=project, env=env_for(tmp), capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.skipif(LINT is None, reason="ansible-lint not installed (pip install ansible-lint)")
def test_ansible_lint_production_clean(tmp_path):
    r = lint(copy_deploy_tree(tmp_path), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Profile 'production' was required, and it passed" in r.stdout + r.stderr


@pytest.mark.skipif(LINT is None, reason="ansible-lint not installed (pip install ansible-lint)")
def test_ansible_lint_catches_a_violation(tmp_path):
    project = copy_deploy_tree(tmp_path)
    tasks = project / "roles/nodeward/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- ansible.builtin.command: /bin/true\n")
    r = lint(project, tmp_path)
    assert r.returncode != 0
    assert "no-changed-when" in r.stdout + r.stderr or "name[missing]" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """site.yml run once on localhost into a temporary prefix; removed afterwards."""
    if PLAYBOOK is None:
        pytest.skip("ansible-core not installed (pip install ansible-core)")
    tmp = tmp_path_factory.mktemp("ansible-run")
    src = tmp / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "agent", src / "agent",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    project = copy_deploy_tree(tmp)
    prefix = tmp / "prefix"
    extra = {
        "ansible_python_interpreter": sys.executable,
        "nodeward_python": sys.executable,
        "nodeward_source": str(src),
        "nodeward_prefix": str(prefix / "opt/nodeward"),
        "nodeward_config_dir": str(prefix / "etc/nodeward"),
        "nodeward_systemd_dir": str(prefix / "etc/systemd/system"),
        "nodeward_mode": "audit",
        "nodeward_pod_cidrs": ["10.244.0.0/16"],
        "nodeward_suppress": [{"id": "NW101", "port": 22, "reason": "ssh is managed"}],
    }

    def run(**overrides) -> subprocess.CompletedProcess:
        args = {**extra, **overrides}
        (tmp / "extra.yml").write_text(yaml.safe_dump(args))
        return subprocess.run([PLAYBOOK, "-i", "inventory/localhost.yml", "site.yml",
                               "-e", f"@{tmp / 'extra.yml'}"],
                              cwd=project, env=env_for(tmp), capture_output=True,
                              text=True, timeout=300, check=False)

    first = run()
    yield {"prefix": prefix, "result": first, "run": run}
    shutil.rmtree(tmp, ignore_errors=True)


def test_playbook_installs_on_localhost(installed):
    r = installed["result"]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    prefix = installed["prefix"]
    exe = prefix / "opt/nodeward/venv/bin/nodeward"
    assert exe.exists()
    v = subprocess.run([str(exe), "version"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert v.returncode == 0 and v.stdout.strip()
    # The health check ran (one scan) and the service start was skipped, not attempted.
    assert "TASK [nodeward : Scan once with the installed agent and config]" in r.stdout
    assert "ok: [localhost]" in r.stdout.split("Scan once with the installed agent")[1]
    assert "skipping: [localhost]" in r.stdout.split("Enable and start the agent")[1]


def test_templated_config_is_valid_and_has_only_agent_keys(installed):
    path = installed["prefix"] / "etc/nodeward/config.yaml"
    data = yaml.safe_load(path.read_text())
    assert set(data) <= set(config_mod.TOP.by_name)  # the settings table's top level
    cfg = config_mod.load(str(path))
    assert cfg.mode == "audit"
    assert [str(c) for c in cfg.pod_cidrs] == ["10.244.0.0/16"]
    assert cfg.suppress[0].id == "NW101" and cfg.suppress[0].port == 22
    assert cfg.metrics_address == "127.0.0.1:9737"
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_installed_units_point_into_the_prefix(installed):
    prefix = installed["prefix"]
    unit_dir = prefix / "etc/systemd/system"
    for name in UNITS:
        text = (unit_dir / name).read_text()
        shipped = (REPO / "systemd" / name).read_text()
        assert "/opt/nodeward/venv" not in text or str(prefix) in text
        assert text.replace(str(prefix / "opt/nodeward/venv"), "/opt/nodeward/venv") \
            .replace(str(prefix / "etc/nodeward"), "/etc/nodeward") == shipped
    analyze = shutil.which("systemd-analyze")
    if analyze:
        # The installed units' ExecStart binaries exist, so verify runs on them as they are.
        r = subprocess.run([analyze, "verify", *UNITS], cwd=unit_dir, capture_output=True,
                           text=True, timeout=60, check=False)
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_bad_settings_fail_before_changing_the_config(installed):
    path = installed["prefix"] / "etc/nodeward/config.yaml"
    before = path.read_text()
    r = installed["run"](nodeward_mode="bogus")
    assert r.returncode != 0 and "nodeward_mode must be" in r.stdout
    # A key the agent does not know is rejected by the agent's parser (template validate).
    r = installed["run"](nodeward_extra_config={"no_such_key": 1})
    assert r.returncode != 0
    assert "no_such_key" in r.stdout + r.stderr
    assert path.read_text() == before


def test_site_rollout_is_canary_with_health_check():
    (play,) = yaml.safe_load((REPO / "ansible/site.yml").read_text())
    assert play["serial"][0] == 1 and play["serial"][-1] == "100%"
    assert play["max_fail_percentage"] == 0
    health = play["post_tasks"][0]["ansible.builtin.include_role"]
    assert health == {"name": "nodeward", "tasks_from": "health"}
    defaults = yaml.safe_load((REPO / "ansible/roles/nodeward/defaults/main.yml").read_text())
    assert defaults["nodeward_mode"] == "report"
    assert 2 not in defaults["nodeward_health_scan_rcs"]
