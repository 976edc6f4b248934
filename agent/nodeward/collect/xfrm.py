"""IPsec (xfrm) states and policies as frozen values, from `ip xfrm state` / `ip xfrm
policy` text. pyroute2 (0.9.7 installed here) has no XFRM state/policy messages and
iproute2 6.1 ignores `-j` for xfrm, so the text form is what is parsed.

Read-only. Key material printed by `ip xfrm state` is dropped at parse time.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


class XfrmError(Exception):
    pass


@dataclass(frozen=True)
class XfrmTmpl:
    src: str
    dst: str
    proto: str = "esp"
    reqid: int = 0
    mode: str = "transport"


@dataclass(frozen=True)
class XfrmPolicy:
    src: str  # selector CIDRs
    dst: str
    dir: str  # in | out | fwd
    action: str = "allow"
    priority: int = 0
    tmpls: tuple[XfrmTmpl, ...] = ()


@dataclass(frozen=True)
class XfrmState:
    src: str
    dst: str
    proto: str
    spi: int
    reqid: int = 0
    mode: str = "transport"
    algorithms: tuple[tuple[str, str], ...] = ()  # (kind, name): ("enc", "cbc(aes)"); no keys


def _blocks(text: str) -> list[list[str]]:
    """Records start at column 0; their attribute lines are indented."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            blocks.append([])
        if not blocks:
            raise XfrmError(f"indented line before any record: {line.strip()[:40]!r}")
        blocks[-1].append(line.strip())
    return blocks


def _kv(words: list[str]) -> dict[str, str]:
    return {words[i]: words[i + 1] for i in range(0, len(words) - 1)}


def parse_policies(text: str) -> tuple[XfrmPolicy, ...]:
    out: list[XfrmPolicy] = []
    for b in _blocks(text):
        head = _kv(b[0].split())
        if "src" not in head or "dst" not in head:
            raise XfrmError(f"policy without src/dst: {b[0][:60]!r}")
        direction, action, prio = "", "allow", 0
        tmpls: list[XfrmTmpl] = []
        for line in b[1:]:
            w = line.split()
            kv = _kv(w)
            if w[0] in ("dir", "socket"):
                direction = w[1] if w[0] == "dir" else f"socket-{w[1]}"
                action = kv.get("action", action)
                prio = int(kv.get("priority", "0"))
            elif w[0] == "tmpl":
                tmpls.append(XfrmTmpl(kv.get("src", ""), kv.get("dst", "")))
            elif w[0] == "proto" and tmpls:
                t = tmpls[-1]
                tmpls[-1] = XfrmTmpl(t.src, t.dst, kv.get("proto", "esp"),
                                     int(kv.get("reqid", "0")), kv.get("mode", "transport"))
        if not direction:
            raise XfrmError(f"policy without dir: {b[0][:60]!r}")
        out.append(XfrmPolicy(head["src"], head["dst"], direction, action, prio, tuple(tmpls)))
    return tuple(out)


ALG_KINDS = ("enc", "auth", "auth-trunc", "aead", "comp")


def parse_states(text: str) -> tuple[XfrmState, ...]:
    out: list[XfrmState] = []
    for b in _blocks(text):
        head = _kv(b[0].split())
        if "src" not in head or "dst" not in head:
            raise XfrmError(f"state without src/dst: {b[0][:60]!r}")
        proto, spi, reqid, mode = "", 0, 0, "transport"
        algs: list[tuple[str, str]] = []
        for line in b[1:]:
            w = line.split()
            if w[0] == "proto":
                kv = _kv(w)
                proto = kv.get("proto", "")
                try:
                    spi = int(kv.get("spi", "0"), 0)
                    reqid = int(kv.get("reqid", "0"))
                except ValueError:
                    raise XfrmError(f"bad spi/reqid: {line[:60]!r}") from None
                mode = kv.get("mode", mode)
            elif w[0] in ALG_KINDS and len(w) >= 2:
                algs.append((w[0], w[1]))  # w[2] is the key: never kept
        if not proto:
            raise XfrmError(f"state without proto: {b[0][:60]!r}")
        out.append(XfrmState(head["src"], head["dst"], proto, spi, reqid, mode, tuple(algs)))
    return tuple(out)


def _ip(*args: str, netns: str | None = None, timeout: float = 5.0) -> str:
    argv = ["ip", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise XfrmError(f"{' '.join(args)}: {e}") from None
    if r.returncode != 0:
        raise XfrmError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def collect_xfrm(netns: str | None = None) -> tuple[tuple[XfrmState, ...],
                                                    tuple[XfrmPolicy, ...], tuple[str, ...]]:
    """States, policies and errors (an error leaves that half empty; the scan goes on)."""
    errors: list[str] = []
    states: tuple[XfrmState, ...] = ()
    policies: tuple[XfrmPolicy, ...] = ()
    try:
        states = parse_states(_ip("xfrm", "state", netns=netns))
    except XfrmError as e:
        errors.append(f"xfrm state: {e}")
    try:
        policies = parse_policies(_ip("xfrm", "policy", netns=netns))
    except XfrmError as e:
        errors.append(f"xfrm policy: {e}")
    return states, policies, tuple(errors)
