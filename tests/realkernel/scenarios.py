"""What runs inside the guest (through jobserver `call` jobs): real kernel devices and
states in lab namespaces, read by nodeward's own collectors from inside a node namespace,
checked, and returned as plain data for the host-side tests to assert on.

Each function builds its lab, reads every phase, and tears the lab down before returning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tests.lab import Lab, Netns, setns

WG4, WG6 = "wireguard.cali", "wg-v6.cali"  # Calico's interface names
ANN4, ANN6 = "projectcalico.org/WireguardPublicKey", "projectcalico.org/WireguardPublicKeyV6"


def in_netns(name: str, fn: Callable[[], object]) -> object:
    """`fn()` in a child process that entered namespace `name` (the caller stays put)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            setns(name)
            out = (True, fn())
        except BaseException:
            out = (False, traceback.format_exc())
        with os.fdopen(w, "wb") as f:
            pickle.dump(out, f)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data)
    if not ok:
        raise RuntimeError(f"in netns {name}:\n{value}")
    return value


def _batch(ns: Netns, lines: list[str]) -> None:
    """Many `ip` commands in one process (process start is ~100x slower in the guest)."""
    r = subprocess.run(["ip", "-n", ns.name, "-batch", "-"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"ip -batch in {ns.name}: {r.stderr.strip()}")


def _keypair() -> tuple[str, str]:
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True,
                          check=True).stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                         check=True).stdout.strip()
    return priv, pub


def _wg_set(lab: Lab, ns: Netns, args: list[str], private_key: str | None = None) -> None:
    """`wg set` in `ns`; a private key goes through a 0600 file on the guest's tmpfs."""
    if private_key is None:
        lab.run(ns, ["wg", "set", *args])
        return
    fd, path = tempfile.mkstemp(prefix="nwkey")
    try:
        os.write(fd, private_key.encode() + b"\n")
        os.close(fd)
        lab.run(ns, ["wg", "set", *args, "private-key", path])
    finally:
        os.unlink(path)


def _node_obj(name: str, i: int, keys: dict[str, str]) -> dict:
    return {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "annotations": {ANN4: keys["4"], ANN6: keys["6"]}},
            "spec": {"podCIDRs": [f"10.244.{i}.0/24", f"fd00:244:{i}::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": f"10.77.0.{i}"},
                                     {"type": "InternalIP", "address": f"fd00:77::{i}"}]}}


def _scan(node: Netns, offline: Path, name: str) -> dict:
    """nodeward's scan path inside `node`: interfaces (kind from the kernel), the cluster
    view from the offline Node objects, the netlink WireGuard collector, routes, checks."""

    def work() -> dict:
        from nodeward.clusterscan import check_cluster_scan, collect_cluster_scan
        from nodeward.collect.addresses import collect_interfaces
        from nodeward.collect.cluster import ClusterSettings
        from nodeward.model import NodeSnapshot

        ifs = collect_interfaces(["cali*"])
        snap = NodeSnapshot(node=name, scanned_at="", interfaces=tuple(ifs))
        settings = ClusterSettings(encryption="wireguard", offline_dir=str(offline),
                                   use_api=False)
        scan = collect_cluster_scan(settings, snap)
        found = check_cluster_scan(scan, settings)
        return {"kinds": {i.name: i.kind for i in ifs},
                "devices": [dataclasses.asdict(d) for d in scan.wireguard],
                "notes": list(scan.notes),
                "findings": sorted([f.id, f.component, f.address] for f in found
                                   if f.id.startswith("NW4"))}

    return in_netns(node.name, work)


def _wait_handshakes(lab: Lab, ns: Netns, dev: str, want: int, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = lab.run(ns, ["wg", "show", dev, "latest-handshakes"]).stdout
        n = sum(1 for line in out.splitlines() if line.split()[-1] != "0")
        if n >= want or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _cli_scan(lab: Lab, node: Netns, encryption: str, node_objs: list[dict]) -> dict:
    """`nodeward scan` as an operator runs it, in `node` (named a), with a cluster section
    for `encryption` and an offline view of `node_objs`."""
    offline = Path(tempfile.mkdtemp(prefix="nwcli"))
    (offline / "nodes.json").write_text(json.dumps({"kind": "List", "items": node_objs}))
    cfg = offline.parent / f"{offline.name}.yaml"  # beside, not in, the offline dir
    cfg.write_text(json.dumps({"node_name": "a", "cluster": {
        "encryption": encryption, "offline_dir": str(offline), "use_api": False}}))
    try:
        r = lab.run(node, [sys.executable, "-m", "nodeward", "--config", str(cfg), "scan",
                           "--format", "json", "--no-firewall"], check=False, timeout=120)
    finally:
        cfg.unlink()
        shutil.rmtree(offline)
    return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr[-2000:]}


