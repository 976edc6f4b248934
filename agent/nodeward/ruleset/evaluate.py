"""Packet-path evaluator: what the node's netfilter does with the first packet of a connection.

Pure: a Ruleset, a Packet and the node's local addresses in, a Verdict out. Walks, per hook,
every base chain of every table and front-end in priority order (a packet must pass all of
them: an accept ends one chain, a drop/reject anywhere ends the packet), following jumps,
gotos, RETURN and policies. A match it cannot decide (unknown module, unknown ipset, ...)
forks the walk into "matches" and "does not match"; when the forks disagree the verdict is
uncertain, says why, and reports the more permissive action (reachable) because a scanner
must not claim a port is closed when it may not be.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left
from dataclasses import dataclass, replace

from .iptables import parse_net
from .model import Chain, Match, Packet, Rule, Ruleset, Step, Table, Verdict

PATH_HOOKS = {"input": ("prerouting", "input"),
              "forward": ("prerouting", "forward", "postrouting")}
#: A locally generated packet (the loopback class: iif "lo") first leaves through these,
#: then loops back through "input"'s.
LOCAL_OUT_HOOKS = ("output", "postrouting")
NON_TERMINATING = frozenset({"LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "CLASSIFY", "TCPMSS",
                             "DSCP", "TOS", "TTL", "HL", "TRACE", "AUDIT", "CHECKSUM", "SET",
                             "CONNSECMARK", "SECMARK", "IDLETIMER", "LED", "TEE", "COUNTER",
                             "CT", "NOTRACK", ""})
NAT_ACCEPT = frozenset({"SNAT", "MASQUERADE", "NETMAP"})
KNOWN_ADDRTYPES = frozenset({"LOCAL", "UNICAST", "MULTICAST", "BROADCAST"})
MAX_DEPTH = 64
#: Jumps and gotos followed in one walk: the kernel refuses loops, a saved dump may not
#: (A goto B, B goto A), and gotos do not deepen the stack.
MAX_HOPS = 4096
MASK32 = 0xFFFFFFFF
#: NF_IP_PRI_CONNTRACK (and IPv6's): chains hooked earlier see packets not yet tracked.
CONNTRACK_PRIORITY = -200


@dataclass(frozen=True)
class _Out:
    action: str
    pkt: Packet
    trace: tuple[Step, ...]
    reasons: tuple[str, ...]
    forced: bool  # uncertain regardless of agreement (unknown target, branch budget, ...)


class _Ctx:
    __slots__ = ("branches", "hook", "ifaddrs", "local", "max_branches", "networks",
                 "set_cache", "sets", "visited", "xt")

    def __init__(self, ruleset: Ruleset, local: frozenset[str], max_branches: int,
                 ifaddrs=None, networks=None) -> None:
        #: interface -> its connected networks as (version, first, last), or None
        self.networks = networks
        self.sets = ruleset.sets
        self.local = local
        self.ifaddrs = ifaddrs
        self.max_branches = max_branches
        self.branches = 0
        self.set_cache: dict[str, tuple | None] = {}
        self.xt = True  # the table being walked is an iptables one (xt matches), not nft
        self.hook = ""  # the hook being walked
        #: (frontend, family, table, chain) of every chain walked or jumped to, when the
        #: caller asks (reach.ReachMemo: a verdict stays valid while those chains do)
        self.visited: set[tuple[str, str, str, str]] | None = None


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def _addrtype(ctx: _Ctx, addr: str, family: int) -> str:
    if addr in ctx.local:
        return "LOCAL"
    ip = ipaddress.ip_address(addr)
    if ip.is_loopback:
        return "LOCAL"
    if ip.is_multicast:
        return "MULTICAST"
    if family == 4 and addr == "255.255.255.255":
        return "BROADCAST"
    return "UNICAST"


def _xt_addrtype6(ctx: _Ctx, addr: str, types: tuple[str, ...]) -> bool | None:
    """ip6tables' `-m addrtype` (xt_addrtype match_type6), which is not IPv4's "the address
    has one of these types": every type named must hold. MULTICAST and UNICAST test the
    address itself (UNICAST is anything but ::, multicast and v4-mapped, so also the node's
    own addresses and ::1), LOCAL is a route lookup. So `--dst-type UNICAST` matches a local
    address and `--dst-type LOCAL,MULTICAST` matches nothing unicast."""
    kind = _addrtype(ctx, addr, 6)
    if "BROADCAST" in types:  # refused by the kernel for IPv6: cannot be in a ruleset
        return None
    if "MULTICAST" in types and kind != "MULTICAST":
        return False
    if "UNICAST" in types:
        ip = ipaddress.IPv6Address(addr)
        if kind == "MULTICAST" or ip.is_unspecified or ip.ipv4_mapped is not None:
            return False
    if "LOCAL" in types:
        return None if kind == "MULTICAST" else kind == "LOCAL"
    return True


def _named_set(ctx: _Ctx, name: str):
    """ruleset.sets[name] (None: missing), recorded in ctx.visited as ("set", "", name,
    "*"): whatever in the set changes, the walk may go otherwise."""
    if ctx.visited is not None:
        ctx.visited.add(("set", "", name, "*"))
    return ctx.sets.get(name)


def set_key(name: str, key: tuple) -> int:
    """What ctx.visited records for one lookup of `key` in exact-keyed named set `name`:
    its verdict can only change when the element of that key does (kube-proxy's service
    maps change on most syncs, and every packet is looked up in them)."""
    return hash((name, key))


def _set_members(ctx: _Ctx, name: str) -> tuple | None:
    if name in ctx.set_cache:
        return ctx.set_cache[name]
    s = _named_set(ctx, name)
    out = None
    if s is not None and s.type in ("hash:ip", "hash:net", "bitmap:ip"):
        try:
            out = tuple(parse_net(m) for m in s.members)
        except ValueError:
            out = None
    ctx.set_cache[name] = out
    return out


def _match(ctx: _Ctx, m: Match, p: Packet, si: int, di: int) -> bool | None:
    """True/False, or None when this match cannot be decided from the packet."""
    op = m.op
    a = m.args
    if op == "dst" or op == "src":
        v = di if op == "dst" else si
        r = a[0] == p.family and a[1] <= v <= a[2]
    elif op == "proto":
        r = p.protocol == a[0]
    elif op == "dport" or op == "sport" or op == "port":
        if p.protocol not in ("tcp", "udp", "sctp", "udplite"):
            r = False
        else:
            ports = (p.dport,) if op == "dport" else (p.sport,) if op == "sport" else \
                (p.sport, p.dport)
            r = any(lo <= x <= hi for x in ports for lo, hi in a)
    elif op == "comment":
        return True
    elif op == "iif" or op == "oif":
        name = p.iif if op == "iif" else p.oif
        if not name:
            return None
        r = name.startswith(a[0]) if a[1] else name == a[0]
    elif op == "ctstate":
        if any(s in ("SNAT", "DNAT") for s in a):
            return None
        r = p.ctstate in a
    elif op == "addrtype":
        direction, types = a
        if not set(types) <= KNOWN_ADDRTYPES:
            return None
        addr = p.dst if direction == "dst" else p.src
        if p.family == 6 and ctx.xt:
            r = _xt_addrtype6(ctx, addr, types)
            if r is None:
                return None
        else:  # IPv4's xt_addrtype and nft's fib: the address's one type is among them
            r = _addrtype(ctx, addr, p.family) in types
    elif op == "set":
        name, flags = a
        members = _set_members(ctx, name)
        if members is None or flags[0] not in ("src", "dst"):
            return None
        v = si if flags[0] == "src" else di
        r = any(f == p.family and lo <= v <= hi for f, lo, hi in members)
    elif op == "tcpflags":
        if p.protocol != "tcp":
            r = False
        else:
            mask, comp = a
            r = (p.tcp_flags & mask) == comp
    elif op == "dst_any" or op == "src_any":
        v = di if op == "dst_any" else si
        r = any(f == p.family and lo <= v <= hi for f, lo, hi in a)
    elif op == "nfproto":
        r = p.family == a[0]
    elif op == "l4proto_any":  # nft: "meta l4proto {tcp, udp}"
        r = p.protocol in a
    elif op == "mark":  # (register, mask, value): (reg & mask) == value
        r = ((p.mark if a[0] == "mark" else p.ctmark) & a[1]) == a[2]
    elif op == "pkttype":  # the probes are unicast to the node (or multicast/broadcast)
        kind = _addrtype(ctx, p.dst, p.family)
        r = {"MULTICAST": "multicast", "BROADCAST": "broadcast"}.get(kind, "unicast") == \
            {"host": "unicast"}.get(a[0], a[0])
    elif op == "local_socket":  # -m owner --socket-exists: a local process sent it
        if ctx.hook not in ("output", "postrouting"):
            return None
        r = True
    elif op == "owner":  # -m owner --uid-owner/--gid-owner lo[-hi]: local senders only
        if ctx.hook not in ("output", "postrouting"):
            return None
        who = p.uid if a[0] == "uid" else p.gid
        if who is None:
            return None
        r = a[1] <= who <= a[2]
    elif op == "rpfilter":  # (loose, accept_local): holds when the reverse path passes
        r = _rpfilter(ctx, p, a[0], a[1])
        if r is None:
            return None
    elif op == "lookup":  # nft: a key (maybe concatenated) in a named set
        found = _lookup(ctx, a[0], a[1], p)
        if found is None:
            return None
        r = found >= 0
    else:
        return None
    return r != m.negate


_NOVAL = object()


def _rpfilter(ctx: _Ctx, p: Packet, loose: bool, accept_local: bool) -> bool | None:
    """Reverse path check (xt_rpfilter, nft `fib saddr . iif oif`): is the source routed
    back through the interface it came in on (loose: through any)? Loopback always
    passes; a local source only with accept-local. Known from the interfaces' own networks
    (connected routes); a source on none of them depends on other routes: None."""
    if p.iif == "lo":
        return True
    if _addrtype(ctx, p.src, p.family) == "LOCAL":
        return accept_local
    if ctx.networks is None:
        return None
    si = _ip(p.src)
    best, where = -1, ""
    for ifname, nets in ctx.networks.items():
        for ver, lo, hi in nets:  # the most specific connected route wins
            if ver == p.family and lo <= si <= hi and (best < 0 or hi - lo < best):
                best, where = hi - lo, ifname
    if not where:
        return None
    return loose or where == p.iif


def _field(ctx: _Ctx, sel: str, p: Packet):
    """The packet's value of an nft key selector (as model.IpSet.elements hold them), None
    when it cannot be known, _NOVAL when the packet has no such field (no match)."""
    if sel in ("ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr"):
        if (sel[:3] == "ip6") != (p.family == 6):
            return _NOVAL
        return (p.family, _ip(p.src if sel.endswith("saddr") else p.dst))
    if sel in ("th dport", "th sport", "tcp dport", "tcp sport", "udp dport", "udp sport",
               "sctp dport", "sctp sport"):
        proto = sel.split()[0]
        if p.protocol not in PORT_PROTOS or (proto != "th" and proto != p.protocol):
            return _NOVAL
        return p.dport if sel.endswith("dport") else p.sport
    if sel == "meta l4proto" or sel == "ip protocol" or sel == "ip6 nexthdr":
        return p.protocol
    if sel == "meta iifname" or sel == "meta oifname":
        name = p.iif if sel == "meta iifname" else p.oif
        return name or None
    if sel == "meta mark":
        return p.mark
    if sel == "ct mark":
        return p.ctmark
    if sel == "ct state":
        return p.ctstate.lower()
    if sel == "fib daddr type":
        return _addrtype(ctx, p.dst, p.family).lower()
    if sel == "meta nfproto":
        return "ipv4" if p.family == 4 else "ipv6"
    return None


def _key(ctx: _Ctx, sels: tuple[str, ...], p: Packet):
    out = []
    for sel in sels:
        v = _field(ctx, sel, p)
        if v is None or v is _NOVAL:
            return v
        out.append(v)
    return tuple(out)


def _lookup(ctx: _Ctx, sels: tuple[str, ...], name, p: Packet, named: str = "") -> int | None:
    """Index of the first element of set/map `name` (a key into ruleset.sets, or an inline
    IpSet) whose key holds the packet's key; -1 when none; None when undecidable.
    `named`: the set's name when `name` is the named set itself (recorded as a lookup)."""
    if isinstance(name, str):
        named, s = name, ctx.sets.get(name)
    else:
        s = name
    seen = ctx.visited if named else None
    if s is None or not s.keyed:
        if seen is not None:
            seen.add(("set", "", named, "*"))
        return None
    key = _key(ctx, sels, p)
    if key is _NOVAL:
        return -1
    exact = s.exact
    if key is None or len(key) != len(s.keyed) or exact is None:
        if seen is not None:
            seen.add(("set", "", named, "*"))
        if key is None or len(key) != len(s.keyed):
            return None
    if exact is not None:
        if seen is not None:
            seen.add(set_key(named, key))
        return exact.get(tuple((v, v) for v in key), -1)
    try:
        for i, (ranges, _) in enumerate(s.elements):
            if all(lo <= v <= hi for v, (lo, hi) in zip(key, ranges, strict=True)):
                return i
    except (TypeError, ValueError):  # a field of another kind than the set's: not understood
        return None
    return -1


