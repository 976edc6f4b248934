"""What the cluster stage costs the API server and the agent, at 100, 1,000 and 5,000 nodes.

Three measurements, each in this one run against a local API server that speaks the real
list/watch protocol (tests/lab/fakeapi.py), with realistically sized Node objects:

1. API traffic per agent per hour, and the API server's total, for list-every-cycle (what
   the daemon did: LIST Nodes and six Calico kinds each cycle) against list-then-watch
   (collect/watch.py) directly and through `nodeward relay` (2 replicas, real TLS and
   TokenReview; agents watch the relay, the relays watch the API), under two churn models:
   `topology` (nodes come and go, keys rotate: a few events a minute) and `kubelet` (every
   node's status is re-posted every 5 minutes, kubelet's nodeStatusReportFrequency: N/300
   events a second, each a whole Node). Then the relay's own RSS and CPU at the largest
   size, as a separate process serving agents under kubelet churn.
2. The agent's RSS holding a watched N-node view (child process, psutil).
3. The cluster checks at scale: 5,000 nodes, 5,000 HostEndpoints, 2,000 GNPs in an offline
   directory through `nodeward scan --offline` (wall time, peak RSS), and the encryption
   checks with 5,000 WireGuard peers / routes and 4,000 xfrm policies.

    python bench/cluster.py [--sizes 100,1000,5000] [--steady 15] [--interval 60]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "agent")]

from tests.lab.fakeapi import FakeApi  # noqa: E402

from nodeward.checks.encryption import PeerNode, Route  # noqa: E402
from nodeward.clusterscan import ClusterScan, check_cluster_scan  # noqa: E402
from nodeward.collect.cluster import CALICO_KINDS, ClusterSettings, from_api  # noqa: E402
from nodeward.collect.watch import ClusterWatcher  # noqa: E402
from nodeward.collect.wireguard import WgDevice, WgPeer  # noqa: E402
from nodeward.collect.xfrm import XfrmPolicy, XfrmState, XfrmTmpl  # noqa: E402
from nodeward.derive import Derived  # noqa: E402
from nodeward.kubeapi import ApiConfig, KubeApi  # noqa: E402
from nodeward.relay.auth import TokenReviewer  # noqa: E402
from nodeward.relay.server import Relay, RelayOptions  # noqa: E402

NODES = "/api/v1/nodes"
CRD = {k: paths[0] for k, paths in CALICO_KINDS.items()}


def ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def node_obj(i: int, key_gen: int = 0) -> dict:
    """A Node about the size real ones are (~7 KB as JSON: images, conditions,
    managedFields, kubeadm/Calico annotations)."""
    name = f"node-{i:05d}"
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": f"uid-{i:032d}",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": "z1",
                       **({"node-role.kubernetes.io/control-plane": ""} if i < 3 else {})},
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "projectcalico.org/IPv4Address": f"{ip(i)}/16",
                "projectcalico.org/WireguardPublicKey": f"key-{i}-{key_gen}=",
                "projectcalico.org/IPv4WireguardInterfaceAddr": f"192.168.{i % 250}.1"},
            "managedFields": [{"manager": m, "operation": "Update", "apiVersion": "v1",
                               "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:status": {"f:conditions": {}, "f:images": {}}}}
                              for m in ("kubeadm", "kubelet", "calico-node",
                                        "kube-controller-manager")]},
        "spec": {"podCIDR": f"10.{100 + (i >> 8) % 100}.{i & 255}.0/24",
                 "podCIDRs": [f"10.{100 + (i >> 8) % 100}.{i & 255}.0/24"]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip(i)},
                          {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "7800m", "memory": "31Gi", "pods": "110"},
            "conditions": [{"type": t, "status": "False", "reason": f"Kubelet{t}",
                            "message": f"kubelet reports {t} ok",
                            "lastHeartbeatTime": "2026-12-01T00:00:00.000000Z",
                            "lastTransitionTime": "2026-11-01T00:00:00Z"}
                           for t in ("MemoryPressure", "DiskPressure", "PIDPressure",
                                     "Ready")],
            "images": [{"names": [f"registry.k8s.io/image-{j}@sha256:{'a' * 64}",
                                  f"registry.k8s.io/image-{j}:v1.30.{j}"],
                        "sizeBytes": 12345678 + j} for j in range(25)],
            "nodeInfo": {"kubeletVersion": "v1.30.2", "containerRuntimeVersion":
                         "containerd://1.7.18", "kernelVersion": "6.1.0-28-amd64",
                         "osImage": "Debian GNU/Linux 12 (bookworm)"}}}


def populate(api: FakeApi, n: int, gnps: int = 50) -> None:
    for i in range(n):
        api.put(NODES, node_obj(i))
        name = f"node-{i:05d}"
        api.put(CRD["BlockAffinity"], {"metadata": {"name": f"{name}-aff"}, "spec": {
            "node": name, "cidr": f"192.{168 + (i >> 14)}.{(i >> 6) & 255}.{(i & 63) * 4}/30",
            "state": "confirmed"}})
        api.put(CRD["HostEndpoint"], {"metadata": {"name": f"{name}-auto", "labels": {
            "role": "node", "kubernetes.io/hostname": name}}, "spec": {
            "node": name, "interfaceName": "*", "expectedIPs": [ip(i)]}})
    for j in range(gnps):
        api.put(CRD["GlobalNetworkPolicy"], {"metadata": {"name": f"gnp-{j}"}, "spec": {
            "order": j, "selector": f"role == 'node' && zone in {{'z{j % 3}'}}",
            "ingress": [{"action": "Allow", "protocol": "TCP",
                         "destination": {"ports": [22, 10250]}}]}})
    api.put(CRD["FelixConfiguration"], {"metadata": {"name": "default"},
                                        "spec": {"wireguardEnabled": True}})
    api.put(CRD["IPPool"], {"metadata": {"name": "default-ipv4-ippool"},
                            "spec": {"cidr": "192.168.0.0/16"}})
    api.put(CRD["KubeControllersConfiguration"], {"metadata": {"name": "default"}, "spec": {
        "controllers": {"node": {"hostEndpoint": {"autoCreate": "Enabled"}}}}})


def client(api: FakeApi) -> KubeApi:
    return KubeApi(ApiConfig(url=api.url, connect_timeout=5, read_timeout=60, retries=0))


def bookmark_bytes_h(kinds: int) -> float:
    """A BOOKMARK a minute per watched kind (the API server's cadence, and the relay's):
    counted, not waited for, as the measured window is shorter than a minute."""
    line = json.dumps({"type": "BOOKMARK", "object": {"kind": "FelixConfiguration",
                       "apiVersion": "v1", "metadata": {"resourceVersion": "1a2b3c4d.123456"}}})
    return kinds * 60 * (len(line) + 8)


AGENT_TOKEN = "bench-agent-token"
AGENT_USER = "system:serviceaccount:nodeward:nodeward"
REPLICAS = 2


def pki() -> Path:
    from tests.lab.authlab import make_pki

    return make_pki(Path(tempfile.mkdtemp(prefix="nodeward-bench-relay-")))


def start_relay(api: FakeApi, certs: Path) -> Relay:
    opts = RelayOptions(host="127.0.0.1", port=0, cert_file=str(certs / "server.crt"),
                        key_file=str(certs / "server.key"))
    relay = Relay(client(api), TokenReviewer(client(api), frozenset([AGENT_USER])),
                  opts).start()
    assert relay.watcher.wait_synced(120), "relay did not sync"
    return relay


def relay_client(port: int, certs: Path) -> KubeApi:
    return KubeApi(ApiConfig(url=f"https://127.0.0.1:{port}", token=AGENT_TOKEN,
                             ca_file=str(certs / "ca.crt"), connect_timeout=5,
                             read_timeout=60, retries=0))


def via_relay(api: FakeApi, n: int, model: str, steady: float, certs: Path) -> dict:
    """One agent on relay 0 of REPLICAS; what it receives, and what the API server sends
    all replicas together (their watches, the agents' TokenReviews)."""
    api.reset_counters()
    relays = [start_relay(api, certs) for _ in range(REPLICAS)]
    try:
        w = ClusterWatcher(relay_client(relays[0].server.port, certs),
                           watch_timeout_s=300).start()
        assert w.wait_synced(120), "agent did not sync from the relay"
        time.sleep(1.0)
        srv = relays[0].server
        initial_req, initial_bytes = sum(srv.requests.values()), sum(srv.bytes.values())
        review_bytes = api.bytes["CREATE tokenreviews"] / max(
            1, api.requests["CREATE tokenreviews"])
        srv.requests.clear()
        srv.bytes.clear()
        api.reset_counters()
        churn = Churn(api, n, model)
        churn.start()
        time.sleep(steady)
        churn.stop.set()
        churn.join()
        time.sleep(0.5)
        agent_bytes = sum(srv.bytes.values())
        agent_req = srv.requests["list"] + srv.requests["watch"]
        upstream_bytes = sum(api.bytes.values())
        dropped = relays[0].store.stats.unchanged
        w.stop(timeout=0.1)  # its blocked stream reads end with the process
    finally:
        for r in relays:
            r.stop()
    renew_req_h = len(w.kinds) * 3600 / w.watch_timeout_s
    agent_bytes += bookmark_bytes_h(len(w.kinds)) * steady / 3600
    upstream_bytes += REPLICAS * bookmark_bytes_h(len(w.kinds)) * steady / 3600
    # TokenReviews: one per agent per cache lifetime (120 s) at most; a watch renewal
    # every 300 s re-asks, so ~12 an hour per agent
    reviews_h = n * 3600 / 300
    return {"req_h": renew_req_h + agent_req * 3600 / steady,
            "bytes_h": agent_bytes * 3600 / steady, "events": churn.events,
            "initial_req": initial_req, "initial_bytes": initial_bytes,
            "api_bytes_h": upstream_bytes * 3600 / steady + reviews_h * review_bytes,
            "api_req_h": REPLICAS * renew_req_h + reviews_h, "dropped": dropped}


class Churn(threading.Thread):
    """`kubelet`: each node's status re-posted every 300 s (N/300 a second, whole Nodes;
    the heartbeat times change, nothing the agents read); `topology`: two node WireGuard
    keys rotated a minute (changes the agents must see)."""

    def __init__(self, api: FakeApi, n: int, model: str) -> None:
        super().__init__(daemon=True)
        self.api, self.n, self.model = api, n, model
        self.stop = threading.Event()
        self.events = 0

    def run(self) -> None:
        rate = self.n / 300 if self.model == "kubelet" else 2 / 60
        start, i = time.monotonic(), 0
        while not self.stop.is_set():
            due = start + i / rate
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            k = random.randrange(self.n)
            if self.model == "kubelet":  # the node as stored, with a new heartbeat time
                with self.api.cond:
                    node = copy.deepcopy(self.api.objects[NODES][f"node-{k:05d}"])
                for c in node["status"]["conditions"]:
                    c["lastHeartbeatTime"] = f"2026-12-01T00:00:00.{i % 10**6:06d}Z"
                self.api.put(NODES, node)
            else:
                self.api.put(NODES, node_obj(k, key_gen=i + 1))
            self.events += 1
            i += 1


def traffic(n: int, steady: float, interval: float, certs: Path) -> dict:
    api = FakeApi(bookmark_interval=60).start()
    api.token_users[AGENT_TOKEN] = AGENT_USER
    try:
        populate(api, n)
        api.reset_counters()
        t0 = time.perf_counter()
        kube = client(api)
        view = from_api("node-00000", kube)
        kube.close()
        list_s = time.perf_counter() - t0
        assert len(view.nodes) == n, len(view.nodes)
        per_cycle_req = sum(api.requests.values())
        per_cycle_bytes = sum(api.bytes.values())
        cycles_h = 3600 / interval
        out = {"nodes": n, "list_cycle_s": list_s,
               "list": {"req_h": per_cycle_req * cycles_h, "bytes_h": per_cycle_bytes * cycles_h}}
        for model in ("topology", "kubelet"):
            api.reset_counters()
            w = ClusterWatcher(client(api), watch_timeout_s=300).start()
            assert w.wait_synced(120), "watch did not sync"
            time.sleep(1.0)  # the watches start right after their lists
            initial_req, initial_bytes = sum(api.requests.values()), sum(api.bytes.values())
            api.reset_counters()
            churn = Churn(api, n, model)
            churn.start()
            time.sleep(steady)
            churn.stop.set()
            churn.join()
            time.sleep(0.5)  # let the last events arrive
            got = sum(api.bytes.values())
            if os.environ.get("BENCH_DEBUG"):
                print(model, dict(api.requests), dict(api.bytes), file=sys.stderr)
            # watches are renewed every watch_timeout_s: one request per kind per renewal
            renew_req_h = len(w.kinds) * 3600 / w.watch_timeout_s
            got += bookmark_bytes_h(len(w.kinds)) * steady / 3600
            w.stop(timeout=0.1)  # its blocked stream reads end with the process
            out[model] = {"req_h": renew_req_h + sum(api.requests.values()) * 3600 / steady,
                          "bytes_h": got * 3600 / steady, "events": churn.events,
                          "initial_req": initial_req, "initial_bytes": initial_bytes}
            out[model]["api_bytes_h"] = out[model]["bytes_h"] * n
            out[model]["api_req_h"] = out[model]["req_h"] * n
            out[f"relay-{model}"] = via_relay(api, n, model, steady, certs)
        out["list"]["api_bytes_h"] = out["list"]["bytes_h"] * n
        out["list"]["api_req_h"] = out["list"]["req_h"] * n
        return out
    finally:
        api.stop()


RELAY_AGENTS = 20


def relay_process(n: int, steady: float, certs: Path) -> dict:
    """`nodeward relay` as its own process (what a replica costs): RSS once synced, with
    RELAY_AGENTS agents attached, and its CPU while kubelet churn goes by."""
    import psutil

    api = FakeApi(bookmark_interval=60).start()
    api.token_users[AGENT_TOKEN] = AGENT_USER
    agents: list[ClusterWatcher] = []
    proc = None
    try:
        populate(api, n)
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodeward", "relay", "--listen", "127.0.0.1:0",
             "--cert", str(certs / "server.crt"), "--key", str(certs / "server.key"),
             "--api-url", api.url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "agent")})
        assert proc.stdout is not None
        line = ""
        while not line.startswith("nodeward relay: serving"):
            line = proc.stdout.readline()
            assert line, "the relay did not start"
        port = int(line.rsplit(":", 1)[1])
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # its log lines
        p = psutil.Process(proc.pid)
        probe = relay_client(port, certs)
        end = time.monotonic() + 120
        while time.monotonic() < end:
            r = probe.request("GET", "/healthz")
            if r.status == 200:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        rss0 = p.memory_info().rss / 2**20
        agents = [ClusterWatcher(relay_client(port, certs)).start() for _ in range(RELAY_AGENTS)]
        for w in agents:
            assert w.wait_synced(120)
        time.sleep(1.0)
        rss1 = p.memory_info().rss / 2**20
        churn = Churn(api, n, "kubelet")
        c0 = p.cpu_times()
        t0 = time.monotonic()
        churn.start()
        time.sleep(steady)
        churn.stop.set()
        churn.join()
        c1 = p.cpu_times()
        cpu = (c1.user + c1.system - c0.user - c0.system) / (time.monotonic() - t0)
        return {"rss0": rss0, "rss1": max(rss1, p.memory_info().rss / 2**20), "cpu": cpu,
                "threads": p.num_threads()}
    finally:
        for w in agents:
            w.stop(timeout=0.1)  # its blocked stream reads end with the process
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        api.stop()


