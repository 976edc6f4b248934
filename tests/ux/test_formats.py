"""Each machine format, checked by the tool its consumers use: SARIF against the official
SARIF 2.1.0 JSON schema, JUnit by a JUnit XML reader (junitparser), the PolicyReport
against the wgpolicyk8s.io CRD's own OpenAPI schema (strict: a field the API server would
prune is an error here). The scans are the real CLI on the fixture node (tests/ux/fixture),
with a real-world ruleset; the schemas are vendored verbatim (tests/schemas/README.md)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from nodeward import cli, findings
from tests.ux import fixture

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed")
junitparser = pytest.importorskip("junitparser", reason="junitparser not installed")

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
pytestmark = pytest.mark.skipif(not fixture.DUMP.is_file(),
                                reason=f"real-world dump missing: {fixture.DUMP}")


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("node_cidrs: [10.77.0.0/24]\npod_cidrs: [10.244.0.0/16]\nsuppress:\n"
                   "  - {id: NW205, reason: host firewall managed by the cloud}\n")
    monkeypatch.setattr(cli, "take_snapshot", lambda *a, **k: fixture.snapshot())

    def go(*args: str) -> tuple[int, str]:
        rc = cli.main(["scan", "--config", str(cfg), *args])
        out = capsys.readouterr()
        assert out.err == "", out.err
        return rc, out.out
    return go


def sarif_validator():
    schema = json.loads((SCHEMAS / "sarif-schema-2.1.0.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_sarif_validates_against_the_official_schema(run):
    rc, out = run("--format", "sarif")
    assert rc == 1
    doc = json.loads(out)
    v = sarif_validator()
    errors = sorted(v.iter_errors(doc), key=str)
    assert not errors, errors[0]
    (r,) = doc["runs"]
    rules = r["tool"]["driver"]["rules"]
    assert [x["id"] for x in rules] == list(findings.registry())  # one rule per ID
    for x in rules:
        assert x["help"]["text"] and x["helpUri"].endswith("#" + x["id"].lower())
    _, result = fixture.scan()
    active = [x for x in r["results"] if "suppressions" not in x]
    assert len(active) == len([f for f in result.findings if f.id != "NW205"])
    for x in r["results"]:
        assert rules[x["ruleIndex"]]["id"] == x["ruleId"]
    suppressed = [x for x in r["results"] if "suppressions" in x]
    assert {x["ruleId"] for x in suppressed} == {"NW205"}
    assert suppressed[0]["suppressions"][0]["justification"].startswith("host firewall")
    levels = {(x["ruleId"], x["properties"]["severity"]): x["level"] for x in active}
    assert levels[("NW202", "critical")] == "error" and levels[("NW203", "medium")] == "warning"
    assert rules[list(findings.registry()).index("NW202")]["properties"][
        "security-severity"] == "9.5"  # the worst NW202 of this scan
    assert len({x["partialFingerprints"]["nodewardFindingKey/v1"] for x in r["results"]}) \
        == len(r["results"])


def test_sarif_schema_check_can_fail(run):
    _, out = run("--format", "sarif")
    doc = json.loads(out)
    bad = copy.deepcopy(doc)
    bad["runs"][0]["results"][0]["level"] = "critical"
    assert list(sarif_validator().iter_errors(bad))
    bad = copy.deepcopy(doc)
    del bad["runs"][0]["tool"]["driver"]["name"]
    assert list(sarif_validator().iter_errors(bad))


def test_junit_is_read_by_a_junit_parser(run, tmp_path):
    path = tmp_path / "nodeward.xml"
    rc, out = run("--format", "junit", "--output", str(path))
    assert rc == 1 and out == ""
    xml = junitparser.JUnitXml.fromfile(str(path))
    suites = list(xml) if isinstance(xml, junitparser.JUnitXml) else [xml]
    (suite,) = suites
    cases = list(suite)
    _, result = fixture.scan()
    high = [f for f in result.findings if f.severity >= 3]
    failed = [c for c in cases if any(isinstance(r, junitparser.Failure) for r in c.result)]
    skipped = [c for c in cases if any(isinstance(r, junitparser.Skipped) for r in c.result)]
    assert len(failed) == len(high) == suite.failures
    assert len(skipped) == 2 == suite.skipped  # NW205 for IPv4 and IPv6, suppressed
    assert suite.tests == len(cases) == 1 + len(result.findings)
    titles = {c.name for c in failed}
    assert all(any(f.title in t for t in titles) for f in high)
    # --fail-on moves the line between failed and passed, as it does for the exit code
    rc, out = run("--format", "junit", "--fail-on", "critical")
    assert rc == 1
    suite = junitparser.JUnitXml.fromstring(out.encode())
    suite = next(iter(suite)) if isinstance(suite, junitparser.JUnitXml) else suite
    assert suite.failures == sum(f.severity == 4 for f in result.findings) == 2


def crd_schema(version: str = "v1alpha2") -> dict:
    crd = yaml.safe_load((SCHEMAS / "wgpolicyk8s.io_clusterpolicyreports.yaml").read_text())
    (v,) = [x for x in crd["spec"]["versions"] if x["name"] == version]
    return _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))


def _strict(node: dict) -> dict:
    """Structural schema -> JSON schema that rejects what the API server would prune."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            if isinstance(v, dict):
                _strict(v)
            elif isinstance(v, list):
                for x in v:
                    _strict(x)
    return node


def test_policyreport_validates_against_the_crd_schema(run):
    rc, out = run("--format", "policyreport")
    assert rc == 1
    doc = yaml.safe_load(out)
    assert doc["apiVersion"] == "wgpolicyk8s.io/v1alpha2" and doc["kind"] == "ClusterPolicyReport"
    v = jsonschema.Draft7Validator(crd_schema())
    errors = list(v.iter_errors(doc))
    assert not errors, errors[0]
    assert {r["severity"] for r in doc["results"]} >= {"critical", "high", "medium"}
    _, result = fixture.scan()
    assert doc["summary"]["fail"] == len(doc["results"]) == \
        len([f for f in result.findings if f.id != "NW205"])
    bad = copy.deepcopy(doc)
    bad["results"][0]["severity"] = "urgent"
    assert list(v.iter_errors(bad))
    bad = copy.deepcopy(doc)
    bad["results"][0]["remediation"] = "not a CRD field"
    assert list(v.iter_errors(bad))


def test_output_file_for_every_format(run, tmp_path):
    for fmt in cli.FORMATS:
        path = tmp_path / f"out.{fmt}"
        rc, out = run("--format", fmt, "--output", str(path))
        assert rc == 1 and out == "", fmt
        assert path.stat().st_size > 100, fmt
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nodeward-")]


def test_output_into_a_missing_directory_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "take_snapshot", lambda *a, **k: fixture.snapshot())
    rc = cli.main(["scan", "--config", "/dev/null", "-o", str(tmp_path / "no" / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("nodeward: error: --output: ") and err.count("\n") == 1


def test_output_follows_symlinks_keeps_mode_and_writes_devices_in_place(run, tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    real.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    rc, _ = run("--format", "json", "--output", str(link))
    assert rc == 1 and link.is_symlink()
    assert json.loads(real.read_text())["node"] == "worker-1"
    assert real.stat().st_mode & 0o777 == 0o600
    fifo = tmp_path / "fifo"
    import os
    import threading

    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    rc, _ = run("--format", "jsonl", "--output", str(fifo))
    reader.join(10)
    assert rc == 1 and fifo.exists() and not fifo.is_file()  # still a FIFO
    assert got and got[0].count("\n") >= 15
