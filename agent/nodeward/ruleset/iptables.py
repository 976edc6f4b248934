"""iptables-save / ip6tables-save text -> Table values.

Token splitting rather than regex: a kube-proxy node has tens of thousands of rules and the
parser is on the scan path. Every option is kept: options this module does not understand
become `Match(op="unknown")`, which the evaluator treats as "may match".
"""

from __future__ import annotations

import ipaddress
import shlex
from functools import lru_cache

from .errors import RulesetParseError
from .model import IPT_HOOKS, IPT_PRIORITY, Chain, Match, Rule, Table

BUILTIN_TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "QUEUE"})
PROTO_NAMES = {"6": "tcp", "17": "udp", "1": "icmp", "58": "ipv6-icmp", "icmpv6": "ipv6-icmp",
               "132": "sctp", "0": "all", "all": "all"}
#: Options that take no value (flags), by name; all others take exactly one value unless
#: listed in TWO_VALUES.
FLAG_OPTIONS = frozenset({"--syn", "--notrack", "--limit-iface-in", "--limit-iface-out",
                          "--physdev-is-bridged", "--physdev-is-in", "--physdev-is-out",
                          "--log-uid", "--log-tcp-sequence", "--log-tcp-options",
                          "--log-ip-options", "--random", "--random-fully", "--persistent",
                          "--return-nomatch", "--rcheck", "--update", "--set", "--remove",
                          "--rsource", "--rdest", "-f", "--fragment", "--queue-bypass"})
TWO_VALUES = frozenset({"--tcp-flags", "--match-set", "--set-mark-set"})


@lru_cache(maxsize=65536)
def parse_net(text: str) -> tuple[int, int, int]:
    """'10.0.0.0/8' -> (version, first, last) as ints; cached (kube-proxy repeats them).
    Dotted-quad/prefix is decoded by hand: ipaddress costs ~5 us per address, which is most
    of the parse time on a kube-proxy node."""
    addr, _, plen = text.partition("/")
    parts = addr.split(".")
    if len(parts) == 4 and (not plen or plen.isdigit()) and all(
            x.isdigit() and len(x) <= 3 and int(x) <= 255 and (x == "0" or x[0] != "0")
            for x in parts):
        bits = int(plen) if plen else 32
        if bits <= 32:
            a, b, c, d = (int(x) for x in parts)
            ip = (a << 24) | (b << 16) | (c << 8) | d
            host = (1 << (32 - bits)) - 1
            return (4, ip & ~host & 0xFFFFFFFF, (ip & ~host & 0xFFFFFFFF) | host)
    net = ipaddress.ip_network(text, strict=False)
    return (net.version, int(net.network_address), int(net.broadcast_address))


@lru_cache(maxsize=4096)
def parse_ports(text: str) -> tuple[tuple[int, int], ...]:
    """'80', '80:90', ':90', '1,2:5' -> ((lo, hi), ...)."""
    out = []
    for part in text.split(","):
        lo, sep, hi = part.partition(":")
        a = int(lo) if lo else 0
        b = (int(hi) if hi else 65535) if sep else a
        if not (0 <= a <= b <= 65535):
            raise ValueError(f"bad port range {part!r}")
        out.append((a, b))
    return tuple(out)


def tokenize(line: str) -> list[str]:
    """Split like the shell would, cheaply for the common cases iptables-save prints."""
    if '"' not in line and "'" not in line:
        return line.split()
    if "\\" not in line and "'" not in line:
        parts = line.split('"')
        if len(parts) % 2 == 0:
            raise ValueError("unterminated quote")
        out: list[str] = []
        for i, part in enumerate(parts):
            if i % 2:
                out.append(part)
            else:
                out.extend(part.split())
        return out
    return shlex.split(line)


_MATCH_CACHE: dict[tuple, Match] = {}


def _m(op: str, args: tuple, negate: bool, text: str) -> Match:
    key = (op, args, negate, text)
    m = _MATCH_CACHE.get(key)
    if m is None:
        if len(_MATCH_CACHE) > 200_000:
            _MATCH_CACHE.clear()
        m = _MATCH_CACHE[key] = Match(op, args, negate, text)
    return m


