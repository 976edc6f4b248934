"""systemd/: the units pass `systemd-analyze verify` with no complaint at all, and
nodeward.service's `systemd-analyze security --offline=true` exposure is at most 2.5.

PID 1 here need not be systemd: both commands only load the unit files. What is verified
is a copy whose ExecStart binary is the nodeward installed in this test's environment
(the real path, /opt/nodeward/venv/bin/nodeward, exists only on an installed node); the
copy differs from the shipped file in that path and nothing else, which the test checks.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = ("nodeward.service", "nodeward-scan.service", "nodeward-scan.timer")
INSTALLED = "/opt/nodeward/venv/bin/nodeward"
MAX_EXPOSURE = 2.5
CAPS = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze missing (apt-get install systemd)")


def local_nodeward() -> str:
    exe = Path(sys.executable).with_name("nodeward")
    if not exe.exists():
        pytest.skip(f"{exe} missing: pip install the package into the test venv")
    return str(exe)


@pytest.fixture
def unit_copy(tmp_path):
    """The units with ExecStart pointing at an existing nodeward; tmp_path is removed."""
    exe = local_nodeward()
    for name in UNITS:
        text = (UNITS_DIR / name).read_text()
        copy = text.replace(INSTALLED, exe)
        assert copy.replace(exe, INSTALLED) == text
        (tmp_path / name).write_text(copy)
    return tmp_path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Unit file as section -> key -> every value (systemd keys repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in (UNITS_DIR / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


@needs_analyze
def test_verify_clean(unit_copy):
    r = analyze("verify", *UNITS, cwd=unit_copy)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        f"systemd-analyze verify complained:\n{r.stdout}{r.stderr}"


@needs_analyze
def test_verify_catches_mistakes(unit_copy):
    """verify exits 0 on unknown keys, so the test above also demands empty output."""
    service = unit_copy / "nodeward.service"
    service.write_text(service.read_text().replace("ProtectHome=yes", "ProtectHome=yess")
                       .replace("Restart=on-failure", "Restart=on-failure\nRestartt=no"))
    r = analyze("verify", "nodeward.service", cwd=unit_copy)
    assert "protect home value" in r.stderr and "Restartt" in r.stderr


@needs_analyze
def test_shipped_unit_only_lacks_the_installed_binary(tmp_path):
    """The shipped file's only verify complaint on a machine without the install."""
    if Path(INSTALLED).exists():
        pytest.skip(f"{INSTALLED} exists here")
    for name in UNITS:
        shutil.copy(UNITS_DIR / name, tmp_path / name)
    r = analyze("verify", *UNITS, cwd=tmp_path)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert lines, "expected the missing ExecStart binary to be reported"
    assert all(INSTALLED in ln and "not executable" in ln for ln in lines), lines


@needs_analyze
@pytest.mark.parametrize("name", ["nodeward.service", "nodeward-scan.service"])
def test_security_exposure(unit_copy, name):
    r = analyze("security", "--offline=true", name, cwd=unit_copy)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout)
    assert m, f"no exposure figure in:\n{r.stdout}{r.stderr}"
    exposure = float(m.group(1))
    print(f"\nsystemd-analyze security --offline=true {name}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, r.stdout


@needs_analyze
def test_security_figure_moves_with_hardening(unit_copy):
    """The exposure check can fail: removing the sandbox raises the figure above 2.5."""
    service = unit_copy / "nodeward.service"
    keep = [ln for ln in service.read_text().splitlines()
            if not ln.startswith(("Protect", "Private", "SystemCall", "Restrict"))]
    service.write_text("\n".join(keep) + "\n")
    r = analyze("security", "--offline=true", "nodeward.service", cwd=unit_copy)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout)
    assert m and float(m.group(1)) > MAX_EXPOSURE


def test_service_contract():
    svc = unit("nodeward.service")["Service"]
    assert svc["Type"] == ["exec"]
    assert svc["ExecStart"] == [f"{INSTALLED} --config /etc/nodeward/config.yaml run"]
    # SIGHUP through the shell's kill (always there), not /bin/kill (procps, not always);
    # tests/deploy/test_machine.py runs it under systemd.
    assert svc["ExecReload"] == ["/bin/sh -c 'kill -HUP \"$$MAINPID\"'"]
    assert svc["Restart"] == ["on-failure"]
    assert set(svc["CapabilityBoundingSet"][0].split()) == CAPS
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes",
                       "StateDirectory": "nodeward", "MemoryDenyWriteExecute": "yes",
                       "LockPersonality": "yes", "RestrictNamespaces": "yes",
                       "ProtectKernelTunables": "yes"}.items():
        assert svc[key] == [value], key
    assert set(svc["RestrictAddressFamilies"][0].split()) == \
        {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert "@system-service" in svc["SystemCallFilter"]
    assert svc["ReadWritePaths"] == ["-/run/xtables.lock"]
    # It must see the host's sockets and every process's /proc/PID/fd.
    assert "PrivateNetwork" not in svc and "PrivateUsers" not in svc
    assert svc["ProtectProc"] == ["default"]


def test_timer_runs_the_one_shot_scan():
    scan = unit("nodeward-scan.service")["Service"]
    assert scan["Type"] == ["oneshot"]
    assert scan["ExecStart"] == [
        f"{INSTALLED} --config /etc/nodeward/config.yaml scan --format jsonl"]
    assert scan["SuccessExitStatus"] == ["1"]
    timer = unit("nodeward-scan.timer")
    assert timer["Timer"]["Unit"] == ["nodeward-scan.service"]
    assert timer["Timer"]["OnUnitActiveSec"] == ["1h"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    # Same sandbox as the daemon: every hardening key of one is in the other.
    daemon = unit("nodeward.service")["Service"]
    hardening = {k for k in daemon if k.startswith(("Protect", "Private", "Restrict"))}
    assert hardening <= set(scan)


def test_exec_lines_match_the_cli():
    """The arguments in ExecStart are ones the installed CLI accepts."""
    exe = local_nodeward()
    for args in (["run", "--help"], ["scan", "--format", "jsonl", "--help"]):
        r = subprocess.run([exe, "--config", "/etc/nodeward/config.yaml", *args],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr


def test_units_parse_as_ini():
    for name in UNITS:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string((UNITS_DIR / name).read_text())
        assert parser.sections()
