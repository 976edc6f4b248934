"""Hostile config files against `scan`, `plan`, `apply`, `run` and a running daemon's SIGHUP.

A corpus of what once hung, crashed or ate gigabytes (alias bombs, deep nesting, a 35 MB
file, non-UTF-8, non-finite numbers, non-ASCII digits, a FIFO, a path-shaped node name):
every command answers each with exactly one line `nodeward: config error: ...` and exit 2,
within a few seconds and under a 1.5 GB address-space limit, prints nothing on stdout, and
leaves the namespace's iptables and nftables rules as they were; the daemon logs
`config_reload_failed` for each on SIGHUP and keeps scanning on its old config.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_daemon_lab import DaemonLog

pytestmark = pytest.mark.lab

BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)])


def corpus(d: Path) -> dict[str, Path]:
    """name -> config file."""
    cases: dict[str, bytes] = {
        "alias bomb in mode": (BOMB + "\nmode: *a9\n").encode(),
        "alias bomb in catalog": (BOMB + "\ncatalog: *a9\n").encode(),
        "self-referencing alias": b"pod_interfaces: &a [*a]\n",
        "deep nesting": b"mode: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        "deep mapping": b"daemon: " + b"{a: " * 200 + b"1" + b"}" * 200 + b"\n",
        "35 MB file": b"node_cidrs: [10.0.0.0/8]\n" + b"# padding\n" * 3_500_000,
        "not UTF-8": b"mode: r\xe9port\n",
        "UTF-16": "mode: report\n".encode("utf-16"),
        "NUL byte": b"mode: report\x00\n",
        "python tag": b"mode: !!python/object/apply:os.system ['true']\n",
        "superscript port": "failsafe_ports: ['tcp/²']\n".encode(),
        "arabic digits port": "metrics_address: '127.0.0.1:٩٧٣٧'\n".encode(),
        "arabic digits catalog port": "catalog: [{name: x, ports: ['٨٠']}]\n".encode(),
        "interval inf": b"interval: .inf\n",
        "interval nan": b"interval: .nan\n",
        "interval 5000 digits": b"interval: " + b"9" * 5000 + b"\n",
        "sink timeout nan": b"daemon: {sink: {url: 'https://c.example/x', timeout: .nan}}\n",
        "sink stall inf": b"daemon: {sink: {url: 'https://c.example/x', stall_after: .inf}}\n",
        "probe timeout nan": b"daemon: {probe_peers: {timeout: .nan}}\n",
        "confirm timeout nan": b"enforce: {confirm_timeout: .nan}\n",
        "kubernetes timeout inf": b"cluster: {kubernetes: {timeout: .inf}}\n",
        "node name with a path": b"node_name: '../../namespaces/x'\n",
        "node name uppercase": b"node_name: Worker_1\n",
        "top-level list": b"- a\n- b\n",
        "two documents": b"mode: report\n---\nmode: enforce\n",
    }
    out = {}
    for i, (name, data) in enumerate(cases.items()):
        p = d / f"case{i:02d}.yaml"
        p.write_bytes(data)
        out[name] = p
    fifo = d / "fifo.yaml"
    os.mkfifo(fifo)
    out["a FIFO"] = fifo
    out["a directory"] = d
    return out


DRIVER = r"""
import contextlib, io, json, resource, signal, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
from nodeward import cli

def alarm(*_):
    raise TimeoutError("hang")

signal.signal(signal.SIGALRM, alarm)
results = []
for name, path in json.loads(sys.argv[1]):
    for cmd in ("scan", "plan", "apply", "run"):
        out, err = io.StringIO(), io.StringIO()
        start = time.monotonic()
        signal.alarm(10)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = cli.main(["--config", path, cmd])
                except SystemExit as e:
                    rc = e.code
        except BaseException as e:
            rc = f"raised {type(e).__name__}: {e}"
        finally:
            signal.alarm(0)
        results.append({"case": name, "cmd": cmd, "rc": rc, "stdout": out.getvalue(),
                        "stderr": err.getvalue(), "secs": round(time.monotonic() - start, 2)})
print(json.dumps(results))
"""


def rules(lab, ns) -> list[str]:
    text = (lab.sh("iptables-save", ns=ns, check=False).stdout
            + lab.sh("nft", "list", "ruleset", ns=ns, check=False).stdout)
    return [x for x in text.splitlines() if not x.startswith("#")]  # dated comments


def test_hostile_configs_are_one_line_exit_2_on_every_command(lab, tmp_path):
    node = lab.node("node", "10.78.0.1/24")
    lab.sh("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT", ns=node)
    cases = corpus(tmp_path)
    before = rules(lab, node)
    assert any("--dport 22" in x for x in before)
    r = lab.sh(sys.executable, "-c", DRIVER,
               json.dumps([[n, str(p)] for n, p in cases.items()]), ns=node, timeout=300)
    results = json.loads(r.stdout)
    assert len(results) == 4 * len(cases)
    bad = []
    for res in results:
        lines = res["stderr"].splitlines()
        ok = (res["rc"] == 2 and res["stdout"] == "" and len(lines) == 1
              and lines[0].startswith("nodeward: config error: ")
              and "Traceback" not in res["stderr"] and res["secs"] < 10)
        if not ok:
            bad.append(res)
    worst = max(results, key=lambda x: x["secs"])
    print(f"{len(results)} runs ({len(cases)} hostile files x 4 commands), all exit 2 "
          f"with one line; slowest {worst['secs']}s ({worst['case']}, {worst['cmd']})")
    for res in results[::4]:
        print(f"  {res['case']}: {res['stderr'].strip()[:150]}")
    assert not bad, bad[:3]
    assert rules(lab, node) == before


def test_sighup_with_each_hostile_config_keeps_the_old_one_running(lab, tmp_path):
    node = lab.node("node", "10.79.0.1/24")
    cfg = tmp_path / "config.yaml"
    good = ("node_name: fuzz-daemon\ninterval: 1\nmetrics_address: 127.0.0.1:9737\n"
            "daemon: {full_report_every: 1000}\n")
    cfg.write_text(good)
    log = DaemonLog.start(lab, node, cfg)
    proc = log.proc
    log.wait_for(lambda e: e["event"] == "scan_complete", 20)
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    cases = {n: p for n, p in corpus(corpus_dir).items() if n != "a directory"}
    for name, path in cases.items():
        os.replace(path, cfg) if path.is_file() else _fifo_as(cfg, path)
        start = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        failed = log.wait_for(lambda e: e["event"] in ("config_reload_failed",
                                                       "config_reloaded"), 15)
        assert failed["event"] == "config_reload_failed", (name, failed)
        assert time.monotonic() - start < 10, name
        log.wait_for(lambda e: e["event"] == "scan_complete", 10)
        assert proc.poll() is None, name
    last = log.wait_for(lambda e: e["event"] == "scan_complete", 10)
    assert last["node"] == "fuzz-daemon"
    reloads = [e for e in log.events if e["event"] == "config_reload_failed"]
    print(f"SIGHUP x{len(cases)} hostile configs: {len(reloads)} config_reload_failed, "
          f"daemon alive on its old config")
    cfg.unlink()
    cfg.write_text(good.replace("fuzz-daemon", "fuzz-renamed"))
    proc.send_signal(signal.SIGHUP)
    log.wait_for(lambda e: e["event"] == "config_reloaded", 10)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def _fifo_as(cfg: Path, fifo: Path) -> None:
    cfg.unlink(missing_ok=True)
    os.rename(fifo, cfg)
