"""nodeward vs kube-hunter 0.6.8 (PyPI) on the same lab nodes: what each reports, per port,
and how long each takes.

Two lab "nodes" (network namespaces on one bridge, each with a pod-facing cali interface)
run real servers with known authentication:

    node A  etcd 2379 with TLS + --client-cert-auth, peer 2380 on every address; a
            kubelet-shaped HTTPS server on 10250 with anonymous auth (AlwaysAllow); bare
            kube-proxy 10249, kube-controller-manager 10257, kube-scheduler 10259 listeners
    node B  etcd 2379 without TLS; a kubelet-shaped server with anonymous auth off

nodeward scans each node from inside it (`scan --format json`); kube-hunter runs
`--remote A B` from a third, peer namespace, as an attacker on the node network would. The
peer namespace has no default route, so kube-hunter's lookups of public services (cloud
detection) fail at once instead of leaving the lab.

kube-hunter pins old dependencies, so it lives in its own venv (created on first use):

    sudo python bench/peers.py [--kube-hunter-venv .venv-kh]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.lab import Lab, have_netns  # noqa: E402
from tests.lab.authlab import (  # noqa: E402
    KUBELET_CONFIG,
    etcd_tls_args,
    make_pki,
    start_etcd,
    start_kubelet,
    wait_listening,
)

KUBE_HUNTER = "kube-hunter==0.6.8"
NODE_A, NODE_B, PEER = "10.79.0.1", "10.79.0.2", "10.79.0.9"


def kube_hunter(venv: Path) -> Path:
    exe = venv / "bin" / "kube-hunter"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", KUBE_HUNTER], check=True)
    return exe


def build(lab: Lab, work: Path) -> dict[str, object]:
    a = lab.node("a", f"{NODE_A}/24")
    b = lab.node("b", f"{NODE_B}/24")
    peer = lab.node("peer", f"{PEER}/24")
    lab.pod(a, "10.244.1.2/24", "10.244.1.1/24", host_if="cali1")
    lab.pod(b, "10.244.2.2/24", "10.244.2.1/24", host_if="cali2")
    pki = make_pki(work, NODE_A, NODE_B)
    start_etcd(lab, a, work / "etcd-a", "https://0.0.0.0:2379", *etcd_tls_args(pki),
               peer_url="http://0.0.0.0:2380")
    start_etcd(lab, b, work / "etcd-b", "http://0.0.0.0:2379")
    for ns, anon, mode in ((a, "true", "AlwaysAllow"), (b, "false", "Webhook")):
        cfg = work / f"kubelet-{ns.role}.yaml"
        cfg.write_text(KUBELET_CONFIG.format(anon=anon, mode=mode))
        start_kubelet(lab, ns, pki, cfg)
    lab.listen(a, "kube-proxy", tcp=["0.0.0.0:10249"])
    lab.listen(a, "kube-controller-manager", tcp=["0.0.0.0:10257"])
    lab.listen(a, "kube-scheduler", tcp=["0.0.0.0:10259"])
    for ns in (a, b):
        wait_listening(lab, ns, 10250)
    return {"a": a, "b": b, "peer": peer}


def run_nodeward(lab: Lab, ns, ip: str) -> tuple[float, list[dict]]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(f"node_name: {ns.role}\nnode_cidrs: [10.79.0.0/24]\n"
                "pod_cidrs: [10.244.0.0/16]\n")
    try:
        start = time.perf_counter()
        r = lab.sh(sys.executable, "-m", "nodeward", "--config", f.name, "scan", "--format",
                   "json", ns=ns, check=False, timeout=120)
        took = time.perf_counter() - start
    finally:
        os.unlink(f.name)
    doc = json.loads(r.stdout)
    return took, doc["findings"]


def run_kube_hunter(lab: Lab, peer, exe: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    r = lab.sh(str(exe), "--remote", NODE_A, NODE_B, "--report", "json", "--log", "none",
               "--network-timeout", "2", ns=peer, check=False, timeout=600)
    took = time.perf_counter() - start
    out = r.stdout.strip()
    doc = json.loads(out[out.index("{"):]) if "{" in out else {}
    return took, doc


def summary(findings: list[dict]) -> str:
    """"critical NW102,NW103 auth=none" for one socket's findings."""
    if not findings:
        return "-"
    order = ["info", "low", "medium", "high", "critical"]
    worst = max((f["severity"] for f in findings), key=order.index)
    ids = ",".join(sorted({f["id"] for f in findings}))
    states = {f["evidence"].get("authentication", {}).get("state") for f in findings} - {None}
    return f"{worst} {ids}" + (f" auth={'/'.join(sorted(states))}" if states else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kube-hunter-venv", default=str(ROOT / ".venv-kh"))
    args = ap.parse_args()
    reason = have_netns()
    if reason:
        print(f"bench/peers.py: {reason}", file=sys.stderr)
        return 2
    exe = kube_hunter(Path(args.kube_hunter_venv))
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="nw-peers-") as tmp:
        nodes = build(lab, Path(tmp))
        nw: dict[tuple[str, int], list[dict]] = defaultdict(list)
        nw_time = 0.0
        for role, ip in (("a", NODE_A), ("b", NODE_B)):
            took, findings = run_nodeward(lab, nodes[role], ip)
            nw_time += took
            for f in findings:
                if f["port"] is None:
                    continue
                where = ip if f["address"] in ("0.0.0.0", "::") else f["address"]
                nw[(where, f["port"])].append(f)
        kh_time, kh = run_kube_hunter(lab, nodes["peer"], exe)
    khv: dict[tuple[str, int], list[str]] = defaultdict(list)
    for v in kh.get("vulnerabilities", []):
        host, _, port = str(v.get("location", "")).rpartition(":")
        if port.isdigit():
            khv[(host, int(port))].append(f"{v.get('vid', '')} {v.get('vulnerability', '')}"
                                          f" ({v.get('severity', '')})")
    services = {tuple(str(s.get("location", "")).rsplit(":", 1)): s.get("service", "")
                for s in kh.get("services", [])}
    keys = sorted(set(nw) | set(khv) | {(h, int(p)) for h, p in services if p.isdigit()},
                  key=lambda k: (k[0], k[1]))
    print(f"{'ADDRESS':<16}{'PORT':>6}  {'NODEWARD':<46}KUBE-HUNTER")
    for host, port in keys:
        ours = summary(nw.get((host, port), []))
        theirs = "; ".join(khv.get((host, port), [])) or (
            f"service: {services[(host, str(port))]}" if (host, str(port)) in services
            else "-")
        print(f"{host:<16}{port:>6}  {ours:<46}{theirs}")
    print(f"\nnodeward: {sum(len(v) for v in nw.values())} port findings on {len(nw)} "
          f"addresses, {nw_time:.2f}s (two scans, run on each node)")
    print(f"kube-hunter 0.6.8: {sum(len(v) for v in khv.values())} vulnerabilities on "
          f"{len(khv)} ports, {len(services)} services, {kh_time:.2f}s (--remote, from the "
          f"peer); ratio {kh_time / nw_time:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
