"""iptables-nft full rewrites read by chain digests (collect/iptdigest.py) against the real
thing: kube-proxy-like full syncs through the real iptables-nft-restore (every chain of nat
and filter declared, so flushed and re-added in one transaction, with a few services'
endpoints changed, a policy flipped, a chain created or dropped), with the event watch's
limit lowered so it gives up on each as it does on a 50,000-rule rewrite; after every
step the text read must equal a fresh full `iptables-nft-save` exactly, and most steps
must be read by digests (a few `-S CHAIN`), not saved in full. A digest that misses a
changed rule must be caught."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import nodeward.collect.nfchanges as nc
from nodeward.collect import iptdigest
from nodeward.collect.iptdigest import DigestSaves, changed, rule_bytes
from nodeward.collect.ruleset import run_local
from nodeward.ruleset.iptables import parse_iptables_save
from tests.integration.test_ruleset_splice_lab import _base, _norm
from tests.lab import setns

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(not shutil.which("iptables-nft"), reason="needs iptables-nft")]


def test_rule_bytes_leave_out_counters_and_handles() -> None:
    def nla(t: int, v: bytes) -> bytes:
        import struct
        b = struct.pack("=HH", 4 + len(v), t) + v
        return b + b"\0" * (-len(b) % 4)

    def expr(name: bytes, data: bytes) -> bytes:
        return nla(1, nla(1, name + b"\0") + nla(2, data))

    def rule(handle: int, packets: int, port: bytes) -> bytes:
        return (nla(1, b"nat\0") + nla(2, b"KUBE-SVC-X\0") + nla(3, handle.to_bytes(8, "big"))
                + nla(4, expr(b"counter", packets.to_bytes(8, "big")) + expr(b"cmp", port)))

    a, b, c = rule(5, 10, b"\0P"), rule(9, 99, b"\0P"), rule(5, 10, b"\0Q")
    assert rule_bytes(a) == rule_bytes(b) and rule_bytes(a)[0] == "KUBE-SVC-X"
    assert rule_bytes(a) != rule_bytes(c)
    old = {"nat": {"A": ("", b"1"), "B": ("", b"2")}, "filter": {"INPUT": ("ACCEPT", b"3")}}
    assert changed(old, old) == set()
    new = {"nat": {"A": ("", b"1"), "C": ("", b"4")}, "filter": {"INPUT": ("DROP", b"3")}}
    assert changed(old, new) == {("nat", ""), ("nat", "B"), ("nat", "C"),
                                 ("filter", "INPUT")}
    assert changed(old, {"nat": {}}) is None


def _rewrite(rnd: random.Random, n: int) -> tuple[str, str]:
    """A full sync: the whole base ruleset re-declared, a few things changed."""
    text = _base(False)
    what = []
    for _ in range(rnd.randint(1, 3)):
        i = rnd.randrange(60)
        text = text.replace(f"--to-destination 10.244.0.{i + 1}:8080",
                            f"--to-destination 10.245.{n % 250}.{i + 1}:8080")
        what.append(f"svc{i} endpoint")
    if rnd.random() < 0.3:
        text = text.replace("--dport 10250 -j DROP", f"--dport {10250 + n} -j DROP")
        what.append("filter rule")
    if rnd.random() < 0.3:
        text = text.replace(":FORWARD ACCEPT", ":FORWARD DROP")
        what.append("FORWARD policy DROP")
    if rnd.random() < 0.3:
        text = text.replace(":KUBE-FIREWALL - [0:0]",
                            f":KUBE-FIREWALL - [0:0]\n:KUBE-EXTRA-{n} - [0:0]")
        what.append(f"chain KUBE-EXTRA-{n}")
    return text, ", ".join(what)


def _run(lab, steps: int, seed: int) -> tuple[list[str], DigestSaves]:
    ns = lab.netns("iptdigest")
    rnd = random.Random(seed)

    def restore(text: str, noflush: bool = True) -> None:
        r = subprocess.run(["ip", "netns", "exec", ns.name, "iptables-nft-restore",
                            *(["--noflush"] if noflush else [])], input=text, text=True,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr

    restore(_base(False), noflush=False)
    saves = DigestSaves()

    def read():
        saves.begin()
        got = saves.read(4, lambda: run_local(["iptables-nft-save"], lines=True), run_local)
        if got is not None:  # as the collector does: the parse becomes the splice's state
            saves.parsed(4, parse_iptables_save(got, frontend="iptables-nft", family=4))
        return got, run_local(["iptables-nft-save"], lines=True)

    diffs = []
    saved, nc.MAX_CHANGES = nc.MAX_CHANGES, 50  # a 400-rule rewrite: too many, as 50,000
    try:
        with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
            pool.submit(read).result(60)
            for n in range(steps):
                text, what = _rewrite(rnd, n)
                restore(text)
                if rnd.random() < 0.2:  # and the watch's own path between rewrites
                    lab.sh("iptables-nft", "-A", "KUBE-FIREWALL", "-p", "udp", "--dport",
                           str(n + 1), "-j", "DROP", ns=ns)
                    what += ", a rule appended"
                got, full = pool.submit(read).result(60)
                if _norm(got) != _norm(full):
                    diffs.append(f"step {n}: {what}: differs from a fresh save")
    finally:
        nc.MAX_CHANGES = saved
        saves.close()
    return diffs, saves


def test_full_rewrites_read_by_digest_equal_a_fresh_save(lab) -> None:
    diffs, saves = _run(lab, 16, seed=4242)
    assert not diffs, "\n".join(diffs)
    assert saves.digest_reads >= 10, f"only {saves.digest_reads} of 16 read by digests " \
                                     f"({saves.full_reads} full saves)"


def test_a_digest_blind_to_rules_is_caught(lab, monkeypatch) -> None:
    monkeypatch.setattr(iptdigest, "rule_bytes", lambda msg: (
        iptdigest._text(iptdigest._attrs(msg).get(2)), b""))  # the rules' content ignored
    diffs, _saves = _run(lab, 6, seed=7)
    assert diffs, "a digest that ignores the rules went unnoticed"


def test_live_counters_do_not_move_a_chains_digest(lab) -> None:
    ns = lab.netns("iptcount")
    lab.sh("ip", "link", "set", "lo", "up", ns=ns)
    lab.sh("iptables-nft", "-A", "OUTPUT", "-o", "lo", "-p", "udp", "-j", "ACCEPT", ns=ns)

    def digests():
        return iptdigest.chain_digests("ip", ["filter"])[0]["filter"]["OUTPUT"]

    with ThreadPoolExecutor(1, initializer=setns, initargs=(ns.name,)) as pool:
        before = pool.submit(digests).result(30)
        lab.sh(sys.executable, "-c", "import socket; s = socket.socket(socket.AF_INET, "
               "socket.SOCK_DGRAM); [s.sendto(b'x', ('127.0.0.1', 9)) for _ in range(3)]",
               ns=ns)
        counted = lab.sh("iptables-nft", "-v", "-S", "OUTPUT", ns=ns).stdout
        assert "-p udp -c 3 " in counted, counted  # the counter moved
        assert pool.submit(digests).result(30) == before
        lab.sh("iptables-nft", "-A", "OUTPUT", "-p", "tcp", "-j", "ACCEPT", ns=ns)
        assert pool.submit(digests).result(30) != before