def _apply(effects: tuple, p: Packet) -> Packet:
    """A rule's mark changes (model.Rule.effects) applied to the packet."""
    mark, ct = p.mark, p.ctmark
    for e in effects:
        kind, dst, src, k1, k2 = e
        sv = mark if src == "mark" else ct
        if kind == "set":
            v = (sv & k1) ^ k2
        else:
            dv = mark if dst == "mark" else ct
            v = (dv & ~k1 & MASK32) ^ (sv & k2)
        if dst == "mark":
            mark = v
        else:
            ct = v
    if mark == p.mark and ct == p.ctmark:
        return p
    return replace(p, mark=mark, ctmark=ct)


#: A chain's run index is kept on the chain object itself (Chain.run_index; frozen, so
#: computed once), which lets it die with the chain. A module-level cache keyed by id(chain)
#: kept every superseded ruleset's chains alive (a leak of ~15,000 rules per re-read on churn).
MIN_RUN = 8
PORT_PROTOS = frozenset({"tcp", "udp", "sctp", "udplite"})
MAX_KEYED_PORTS = 16


def _rule_keys(rule: Rule) -> tuple[str, tuple] | None:
    """What a rule requires exactly, if anything the index can use: one destination address
    ("dst", ((family, ip),)) or a few destination ports ("dport", (port, ...))."""
    ports = None
    for m in rule.matches:
        if m.negate:
            continue
        if m.op == "dst" and m.args[1] == m.args[2]:
            return ("dst", ((m.args[0], m.args[1]),))
        if m.op == "dport" and ports is None and \
                sum(hi - lo + 1 for lo, hi in m.args) <= MAX_KEYED_PORTS:
            ports = tuple(x for lo, hi in m.args for x in range(lo, hi + 1))
    return ("dport", ports) if ports is not None else None


