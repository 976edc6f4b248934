"""iptables-save / ip6tables-save text -> Table values.

Token splitting rather than regex: a kube-proxy node has tens of thousands of rules and the
parser is on the scan path. Every option is kept: options this module does not understand
become `Match(op="unknown")`, which the evaluator treats as "may match".
"""

from __future__ import annotations

import ipaddress
import shlex
from functools import lru_cache
from socket import AF_INET, inet_pton

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
    IPv4 goes through inet_pton (strict dotted quad, in C): ipaddress costs ~5 us per
    address, which was most of the parse time on a kube-proxy node."""
    addr, _, plen = text.partition("/")
    if "." in addr and ":" not in addr and (not plen or plen.isdigit()):
        try:
            ip = int.from_bytes(inet_pton(AF_INET, addr), "big")
        except OSError:
            ip = -1
        bits = int(plen) if plen else 32
        if ip >= 0 and bits <= 32 and not (plen and plen[0] == "0" and plen != "0"):
            host = (1 << (32 - bits)) - 1
            first = ip & ~host & 0xFFFFFFFF
            return (4, first, first | host)
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
        if len(parts) == 3:  # one quoted word: the usual --comment
            out = parts[0].split()
            out.append(parts[1])
            out += parts[2].split()
            return out
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


#: Token -> what parse_rule does with it; everything else starting with "-" is a module
#: option. One dict lookup per token instead of a chain of comparisons.
_KIND = {"!": 1, "-j": 2, "--jump": 2, "-g": 3, "--goto": 3, "-s": 4, "--source": 4,
         "-d": 5, "--destination": 5, "-i": 6, "--in-interface": 6, "-o": 7,
         "--out-interface": 7, "-p": 8, "--protocol": 8, "-m": 9, "--match": 9}
_ADDR_CACHE: dict[tuple, Match] = {}


def _addr_match(t: str, v: str, neg: bool) -> Match:
    key = (t, v, neg)
    m = _ADDR_CACHE.get(key)
    if m is None:
        if len(_ADDR_CACHE) > 200_000:
            _ADDR_CACHE.clear()
        text = f"! {t} {v}" if neg else f"{t} {v}"
        if t in ("-s", "--source", "-d", "--destination"):
            m = Match("src" if t in ("-s", "--source") else "dst", parse_net(v), neg, text)
        else:
            wild = v.endswith("+")
            m = Match("iif" if t in ("-i", "--in-interface") else "oif",
                      (v[:-1] if wild else v, wild), neg, text)
        m = _ADDR_CACHE[key] = m
    return m


@lru_cache(maxsize=65536)
def _module_option(module: str, opt: str, vals: tuple[str, ...], neg: bool) -> Match:
    return _option_match(module, opt, list(vals), neg)


def parse_rule(tokens: list[str], chains: dict, line: str, lineno: int) -> tuple[str, Rule]:
    """Tokens of one `-A CHAIN ...` line -> (chain, Rule). Comments are not kept as matches
    (they never decide a packet's fate); they stay in the rule text, which is the evidence."""
    chain = tokens[1]
    matches: list[Match] = []
    target = ""
    arg = ""
    module = ""
    neg = False
    i, n = 2, len(tokens)
    kinds = _KIND
    while i < n:
        t = tokens[i]
        i += 1
        kind = kinds.get(t)
        if kind == 1:
            neg = True
            continue
        if kind is None:
            if t[:1] != "-" or len(t) == 1:
                raise ValueError(f"unexpected {t!r}")
            if t == "--comment" and module == "comment" and not neg:
                if i >= n:
                    raise ValueError(f"option {t} needs a value")
                i += 1
                continue
            if t in FLAG_OPTIONS:
                vals: tuple[str, ...] = ()
            else:
                k = 2 if t in TWO_VALUES else 1
                if i + k > n:
                    raise ValueError(f"option {t} needs {k} value(s)" if i < n else
                                     f"option {t} needs a value")
                vals = tuple(tokens[i:i + k])
                i += k
            if not module and t in ("-f", "--fragment"):
                matches.append(_m("unknown", (t,), neg, ("! " if neg else "") + t))
            else:
                matches.append(_module_option(module, t, vals, neg))
            neg = False
            continue
        if i >= n:
            raise ValueError(f"{t} needs a target" if kind <= 3 else
                             "-m needs a module name" if kind == 9 else
                             f"option {t} needs a value")
        v = tokens[i]
        i += 1
        if kind <= 3:
            if neg:
                raise ValueError("'!' before a target")
            if kind == 3:
                target, arg = "GOTO", v
            elif v in chains and v not in BUILTIN_TARGETS:
                target, arg = "JUMP", v
            else:
                target = v
                arg = _target_arg(v, tokens[i:])
                i = n
        elif kind <= 7:
            matches.append(_addr_match(t, v, neg))
        elif kind == 8:
            v = v.lower()
            p = PROTO_NAMES.get(v, v)
            if p != "all" or neg:
                matches.append(_m("proto", (p,), neg, ("! " if neg else "") + f"-p {v}"))
        else:
            module = v
            if neg:
                raise ValueError("'!' before -m")
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