RSS_CHILD = r"""
import sys, time, psutil
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/agent"]
from nodeward.collect.watch import ClusterWatcher
from nodeward.kubeapi import ApiConfig, KubeApi
import nodeward.checks.calico, nodeward.clusterscan, nodeward.daemon  # the agent's imports
base = psutil.Process().memory_info().rss
w = ClusterWatcher(KubeApi(ApiConfig(url=sys.argv[1], read_timeout=60, retries=0))).start()
assert w.wait_synced(120)
v = w.view("node-00000")
import gc; gc.collect()
time.sleep(0.5)
print(base, psutil.Process().memory_info().rss, len(v.nodes))
w.stop(timeout=0.1)  # its blocked stream reads end with the process
"""


def rss(n: int) -> tuple[float, float, int]:
    api = FakeApi(bookmark_interval=60).start()
    try:
        populate(api, n)
        r = subprocess.run([sys.executable, "-c", RSS_CHILD, api.url, str(ROOT)],
                           capture_output=True, text=True, timeout=300)
        base, full, nodes = (int(x) for x in r.stdout.split())
        return base / 2**20, full / 2**20, nodes
    finally:
        api.stop()


def offline_dir(path: Path, n: int, heps: int, gnps: int) -> None:
    nodes = [node_obj(i) for i in range(n)]
    (path / "nodes.json").write_text(json.dumps({"apiVersion": "v1", "kind": "NodeList",
                                                 "items": nodes}))
    objs = [{"apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint",
             "metadata": {"name": f"hep-{i}", "labels": {"role": "node",
                                                         "host": f"node-{i:05d}"}},
             "spec": {"node": f"node-{i:05d}", "interfaceName": "eth0"}} for i in range(heps)]
    objs += [{"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
              "metadata": {"name": f"gnp-{j}"},
              "spec": {"order": j, "selector": f"host == 'node-{j:05d}'" if j % 10
                       else "host == 'typo'",
                       "ingress": [{"action": "Allow" if j % 2 else "Deny", "protocol": "TCP",
                                    "destination": {"ports": [22]}}],
                       "egress": [{"action": "Allow",
                                   "destination": {"nets": ["10.0.0.0/8"]}}]}}
             for j in range(gnps)]
    objs += [{"apiVersion": "projectcalico.org/v3", "kind": "Pod",
              "metadata": {"name": f"pod-{i}", "labels": {"app": f"a{i % 50}"}}}
             for i in range(n)]
    objs.append({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                 "metadata": {"name": "default"}, "spec": {"wireguardEnabled": True}})
    (path / "calico.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                                  "items": objs}))


PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:])\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print('\\nPEAK_KB', u.ru_maxrss, u.ru_utime + u.ru_stime)\n")


