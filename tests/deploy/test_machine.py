"""The systemd units and the Ansible role on a real systemd: a Debian 12 tree made by
mmdebstrap, booted by systemd-nspawn (systemd as PID 1) inside a lab network namespace.

The Ansible role runs inside that machine (connection local, the interpreter a virtualenv
holding ansible-core): it installs the agent from wheels of this working tree, writes the
config (audit mode, nftables), installs the units, `systemctl enable --now`s the agent and
runs its post-batch health check (/healthz). A second run changes nothing. Then the unit
itself, under its full sandbox: active, /healthz 200, `scan_complete` in the journal, audit
rules applied with nftables and with iptables (checked in the namespace's kernel ruleset
from outside the machine), `systemctl reload` (SIGHUP) keeps the same process, a broken
config stops the unit without a restart loop; the scan timer and its one-shot service.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.deploy.harness import MACHINE, REPO, Machine, extract, need, project_wheels, rootfs_tar

pytestmark = pytest.mark.lab

ANSIBLE_VENV = "/opt/ansible"
PORT = 9737
# The playbook's output: "ok=5 changed=3 unreachable=0 failed=0 ..."
RECAP = re.compile(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


@pytest.fixture(scope="module")
def machine(module_lab):
    need("systemd-nspawn", "mmdebstrap", "nsenter")
    lab = module_lab
    ns = lab.node("sd", "10.77.0.1/24")
    lab.pod(ns, "10.244.1.2/24", "10.244.1.1/24", host_if="calis1")
    t0 = time.monotonic()
    tar = rootfs_tar(*MACHINE)
    work = Path(tempfile.mkdtemp(prefix="nw-machine-", dir="/var/tmp"))
    m = None
    try:
        tree = extract(tar, work / "tree")
        wheels = project_wheels(work / "wheels",
                                f"ansible-core=={metadata.version('ansible-core')}")
        t1 = time.monotonic()
        m = Machine(tree, ns.name, f"nw{ns.name[-12:]}")
        m.boot(binds=(f"{wheels}:/srv/wheels", f"{REPO / 'ansible'}:/srv/ansible"))
        t2 = time.monotonic()
        m.sh("python3", "-m", "venv", ANSIBLE_VENV)
        m.sh(f"{ANSIBLE_VENV}/bin/pip", "install", "-q", "--no-index", "--find-links",
             "/srv/wheels", "ansible-core", timeout=300)
        print(f"\nmachine: tree+wheels {t1 - t0:.1f}s, boot {t2 - t1:.1f}s, "
              f"ansible venv {time.monotonic() - t2:.1f}s")
        yield {"m": m, "lab": lab, "ns": ns}
    finally:
        if m is not None:
            m.stop()
        shutil.rmtree(work, ignore_errors=True)


def playbook(m: Machine, **extra) -> tuple[str, tuple[int, ...]]:
    """site.yml inside the machine against localhost (connection local)."""
    inventory = {"nodeward": {"hosts": {"localhost": {
        "ansible_connection": "local",
        "ansible_python_interpreter": f"{ANSIBLE_VENV}/bin/python"}}}}
    variables = {
        "nodeward_source": "nodeward",
        "nodeward_pip_extra_args": "--no-index --find-links /srv/wheels",
        # The machine has no route out: the Debian packages are in the tree already.
        "nodeward_install_apt_packages": False,
        "nodeward_mode": "audit", "nodeward_backend": "nftables", "nodeward_interval": 2,
        "nodeward_node_cidrs": ["10.77.0.0/24"], "nodeward_node_name": "sd-node",
        "nodeward_health_delay": 1, "nodeward_health_retries": 30,
        **extra,
    }
    m.sh("mkdir", "-p", "/root/run")
    m.sh("sh", "-c", f"cat > /root/run/inventory.yml <<'EOF'\n{yaml.safe_dump(inventory)}EOF\n"
         f"cat > /root/run/vars.yml <<'EOF'\n{yaml.safe_dump(variables)}EOF\n")
    r = m.sh(f"{ANSIBLE_VENV}/bin/ansible-playbook", "-i", "/root/run/inventory.yml",
             "-e", "@/root/run/vars.yml", "/srv/ansible/site.yml", check=False, timeout=600,
             env={"ANSIBLE_CONFIG": "/srv/ansible/ansible.cfg", "ANSIBLE_NOCOLOR": "1",
                  "ANSIBLE_LOCAL_TEMP": "/root/.ansible/tmp",
                  "ANSIBLE_ROLES_PATH": "/srv/ansible/roles"})
    out = r.stdout + r.stderr
    if r.returncode != 0:
        status = m.sh("journalctl", "-u", "nodeward.service", "-n", "30", "--no-pager",
                      check=False).stdout
        raise AssertionError(f"{out[-5000:]}\n-- journal --\n{status}")
    recap = RECAP.search(out)
    assert recap, out[-3000:]
    return out, tuple(int(g) for g in recap.groups())


def healthz(lab, ns) -> int:
    code = ("import urllib.request\n"
            f"print(urllib.request.urlopen('http://127.0.0.1:{PORT}/healthz', timeout=3).status)")
    r = lab.run(ns, ["python3", "-c", code], check=False)
    return int(r.stdout.strip()) if r.returncode == 0 else 0


def show(m: Machine, unit: str, *props: str) -> dict[str, str]:
    out = m.sh("systemctl", "show", unit, "-p", ",".join(props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(m: Machine, unit: str, since_cursor: str = "") -> list[dict]:
    """The unit's JSON log lines (the agent's events)."""
    args = ["journalctl", "-u", unit, "-o", "cat", "--no-pager"]
    if since_cursor:
        args += ["--after-cursor", since_cursor]
    events = []
    for line in m.sh(*args).stdout.splitlines():
        with contextlib.suppress(ValueError):
            if line.startswith("{"):
                events.append(json.loads(line))
    return events


def wait(pred, timeout: float, what: str, step: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def kernel_ruleset(lab, ns) -> str:
    """Every flavour of the namespace's netfilter state, read from outside the machine."""
    parts = [lab.run(ns, [c], check=False).stdout
             for c in ("iptables-nft-save", "iptables-legacy-save")]
    parts.append(lab.run(ns, ["nft", "list", "ruleset"], check=False).stdout)
    return "\n".join(parts)