def _chain_index(chain: Chain) -> tuple | None:
    """Runs of consecutive rules that each require one exact destination address (kube-proxy
    KUBE-SERVICES, LB firewalls) or exact destination ports (KUBE-NODEPORTS): per run,
    key -> sorted rule indices, so a walk skips a 5,000-rule run with a dict lookup. Cached
    on the chain object (chains are frozen), together with the MIN_RUN it was built for."""
    hit = chain.run_index
    if hit is not None and hit[0] == MIN_RUN:
        return hit[1]
    keys = [_rule_keys(rule) for rule in chain.rules]
    run_of = [-1] * len(keys)
    runs: list = []
    i, n = 0, len(keys)
    while i < n:
        if keys[i] is None:
            i += 1
            continue
        kind = keys[i][0]
        j = i
        while j < n and keys[j] is not None and keys[j][0] == kind:
            j += 1
        if j - i >= MIN_RUN:
            mp: dict = {}
            for x in range(i, j):
                for k in keys[x][1]:
                    lst = mp.setdefault(k, [])
                    if not lst or lst[-1] != x:
                        lst.append(x)
            for x in range(i, j):
                run_of[x] = len(runs)
            runs.append((j, kind, mp))
        i = j
    index = (run_of, runs) if runs else None
    object.__setattr__(chain, "run_index", (MIN_RUN, index))  # eq/hash ignore it
    return index


