"""Helpers for the enforcement lab tests: a node with components, a pod, a peer, a metadata
listener outside, and the nodeward CLI run inside the node's namespace."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .netns import Lab, Netns

NODE_IP, PEER_IP, OUTSIDE_IP = "10.77.0.1", "10.77.0.2", "10.77.0.3"
POD_IP, METADATA = "10.244.1.2", "169.254.169.254"
PORTS = {"kubelet": 10250, "kubelet-readonly": 10255, "etcd": 2379, "apiserver": 6443}
SSH = 22

#: Foreign chains shaped like kube-proxy's and Calico's, created before nodeward runs.
FOREIGN_IPTABLES = [
    ["-N", "KUBE-FIREWALL"], ["-N", "KUBE-SERVICES"], ["-N", "cali-INPUT"],
    ["-N", "cali-FORWARD"],
    ["-A", "KUBE-FIREWALL", "-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8", "-m", "conntrack",
     "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP"],
    ["-A", "KUBE-SERVICES", "-d", "10.96.0.10/32", "-p", "tcp", "-m", "tcp", "--dport", "53",
     "-m", "comment", "--comment", "kube-system/kube-dns:dns-tcp has no endpoints",
     "-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
    ["-A", "cali-INPUT", "-i", "cali+", "-m", "comment", "--comment", "cali:x", "-j",
     "RETURN"],
    ["-A", "cali-FORWARD", "-m", "mark", "--mark", "0x10000/0x10000", "-j", "ACCEPT"],
    ["-I", "INPUT", "1", "-j", "KUBE-FIREWALL"],
    ["-I", "INPUT", "1", "-m", "comment", "--comment", "cali:Cz_u1IQiXIMmKD4c", "-j",
     "cali-INPUT"],
    ["-I", "FORWARD", "1", "-j", "cali-FORWARD"],
    ["-A", "FORWARD", "-j", "KUBE-SERVICES"],
]
FOREIGN_NFT = """table ip calico-like {
\tchain filter-INPUT {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "cali*" counter accept comment "cali:x"
\t}
}
"""


@dataclass
class Topo:
    lab: Lab
    node: Netns
    peer: Netns
    pod: Netns
    outside: Netns


def build(lab: Lab) -> Topo:
    node = lab.node("node", f"{NODE_IP}/24")
    peer = lab.node("peer", f"{PEER_IP}/24")
    outside = lab.node("out", f"{OUTSIDE_IP}/24")
    pod = lab.pod(node, f"{POD_IP}/24", gateway="10.244.1.1/24", host_if="cali0")
    lab.addr(outside, "eth0", f"{METADATA}/32")
    lab.route(node, f"{METADATA}/32", OUTSIDE_IP)
    lab.route(outside, "10.244.0.0/16", NODE_IP)
    lab.listen(node, "kubelet", tcp=[f"0.0.0.0:{PORTS['kubelet']}",
                                     f"0.0.0.0:{PORTS['kubelet-readonly']}"])
    lab.listen(node, "etcd", tcp=[f"0.0.0.0:{PORTS['etcd']}"])
    lab.listen(node, "kube-apiserver", tcp=[f"0.0.0.0:{PORTS['apiserver']}"])
    lab.listen(node, "sshd", tcp=[f"0.0.0.0:{SSH}"])
    lab.listen(outside, "metadata", tcp=[f"{METADATA}:80"])
    return Topo(lab, node, peer, pod, outside)


def config(tmp: Path, backend: str, mode: str = "enforce", **enforce) -> Path:
    data = {
        "node_cidrs": ["10.77.0.0/24"], "pod_cidrs": ["10.244.0.0/16"],
        "mode": mode, "backend": backend,
        "enforce": {"control_plane": [f"{PEER_IP}/32"], "api_server": f"{NODE_IP}:6443",
                    **enforce},
    }
    path = tmp / f"nodeward-{backend}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def config_raw(tmp: Path, data: dict, name: str = "raw.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data))
    return path


def nodeward(lab: Lab, ns: Netns, cfg: Path, *argv: str,
             timeout: float = 60) -> subprocess.CompletedProcess:
    return lab.sh(sys.executable, "-m", "nodeward", "--config", str(cfg), *argv, ns=ns,
                  check=False, timeout=timeout)


def flavour_cmd(flavour: str, tool: str = "") -> str:
    return f"iptables-{flavour}{'-' + tool if tool else ''}"


def add_foreign_iptables(lab: Lab, ns: Netns, flavour: str) -> None:
    for args in FOREIGN_IPTABLES:
        lab.sh(flavour_cmd(flavour), "-w", *args, ns=ns)


_STAMP = re.compile(r"^# (Generated|Completed|Warning).*$", re.M)


def save_text(lab: Lab, ns: Netns, flavour: str, table: str = "filter") -> str:
    """iptables-save output without its timestamp comment lines."""
    out = lab.sh(flavour_cmd(flavour, "save"), "-t", table, ns=ns).stdout
    return _STAMP.sub("", out)


def chains_text(save: str, prefixes: tuple[str, ...] = ("KUBE-", "cali-")) -> str:
    """The declaration and rules of foreign chains (not the built-ins, where ours jump)."""
    keep = []
    for line in save.splitlines():
        name = line[1:].split()[0] if line.startswith(":") else (
            line.split()[1] if line.startswith("-A ") else "")
        if name.startswith(prefixes):
            keep.append(line)
    return "\n".join(keep)


def builtin_foreign(save: str) -> list[str]:
    """Rules in INPUT/FORWARD that are not ours, in order."""
    return [ln for ln in save.splitlines()
            if ln.startswith(("-A INPUT ", "-A FORWARD ")) and "NODEWARD-" not in ln]


def nft_ruleset(lab: Lab, ns: Netns) -> str:
    return lab.sh("nft", "list", "ruleset", ns=ns).stdout


def have(*tools: str) -> str | None:
    missing = [t for t in tools if not shutil.which(t)]
    return f"missing {', '.join(missing)}" if missing else None


def have_pyiptables() -> str | None:
    try:
        import iptc  # noqa: F401
    except ImportError:
        return "python-iptables not installed"
    return None


# -- whole-ruleset snapshots that instantiate nothing ----------------------------------------

SAVES = ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save",
         "ip6tables-nft-save")
_SAVE_COUNTERS = re.compile(r"\[\d+:\d+\]")


def full_snapshot(lab: Lab, ns: Netns) -> dict[str, str]:
    """Every iptables flavour and family, and `nft list ruleset`, counters aside. The save
    tools run without `-t` (they list only tables that exist: `-t` on a legacy table would
    create it)."""
    out = {}
    for tool in SAVES:
        text = lab.sh(tool, ns=ns, check=False).stdout
        out[tool] = _SAVE_COUNTERS.sub("", _STAMP.sub("", text))
    nft = lab.sh("nft", "list", "ruleset", ns=ns).stdout
    out["nft list ruleset"] = re.sub(r"counter packets \d+ bytes \d+", "counter", nft)
    js = lab.sh("nft", "-j", "list", "ruleset", ns=ns).stdout
    out["nft -j"] = re.sub(r'"counter": \{"packets": \d+, "bytes": \d+\}', '"counter": {}',
                           js).replace("}}, {", "}},\n{")  # one object a line, for diffs
    return out


def _ours_ipt(line: str) -> bool:
    return "NODEWARD-" in line


def foreign_view(snap: dict[str, str], before: dict[str, str] | None = None) -> dict[str, object]:
    """The snapshot without nodeward's objects: its chains, its jumps, its inet table, and
    the tables/base chains it had to create (absent from `before`, empty of foreign rules).
    What must stay byte-identical while nodeward is installed."""
    import json

    out: dict[str, object] = {}
    for tool in SAVES:
        blocks, cur = [], []
        for line in snap[tool].splitlines():
            if not line.strip() or _ours_ipt(line):
                continue
            cur.append(line)
            if line == "COMMIT":
                blocks.append("\n".join(cur))
                cur = []
        kept = []
        for b in blocks:
            only_builtin = all(ln.startswith(("*", ":", "COMMIT")) and (
                not ln.startswith(":") or ln.split()[1] != "-") for ln in b.splitlines())
            name = b.splitlines()[0]
            if only_builtin and before is not None and name not in before[tool]:
                continue  # a table nodeward created (legacy: cannot be removed)
            kept.append(b)
        out[tool] = kept
    items = json.loads(snap["nft -j"]).get("nftables", [])
    prev = json.loads(before["nft -j"]).get("nftables", []) if before else None
    prev_chains = {(c["chain"]["family"], c["chain"]["table"], c["chain"]["name"])
                   for c in prev or [] if "chain" in c}
    prev_tables = {(t["table"]["family"], t["table"]["name"]) for t in prev or [] if "table" in t}
    foreign_rules = {}
    norm = []
    for it in items:
        kind, body = next(iter(it.items()))
        if kind == "metainfo" or not isinstance(body, dict):
            continue
        body = {k: v for k, v in body.items() if k != "handle"}
        if body.get("family") == "inet" and body.get("table", body.get("name")) == "nodeward":
            continue
        text = json.dumps(body, sort_keys=True)
        if "NODEWARD-" in text:
            continue
        text = re.sub(r'"counter": \{[^}]*\}', '"counter": {}', text)
        if kind == "rule":
            foreign_rules[(body["family"], body["table"], body["chain"])] = True
        norm.append((kind, body, text))
    kept = []
    for kind, body, text in norm:
        if prev is not None and kind == "chain" and (body["family"], body["table"],
                                                     body["name"]) not in prev_chains \
                and not foreign_rules.get((body["family"], body["table"], body["name"])):
            continue
        new_table = prev is not None and kind == "table" and (
            body["family"], body["name"]) not in prev_tables
        if new_table and not any(f == body["family"] and t == body["name"]
                                 for f, t, _c in foreign_rules):
            continue  # created by nodeward, holding nothing foreign
        kept.append(f"{kind} {text}")
    out["nft"] = kept
    return out


def require(reason: str | None) -> None:
    """Skip with `reason` locally; under CI=true a missing tool is a broken harness: fail."""
    import os

    import pytest

    if not reason:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI harness broken: {reason}")
    pytest.skip(reason)