# -- tests (in file order: the first converges the machine the others look at) -------------

@pytest.fixture(scope="module")
def converged(machine):
    """The machine after the first site.yml run (its output and recap)."""
    machine["first"] = playbook(machine["m"])
    return machine


def test_ansible_converges_enables_and_health_checks(converged):
    machine = converged
    m = machine["m"]
    out, (_ok, changed, unreachable, failed) = machine["first"]
    assert failed == 0 and unreachable == 0 and changed > 0
    # The tasks that need systemd as PID 1 really ran (not skipped).
    for task in ("Enable and start the agent", "Wait for the daemon's /healthz",
                 "Scan once with the installed agent and config"):
        block = out.split(f"TASK [nodeward : {task}]", 1)
        assert len(block) == 2, f"task {task!r} missing:\n{out[-3000:]}"
        assert re.match(r"\s*\*+\s*\n(ok|changed):", block[1]), (task, block[1][:300])
    state = show(m, "nodeward.service", "ActiveState", "UnitFileState", "MainPID")
    assert state["ActiveState"] == "active" and state["UnitFileState"] == "enabled", state
    assert healthz(machine["lab"], machine["ns"]) == 200


def test_second_ansible_run_changes_nothing(converged):
    machine = converged
    m = machine["m"]
    pid = show(m, "nodeward.service", "MainPID")["MainPID"]
    out, (_ok, changed, _unreachable, failed) = playbook(m)
    assert (changed, failed) == (0, 0), out[-4000:]
    after = show(m, "nodeward.service", "ActiveState", "MainPID")
    assert after == {"ActiveState": "active", "MainPID": pid}, after  # not even restarted
    assert healthz(machine["lab"], machine["ns"]) == 200