def wireguard_mesh() -> dict:
    """Three nodes, each with Calico-named kernel devices for both families, a full mesh;
    then, one at a time from node a's view: a peer missing, a wrong allowed IP, a node
    that never handshakes, and a peer key that no longer matches the node annotation."""
    t0 = time.monotonic()
    out: dict = {"phases": {}}
    names = ("a", "b", "c")
    subprocess.run(["modprobe", "ipip"], check=True)  # tunl0 in every namespace
    with Lab(prefix=f"rk{os.getpid() % 10000}") as lab:
        nodes = {n: lab.node(n, f"10.77.0.{i}/24") for i, n in enumerate(names, 1)}
        nodes["d"] = lab.node("d", "10.77.0.4/24")  # in the cluster, no WireGuard at all
        keys: dict[str, dict[str, tuple[str, str]]] = {}
        for i, n in enumerate(names, 1):
            ns = nodes[n]
            lab.addr(ns, "eth0", f"fd00:77::{i}/64")
            _batch(ns, [f"link add {WG4} type wireguard", f"link add {WG6} type wireguard",
                        f"addr add 10.244.{i}.1/32 dev {WG4}",
                        f"addr add fd00:244:{i}::1/128 dev {WG6} nodad",
                        f"link set {WG4} up", f"link set {WG6} up"])
            keys[n] = {"4": _keypair(), "6": _keypair()}
            # Calico's fwmark: the tunnel's own UDP skips its `not fwmark` routing rule
            _wg_set(lab, ns, [WG4, "listen-port", "51820", "fwmark", "0x100000"],
                    keys[n]["4"][0])
            _wg_set(lab, ns, [WG6, "listen-port", "51821", "fwmark", "0x100000"],
                    keys[n]["6"][0])
        # Every end is up before any peer is configured (else a 5 s handshake retry).
        for n in names:
            args4, args6, routes = [WG4], [WG6], []
            for j, m in enumerate(names, 1):
                if m == n:
                    continue
                args4 += ["peer", keys[m]["4"][1], "allowed-ips", f"10.244.{j}.0/24",
                          "endpoint", f"10.77.0.{j}:51820"]
                args6 += ["peer", keys[m]["6"][1], "allowed-ips", f"fd00:244:{j}::/64",
                          "endpoint", f"[fd00:77::{j}]:51821"]
                routes += [f"route replace 10.244.{j}.0/24 dev {WG4}",
                           f"route replace fd00:244:{j}::/64 dev {WG6}"]
            _wg_set(lab, nodes[n], args4)
            _wg_set(lab, nodes[n], args6)
            _batch(nodes[n], routes)
        a = nodes["a"]
        for target in ("10.244.2.1", "10.244.3.1", "fd00:244:2::1", "fd00:244:3::1"):
            lab.run(a, ["busybox", "ping", "-c", "1", "-W", "5", target])
        out["handshakes"] = {dev: _wait_handshakes(lab, a, dev, 2) for dev in (WG4, WG6)}
        d_keys = {"4": _keypair(), "6": _keypair()}
        offline = Path(tempfile.mkdtemp(prefix="nwoffline"))

        def view(extra_d: bool = False) -> None:
            objs = [_node_obj(n, i, {f: keys[n][f][1] for f in "46"})
                    for i, n in enumerate(names, 1)]
            if extra_d:
                objs.append(_node_obj("d", 4, {f: d_keys[f][1] for f in "46"}))
            (offline / "nodes.json").write_text(json.dumps({"kind": "List", "items": objs}))

        def phase(label: str) -> None:
            out["phases"][label] = _scan(a, offline, "a")

        view()
        phase("healthy")
        # The oracle for the collector: wg(8) reading the same kernel devices.
        out["wg_dump"] = lab.run(a, ["wg", "show", "all", "dump"]).stdout
        # A peer missing: c's IPv4 peer gone from a (IPv6 still there).
        _wg_set(lab, a, [WG4, "peer", keys["c"]["4"][1], "remove"])
        phase("missing_peer")
        _wg_set(lab, a, [WG4, "peer", keys["c"]["4"][1], "allowed-ips", "10.244.3.0/24",
                         "endpoint", "10.77.0.3:51820"])
        lab.run(a, ["busybox", "ping", "-c", "1", "-W", "5", "10.244.3.1"])
        # A wrong allowed IP: b's IPv4 peer carries a CIDR that is not b's.
        _wg_set(lab, a, [WG4, "peer", keys["b"]["4"][1], "allowed-ips", "10.245.2.0/24"])
        phase("wrong_allowed_ip")
        _wg_set(lab, a, [WG4, "peer", keys["b"]["4"][1], "allowed-ips", "10.244.2.0/24"])
        # A peer that never handshakes: d is in the cluster, a has it as a peer, d runs
        # no WireGuard. Traffic is sent, so the kernel really tries.
        view(extra_d=True)
        _wg_set(lab, a, [WG4, "peer", d_keys["4"][1], "allowed-ips", "10.244.4.0/24",
                         "endpoint", "10.77.0.4:51820"])
        _wg_set(lab, a, [WG6, "peer", d_keys["6"][1], "allowed-ips", "fd00:244:4::/64",
                         "endpoint", "[fd00:77::4]:51821"])
        lab.addr(nodes["d"], "eth0", "fd00:77::4/64")
        _batch(a, [f"route replace 10.244.4.0/24 dev {WG4}",
                   f"route replace fd00:244:4::/64 dev {WG6}"])
        lab.run(a, ["busybox", "ping", "-c", "1", "-W", "1", "10.244.4.1"], check=False)
        phase("never_handshakes")
        _wg_set(lab, a, [WG4, "peer", d_keys["4"][1], "remove"])
        _wg_set(lab, a, [WG6, "peer", d_keys["6"][1], "remove"])
        # A key mismatch: b rotates its IPv4 key and publishes it (annotation updated);
        # a still holds the old one. a's last handshake with b is recent, so only the
        # key comparison can tell.
        keys["b"]["4"] = _keypair()
        _wg_set(lab, nodes["b"], [WG4], keys["b"]["4"][0])
        view()
        phase("key_mismatch")
        # Routes, with the kernel's own lookup as the oracle: a leftover IPIP route (Calico
        # before WireGuard) for c's IPv4 pod CIDR and a direct IPv6 route via eth0...
        # (b's key mismatch stays: NW405 b in every phase below)

        def lookups() -> dict:
            got = {}
            for dst in ("10.244.2.1", "10.244.3.1", "fd00:244:2::1", "fd00:244:3::1"):
                r = subprocess.run(["ip", "-n", a.name, "-j", "route", "get", dst],
                                   capture_output=True, text=True, check=True)
                got[dst] = json.loads(r.stdout)[0]["dev"]
            return got

        def route_phase(label: str) -> None:
            phase(label)
            out["phases"][label]["lookup"] = lookups()

        lab.run(a, ["ip", "link", "set", "tunl0", "up"])
        _batch(a, ["route replace 10.244.3.0/24 via 10.77.0.3 dev tunl0 onlink",
                   "route replace fd00:244:3::/64 via fd00:77::3 dev eth0"])
        route_phase("plain_routes")
        # ...then Calico's layout: the WireGuard routes in table 1, chosen by a rule for
        # unmarked traffic; the leftover main-table routes no longer decide...
        _batch(a, [f"route add 10.244.{j}.0/24 dev {WG4} table 1" for j in (2, 3)]
               + [f"route add fd00:244:{j}::/64 dev {WG6} table 1" for j in (2, 3)])
        lab.run(a, ["ip", "rule", "add", "not", "fwmark", "0x100000/0x100000",
                    "lookup", "1", "priority", "99"])
        lab.run(a, ["ip", "-6", "rule", "add", "not", "fwmark", "0x100000/0x100000",
                    "lookup", "1", "priority", "99"])
        route_phase("calico_table")
        # ...unless the rule is missing: table 1 is then never consulted.
        lab.run(a, ["ip", "rule", "del", "priority", "99"])
        lab.run(a, ["ip", "-6", "rule", "del", "priority", "99"])
        route_phase("table_without_rule")
        out["cli"] = _cli_scan(lab, a, "wireguard", json.loads(
            (offline / "nodes.json").read_text())["items"])
        shutil.rmtree(offline)
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