def _option_match(module: str, opt: str, vals: list[str], neg: bool) -> Match:
    """One module option -> Match. Raises ValueError on a bad value."""
    text = ("! " if neg else "") + " ".join([opt, *vals])
    v = vals[0] if vals else ""
    if opt in ("--dport", "--destination-port") and module in ("tcp", "udp", "sctp", "udplite"):
        return _m("dport", parse_ports(v), neg, text)
    if opt in ("--sport", "--source-port") and module in ("tcp", "udp", "sctp", "udplite"):
        return _m("sport", parse_ports(v), neg, text)
    if module == "multiport" and opt in ("--dports", "--destination-ports", "--sports",
                                         "--source-ports", "--ports"):
        op = {"--dports": "dport", "--destination-ports": "dport", "--sports": "sport",
              "--source-ports": "sport", "--ports": "port"}[opt]
        return _m(op, parse_ports(v), neg, text)
    if (module, opt) in (("conntrack", "--ctstate"), ("state", "--state")):
        return _m("ctstate", tuple(v.upper().split(",")), neg, text)
    if module == "addrtype" and opt in ("--dst-type", "--src-type") and vals:
        return _m("addrtype", ("dst" if opt == "--dst-type" else "src",
                               tuple(v.upper().split(","))), neg, text)
    if module == "set" and opt == "--match-set" and len(vals) == 2:
        return _m("set", (vals[0], tuple(vals[1].split(","))), neg, text)
    if module == "comment" and opt == "--comment":
        return _m("comment", (v,), False, text)
    if module == "tcp" and opt == "--tcp-flags" and len(vals) == 2:
        return _m("tcpflags", (frozenset(vals[0].upper().split(",")),
                               frozenset(vals[1].upper().split(",")) - {"NONE"}), neg, text)
    if module == "tcp" and opt == "--syn":
        return _m("tcpflags", (frozenset({"SYN", "RST", "ACK", "FIN"}), frozenset({"SYN"})),
                  neg, text)
    return _m("unknown", (f"-m {module} {text}",), neg, f"-m {module} {text}")


def parse_rule(tokens: list[str], chains: dict, line: str, lineno: int) -> tuple[str, Rule]:
    """Tokens of one `-A CHAIN ...` line -> (chain, Rule)."""
    chain = tokens[1]
    matches: list[Match] = []
    target = ""
    arg = ""
    module = ""
    neg = False
    i, n = 2, len(tokens)
    while i < n:
        t = tokens[i]
        i += 1
        if t == "!":
            neg = True
            continue
        if t in ("-j", "--jump", "-g", "--goto"):
            if i >= n:
                raise ValueError(f"{t} needs a target")
            name = tokens[i]
            i += 1
            if t in ("-g", "--goto"):
                target, arg = "GOTO", name
            elif name in chains and name not in BUILTIN_TARGETS:
                target, arg = "JUMP", name
            else:
                target = name
                rest = tokens[i:]
                arg = _target_arg(name, rest)
                i = n
            continue
        if t.startswith("-") and len(t) > 1 and t not in ("-m", "--match") and \
                t not in FLAG_OPTIONS and i >= n:
            raise ValueError(f"option {t} needs a value")
        if t in ("-s", "--source", "-d", "--destination"):
            v = tokens[i]
            i += 1
            matches.append(_m("src" if t in ("-s", "--source") else "dst", parse_net(v), neg,
                              ("! " if neg else "") + f"{t} {v}"))
        elif t in ("-i", "--in-interface", "-o", "--out-interface"):
            v = tokens[i]
            i += 1
            wild = v.endswith("+")
            matches.append(_m("iif" if t in ("-i", "--in-interface") else "oif",
                              (v[:-1] if wild else v, wild), neg,
                              ("! " if neg else "") + f"{t} {v}"))
        elif t in ("-p", "--protocol"):
            v = tokens[i].lower()
            i += 1
            p = PROTO_NAMES.get(v, v)
            if p != "all" or neg:
                matches.append(_m("proto", (p,), neg, ("! " if neg else "") + f"-p {v}"))
        elif t in ("-m", "--match"):
            if i >= n:
                raise ValueError("-m needs a module name")
            module = tokens[i]
            i += 1
        elif t.startswith("-"):
            if t in FLAG_OPTIONS:
                vals: list[str] = []
            else:
                k = 2 if t in TWO_VALUES else 1
                if i + k > n:
                    raise ValueError(f"option {t} needs {k} value(s)")
                vals = tokens[i:i + k]
                i += k
            if not module and t in ("-f", "--fragment"):
                matches.append(_m("unknown", (t,), neg, ("! " if neg else "") + t))
            else:
                matches.append(_option_match(module, t, vals, neg))
        else:
            raise ValueError(f"unexpected {t!r}")
        neg = False
    if neg:
        raise ValueError("dangling '!'")
    return chain, Rule(tuple(matches), target, arg, line, lineno)