def test_a_config_change_alone_reloads_not_restarts(converged):
    """The role's reload path: only the config changed, so the handler reloads (SIGHUP)
    the running agent, which picks the new config up, same pid."""
    machine = converged
    m = machine["m"]
    pid = show(m, "nodeward.service", "MainPID")["MainPID"]
    cursor = m.sh("journalctl", "-u", "nodeward.service", "-n", "0", "--show-cursor",
                  "--no-pager").stdout.strip().rsplit("cursor: ", 1)[-1]
    out, (_ok, changed, _unreachable, failed) = playbook(m, nodeward_interval=3)
    # Two changes: the config file and the reload handler.
    assert failed == 0 and changed == 2, out[-4000:]
    assert "RUNNING HANDLER [nodeward : Reload nodeward]" in out
    assert "RUNNING HANDLER [nodeward : Restart nodeward]" not in out
    wait(lambda: [e for e in journal(m, "nodeward.service", cursor)
                  if e.get("event") == "config_reloaded"], 20, "config_reloaded")
    assert show(m, "nodeward.service", "ActiveState", "MainPID") == {
        "ActiveState": "active", "MainPID": pid}
    assert yaml.safe_load(m.sh("cat", "/etc/nodeward/config.yaml").stdout)["interval"] == 3


def test_unit_runs_under_its_sandbox_and_applies_audit_rules_with_nftables(converged):
    machine = converged
    m, lab, ns = machine["m"], machine["lab"], machine["ns"]
    props = show(m, "nodeward.service", "ActiveState", "SubState", "NoNewPrivileges",
                 "ProtectSystem", "CapabilityBoundingSet", "MainPID")
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["NoNewPrivileges"] == "yes" and props["ProtectSystem"] == "strict", props
    # The running process holds exactly the unit's bounding set.
    status = m.sh("cat", f"/proc/{props['MainPID']}/status").stdout
    bnd = int(re.search(r"CapBnd:\s*([0-9a-f]+)", status).group(1), 16)
    assert bnd == (1 << 12) | (1 << 13) | (1 << 19) | (1 << 2), hex(bnd)
    assert "NoNewPrivs:\t1" in status
    events = wait(lambda: [e for e in journal(m, "nodeward.service")
                           if e.get("event") == "scan_complete"], 30, "scan_complete")
    assert events[-1]["node"] == "sd-node"
    applied = wait(lambda: [e for e in journal(m, "nodeward.service")
                            if e.get("event") == "rules_applied"], 30, "rules_applied")
    assert applied[0]["backend"] == "nftables" and applied[0]["rules"] > 0, applied
    assert "nodeward-audit" in lab.run(ns, ["nft", "list", "table", "inet", "nodeward"]).stdout
    assert healthz(lab, ns) == 200


def test_reload_keeps_it_running(converged):
    machine = converged
    m = machine["m"]
    pid = show(m, "nodeward.service", "MainPID")["MainPID"]
    m.sh("systemctl", "reload", "nodeward.service")
    wait(lambda: [e for e in journal(m, "nodeward.service")
                  if e.get("event") == "config_reloaded"], 20, "config_reloaded")
    after = show(m, "nodeward.service", "ActiveState", "MainPID")
    assert after == {"ActiveState": "active", "MainPID": pid}, after
    assert healthz(machine["lab"], machine["ns"]) == 200


def test_audit_rules_with_iptables(converged):
    machine = converged
    m, lab, ns = machine["m"], machine["lab"], machine["ns"]
    m.sh("systemctl", "stop", "nodeward.service")
    m.sh("/opt/nodeward/venv/bin/nodeward", "--config", "/etc/nodeward/config.yaml",
         "uninstall")
    assert "nodeward" not in lab.run(ns, ["nft", "list", "tables"]).stdout
    cfg = yaml.safe_load(m.sh("cat", "/etc/nodeward/config.yaml").stdout)
    assert cfg["backend"] == "nftables"
    m.sh("sh", "-c", "cat > /etc/nodeward/config.yaml <<'EOF'\n"
         f"{yaml.safe_dump({**cfg, 'backend': 'iptables'})}EOF\n")
    cursor = m.sh("journalctl", "-u", "nodeward.service", "-n", "0", "--show-cursor",
                  "--no-pager").stdout.strip().rsplit("cursor: ", 1)[-1]
    m.sh("systemctl", "start", "nodeward.service")
    applied = wait(lambda: [e for e in journal(m, "nodeward.service", cursor)
                            if e.get("event") in ("rules_applied", "enforce_failed")],
                   30, "rules_applied")
    assert applied[0]["event"] == "rules_applied", applied
    assert applied[0]["backend"].startswith("iptables-"), applied
    save = applied[0]["backend"] + "-save"  # iptables-nft-save or iptables-legacy-save
    text = lab.run(ns, [save]).stdout
    assert ":NODEWARD-INPUT" in text and "-j NODEWARD-INPUT" in text, text
    assert "nodeward-audit" in text, text
    assert "table inet nodeward" not in kernel_ruleset(lab, ns)
    assert show(m, "nodeward.service", "ActiveState")["ActiveState"] == "active"
    assert healthz(lab, ns) == 200


