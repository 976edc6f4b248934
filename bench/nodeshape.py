"""A realistic node in a lab namespace, for the benchmarks: processes holding many listening
sockets and many established connections, and a kube-proxy-sized ruleset on one of the three
front-ends (iptables-nft, iptables-legacy, native nft), plus a kube-proxy-like writer that
changes service endpoints every few seconds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "agent"))

from tests.lab import Lab, Netns  # noqa: E402

#: Listening sockets from 20000 up; established connections go to a listener on 19999.
HOLDER = r"""
import resource, socket, sys, time
sys.path.insert(0, {root!r})
from tests.lab.netns import setns
setns({ns!r})
listen, first, conns = {listen}, {first}, {conns}
resource.setrlimit(resource.RLIMIT_NOFILE, (listen + 2 * conns + 1024,) * 2)
keep = []
for i in range(listen):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", first + i))
    s.listen(1)
    keep.append(s)
if conns:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]
    for i in range(conns):
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = srv.accept()
        keep += (c, a)
    srv.close()  # a proxy's connections, not one of the node's listeners
print("ready", flush=True)
time.sleep(86400)
"""


def hold(lab: Lab, ns: Netns, listen: int, first: int = 20000, conns: int = 0,
         name: str = "holder") -> subprocess.Popen:
    """One process in `ns` holding `listen` listening TCP sockets (ports first..) and
    `conns` established loopback connections (both ends: 2 fds each)."""
    code = HOLDER.format(root=str(ROOT), ns=ns.name, listen=listen, first=first, conns=conns)
    p = subprocess.Popen([name, "-c", code], executable=sys.executable,
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    lab.procs.append(p)
    if "ready" not in (p.stdout.readline() if p.stdout else ""):
        raise RuntimeError("socket holder failed to start")
    return p


def node_shape(lab: Lab, ns: Netns, listeners: int, established: int,
               procs: int = 4) -> list[subprocess.Popen]:
    """`listeners` listening sockets in one process (a node's daemons bunched up, the worst
    case for the fd walk) and `established` connections spread over `procs` proxy-like
    processes, each also holding a few listeners of its own."""
    out = [hold(lab, ns, listeners, 20000, 0, "listeners")]
    per = established // procs if procs else 0
    for k in range(procs):
        out.append(hold(lab, ns, 2, 15000 + 2 * k, per, f"proxy{k}"))
    return out


# -- rulesets -------------------------------------------------------------------------------

def kube_proxy_text(rules: int) -> str:
    from bench.ruleset import kube_proxy_dump

    return kube_proxy_dump(max(10, rules // 10), rules, hardened=True)


def nft_text(rules: int, table: str = "kube") -> str:
    """A native nft table of about `rules` rules shaped like kube-proxy's nftables mode
    (service dispatch on address + port, per-service chains with endpoint DNATs, a load
    balancer firewall) plus an operator's input filter."""
    services = max(10, rules // 10)
    lines = [f"table inet {table} {{",
             "  chain input { type filter hook input priority 0; policy accept;",
             "    ct state established,related accept",
             "    ip saddr 10.244.0.0/16 tcp dport { 10250, 10255, 2379 } drop",
             "    ip saddr != 10.0.0.0/16 tcp dport 22 reject",
             "    jump lbfw",
             "  }",
             "  chain prerouting { type nat hook prerouting priority dstnat;",
             "    jump services",
             "  }"]
    svc = []
    chains = []
    n = 5
    for i in range(services):
        cip = f"10.96.{i // 250}.{i % 250 + 1}"
        svc.append(f"    ip daddr {cip} tcp dport 80 jump svc{i}")
        body = [f"    ip saddr != 10.244.0.0/16 ip daddr {cip} tcp dport 80 meta mark set 0x4000"]
        for e in range(2):
            pod = f"10.244.{(i * 2 + e) // 250 % 250}.{(i * 2 + e) % 250 + 1}"
            body.append(f"    ip saddr {pod} meta mark set 0x4000")
            body.append(f"    tcp dport 80 dnat ip to {pod}:8080")
        chains.append(f"  chain svc{i} {{\n" + "\n".join(body) + "\n  }")
        n += 1 + len(body)
    lb = []
    j = 0
    while n < rules:
        lb.append(f"    ip daddr 10.{100 + j // 60000}.{j // 250 % 240}.{j % 250 + 1} "
                  "tcp dport 443 drop")
        j += 1
        n += 1
    lines.append("  chain services {\n" + "\n".join(svc) + "\n  }")
    lines.append("  chain lbfw {\n" + "\n".join(lb) + "\n  }")
    lines += chains
    lines.append("}")
    return "\n".join(lines) + "\n"


KP = "ip kube-proxy"  # kube-proxy's nftables mode: one table per family


def _kp_hash(name: str) -> str:
    """kube-proxy's chain name prefix: the first 8 base32 characters of sha256(name)."""
    import base64
    import hashlib

    return base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8]