def _rule_matches(ctx: _Ctx, rule: Rule, p: Packet, si: int, di: int,
                  frontend: str = "") -> tuple[bool | None, str]:
    unsure = ""
    for m in rule.matches:
        r = _match(ctx, m, p, si, di)
        if r is False:
            return False, ""
        if r is None and not unsure:
            unsure = m.text or m.op
    return (None, unsure) if unsure else (True, "")


def _dnat(p: Packet, arg: str) -> Packet | None:
    """Apply a DNAT destination 'a.b.c.d[:port]' / '[v6]:port'; None if not understood."""
    host, port = arg, ""
    if arg.startswith("["):
        host, _, rest = arg[1:].partition("]")
        port = rest.lstrip(":")
    elif arg.count(":") == 1:
        host, port = arg.split(":")
    if "-" in host or "-" in port:
        return None
    try:
        ipaddress.ip_address(host or p.dst)
        return replace(p, dst=host or p.dst, dport=int(port) if port else p.dport)
    except ValueError:
        return None


def _redirect(ctx: _Ctx, p: Packet, arg: str) -> Packet | str | None:
    """REDIRECT [--to-ports N]: to the incoming interface's first address of the packet's
    family (IPv6: of the destination's scope), as nf_nat_redirect does; "drop" when it has
    none; None when the interface's addresses were not given or the ports are a range."""
    addrs = ctx.ifaddrs.get(p.iif) if ctx.ifaddrs is not None and p.iif else None
    if addrs is None or "-" in arg or ":" in arg:
        return None
    if p.family == 4:
        cands = [a for a in addrs if ":" not in a]
    else:
        link = ipaddress.IPv6Address(p.dst).is_link_local
        cands = [a for a in addrs if ":" in a and ipaddress.IPv6Address(a).is_link_local == link]
    if not cands:
        return "drop"
    return replace(p, dst=cands[0], dport=int(arg) if arg else p.dport)