def test_broken_config_stops_the_unit_without_a_restart_loop(converged):
    machine = converged
    m = machine["m"]
    m.sh("sh", "-c", "cp /etc/nodeward/config.yaml /root/config.good && "
         "echo 'no_such_key: 1' >> /etc/nodeward/config.yaml")
    try:
        m.sh("systemctl", "restart", "nodeward.service", check=False)
        state = wait(lambda: (s := show(m, "nodeward.service", "ActiveState", "NRestarts",
                                        "ExecMainStatus", "Result"))["ActiveState"] == "failed"
                     and s, 20, "unit failed")
        # RestartSec is 5 s: a restart loop would have restarted it by now.
        time.sleep(6)
        state = show(m, "nodeward.service", "ActiveState", "NRestarts", "ExecMainStatus",
                     "Result")
        assert state == {"ActiveState": "failed", "NRestarts": "0", "ExecMainStatus": "2",
                         "Result": "exit-code"}, state
        logs = m.sh("journalctl", "-u", "nodeward.service", "-o", "cat", "-n", "20").stdout
        assert "no_such_key" in logs, logs
    finally:
        m.sh("sh", "-c", "cp /root/config.good /etc/nodeward/config.yaml")
        m.sh("systemctl", "reset-failed", "nodeward.service", check=False)
        m.sh("systemctl", "start", "nodeward.service")
    wait(lambda: healthz(machine["lab"], machine["ns"]) == 200, 30, "healthy again")


LISTENER = ("import socket, sys, time\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(); time.sleep(600)\n")


def test_scan_timer_and_oneshot_service_attribute_under_the_sandbox(converged):
    """The timer is enabled; its one-shot scan, under the same sandbox (ProtectProc,
    bounding set, no_new_privs), attributes a root service's and a nobody service's
    sockets (etcd's and the kubelet read-only port: findings name their pids) and has no
    NW109/NW206."""
    machine = converged
    m = machine["m"]
    m.sh("systemctl", "enable", "--now", "nodeward-scan.timer")
    timer = show(m, "nodeward-scan.timer", "ActiveState", "UnitFileState")
    assert timer == {"ActiveState": "active", "UnitFileState": "enabled"}, timer
    pids = {}
    for unit, user, port in (("nw-root-listener", "root", 2379),
                             ("nw-user-listener", "nobody", 10255)):
        m.sh("systemd-run", f"--unit={unit}", "-p", f"User={user}", "python3", "-c", LISTENER,
             str(port))
        pids[port] = int(wait(lambda u=unit: show(m, f"{u}.service", "MainPID")["MainPID"]
                              not in ("", "0") and show(m, f"{u}.service", "MainPID")["MainPID"],
                              10, unit))
    wait(lambda: all(f":{p} " in m.sh("ss", "-Hltn").stdout for p in pids), 10, "listening")
    try:
        m.sh("systemctl", "start", "nodeward-scan.service", timeout=300)
        svc = show(m, "nodeward-scan.service", "Result", "ExecMainStatus")
        assert svc["Result"] == "success" and svc["ExecMainStatus"] in ("0", "1"), svc
        findings = journal(m, "nodeward-scan.service")
        assert findings and all("id" in f and f["node"] == "sd-node" for f in findings)
        assert not {f["id"] for f in findings} & {"NW109", "NW206"}, findings
        for port, pid in pids.items():
            assert {f["pid"] for f in findings if f.get("port") == port} == {pid}, (port, pid,
                                                                                   findings)
    finally:
        m.sh("systemctl", "stop", "nw-root-listener", "nw-user-listener", check=False)