def kp_service_chain(i: int) -> str:
    base = f"ns{i % 50}/svc{i}/tcp/p80"
    return f"service-{_kp_hash(base)}-{base}"


def kp_endpoint_chain(i: int, pod: str) -> str:
    base = f"ns{i % 50}/svc{i}/tcp/p80__{pod}/8080"
    return f"endpoint-{_kp_hash(base)}-{base}"


def kp_cluster_ip(i: int) -> str:
    return f"10.96.{i // 250 % 250}.{i % 250 + 1}"


def kp_pods(i: int, gen: int = 0) -> list[str]:
    """Service i's two endpoints at endpoint generation `gen` (0: as installed)."""
    if gen == 0:
        return [f"10.244.{(i * 2 + e) // 250 % 250}.{(i * 2 + e) % 250 + 1}" for e in range(2)]
    return [f"10.245.{gen % 250}.{(i * 2 + e) % 250 + 1}" for e in range(2)]


def kp_service_cmds(i: int, pods: list[str]) -> list[str]:
    """The chains and rules of service i with endpoints `pods`, as kube-proxy's nftables
    proxier writes them (ensureChain: add + flush, then the rules)."""
    svc, cip = kp_service_chain(i), kp_cluster_ip(i)
    eps = [kp_endpoint_chain(i, p) for p in pods]
    out = []
    for ep, pod in zip(eps, pods, strict=True):
        out += [f"add chain {KP} {ep}", f"flush chain {KP} {ep}",
                f"add rule {KP} {ep} ip saddr {pod} jump mark-for-masquerade",
                f"add rule {KP} {ep} meta l4proto tcp dnat to {pod}:8080"]
    vmap = " , ".join(f"{k} : goto {ep}" for k, ep in enumerate(eps))
    out += [f"add chain {KP} {svc}", f"flush chain {KP} {svc}",
            f"add rule {KP} {svc} ip daddr {cip} tcp dport 80 ip saddr != 10.244.0.0/16 "
            "jump mark-for-masquerade",
            f"add rule {KP} {svc} numgen random mod {len(eps)} vmap {{ {vmap} }}"]
    return out