def _vmap_verdicts(ctx: _Ctx, rule: Rule, p: Packet) -> list[str] | None:
    """The verdict(s) of an nft verdict-map rule for this packet: one when the key is
    known ([] when no element holds it: the rule does not match), every distinct verdict of
    the map plus "" (no element) when the key cannot be known, None when the map is not."""
    sels, name = rule.vmap
    s = ctx.sets.get(name) if isinstance(name, str) else name
    if s is None or not s.keyed:
        if isinstance(name, str) and ctx.visited is not None:
            ctx.visited.add(("set", "", name, "*"))
        return None
    i = _lookup(ctx, sels, s, p, name if isinstance(name, str) else "")
    if i is None:
        every = [*dict.fromkeys(v for _, v in s.elements)]
        if sels[0].startswith("numgen "):  # numgen OFFSET MOD: covered values need no ""
            _, off, mod = sels[0].split()
            have = {k[0][0] for k, _ in s.elements if k[0][0] == k[0][1]}
            if have >= set(range(int(off), int(off) + int(mod))):
                return every
        return [*every, ""]
    return [s.elements[i][1]] if i >= 0 else []


def _run(ctx: _Ctx, table: Table, frames: list[list], p: Packet, trace: tuple[Step, ...],
         reasons: tuple[str, ...], pick: str | None = None) -> list[_Out]:
    """Walk from the frame stack [[chain, next_index], ...] to a verdict for this base chain.
    `pick`: the verdict the first rule (a verdict map) takes, when forking over a map."""
    si, di = _ip(p.src), _ip(p.dst)
    outs: list[_Out] = []
    fe, tn = table.frontend, table.name
    ctx.xt = fe != "nft"
    base: Chain = frames[0][0]
    hops = 0
    while frames:
        frame = frames[-1]
        chain: Chain = frame[0]
        if ctx.visited is not None:
            ctx.visited.add((fe, table.family, tn, chain.name))
        rules = chain.rules
        idx = frame[1]
        n = len(rules)
        jumped = False
        index = _chain_index(chain) if n >= MIN_RUN and pick is None else None
        while idx < n:
            if index is not None and index[0][idx] >= 0:
                end, kind, mp = index[1][index[0][idx]]
                if kind == "dst":
                    cands = mp.get((p.family, di))
                else:
                    cands = mp.get(p.dport) if p.protocol in PORT_PROTOS else None
                j = bisect_left(cands, idx) if cands else 0
                if not cands or j >= len(cands):
                    idx = end
                    continue
                idx = cands[j]
            rule = rules[idx]
            idx += 1
            picking = pick is not None
            if picking:
                ok, why = True, ""
            else:
                ok, why = _rule_matches(ctx, rule, p, si, di, fe)
            if ok is False:
                continue
            if ok is None:
                ctx.branches += 1
                reason = f"{fe} {tn} {chain.name} #{idx}: cannot evaluate {why!r}"
                if ctx.branches > ctx.max_branches:
                    return [*outs, _Out("accept", p, trace, (*reasons, reason,
                                        "too many undecidable rules to follow every case"),
                                        True)]
                alt = [list(f) for f in frames]
                alt[-1][1] = idx
                outs.extend(_run(ctx, table, alt, p, trace, (*reasons, reason)))
                reasons = (*reasons, reason)
            t = rule.target
            arg = rule.arg
            step = Step(fe, tn, chain.name, idx, chain.texts or rule.text, "")
            if rule.effects and not picking:
                p = _apply(rule.effects, p)
            if t == "VMAP":
                if pick is not None:
                    got: list[str] | None = [pick]
                    pick = None
                else:
                    got = _vmap_verdicts(ctx, rule, p)
                if got is None:
                    why = f"{fe} {tn} {chain.name} #{idx}: verdict map not understood"
                    return [*outs, _Out("accept", p, (*trace, _eff(step, "vmap")),
                                        (*reasons, why), True)]
                if not got or got[0] in ("", "CONTINUE"):
                    if len(got) > 1:
                        got = got[1:]
                    else:
                        continue
                if len(got) > 1:  # key undecidable (numgen, ...): every element's verdict
                    reason = f"{fe} {tn} {chain.name} #{idx}: map key cannot be evaluated"
                    for alt_v in got[1:]:
                        ctx.branches += 1
                        if ctx.branches > ctx.max_branches:
                            return [*outs, _Out("accept", p, trace, (
                                *reasons, reason,
                                "too many undecidable rules to follow every case"), True)]
                        alt = [list(f) for f in frames]
                        alt[-1][1] = idx - 1
                        if alt_v in ("", "CONTINUE"):
                            alt[-1][1] = idx
                            outs.extend(_run(ctx, table, alt, p, trace, (*reasons, reason)))
                        else:
                            outs.extend(_run(ctx, table, alt, p, trace, (*reasons, reason),
                                             pick=alt_v))
                    reasons = (*reasons, reason)
                t, _, arg = got[0].partition(" ")
            if t == "ACCEPT" or t in NAT_ACCEPT:
                return [*outs, _Out("accept", p, (*trace, _eff(step, "accept")), reasons, False)]
            if t == "DROP":
                return [*outs, _Out("drop", p, (*trace, _eff(step, "drop")), reasons, False)]
            if t == "REJECT":
                return [*outs, _Out("reject", p, (*trace, _eff(step, "reject")), reasons, False)]
            if t == "JUMP" or t == "GOTO":
                target = table.chains.get(arg)
                if ctx.visited is not None:  # also when missing: its later arrival matters
                    ctx.visited.add((fe, table.family, tn, arg))
                hops += 1
                if target is None or len(frames) >= MAX_DEPTH or hops > MAX_HOPS:
                    why = f"{fe} {tn} {chain.name} #{idx}: " + (
                        f"jump to missing chain {arg}" if target is None else
                        f"jumps to {arg} nest or loop too deep")
                    return [*outs, _Out("accept", p, trace, (*reasons, why), True)]
                trace = (*trace, _eff(step, t.lower()))
                if t == "JUMP":
                    frame[1] = idx
                else:
                    frames.pop()
                    if not frames:  # goto from a base chain: returns hit the policy
                        frames.append([base, len(base.rules)])
                        frame = frames[-1]
                frames.append([target, 0])
                jumped = True
                break
            if t == "RETURN":
                trace = (*trace, _eff(step, "return"))
                idx = n
                break
            if t == "DNAT" or t == "REDIRECT":
                if p.iif == "lo" or p.ctstate not in ("NEW", "RELATED") or \
                        any(s.effect == "dnat" for s in trace):
                    # No NAT lookup: a looped-back packet was bound in OUTPUT, an untracked
                    # (or INVALID) one has no conntrack entry to bind, and once a nat chain
                    # bound the connection the later ones are not consulted.
                    trace = (*trace, _eff(step, "no-nat"))
                    continue
                q = _dnat(p, arg) if t == "DNAT" else _redirect(ctx, p, arg)
                if q == "drop":  # REDIRECT and the interface has no address to redirect to
                    return [*outs, _Out("drop", p, (*trace, _eff(step, "drop")), reasons,
                                        False)]
                if q is None:
                    why = f"{fe} {tn} {chain.name} #{idx}: {t} {arg} not followed"
                    return [*outs, _Out("accept", p, (*trace, _eff(step, t.lower())),
                                        (*reasons, why), True)]
                return [*outs, _Out("accept", q, (*trace, _eff(step, "dnat")), reasons, False)]
            if t == "TPROXY":
                # diverted to a local (transparent) socket on --on-port (0: the same port):
                # another port's packet never reaches the socket asked about
                port = int(arg or 0) or p.dport
                if port == p.dport:
                    why = f"{fe} {tn} {chain.name} #{idx}: TPROXY to the same port: the " \
                          "socket answering may be the proxy's"
                    return [*outs, _Out("accept", p, (*trace, _eff(step, "tproxy")),
                                        (*reasons, why), True)]
                return [*outs, _Out("drop", p, (*trace, _eff(step, f"tproxy to :{port}")),
                                    reasons, False)]
            if (t == "NOTRACK" or (t == "CT" and arg == "--notrack")) and p.iif != "lo":
                # Looped-back packets were tracked on the way out (OUTPUT); the kernel's CT
                # target leaves a packet that already has a conntrack entry alone.
                p = _with_state(p, "UNTRACKED")
                trace = (*trace, _eff(step, "notrack"))
                continue
            if t in NON_TERMINATING:
                if t:
                    trace = (*trace, _eff(step, t.lower()))
                continue
            why = f"{fe} {tn} {chain.name} #{idx}: target {t} not modelled"
            return [*outs, _Out("accept", p, (*trace, _eff(step, t.lower())),
                                (*reasons, why), True)]
        if jumped:
            continue
        frames.pop()
    pol = (base.policy or "ACCEPT").upper()
    action = "accept" if pol == "ACCEPT" else "drop"
    step = Step(fe, tn, base.name, 0, f"policy {pol}", action)
    return [*outs, _Out(action, p, (*trace, step), reasons, False)]