AEAD = "aead 'rfc4106(gcm(aes))' 0x0102030405060708091011121314151617181920 128"


def _sa(src: str, dst: str, spi: int, reqid: int, algs: str = AEAD, extra: str = "") -> str:
    return (f"xfrm state add src {src} dst {dst} proto esp spi {spi:#x} reqid {reqid} "
            f"mode transport {algs} {extra}").strip()


def _sp(local: str, peer: str, reqid: int) -> list[str]:
    out = []
    for d, (s, t) in (("out", (local, peer)), ("in", (peer, local))):
        out.append(f"xfrm policy add src {s}/32 dst {t}/32 dir {d} tmpl src {s} dst {t} "
                   f"proto esp reqid {reqid} mode transport")
    return out


def _xfrm_read(ns: Netns, peers: list[tuple[str, str]], local: str) -> dict:
    """In `ns`: the NETLINK_XFRM state dump and the text policies (collect_xfrm), the
    checks, and `ip -s xfrm state/policy` text parsed by the text parser."""

    def work() -> dict:
        from nodeward.checks.encryption import PeerNode, ipsec_findings
        from nodeward.collect.xfrm import collect_xfrm, parse_policies, parse_states

        states, policies, errors = collect_xfrm()
        found = ipsec_findings(states, policies, [PeerNode(n, (ip,)) for n, ip in peers],
                               [local], now=time.time())
        text_s = subprocess.run(["ip", "-s", "xfrm", "state"], capture_output=True,
                                text=True, check=True).stdout
        text_p = subprocess.run(["ip", "-s", "xfrm", "policy"], capture_output=True,
                                text=True, check=True).stdout
        return {"errors": list(errors),
                "states": [dataclasses.asdict(s) for s in states],
                "policies": [dataclasses.asdict(p) for p in policies],
                "text_states": [dataclasses.asdict(s) for s in parse_states(text_s)],
                "text_policies": [dataclasses.asdict(p) for p in parse_policies(text_p)],
                "text_stats": text_s + text_p,
                "findings": sorted([f.id, f.component, str(f.severity)] for f in found)}

    return in_netns(ns.name, work)