def offline_scan(n: int, heps: int, gnps: int) -> tuple[float, float, float, int]:
    with tempfile.TemporaryDirectory() as d:
        offline_dir(Path(d), n, heps, gnps)
        t0 = time.perf_counter()
        with tempfile.TemporaryFile("w+") as out:
            # through a small fresh wrapper: a child forked from this (big) process counts
            # the parent's pages in its peak RSS until it execs
            subprocess.run([sys.executable, "-c", PEAK_WRAPPER, sys.executable, "-m",
                            "nodeward", "scan", "--offline", d, "--no-firewall", "--format",
                            "json"], stdout=out, stderr=subprocess.PIPE, timeout=900,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "agent")})
            wall = time.perf_counter() - t0
            out.seek(0)
            text, _, tail = out.read().rpartition("\nPEAK_KB ")
        peak_kb, cpu = tail.split()
        peak = int(peak_kb) / 1024
        findings = len(json.loads(text)["findings"]) if text else -1
        return wall, float(cpu), peak, findings


def encryption_checks(n: int) -> dict[str, float]:
    peers = tuple(PeerNode(f"node-{i:05d}", (ip(i),), (f"10.{100 + (i >> 8) % 100}."
                                                      f"{i & 255}.0/24",), f"key-{i}")
                  for i in range(1, n))
    dev = WgDevice("wireguard.cali", 51820, "pub", peers=tuple(
        WgPeer(f"key-{i}", f"{ip(i)}:51820", (f"10.{100 + (i >> 8) % 100}.{i & 255}.0/24",),
               last_handshake=time.time()) for i in range(1, n)))
    routes = tuple(Route(p.pod_cidrs[0], "wireguard.cali", 1) for p in peers) + tuple(
        Route(p.pod_cidrs[0], "vxlan.calico") for p in peers)
    from nodeward.collect.cluster import ClusterView
    view = ClusterView(node="node-00000", source="bench",
                       nodes=(PeerNode("node-00000", (ip(0),)), *peers))
    out = {}
    scan = ClusterScan(view, wireguard=(dev,), routes=routes, local_addresses=(ip(0),),
                       derived=Derived(encryption="wireguard"))
    t0 = time.perf_counter()
    fs = check_cluster_scan(scan, ClusterSettings(encryption="wireguard"))
    out["wireguard_s"] = time.perf_counter() - t0
    out["wireguard_findings"] = len(fs)
    pols = tuple(XfrmPolicy(f"{ip(0) if d == 'out' else ip(i)}/32",
                            f"{ip(i) if d == 'out' else ip(0)}/32", d, tmpls=(
        XfrmTmpl(ip(0) if d == "out" else ip(i), ip(i) if d == "out" else ip(0), "esp", i),))
        for i in range(1, n) for d in ("out", "in"))
    states = tuple(XfrmState(t.src, t.dst, "esp", 0x1000 + k, t.reqid,
                             algorithms=(("aead", "rfc4106(gcm(aes))"),))
                   for k, p in enumerate(pols) for t in p.tmpls)
    scan = ClusterScan(view, xfrm_states=states, xfrm_policies=pols,
                       local_addresses=(ip(0),), derived=Derived(encryption="ipsec"))
    t0 = time.perf_counter()
    fs = check_cluster_scan(scan, ClusterSettings(encryption="ipsec"))
    out["ipsec_s"] = time.perf_counter() - t0
    out["ipsec_findings"] = len(fs)
    return out