def kube_proxy_nft_text(rules: int) -> str:
    """An `nft -f` script of about `rules` rules shaped like kube-proxy's nftables mode
    (pkg/proxy/nftables, as its TestOverallNFTablesRules in ../shared/realworld/nft shows
    it): the skeleton of base and helper chains, the service-ips / service-nodeports /
    no-endpoint-* verdict maps and the cluster-ips set, per service a service chain
    picking one of two endpoint chains with a numgen vmap, every 5th an external chain
    behind a NodePort, every 10th without endpoints (rejected through no-endpoint-services);
    plus an operator's small `inet host` input filter. Tables, sets and maps first, then
    chains, rules and elements (elements name chains)."""
    services = max(10, (rules - 25) * 10 // 58)
    head = [f"add table {KP} {{ comment \"rules for kube-proxy\" ; }}",
            f"add set {KP} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}",
            f"add set {KP} nodeport-ips {{ type ipv4_addr ; }}"]
    for m in ("service-ips", "no-endpoint-services", "firewall-ips"):
        head.append(f"add map {KP} {m} {{ type ipv4_addr . inet_proto . inet_service : "
                    "verdict ; }")
    for m in ("service-nodeports", "no-endpoint-nodeports"):
        head.append(f"add map {KP} {m} {{ type inet_proto . inet_service : verdict ; }}")
    for name, typ, hook, prio in (
            ("filter-prerouting", "filter", "prerouting", -110),
            ("filter-input", "filter", "input", -110),
            ("filter-forward", "filter", "forward", -110),
            ("filter-output", "filter", "output", -110),
            ("nat-prerouting", "nat", "prerouting", -100),
            ("nat-output", "nat", "output", -100),
            ("nat-postrouting", "nat", "postrouting", 100)):
        head.append(f"add chain {KP} {name} {{ type {typ} hook {hook} priority {prio} ; }}")
    for name in ("cluster-ips-check", "firewall-check", "mark-for-masquerade",
                 "masquerading", "nodeport-endpoints-check", "reject-chain", "services",
                 "service-endpoints-check"):
        head.append(f"add chain {KP} {name}")
    head += [
        f"add rule {KP} filter-prerouting ct state new jump firewall-check",
        f"add rule {KP} filter-forward ct state new jump service-endpoints-check",
        f"add rule {KP} filter-forward ct state new jump cluster-ips-check",
        f"add rule {KP} filter-input ct state new jump nodeport-endpoints-check",
        f"add rule {KP} filter-input ct state new jump service-endpoints-check",
        f"add rule {KP} filter-output ct state new jump service-endpoints-check",
        f"add rule {KP} filter-output ct state new jump cluster-ips-check",
        f"add rule {KP} cluster-ips-check ip daddr @cluster-ips reject",
        f"add rule {KP} cluster-ips-check ip daddr {{ 10.96.0.0/12 }} drop",
        f"add rule {KP} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        f"add rule {KP} mark-for-masquerade mark set mark or 0x4000",
        f"add rule {KP} masquerading mark and 0x4000 == 0 return",
        f"add rule {KP} masquerading mark set mark xor 0x4000",
        f"add rule {KP} masquerading masquerade fully-random",
        f"add rule {KP} nat-output jump services",
        f"add rule {KP} nat-postrouting jump masquerading",
        f"add rule {KP} nat-prerouting jump services",
        f"add rule {KP} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . "
        "th dport vmap @no-endpoint-nodeports",
        f"add rule {KP} reject-chain reject",
        f"add rule {KP} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {KP} services ip daddr @nodeport-ips meta l4proto . th dport "
        "vmap @service-nodeports",
        f"add rule {KP} service-endpoints-check ip daddr . meta l4proto . th dport "
        "vmap @no-endpoint-services",
        f"add element {KP} nodeport-ips {{ 10.0.1.5 }}"]
    body: list[str] = []
    elems: list[str] = []
    for i in range(services):
        cip = kp_cluster_ip(i)
        elems.append(f"add element {KP} cluster-ips {{ {cip} }}")
        if i % 10 == 9:
            elems.append(f"add element {KP} no-endpoint-services {{ {cip} . tcp . 80 comment "
                         f"\"ns{i % 50}/svc{i}:p80\" : goto reject-chain }}")
            continue
        body += kp_service_cmds(i, kp_pods(i))
        elems.append(f"add element {KP} service-ips {{ {cip} . tcp . 80 : goto "
                     f"{kp_service_chain(i)} }}")
        if i % 5 == 0:
            ext = kp_service_chain(i).replace("service-", "external-", 1)
            body += [f"add chain {KP} {ext}", f"add rule {KP} {ext} jump mark-for-masquerade",
                     f"add rule {KP} {ext} goto {kp_service_chain(i)}"]
            elems.append(f"add element {KP} service-nodeports {{ tcp . {30000 + i // 5 % 2000} "
                         f": goto {ext} }}")
    host = ["add table inet host",
            "add chain inet host input { type filter hook input priority 0 ; policy accept ; }",
            "add rule inet host input ct state established,related accept",
            "add rule inet host input ip saddr 10.244.0.0/16 tcp dport { 10250, 10255, 2379 } "
            "drop",
            "add rule inet host input ip saddr != 10.0.0.0/16 tcp dport 22 reject"]
    return "\n".join(head + body + elems + host) + "\n"


def kube_proxy_nft_churn(rules: int, seed: int = 0):
    """kube-proxy nftables-mode partial syncs (pkg/proxy/nftables/proxier.go, 1.31+: only
    the services whose endpoints changed are written, map and set elements only where
    they changed, nftElementStorage): each item is the transactions of one sync, each one
    `nft -f` run: first the stale endpoint chains of the sync before deleted (kube-proxy
    flushes them in one sync and deletes them in a separate transaction of the next),
    then the sync: five services get new endpoints (new endpoint chains, the service chain
    flushed and refilled with a new numgen vmap, the old endpoint chains flushed); every
    other sync one of them loses its endpoints instead (service-ips element deleted, a
    no-endpoint-services element added, its chains flushed) or gets them back."""
    import itertools
    import random

    services = max(10, (rules - 25) * 10 // 58)
    rnd = random.Random(seed)
    gens = {i: 0 for i in range(services) if i % 10 != 9}
    stale: list[str] = []
    for n in itertools.count(1):
        txns = []
        if stale:
            txns.append("\n".join(f"delete chain {KP} {c}" for c in stale) + "\n")
            stale = []
        out: list[str] = []
        for k, i in enumerate(rnd.sample(range(services), 5)):
            cip = kp_cluster_ip(i)
            svc = kp_service_chain(i)
            if i % 10 == 9 or i % 5 == 0:
                continue  # (never-endpoint services and NodePort ones keep theirs)
            if k == 0 and n % 2 == 0 and gens.get(i) is not None:  # endpoints gone
                stale += [kp_endpoint_chain(i, p) for p in kp_pods(i, gens[i])] + [svc]
                out += [f"flush chain {KP} {c}" for c in stale[-3:]]
                out += [f"delete element {KP} service-ips {{ {cip} . tcp . 80 }}",
                        f"add element {KP} no-endpoint-services {{ {cip} . tcp . 80 comment "
                        f"\"ns{i % 50}/svc{i}:p80\" : goto reject-chain }}"]
                gens[i] = None  # type: ignore[assignment]
                continue
            if gens.get(i, 0) is None:  # endpoints back
                gens[i] = n
                out += kp_service_cmds(i, kp_pods(i, n))
                out += [f"delete element {KP} no-endpoint-services {{ {cip} . tcp . 80 }}",
                        f"add element {KP} service-ips {{ {cip} . tcp . 80 : goto {svc} }}"]
                continue
            old = [kp_endpoint_chain(i, p) for p in kp_pods(i, gens[i])]
            gens[i] = n
            out += kp_service_cmds(i, kp_pods(i, n))
            out += [f"flush chain {KP} {c}" for c in old]
            stale += old
        txns.append("\n".join(out) + "\n")
        yield tuple(t for t in txns if t.strip())


def install_ruleset(ns: Netns, frontend: str, rules: int, nft_shape: str = "node") -> float:
    """Load the ruleset into `ns`; returns the seconds it took. nft: `nft_shape` "node"
    (nft_text) or "kube-proxy" (kube_proxy_nft_text)."""
    t0 = time.monotonic()
    if frontend == "nft":
        text = kube_proxy_nft_text(rules) if nft_shape == "kube-proxy" else nft_text(rules)
        cmd = ["nft", "-f", "-"]
    else:
        text = kube_proxy_text(rules)
        cmd = [f"{frontend}-restore"]
    subprocess.run(["ip", "netns", "exec", ns.name, *cmd], input=text, text=True, check=True,
                   capture_output=True, timeout=600)
    return time.monotonic() - t0


CHURN = r"""
import subprocess, sys, time
sys.path.insert(0, {root!r})
from bench.nodeshape import churn_payloads
ns, frontend, every, rules, mode = {ns!r}, {frontend!r}, {every}, {rules}, {mode!r}
tool = ["nft", "-f", "-"] if frontend == "nft" else [frontend + "-restore", "--noflush"]
for n, payload in enumerate(churn_payloads(frontend, rules, mode), 1):
    time.sleep(every)
    for one in payload if isinstance(payload, tuple) else (payload,):  # transactions
        subprocess.run(["ip", "netns", "exec", ns, *tool], input=one, text=True, check=True)
    print(n, flush=True)
"""


def churn_payloads(frontend: str, rules: int, mode: str = "partial"):
    """One kube-proxy sync per item, where five services' endpoints changed.

    iptables front-ends, as kube-proxy's iptables mode writes them (one
    `iptables-restore --noflush`):
    - "partial" (kube-proxy >= 1.27, MinimizeIPTablesRestore on by default: KEP-3453): the
      changed services' KUBE-SVC chains rewritten, their new KUBE-SEP chains (named after
      the endpoint) created and the stale ones flushed and deleted; KUBE-SERVICES and
      KUBE-NODEPORTS in nat and every KUBE-* chain of filter rewritten whole, as on every
      sync;
    - "full" (older kube-proxy, and its periodic full resync): every chain of nat and
      filter declared, so flushed and rewritten: all 50,000 rules replaced.
    nft: kube-proxy's nftables mode (kube_proxy_nft_churn: a tuple of `nft -f`
    transactions per sync) on kube_proxy_nft_text's table; "node": the old shape of
    nft_text, the five services' chains flushed and refilled in one transaction."""
    import itertools

    services = max(10, rules // 10)
    if frontend == "nft" and mode != "node":
        yield from kube_proxy_nft_churn(rules)
        return
    if frontend == "nft":
        for n in itertools.count(1):
            out = []
            for i in range(5):
                svc = (n * 7 + i * 131) % services
                cip = f"10.96.{svc // 250}.{svc % 250 + 1}"
                pod = f"10.245.{n % 250}.{i + 1}"
                out += [f"flush chain inet kube svc{svc}",
                        f"add rule inet kube svc{svc} ip saddr != 10.244.0.0/16 ip daddr "
                        f"{cip} tcp dport 80 meta mark set 0x4000",
                        f"add rule inet kube svc{svc} ip saddr {pod} meta mark set 0x4000",
                        f"add rule inet kube svc{svc} tcp dport 80 dnat ip to {pod}:8080"]
            yield "\n".join(out) + "\n"
    text = kube_proxy_text(rules)
    tables: dict[str, dict[str, list[str]]] = {}
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            table[line.split()[1]].append(line)
    nat, filt = tables["nat"], tables["filter"]
    builtin = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"}
    seps = {i: [f"KUBE-SEP-{i:08X}{e:08X}" for e in range(2)] for i in range(services)}
    for n in itertools.count(1):
        changed = sorted({(n * 7 + i * 131) % services for i in range(5)})
        lines = ["*nat"]
        if mode == "full":
            keep = [c for c in nat if c not in builtin and not c.startswith(
                ("KUBE-SVC-", "KUBE-SEP-"))]
            keep += [f"KUBE-SVC-{i:016X}" for i in range(services)]
            keep += [s for i in range(services) for s in seps[i]]
        else:
            keep = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-MARK-MASQ"]
        body: list[str] = []
        for c in keep:
            if c.startswith("KUBE-SVC-") or c.startswith("KUBE-SEP-"):
                continue
            lines.append(f":{c} - [0:0]")
            body += nat[c]
        todo = range(services) if mode == "full" else changed
        stale: list[str] = []
        for i in todo:
            svc = f"KUBE-SVC-{i:016X}"
            cip = f"10.96.{i // 250}.{i % 250 + 1}"
            if i in changed:  # new endpoints: new KUBE-SEP names
                stale += seps[i]
                seps[i] = [f"KUBE-SEP-{i:08X}{n:04X}{e:04X}" for e in range(2)]
            lines.append(f":{svc} - [0:0]")
            lines += [f":{s} - [0:0]" for s in seps[i]]
            body.append(f"-A {svc} ! -s 10.244.0.0/16 -d {cip}/32 -p tcp -m comment "
                        f'--comment "ns{i % 50}/svc{i}:http cluster IP" -m tcp --dport 80 '
                        "-j KUBE-MARK-MASQ")
            for e, sep in enumerate(seps[i]):
                pod = (f"10.245.{n % 250}.{e + 1}" if i in changed else
                       f"10.244.{(i * 2 + e) // 250 % 250}.{(i * 2 + e) % 250 + 1}")
                stat = "-m statistic --mode random --probability 0.50000000000 " \
                    if e == 0 else ""
                body.append(f'-A {svc} -m comment --comment "ns{i % 50}/svc{i}:http -> '
                            f'{pod}:8080" {stat}-j {sep}')
                body.append(f'-A {sep} -s {pod}/32 -m comment --comment "ns{i % 50}/svc{i}'
                            ':http" -j KUBE-MARK-MASQ')
                body.append(f'-A {sep} -p tcp -m comment --comment "ns{i % 50}/svc{i}:http"'
                            f" -m tcp -j DNAT --to-destination {pod}:8080")
        lines += [f":{s} - [0:0]" for s in stale]
        lines += body
        lines += [f"-X {s}" for s in stale]
        lines += ["COMMIT", "*filter"]
        fbody: list[str] = []
        for c, rs in filt.items():
            if c in builtin:
                continue
            lines.append(f":{c} - [0:0]")
            fbody += rs
        lines += [*fbody, "COMMIT"]
        yield "\n".join(lines) + "\n"


def churn(lab: Lab, ns: Netns, frontend: str, rules: int, every: float,
          mode: str = "partial") -> subprocess.Popen:
    """A kube-proxy-like writer: every `every` seconds, one sync with new endpoints for
    five services (churn_payloads says what each mode writes)."""
    code = CHURN.format(root=str(ROOT), ns=ns.name, frontend=frontend, every=every,
                        rules=rules, mode=mode)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                         start_new_session=True)
    lab.procs.append(p)
    return p
