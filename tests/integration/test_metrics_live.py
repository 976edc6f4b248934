"""/metrics as Prometheus meets it: a live scrape of `nodeward run` in a lab namespace
(a kubelet read-only port on a pod-facing address, an etcd client port open to the node
network) linted by `promtool check metrics`, with the naming rules promtool does not check
(no `_created` series, no label value in a name) and the series the alerts and dashboard
use. The alert rules pass `promtool check rules` and their unit tests (`promtool test
rules`), and every metric the rules and the Grafana dashboard query is in the scrape."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.test_daemon_lab import DaemonLog, http_get

MON = Path(__file__).resolve().parents[2] / "kubernetes" / "monitoring"
PROMTOOL = shutil.which("promtool")


def need_promtool() -> str:
    if PROMTOOL is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool missing under CI (apt package prometheus, tests/run.sh)")
        pytest.skip("promtool not installed (Debian package prometheus)")
    return PROMTOOL


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([need_promtool(), *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def scrape(module_lab, tmp_path_factory) -> str:
    lab = module_lab
    node = lab.node("node", "10.77.0.1/24")
    lab.pod(node, "10.244.1.2/24", "10.244.1.1/24", host_if="calim1")
    lab.listen(node, "kubelet", tcp=["10.244.1.1:10255"])
    lab.listen(node, "etcd", tcp=["10.77.0.1:2379"])
    cfg = tmp_path_factory.mktemp("metrics") / "config.yaml"
    cfg.write_text("node_name: lab-metrics\nnode_cidrs: [10.77.0.0/24]\n"
                   "pod_cidrs: [10.244.0.0/16]\ninterval: 1\n"
                   "metrics_address: 127.0.0.1:9737\n")
    log = DaemonLog.start(lab, node, cfg)
    log.wait_for(lambda e: e["event"] == "scan_complete", 20)
    log.wait_for(lambda e: e["event"] == "scan_complete", 20)  # a second cycle
    status, body = http_get(lab, node, "http://127.0.0.1:9737/metrics")
    log.proc.terminate()
    log.proc.wait(10)
    assert status == 200
    return body


def names(exposition: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", exposition,
                                            re.M)}


@pytest.mark.lab
def test_live_scrape_passes_promtool_and_the_naming_rules(scrape):
    r = promtool("check", "metrics", stdin=scrape)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        r.stdout + r.stderr
    got = names(scrape)
    assert not [n for n in got if n.endswith("_created")]
    assert not [n for n in got if re.search(r"_by_|_(critical|high|medium|low)(_|$)", n)]
    assert re.search(r'^nodeward_build_info\{python_version="[\d.]+",version="[^"]+"\} 1\.0$',
                     scrape, re.M)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "process_open_fds", "process_start_time_seconds"} <= got
    assert 'nodeward_findings{id="NW101",severity="high"} 1.0' in scrape
    assert re.search(r'^nodeward_findings_opened_total\{id="NW202",severity="critical"\} 1\.0$',
                     scrape, re.M), "etcd-client open to anywhere: opened once, not per cycle"
    assert re.search(r'^nodeward_scans_total\{result="ok"\} [2-9]', scrape, re.M)
    assert 'nodeward_scans_total{result="failed"} 0.0' in scrape


def test_promtool_check_metrics_can_fail():
    bad = "# HELP x_requests Requests\n# TYPE x_requests counter\nx_requests 1\n"
    r = promtool("check", "metrics", stdin=bad)
    assert r.returncode != 0 and "_total" in r.stdout + r.stderr


def test_alert_rules_check_and_unit_tests():
    r = promtool("check", "rules", str(MON / "nodeward.rules.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("test", "rules", str(MON / "nodeward.rules.test.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_prometheusrule_carries_exactly_the_rules_file():
    plain = yaml.safe_load((MON / "nodeward.rules.yml").read_text())
    crd = yaml.safe_load((MON / "prometheusrule.yaml").read_text())
    assert crd["apiVersion"] == "monitoring.coreos.com/v1" and crd["kind"] == "PrometheusRule"
    assert crd["spec"]["groups"] == plain["groups"]
    alerts = {r["alert"] for g in plain["groups"] for r in g["rules"] if "alert" in r}
    assert {"NodewardCriticalFindingOpened", "NodewardScansFailing", "NodewardSinkBacklog",
            "NodewardSinkDroppingEvents", "NodewardDriftRepaired"} <= alerts


def _queried(exprs: list[str]) -> set[str]:
    out = set()
    for e in exprs:
        out |= set(re.findall(r"\b((?:nodeward|process)_[a-z_]+)", e))
    return out


def _known(scrape: str) -> set[str]:
    got = names(scrape)
    return got | {re.sub(r"_(bucket|sum|count)$", "", n) for n in got}


@pytest.mark.lab
def test_rules_and_dashboard_query_only_metrics_that_exist(scrape):
    plain = yaml.safe_load((MON / "nodeward.rules.yml").read_text())
    rule_exprs = [r["expr"] for g in plain["groups"] for r in g["rules"]]
    dash = json.loads((MON / "grafana-dashboard.json").read_text())
    dash_exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(dash_exprs) >= 8
    known = _known(scrape)
    for queried in (_queried(rule_exprs), _queried(dash_exprs)):
        assert queried and queried <= known, sorted(queried - known)