def mb(b: float) -> str:
    return f"{b / 2**20:,.1f} MB" if b >= 2**20 or not b else f"{b / 1024:,.1f} KB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,5000")
    ap.add_argument("--steady", type=float, default=15.0, help="seconds of churn measured")
    ap.add_argument("--interval", type=float, default=60.0, help="daemon cycle, seconds")
    ap.add_argument("--skip", default="", help="comma list of traffic,relay,rss,checks")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    skip = set(args.skip.split(","))
    certs = pki()
    if "traffic" not in skip:
        print(f"Traffic per agent per hour, and the API server's total (cycle "
              f"{args.interval:g} s; watches renewed every 300 s; relay: {REPLICAS} replicas, "
              "the API server's total is their watches plus the agents' TokenReviews)")
        print(f"{'nodes':>6} {'mode':<30} {'agent req/h':>11} {'agent bytes/h':>14} "
              f"{'API req/s':>10} {'API bytes/s':>13} {'vs list':>9}")
        labels = {"list": "list every cycle", "topology": "watch, topology churn",
                  "kubelet": "watch, kubelet status",
                  "relay-topology": "relay watch, topology churn",
                  "relay-kubelet": "relay watch, kubelet status"}
        for n in sizes:
            t = traffic(n, args.steady, args.interval, certs)
            base = t["list"]["bytes_h"]
            for mode, label in labels.items():
                r = t[mode]
                ratio = base / r["bytes_h"] if r["bytes_h"] else float("inf")
                print(f"{n:>6} {label:<30} {r['req_h']:>11,.0f} {mb(r['bytes_h']):>14} "
                      f"{r['api_req_h'] / 3600:>10,.1f} {mb(r['api_bytes_h'] / 3600) + '/s':>13}"
                      f" {ratio:>8,.0f}x")
            rk = t["relay-kubelet"]
            print(f"{'':>6} (one list cycle {t['list_cycle_s']:.2f} s; direct watch start-up "
                  f"{t['topology']['initial_req']} requests, "
                  f"{mb(t['topology']['initial_bytes'])} once; from the relay "
                  f"{rk['initial_req']} requests, {mb(rk['initial_bytes'])} once, also what "
                  f"a relay restart costs each agent; each relay dropped {rk['dropped']:,} of "
                  f"{rk['events']:,} kubelet updates as unchanged)")
    if "relay" not in skip:
        n = max(sizes)
        print(f"\nthe relay process at {n:,} nodes, kubelet churn ({n / 300:.1f} Node "
              f"updates/s), {RELAY_AGENTS} agents watching it")
        r = relay_process(n, args.steady, certs)
        print(f"  RSS synced, no agents {r['rss0']:.1f} MB; with {RELAY_AGENTS} agents "
              f"{r['rss1']:.1f} MB ({(r['rss1'] - r['rss0']) / RELAY_AGENTS * 1024:.0f} KB "
              f"per agent); CPU under churn {r['cpu']:.1%} of a core; "
              f"{r['threads']} threads")
    if "rss" not in skip:
        print("\nagent RSS holding a watched view (imports included)")
        for n in sizes:
            base, full, nodes = rss(n)
            print(f"{n:>6} nodes: {full:6.1f} MB (imports alone {base:.1f} MB, view "
                  f"+{full - base:.1f} MB, {nodes} nodes held)")
    if "checks" not in skip:
        print("\ncluster checks at scale")
        wall, cpu, peak, findings = offline_scan(5000, 5000, 2000)
        print(f"scan --offline, 5,000 nodes + 5,000 HostEndpoints + 2,000 GNPs + 5,000 pods: "
              f"{wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {peak:.0f} MB, {findings} "
              "findings (target < 5 s, < 200 MB)")
        e = encryption_checks(5000)
        print(f"WireGuard checks, 5,000 peers + 10,000 routes: {e['wireguard_s']:.2f} s "
              f"({e['wireguard_findings']} findings); IPsec checks, 5,000 peers + 10,000 "
              f"policies/states: {e['ipsec_s']:.2f} s ({e['ipsec_findings']} findings)")


if __name__ == "__main__":
    main()
