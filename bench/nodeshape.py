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


def install_ruleset(ns: Netns, frontend: str, rules: int) -> float:
    """Load the ruleset into `ns`; returns the seconds it took."""
    t0 = time.monotonic()
    if frontend == "nft":
        text = nft_text(rules)
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
    subprocess.run(["ip", "netns", "exec", ns, *tool], input=payload, text=True, check=True)
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
    nft: kube-proxy's nftables mode shape of nodeshape.nft_text: the five services'
    chains flushed and refilled in one `nft -f` transaction."""
    import itertools

    services = max(10, rules // 10)
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