def ipsec_states() -> dict:
    """ESP in transport mode between node namespaces on the real kernel. Node a holds, per
    peer: b a healthy pair (mirrored on b; pings really cross it); c a policy whose
    inbound SA is missing; d a weak out SA and a null in SA; e an out SA that hard-expires
    (the kernel deletes it); f an out SA past its packet soft limit after real traffic;
    g Cilium-style templates (wildcard source; an optional fwd template with no SA)."""
    t0 = time.monotonic()
    out: dict = {}
    with Lab(prefix=f"rx{os.getpid() % 10000}") as lab:
        ips = {n: f"10.78.0.{i}" for i, n in enumerate("abcdefg", 1)}
        nodes = {n: lab.node(n, f"{ip}/24") for n, ip in ips.items()}
        a, la = nodes["a"], ips["a"]
        lb = ips["b"]
        pair = [_sa(la, lb, 0x100, 1), _sa(lb, la, 0x101, 1)]
        _batch(a, [*pair, *_sp(la, lb, 1)])
        _batch(nodes["b"], [*pair, *_sp(lb, la, 1)])
        lab.run(a, ["busybox", "ping", "-c", "2", "-W", "5", lb])
        out["healthy"] = _xfrm_read(a, [("b", lb)], la)
        lc, ld, le, lf = ips["c"], ips["d"], ips["e"], ips["f"]
        _batch(a, [
            *_sp(la, lc, 2), _sa(la, lc, 0x200, 2),  # c: no inbound SA
            *_sp(la, ld, 3),
            _sa(la, ld, 0x300, 3, "enc 'cbc(des3_ede)' 0x" + "11" * 24
                + " auth-trunc 'hmac(md5)' 0x" + "22" * 16 + " 96"),
            _sa(ld, la, 0x301, 3, "enc 'ecb(cipher_null)' '' auth digest_null ''"),
            *_sp(la, le, 4), _sa(la, le, 0x400, 4, extra="limit time-hard 2"),
            _sa(le, la, 0x401, 4),
            *_sp(la, lf, 5), _sa(la, lf, 0x500, 5, extra="limit packet-soft 2"),
            _sa(lf, la, 0x501, 5)])
        # g: templates as Cilium writes them: a wildcard source (the flow's address is
        # used: the SA below must be the one the kernel picks), and an optional fwd one.
        lg = ips["g"]
        _batch(a, [
            f"xfrm policy add src {la}/32 dst {lg}/32 dir out tmpl src 0.0.0.0 dst {lg} "
            "proto esp reqid 7 mode transport", _sa(la, lg, 0x700, 7),
            f"xfrm policy add src {lg}/32 dst {la}/32 dir in tmpl src {lg} dst {la} "
            "proto esp reqid 7 mode transport", _sa(lg, la, 0x701, 7),
            "xfrm policy add src 0.0.0.0/0 dst 0.0.0.0/0 dir fwd priority 2975 tmpl "
            f"src 0.0.0.0 dst {la} proto esp reqid 8 mode tunnel level use"])
        # Three echo requests leave through f's SA (f has no SA, so no replies), and one
        # through g's.
        lab.run(a, ["busybox", "ping", "-c", "3", "-W", "1", lf], check=False)
        lab.run(a, ["busybox", "ping", "-c", "1", "-W", "1", lg], check=False)
        deadline = time.monotonic() + 30
        while _sa_present(lab, a, 0x400) and time.monotonic() < deadline:
            time.sleep(0.5)
        peers = [(n, ips[n]) for n in "bcdefg"]
        out["faults"] = _xfrm_read(a, peers, la)
        out["cli"] = _cli_scan(lab, a, "ipsec", [
            {"kind": "Node", "apiVersion": "v1", "metadata": {"name": n},
             "status": {"addresses": [{"type": "InternalIP", "address": ips[n]}]}}
            for n in "abcdefg"])
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


