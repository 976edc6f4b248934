"""The CLI surface an operator types: global options on either side of the command,
--version, `config check`, `explain`, `catalog`, shell completion, and arguments that are
rejected with one line and exit 2 (an unknown suppression ID, a port out of range)."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from nodeward import cli, findings
from nodeward import config as config_mod

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agent" / "nodeward"


def one_line_error(capsys, prefix: str = "nodeward: ") -> str:
    err = capsys.readouterr().err
    assert err.startswith(prefix) and err.count("\n") == 1, err
    return err


@pytest.fixture
def no_scan(monkeypatch):
    monkeypatch.setattr(cli, "take_snapshot", lambda *a, **k: pytest.fail("scanned"))


@pytest.mark.parametrize("argv", [
    ["--config", "{bad}", "scan"],
    ["scan", "--config", "{bad}"],
    ["scan", "--format", "json", "--config", "{bad}"],
    ["run", "--config", "{bad}", "--cycles", "1"],
    ["config", "check", "--config", "{bad}"],
    ["--config", "{bad}", "config", "check"],
    ["plan", "--config", "{bad}"],
])
def test_config_option_before_or_after_the_command(argv, tmp_path, capsys, no_scan):
    bad = tmp_path / "bad.yaml"
    bad.write_text("interval: soon\n")
    assert cli.main([a.format(bad=bad) for a in argv]) == 2
    assert one_line_error(capsys) == (
        f"nodeward: config error: {bad}: interval: expected a number of seconds between 1 "
        "and 86400, got 'soon'\n")


def test_later_config_option_wins(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("mode: audit\n")
    bad.write_text("mode: nope\n")
    assert cli.main(["--config", str(bad), "config", "check", "--config", str(good)]) == 0
    assert capsys.readouterr().out.startswith(f"{good}: ok (mode audit;")


def test_version_flag_matches_the_installed_distribution(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == importlib.metadata.version("nodeward")
    assert cli.main(["--version", "scan"]) == 0  # like --help: wins over the command


def test_config_check_accepts_the_systemd_example(capsys):
    """systemd/config.yaml as shipped: cluster checks through a kubeconfig, SSH the only
    failsafe (the kubelet and the API server are what enforcement must close to pods)."""
    p = ROOT / "systemd" / "config.yaml"
    assert cli.main(["config", "check", "--config", str(p)]) == 0
    assert capsys.readouterr().out.startswith(f"{p}: ok (mode report;")
    cfg = config_mod.load(str(p))
    assert cfg.failsafe_ports == (("tcp", 22),)
    assert cfg.section("cluster").kubeconfig == "/etc/nodeward/kubeconfig"


def test_config_check_accepts_the_shipped_configmap(tmp_path, capsys):
    cm = yaml.safe_load((ROOT / "kubernetes" / "configmap.yaml").read_text())
    p = tmp_path / "config.yaml"
    p.write_text(cm["data"]["config.yaml"])
    assert cli.main(["config", "check", "--config", str(p)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{p}: ok (mode report;")
    # then each key the file sets, as parsed, and a pointer to the defaults
    assert "  set      failsafe_ports: [tcp/22]" in lines and "  set      cluster: {}" in lines
    assert lines[-1].startswith("  default  every other key")


@pytest.mark.parametrize(("text", "error"), [
    ("suppress:\n  - {id: NW999, reason: legacy}\n",
     "suppress[0].id: unknown finding ID 'NW999'"),
    ("suppress:\n  - {id: nw101, reason: lowercase}\n",
     "suppress[0].id: unknown finding ID 'nw101'"),
    ("mode: [\n", "line 2: invalid YAML"),
    ("catalog:\n  - {name: kubelet, ports: [70000]}\n", "is outside 1-65535"),
])
def test_config_check_rejects_with_one_line(text, error, tmp_path, capsys, no_scan):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    for argv in (["config", "check", "--config", str(p)], ["scan", "--config", str(p)]):
        assert cli.main(argv) == 2
        err = one_line_error(capsys, "nodeward: config error: ")
        assert error in err, err


def test_known_suppression_id_is_accepted(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("suppress:\n  - {id: NW102, port: 6443, reason: cloud LB}\n")
    assert cli.main(["config", "check", "--config", str(p)]) == 0
    assert "1 suppression(s)" in capsys.readouterr().out


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http", "65536"])
def test_explain_port_out_of_range_is_a_usage_error(port, capsys, no_scan):
    assert cli.main(["scan", "--config", "/dev/null", "--explain", port]) == 2
    assert "is not a port number (1-65535)" in one_line_error(capsys)


def test_explain_id(capsys):
    assert cli.main(["explain", "nw203"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("NW203: pods reach a host service the catalog does not know\n")
    assert "Fix: " in out and out.rstrip().endswith("findings.md#nw203")
    assert cli.main(["explain", "NW999"]) == 2
    assert "unknown finding ID 'NW999'" in one_line_error(capsys)
    assert cli.main(["explain"]) == 2
    one_line_error(capsys)


def test_explain_needs_no_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense: 1\n")
    assert cli.main(["explain", "NW101", "--config", str(bad)]) == 0


def test_every_finding_id_in_the_code_has_an_entry():
    """A check that emits an ID without a registry entry (explain text, SARIF rule help,
    suppressible) fails here."""
    emitted = set()
    for p in AGENT.rglob("*.py"):
        emitted |= set(re.findall(r"\"(NW\d{3})\"", p.read_text()))
    assert len(emitted) >= 25
    assert emitted <= set(findings.registry()), sorted(emitted - set(findings.registry()))
    for info in findings.registry().values():
        assert info.title and info.explain and info.fix and info.check


def test_docs_findings_md_is_generated_from_the_registry(capsys):
    assert cli.main(["explain", "--markdown"]) == 0
    assert capsys.readouterr().out == (ROOT / "docs" / "findings.md").read_text(), \
        "regenerate: nodeward explain --markdown > docs/findings.md"


def test_catalog_shows_config_overrides(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("catalog:\n  - {name: kubelet, severity: critical}\n"
                 "  - {name: my-agent, ports: [9100], max_scope: loopback}\n")
    assert cli.main(["catalog", "--config", str(p), "--format", "json"]) == 0
    comps = {c["name"]: c for c in __import__("json").loads(capsys.readouterr().out)[
        "components"]}
    assert comps["kubelet"]["severity"] == "critical"
    assert comps["kubelet"]["origin"] == "overridden"
    assert comps["my-agent"]["origin"] == "added" and comps["my-agent"]["ports"] == [9100]
    assert comps["etcd-client"]["origin"] == "built-in"
    assert cli.main(["catalog", "--config", str(p)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^kubelet +10250 +tcp +critical .* overridden$", out, re.M), out


@pytest.mark.skipif(not shutil.which("bash"), reason="bash not installed")
def test_bash_completion_script_completes(capsys, tmp_path):
    assert cli.main(["completion", "bash"]) == 0
    script = tmp_path / "nodeward.bash"
    script.write_text(capsys.readouterr().out)

    def complete(*words: str) -> set[str]:
        line = " ".join(["nodeward", *words])
        prog = (f'source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; '
                '_nodeward; printf "%s\\n" "${COMPREPLY[@]}"')
        r = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return set(r.stdout.split())

    assert {"scan", "run", "explain", "config", "catalog"} <= complete("''")
    assert complete("scan", "--fo") == {"--format"}
    assert complete("scan", "--format", "''") == set(cli.FORMATS)
    assert "check" in complete("config", "''")
    assert "--config" in complete("scan", "--c")
    assert complete("--config", "x.yaml", "scan", "--format", "''") == set(cli.FORMATS)