def _eff(step: Step, effect: str) -> Step:
    return Step(step.frontend, step.table, step.chain, step.index, step.shown, effect)


def _family_ok(table: Table, family: int) -> bool:
    return table.family == "inet" or table.family == ("ip" if family == 4 else "ip6")


def hook_chains(ruleset: Ruleset, hook: str, family: int) -> list[tuple[Table, Chain]]:
    """Every base chain on `hook` for `family`, in the order the kernel runs them."""
    found = []
    for order, table in enumerate(ruleset.tables):
        if not _family_ok(table, family):
            continue
        for chain in table.base_chains(hook):
            found.append((chain.priority, order, table, chain))
    found.sort(key=lambda x: (x[0], x[1]))
    return [(t, c) for _, _, t, c in found]


def evaluate(ruleset: Ruleset, packet: Packet, *, local_addresses=(), path: str = "input",
             max_branches: int = 256, interface_addresses=None,
             interface_networks=None, visited: set | None = None) -> Verdict:
    """The verdict for `packet` on `path` ("input": to the host; "forward": through it).

    A packet arriving on "lo" was generated on this node: it first takes the OUTPUT path
    (raw, mangle, nat, filter OUTPUT, then POSTROUTING) out to lo, where nat OUTPUT may
    DNAT it away, then loops back through PREROUTING and INPUT with the marks it was given.
    `interface_addresses` (interface -> its addresses in the order `ip addr` lists them)
    lets a REDIRECT be followed: to the incoming interface's first address of the family.
    Without it a REDIRECT leaves the verdict uncertain. `interface_networks` (interface ->
    its networks, "10.0.0.1/24") decides reverse path filters for on-link sources.
    `visited`, when given, receives the (frontend, family, table, chain) of every chain the
    walk entered or jumped to."""
    if path not in PATH_HOOKS:
        raise ValueError(f"path must be input or forward, not {path!r}")
    nets = None if interface_networks is None else _networks(interface_networks)
    ctx = _Ctx(ruleset, frozenset(local_addresses), max_branches, interface_addresses, nets)
    ctx.visited = visited
    final: list[_Out] = []
    if path == "input" and packet.iif == "lo":
        out = replace(packet, iif="", oif="lo")
        live = _hooks(ctx, ruleset, LOCAL_OUT_HOOKS, [_Out("accept", out, (), (), False)],
                      final, path, out)
        live = [_Out(o.action, replace(o.pkt, iif="lo", oif=""), o.trace, o.reasons,
                     o.forced) for o in live]
    else:
        live = [_Out("accept", packet, (), (), False)]
    live = _hooks(ctx, ruleset, PATH_HOOKS[path], live, final, path, packet)
    final.extend(live)
    return _combine(final)