def _target_arg(name: str, rest: list[str]) -> str:
    """The one target option the evaluator needs (DNAT destination, REDIRECT ports)."""
    for j, t in enumerate(rest[:-1]):
        if t in ("--to-destination", "--to-ports", "--to", "--reject-with"):
            return rest[j + 1]
    if "--notrack" in rest:
        return "--notrack"
    return ""


def parse_iptables_save(text: str, *, frontend: str = "iptables-legacy", family: int = 4,
                        source: str = "iptables-save") -> tuple[Table, ...]:
    """Parse iptables-save output. Raises RulesetParseError naming the line."""
    fam = "ip" if family == 4 else "ip6"
    tables: list[Table] = []
    tname: str | None = None
    start = 0
    decl: dict[str, tuple[str | None, int]] = {}
    rules: dict[str, list[Rule]] = {}
    lineno = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        c = line[0]
        if c == "-":
            if tname is None:
                raise RulesetParseError(source, lineno, "rule outside a table (no '*table')")
            try:
                tokens = tokenize(line)
            except ValueError as e:
                raise RulesetParseError(source, lineno, str(e)) from None
            if tokens[0] not in ("-A", "--append") or len(tokens) < 2:
                raise RulesetParseError(source, lineno, f"expected '-A CHAIN ...', got "
                                                        f"{tokens[0]!r}")
            if tokens[1] not in rules:
                raise RulesetParseError(source, lineno, f"rule for undeclared chain "
                                                        f"{tokens[1]!r} in table {tname}")
            try:
                chain, rule = parse_rule(tokens, rules, line, lineno)
            except (ValueError, IndexError) as e:
                raise RulesetParseError(source, lineno, str(e) or "malformed rule") from None
            rules[chain].append(rule)
        elif c == ":":
            if tname is None:
                raise RulesetParseError(source, lineno, "chain outside a table")
            parts = line[1:].split()
            if not parts or len(parts) < 2:
                raise RulesetParseError(source, lineno, "chain line needs ':NAME POLICY'")
            name, pol = parts[0], parts[1]
            if pol not in ("ACCEPT", "DROP", "-", "QUEUE", "RETURN"):
                raise RulesetParseError(source, lineno, f"bad policy {pol!r} for chain {name}")
            decl[name] = (None if pol == "-" else pol, lineno)
            rules[name] = []
        elif c == "*":
            if tname is not None:
                raise RulesetParseError(source, lineno, f"table {tname} (line {start}) "
                                                        "has no COMMIT")
            tname = line[1:].strip()
            if not tname:
                raise RulesetParseError(source, lineno, "empty table name")
            start, decl, rules = lineno, {}, {}
        elif line == "COMMIT":
            if tname is None:
                raise RulesetParseError(source, lineno, "COMMIT outside a table")
            tables.append(_table(frontend, fam, tname, decl, rules))
            tname = None
        else:
            raise RulesetParseError(source, lineno, f"unrecognised line {line[:60]!r}")
    if tname is not None:
        raise RulesetParseError(source, lineno, f"table {tname} (line {start}) has no COMMIT")
    return tuple(tables)


def _table(frontend: str, fam: str, name: str, decl: dict, rules: dict) -> Table:
    prio = IPT_PRIORITY.get(name, 0)
    chains = {}
    for cname, (policy, _) in decl.items():
        hook = IPT_HOOKS.get(cname) if policy is not None else None
        chains[cname] = Chain(cname, tuple(rules[cname]), policy, hook, prio)
    return Table(frontend, fam, name, chains)