def _sa_present(lab: Lab, ns: Netns, spi: int) -> bool:
    r = lab.run(ns, ["ip", "xfrm", "state", "list"], check=True)
    return f"spi {spi:#010x}" in r.stdout


META4, META6 = "169.254.169.254", "fd00:ec2::254"
NODE4 = "10.0.0.5"


def _tx(ns: Netns, ifname: str) -> int:
    r = subprocess.run(["ip", "-n", ns.name, "-s", "-j", "link", "show", ifname],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)[0]["stats64"]["tx"]["packets"]


def _probe(pod: Netns, node: Netns) -> dict:
    """What the kernel does with pod traffic: does a TCP connect to the node's port 22
    complete, and does a SYN to each metadata address leave through the cloud NIC (its
    transmit counter; the dummy NIC swallows what it sends)."""

    def connect(host: str, port: int, timeout: float) -> bool:
        import socket

        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            return s.connect_ex((host, port)) == 0

    out = {"host_ssh": in_netns(pod.name, lambda: connect(NODE4, 22, 3.0)), "metadata": []}
    for meta in (META4, META6):
        before = _tx(node, "ens5")
        in_netns(pod.name, lambda m=meta: connect(m, 80, 0.5))
        if _tx(node, "ens5") > before:
            out["metadata"].append(meta)
    return out


def _nodeward_scan(node: Netns) -> list:
    def work() -> list:
        from nodeward.checks import run_checks
        from nodeward.config import from_mapping
        from nodeward.snapshot import take_snapshot

        cfg = from_mapping({"node_name": "cloud-node",
                            "node_cidrs": ["10.0.0.0/24", "fd00:10::/64"],
                            "pod_cidrs": ["10.244.0.0/16", "fd00:244::/48"]}, "realkernel")
        snap = take_snapshot(cfg)
        res = run_checks(snap, cfg)
        return {"notes": list(snap.notes),
                "node_if": [i.name for i in snap.interfaces if i.kind == "dummy"],
                "findings": sorted([f.id, f.address, f.port] for f in res.findings
                                   if f.id in ("NW203", "NW204"))}

    return in_netns(node.name, work)


