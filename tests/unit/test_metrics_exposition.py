"""/metrics as written by report/promtext.py, judged by independent readers: the text
prometheus_client (the reference client, a test-only dependency) writes for the same
metrics and operations, its parser, and `promtool check metrics`."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess

import prometheus_client
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from nodeward.model import Finding, Severity
from nodeward.report.metrics import Metrics
from nodeward.report.promtext import go_float

prometheus_client.disable_created_metrics()


def reference(m: Metrics) -> prometheus_client.CollectorRegistry:
    """Every family of Metrics declared again with prometheus_client, from our registry's
    names, HELP texts, labels and buckets (a missing or renamed one fails the comparison
    with the expected text below, which spells them out)."""
    r = prometheus_client.CollectorRegistry()
    kinds = {"gauge": prometheus_client.Gauge, "counter": prometheus_client.Counter,
             "histogram": prometheus_client.Histogram}
    out = {}
    for fam in m.registry.families:
        kw = {"buckets": fam.bounds} if fam.TYPE == "histogram" else {}
        out[fam.name] = kinds[fam.TYPE](fam.name, fam.documentation, fam.labelnames,
                                        registry=r, **kw)
    return r, out


EXPECTED_FAMILIES = [  # name, type, labels: what dashboards, alerts and users query
    ("nodeward_build_info", "gauge", ("version", "python_version")),
    ("nodeward_findings", "gauge", ("id", "severity")),
    ("nodeward_findings_opened_total", "counter", ("id", "severity")),
    ("nodeward_scan_duration_seconds", "histogram", ()),
    ("nodeward_scans_total", "counter", ("result",)),
    ("nodeward_last_scan_timestamp_seconds", "gauge", ()),
    ("nodeward_listening_sockets", "gauge", ()),
    ("nodeward_rules_applied_total", "counter", ()),
    ("nodeward_drift_repairs_total", "counter", ()),
    ("nodeward_sink_backlog_events", "gauge", ()),
    ("nodeward_sink_dropped_events_total", "counter", ()),
    ("nodeward_config_reloads_total", "counter", ("result",)),
]


def _finding(fid: str, sev: Severity, port: int) -> Finding:
    return Finding(id=fid, severity=sev, title="t", component="kubelet", protocol="tcp",
                   address="0.0.0.0", port=port, scope="any", remediation="r")


def drive(m, ref) -> None:
    """The same operations on ours (m: Metrics) and the reference's families (ref)."""
    import platform

    from nodeward import __version__

    ref["nodeward_build_info"].labels(__version__, platform.python_version()).set(1)
    for result in ("ok", "failed"):
        ref["nodeward_scans_total"].labels(result)
        ref["nodeward_config_reloads_total"].labels(result)
    ops = [("nodeward_scan_duration_seconds", None, "observe", v)
           for v in (0.0, 0.01, 0.0100001, 0.3, 2.5, 99.0, 1e-9)]
    ops += [("nodeward_scans_total", ("ok",), "inc", 1), ("nodeward_scans_total", ("ok",),
                                                           "inc", 2),
            ("nodeward_last_scan_timestamp_seconds", None, "set", 1764614400.123),
            ("nodeward_listening_sockets", None, "set", 123456789012),
            ("nodeward_rules_applied_total", None, "inc", 3),
            ("nodeward_config_reloads_total", ("failed",), "inc", 1),
            ("nodeward_drift_repairs_total", None, "inc", 0.5)]
    for name, labels, op, value in ops:
        ours = next(f for f in m.registry.families if f.name == name)
        for fam in (ours, ref[name]):
            getattr(fam.labels(*labels) if labels else fam, op)(value)
    # findings through the daemon's own entry point; a label value needing every escape
    m.set_findings([_finding("NW101", Severity.HIGH, 10255),
                    _finding("NW101", Severity.HIGH, 10250),
                    _finding('NW"x\\y\nü', Severity.LOW, 1)])
    m.set_findings([_finding("NW101", Severity.HIGH, 10255),
                    _finding("NW202", Severity.CRITICAL, 2379)])
    ref["nodeward_findings"].labels("NW101", "high").set(1)
    ref["nodeward_findings"].labels("NW202", "critical").set(1)
    for fid, sev, n in (("NW101", "high", 2), ('NW"x\\y\nü', "low", 1),
                        ("NW202", "critical", 1)):
        ref["nodeward_findings_opened_total"].labels(fid, sev).inc(n)
    m.sink_changed(5, 2)
    m.sink_changed(3, 0)
    ref["nodeward_sink_backlog_events"].set(3)
    ref["nodeward_sink_dropped_events_total"].inc(2)


def _no_process(text: str) -> str:
    return re.sub(r"^(process_\w+) \S+$", r"\1 X", text, flags=re.M)


def test_text_is_the_reference_clients_for_the_same_operations():
    m = Metrics()
    r, ref = reference(m)
    assert [(f.name, f.TYPE, f.labelnames) for f in m.registry.families] == EXPECTED_FAMILIES
    drive(m, ref)
    ours = m.exposition().decode()
    theirs = prometheus_client.generate_latest(r).decode()
    process = prometheus_client.generate_latest(
        _process_registry()).decode()  # their process_* lines, values aside
    assert _no_process(ours) == _no_process(process) + theirs


def _process_registry() -> prometheus_client.CollectorRegistry:
    r = prometheus_client.CollectorRegistry()
    prometheus_client.ProcessCollector(registry=r)
    return r


def test_reference_parser_reads_every_family_and_the_process_figures():
    m = Metrics()
    drive(m, reference(m)[1])
    families = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    assert {"process_virtual_memory_bytes", "process_resident_memory_bytes",
            "process_start_time_seconds", "process_cpu_seconds", "process_open_fds",
            "process_max_fds"} <= set(families)
    rss = families["process_resident_memory_bytes"].samples[0].value
    with open("/proc/self/statm") as f:
        statm = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert abs(rss - statm) < 16 << 20
    assert abs(families["process_open_fds"].samples[0].value
               - len(os.listdir("/proc/self/fd"))) <= 2
    hist = {(s.name, s.labels.get("le")): s.value
            for s in families["nodeward_scan_duration_seconds"].samples}
    assert hist[("nodeward_scan_duration_seconds_bucket", "0.01")] == 3  # 0, 1e-9, 0.01
    assert hist[("nodeward_scan_duration_seconds_bucket", "+Inf")] == 7
    assert hist[("nodeward_scan_duration_seconds_count", None)] == 7
    assert math.isclose(hist[("nodeward_scan_duration_seconds_sum", None)], 101.8200001 + 1e-9)
    finding = {tuple(s.labels.values()): s.value for s in families["nodeward_findings"].samples}
    assert finding == {("NW101", "high"): 1.0, ("NW202", "critical"): 1.0}  # cleared: no stale


def test_promtool_accepts_the_text():
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool missing under CI (apt package prometheus, tests/run.sh)")
        pytest.skip("promtool not installed (Debian package prometheus)")
    m = Metrics()
    drive(m, reference(m)[1])
    r = subprocess.run([promtool, "check", "metrics"], input=m.exposition().decode(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**20, 10**20))
def test_floats_are_written_as_the_reference_client_writes_them(v):
    assert go_float(v) == floatToGoString(v)


def test_wrong_use_is_an_error_not_a_silent_series():
    m = Metrics()
    with pytest.raises(ValueError):
        m.findings.labels("NW101")  # one label value of two
    with pytest.raises(ValueError):
        m.rules_applied.inc(-1)  # a counter never goes down
    with pytest.raises(ValueError):
        m.findings.set(1)  # a labelled family has no unlabelled series
