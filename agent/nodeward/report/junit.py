"""A scan as JUnit XML (pure), the format CI systems show as test results (kube-bench
emits it too): one test case per finding, failed when at or above `--fail-on` (the same
rule as the exit code), passed below it, skipped when suppressed by config; collector notes
go to the suite's system-err."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from ..checks import CheckResult
from ..model import Finding, NodeSnapshot, Severity


def _case(suite: ET.Element, f: Finding) -> ET.Element:
    where = f"{f.address}:{f.port}" if f.port is not None else (f.address or f.component)
    case = ET.SubElement(suite, "testcase", classname=f"nodeward.{f.id}",
                         name=f"{f.id} {f.title}" + (f" [{where}]" if where else ""),
                         time="0")
    return case


def _details(f: Finding) -> str:
    return (f"severity: {f.severity}\ncomponent: {f.component or '-'}\n"
            f"remediation: {f.remediation}\nevidence: "
            f"{json.dumps(f.evidence, default=str, sort_keys=True)}\n")


def to_junit(snapshot: NodeSnapshot, result: CheckResult, fail_on: Severity) -> str:
    root = ET.Element("testsuites", name="nodeward")
    suite = ET.SubElement(root, "testsuite", name=f"nodeward scan {snapshot.node}",
                          hostname=snapshot.node, timestamp=snapshot.scanned_at.rstrip("Z"))
    failures = 0
    # A case that always runs, so a clean node reads "1 passed" rather than "no tests".
    ET.SubElement(suite, "testcase", classname="nodeward.scan",
                  name=f"scan {len(snapshot.sockets)} sockets via {snapshot.socket_source}",
                  time="0")
    for f in result.findings:
        case = _case(suite, f)
        if f.severity >= fail_on:
            failures += 1
            failure = ET.SubElement(case, "failure", message=f.title, type=str(f.severity))
            failure.text = _details(f)
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"below --fail-on {fail_on}\n" + _details(f)
    for f, s in result.suppressed:
        ET.SubElement(_case(suite, f), "skipped", message=f"suppressed by config: {s.reason}")
    if snapshot.notes:
        ET.SubElement(suite, "system-err").text = "".join(n + "\n" for n in snapshot.notes)
    tests = 1 + len(result.findings) + len(result.suppressed)
    for el in (suite, root):
        el.set("tests", str(tests))
        el.set("failures", str(failures))
        el.set("errors", "0")
    suite.set("skipped", str(len(result.suppressed)))
    suite.set("time", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"