def _networks(by_if) -> dict[str, tuple]:
    return {i: tuple(parse_net(n) for n in nets) for i, nets in by_if.items()}


def _hooks(ctx: _Ctx, ruleset: Ruleset, hooks: tuple[str, ...], live: list[_Out],
           final: list[_Out], path: str, orig: Packet) -> list[_Out]:
    """Every base chain of `hooks` in order over the live outcomes; the ones that end
    (drop, reject, rerouted) go to `final`; the ones still accepted are returned."""
    for hook in hooks:
        ctx.hook = hook
        for table, chain in hook_chains(ruleset, hook, orig.family):
            # Before conntrack (raw, priority -300) a packet has no entry yet: ct state
            # matches see INVALID (UNTRACKED once a NOTRACK ran). Looped-back packets got
            # theirs on the way out (OUTPUT), so they keep their state.
            pre_ct = hook in ("prerouting", "output") and \
                chain.priority < CONNTRACK_PRIORITY and orig.iif != "lo"
            nxt = []
            for o in live:
                pkt = o.pkt
                if pre_ct and pkt.ctstate != "UNTRACKED":
                    pkt = _with_state(pkt, "INVALID")
                for r in _run(ctx, table, [[chain, 0]], pkt, o.trace, o.reasons):
                    forced = r.forced or o.forced
                    out_pkt = r.pkt
                    if pkt is not o.pkt and out_pkt.ctstate == "INVALID":  # conntrack next
                        out_pkt = _with_state(out_pkt, o.pkt.ctstate)
                    r = _Out(r.action, out_pkt, r.trace, r.reasons, forced)
                    (nxt if r.action == "accept" else final).append(r)
            live = nxt
        if hook in ("prerouting", "output"):
            routed = [_reroute(o, orig, path, ctx) for o in live]
            live = [o for o in routed if o.action == "accept"]
            final.extend(o for o in routed if o.action != "accept")
    return live