def metadata_bypass() -> dict:
    """A cloud node whose NIC is a `dummy` named ens5 (default routes through it, as to a
    VPC gateway), a pod behind a Calico-style veth, an ssh-like host service. Per phase,
    the kernel's own answer (does the connect complete, does the SYN leave ens5) next to
    nodeward's NW203/NW204: no rules; DROP rules that name the wrong NIC (eth0); rules
    that name ens5 and drop pods' port 22 in INPUT."""
    t0 = time.monotonic()
    out: dict = {"phases": {}}
    with Lab(prefix=f"rm{os.getpid() % 10000}") as lab:
        node = lab.netns("node")
        _batch(node, ["link add ens5 type dummy", f"addr add {NODE4}/24 dev ens5",
                      "addr add fd00:10::5/64 dev ens5 nodad", "link set ens5 up",
                      "route add default dev ens5", "route add ::/0 dev ens5"])
        pod = lab.pod(node, "10.244.1.2/24", "10.244.1.1/24", host_if="cali1a2b")
        lab.addr(node, "cali1a2b", "fd00:244:1::1/64")
        lab.addr(pod, "eth0", "fd00:244:1::2/64")
        lab.sh("ip", "-6", "route", "add", "default", "via", "fd00:244:1::1", ns=pod)
        lab.sysctl(node, "net.ipv6.conf.all.forwarding", "1")
        lab.listen(node, "sshd", tcp=["0.0.0.0:22"])

        def phase(label: str) -> None:
            out["phases"][label] = {"kernel": _probe(pod, node), "nodeward": _nodeward_scan(node)}

        phase("open")
        for tool, meta in (("iptables", META4), ("ip6tables", META6)):
            lab.run(node, [tool, "-A", "FORWARD", "-i", "cali+", "-o", "eth0", "-d", meta,
                           "-j", "DROP"])
        phase("wrong_nic")
        for tool, meta in (("iptables", META4), ("ip6tables", META6)):
            lab.run(node, [tool, "-I", "FORWARD", "-i", "cali+", "-o", "ens5", "-d", meta,
                           "-j", "DROP"])
        lab.run(node, ["iptables", "-A", "INPUT", "-i", "cali+", "-p", "tcp", "--dport", "22",
                       "-j", "DROP"])
        phase("blocked")
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


def wireguard_many_peers(n: int = 600) -> dict:
    """A Calico-sized device: `n` peers with two allowed IPs each (pod blocks), so the
    kernel's dump spans many netlink messages. The collector against `wg show dump`."""
    import base64

    t0 = time.monotonic()
    with Lab(prefix=f"rw{os.getpid() % 10000}") as lab:
        ns = lab.netns("big")
        _batch(ns, [f"link add {WG4} type wireguard", f"link set {WG4} up"])
        lines = ["[Interface]", "ListenPort = 51820"]
        keys = [base64.b64encode(os.urandom(32)).decode() for _ in range(n)]
        for i, k in enumerate(keys):
            lines += ["[Peer]", f"PublicKey = {k}",
                      f"AllowedIPs = 10.{64 + i // 256}.{i % 256}.0/26, "
                      f"10.{64 + i // 256}.{i % 256}.64/26",
                      f"Endpoint = 192.168.{i // 250}.{i % 250 + 1}:51820"]
        fd, path = tempfile.mkstemp(prefix="nwconf")
        os.write(fd, ("\n".join(lines) + "\n").encode())
        os.close(fd)
        priv, _ = _keypair()
        try:
            lab.run(ns, ["wg", "setconf", WG4, path])
        finally:
            os.unlink(path)
        _wg_set(lab, ns, [WG4], priv)
        dump = lab.run(ns, ["wg", "show", WG4, "dump"]).stdout

        def work() -> dict:
            from nodeward.collect.wireguard import collect_netlink

            t = time.monotonic()
            devices, errors = collect_netlink([WG4])
            return {"seconds": round(time.monotonic() - t, 2), "errors": list(errors),
                    "peers": {p.public_key: [p.endpoint, sorted(p.allowed_ips)]
                              for d in devices for p in d.peers}}

        got = in_netns(ns.name, work)
    want = {}
    for line in dump.splitlines()[1:]:
        f = line.split("\t")
        want[f[0]] = [f[2], sorted(f[3].split(","))]
    return {"n": n, "got": got, "want": want, "keys": keys,
            "seconds": round(time.monotonic() - t0, 2)}


def xfrm_many_states(n: int = 500) -> dict:
    """`n` ESP SAs (a large Cilium/strongSwan node): the NETLINK_XFRM dump spans many
    messages and recv() calls. SPIs from the dump against `ip xfrm state` text."""
    t0 = time.monotonic()
    with Lab(prefix=f"rs{os.getpid() % 10000}") as lab:
        ns = lab.netns("many")
        _batch(ns, [_sa("10.79.0.1", f"10.79.{1 + i // 250}.{i % 250 + 1}", 0x1000 + i, i + 1)
                    for i in range(n)])
        text = lab.run(ns, ["ip", "xfrm", "state"]).stdout

        def work() -> dict:
            from nodeward.collect.xfrm import dump_states

            t = time.monotonic()
            states = dump_states()
            return {"seconds": round(time.monotonic() - t, 2),
                    "spis": sorted(s.spi for s in states),
                    "algs": sorted({a for s in states for a in s.algorithms})}

        got = in_netns(ns.name, work)
    from nodeward.collect.xfrm import parse_states

    return {"got": got, "text_spis": sorted(s.spi for s in parse_states(text)),
            "seconds": round(time.monotonic() - t0, 2)}