def _with_state(p: Packet, state: str) -> Packet:
    return replace(p, ctstate=state)


def _reroute(o: _Out, orig: Packet, path: str, ctx: _Ctx) -> _Out:
    """After PREROUTING (or OUTPUT, for a local packet): a DNAT that moved the destination
    off (or onto) the node changes the path; such packets do not reach the socket being
    asked about (certainly: the kernel routes them elsewhere; whether that answers is
    another host's business)."""
    if o.pkt.dst == orig.dst and o.pkt.dport == orig.dport:
        return o
    local = _addrtype(ctx, o.pkt.dst, o.pkt.family) == "LOCAL"
    if path == "input" and not local:
        why = f"DNAT to {o.pkt.dst}:{o.pkt.dport}: routed away, does not reach the local " \
              "socket"
        return _Out("drop", o.pkt, o.trace, (*o.reasons, why), o.forced)
    if path == "forward" and local:
        why = f"DNAT to local {o.pkt.dst}:{o.pkt.dport}: delivered to the node, not forwarded"
        return _Out("drop", o.pkt, o.trace, (*o.reasons, why), True)
    why = f"destination rewritten to {o.pkt.dst}:{o.pkt.dport}"
    return _Out(o.action, o.pkt, o.trace, (*o.reasons, why), o.forced)


def _combine(outs: list[_Out]) -> Verdict:
    actions = {o.action for o in outs}
    forced = any(o.forced for o in outs)
    if len(actions) == 1 and not forced:
        o = outs[0]
        return Verdict(o.action, True, (), o.trace)
    pick = next((o for o in outs if o.action == "accept"), outs[0])
    reasons = tuple(dict.fromkeys(r for o in outs for r in o.reasons))
    if len(actions) > 1:
        reasons = (f"outcome depends on undecidable matches: {'/'.join(sorted(actions))}",
                   *reasons)
    return Verdict(pick.action, False, reasons, pick.trace)
