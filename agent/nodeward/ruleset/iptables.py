"""iptables-save / ip6tables-save text -> Table values.

Token splitting rather than regex: a kube-proxy node has tens of thousands of rules and the
parser is on the scan path. Every option is kept: options this module does not understand
become `Match(op="unknown")`, which the evaluator treats as "may match".
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from socket import AF_INET, inet_pton
from sys import intern

from .errors import RulesetParseError
from .model import IPT_HOOKS, IPT_PRIORITY, Chain, Match, Rule, Table, pack_texts, unpack_texts

BUILTIN_TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "QUEUE"})
PROTO_NAMES = {"6": "tcp", "17": "udp", "1": "icmp", "58": "ipv6-icmp", "icmpv6": "ipv6-icmp",
               "132": "sctp", "0": "all", "all": "all"}
#: Options that take two values; a flag takes none and any other option the words up to the
#: next option, so an option this module has never seen (a flag or not) is read whole and
#: only that rule becomes uncertain.
TWO_VALUES = frozenset({"--tcp-flags", "--match-set", "--set-mark-set"})
#: Options that never change whether a rule matches the first packet of a connection.
NO_EFFECT = frozenset({("set", "--update-counters"), ("set", "--update-subcounters"),
                       ("conntrack", "--ctdir"), ("nfacct", "--nfacct-name"),
                       # nomatch entries make the set's members undecidable already
                       ("set", "--return-nomatch")})
MASK32 = 0xFFFFFFFF
#: Targets whose options the evaluator acts on (so they are checked, not skipped).
INTERPRETED = frozenset({"MARK", "CONNMARK", "TPROXY", "DNAT", "REDIRECT"})


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
            # a host address (most of a kube-proxy ruleset): one int object, not two
            return (4, first, first | host if host else first)
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


class Unterminated(ValueError):
    """A quoted word that does not end on this line (a comment holding a newline)."""


_WORD = re.compile(r'"((?:[^"\\]|\\.)*)"(\S*)|(\S+)')
_UNESCAPE = re.compile(r'\\(["\'\\])')


def tokenize(line: str) -> list[str]:
    """Split the way iptables-save quotes: only a word that *starts* with `"` is quoted
    (comments, log prefixes), with `\\"`, `\\'` and `\\\\` escaped inside; any other quote is a
    literal character (interface and ipset names are printed unquoted, `a"b`, `c'd`).
    Raises Unterminated when a quoted word runs past the end of the line."""
    if '"' not in line:
        return line.split()
    if "\\" not in line:
        parts = line.split('"')
        if len(parts) == 3 and (not parts[0] or parts[0][-1] in " \t") and \
                (not parts[2] or parts[2][0] in " \t"):  # one quoted word: the usual comment
            out = parts[0].split()
            out.append(parts[1])
            out += parts[2].split()
            return out
    out = []
    for quoted, tail, word in _WORD.findall(line):
        if word:
            if word[0] == '"':
                raise Unterminated("unterminated quote")
            out.append(word)
        else:
            out.append(_UNESCAPE.sub(r"\1", quoted) + tail)
    return out


#: The parse's shared values, keyed by themselves (a Match, a match tuple; an address
#: match by its text): no key object lives beside each value, so nothing short-lived is
#: left between the ruleset's objects when the caches are cleared after the parse.
_MATCH_CACHE: dict[Match, Match] = {}
_MATCHES_CACHE: dict[tuple, tuple] = {}


def _m(op: str, args: tuple, negate: bool, text: str) -> Match:
    m = Match(op, args, negate, text)
    hit = _MATCH_CACHE.get(m)
    if hit is None:
        if len(_MATCH_CACHE) > 200_000:
            _MATCH_CACHE.clear()
        hit = _MATCH_CACHE[m] = m
    return hit


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
    if module in ("mark", "connmark") and opt == "--mark" and len(vals) == 1:
        value, mask = _value_mask(v)
        return _m("mark", ("mark" if module == "mark" else "ct", mask, value & mask), neg, text)
    if module == "iprange" and opt in ("--src-range", "--dst-range") and len(vals) == 1:
        a, _, b = v.partition("-")
        lo, hi = parse_net(a), parse_net(b or a)
        if lo[0] != hi[0]:
            raise ValueError(f"bad range {v!r}")
        return _m("src" if opt == "--src-range" else "dst", (lo[0], lo[1], hi[2]), neg, text)
    if module == "pkttype" and opt == "--pkt-type" and len(vals) == 1:
        return _m("pkttype", (v.lower(),), neg, text)
    if module == "owner" and opt == "--socket-exists":
        return _m("local_socket", (), neg, text)
    if module == "owner" and opt in ("--uid-owner", "--gid-owner") and len(vals) == 1 and \
            all(x.isdigit() for x in v.split("-", 1)):
        lo, _, hi = v.partition("-")
        return _m("owner", ("uid" if opt == "--uid-owner" else "gid", int(lo), int(hi or lo)),
                  neg, text)
    if module == "rpfilter" and opt in ("--loose", "--validmark", "--accept-local",
                                        "--invert"):
        return _m("rpfilter_opt", (opt,), False, text)
    if (module, opt) in NO_EFFECT:
        return _m("comment", (text,), False, text)
    return _m("unknown", (f"-m {module} {text}",), neg, f"-m {module} {text}")


def _value_mask(text: str) -> tuple[int, int]:
    """'0x4000/0x4000' -> (value, mask); no mask: all 32 bits."""
    a, sep, b = text.partition("/")
    value, mask = int(a, 0), int(b, 0) if sep else MASK32
    if not (0 <= value <= MASK32 and 0 <= mask <= MASK32):
        raise ValueError(f"bad mark {text!r}")
    return value, mask


#: Token -> what parse_rule does with it; everything else starting with "-" is a module
#: option. One dict lookup per token instead of a chain of comparisons.
_KIND = {"!": 1, "-j": 2, "--jump": 2, "-g": 3, "--goto": 3, "-s": 4, "--source": 4,
         "-d": 5, "--destination": 5, "-i": 6, "--in-interface": 6, "-o": 7,
         "--out-interface": 7, "-p": 8, "--protocol": 8, "-m": 9, "--match": 9}
_ADDR_CACHE: dict[str, Match] = {}


def _addr_match(t: str, v: str, neg: bool) -> Match:
    text = f"! {t} {v}" if neg else f"{t} {v}"
    m = _ADDR_CACHE.get(text)
    if m is None:
        if len(_ADDR_CACHE) > 200_000:
            _ADDR_CACHE.clear()
        if t in ("-s", "--source", "-d", "--destination"):
            # not through parse_net's cache: this one already holds each address once,
            # and a second entry per address was ~5 MB more at the parse's peak
            m = Match("src" if t in ("-s", "--source") else "dst", parse_net.__wrapped__(v),
                      neg, text)
        else:
            wild = v.endswith("+")
            m = Match("iif" if t in ("-i", "--in-interface") else "oif",
                      (v[:-1] if wild else v, wild), neg, text)
        m = _ADDR_CACHE[text] = m
    return m


@lru_cache(maxsize=65536)
def _module_option(module: str, opt: str, vals: tuple[str, ...], neg: bool) -> Match:
    return _option_match(module, opt, list(vals), neg)


def clear_caches() -> None:
    """Forget the shared address/match values of earlier parses. The collector calls it
    after a read that parsed: the live ruleset holds what it uses, and entries of superseded
    rulesets (a churning node's old endpoints) would otherwise pile up to the caps."""
    _MATCH_CACHE.clear()
    _MATCHES_CACHE.clear()
    _ADDR_CACHE.clear()
    _module_option.cache_clear()
    parse_net.cache_clear()
    parse_ports.cache_clear()


def parse_rule(tokens: list[str], chains: dict, line: str, lineno: int) -> tuple[str, Rule]:
    """Tokens of one `-A CHAIN ...` line -> (chain, Rule). Comments are not kept as matches
    (they never decide a packet's fate); they stay in the rule text, which is the evidence.
    Options of a module this parser does not model are kept, one unknown Match per `-m`,
    naming them. Raises ValueError on a rule it cannot read at all."""
    chain = tokens[1]
    matches: list[Match] = []
    target = ""
    arg = ""
    effects: tuple = ()
    module = ""
    unknown: list[str] = []  # unmodelled options of the current -m, for one Match
    rpfilter = False
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
            if t in ("-c", "--set-counters"):  # iptables-restore's per-rule counters
                i += 2
                continue
            if t in TWO_VALUES:
                if i + 2 > n:
                    raise ValueError(f"option {t} needs 2 value(s)" if i < n else
                                     f"option {t} needs a value")
                vals: tuple[str, ...] = (tokens[i], tokens[i + 1])
                i += 2
            else:  # the words up to the next option: none for a flag
                j = i
                while j < n and (tokens[j][:1] != "-" or len(tokens[j]) == 1) and \
                        tokens[j] != "!":
                    j += 1
                vals = tuple(tokens[i:j])
                i = j
            if not module and t in ("-f", "--fragment"):
                matches.append(_m("unknown", (t,), neg, ("! " if neg else "") + t))
            else:
                m = _module_option(module, t, vals, neg)
                if m.op == "unknown":
                    unknown.append(m.text[len(module) + 4:])
                else:
                    matches.append(m)
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
            # interned: 50,000 rules name a few hundred targets, and one str per rule
            # token was ~4 MB of copies of the same names
            if kind == 3:
                target, arg = "GOTO", intern(v)
            elif v in chains and v not in BUILTIN_TARGETS:
                target, arg = "JUMP", intern(v)
            else:
                target = intern(v)
                arg, effects = _target_options(v, tokens[i:])
                arg = intern(arg)
                i = n
        elif kind <= 7:
            matches.append(_addr_match(t, v, neg))
        elif kind == 8:
            v = v.lower()
            p = PROTO_NAMES.get(v, v)
            if p != "all" or neg:
                matches.append(_m("proto", (p,), neg, ("! " if neg else "") + f"-p {v}"))
            if not module and not neg:
                module = p  # iptables loads the protocol's match implicitly: -p tcp --dport
        else:
            if unknown:
                matches.append(_unknown(module, unknown))
                unknown = []
            module = v
            if neg:
                raise ValueError("'!' before -m")
            if v == "rpfilter":  # the check itself, even without an option
                matches.append(_m("rpfilter_opt", ("",), False, ""))
                rpfilter = True
        neg = False
    if neg:
        raise ValueError("dangling '!'")
    if unknown:
        matches.append(_unknown(module, unknown))
    if rpfilter:
        matches = _rpfilter(matches)
    key = tuple(matches)
    shared = _MATCHES_CACHE.get(key)
    if shared is None:  # one tuple per distinct match list: kube-proxy repeats them
        if len(_MATCHES_CACHE) > 200_000:
            _MATCHES_CACHE.clear()
        shared = _MATCHES_CACHE[key] = key
    return chain, Rule(shared, target, arg, line, lineno, effects)


def _rpfilter(matches: list[Match]) -> list[Match]:
    """`-m rpfilter [--loose] [--validmark] [--accept-local] [--invert]` as one Match:
    ("rpfilter", (loose, accept_local)), negated for --invert (the match holds when the
    reverse path check passes)."""
    opts = {m.args[0] for m in matches if m.op == "rpfilter_opt"} - {""}
    text = " ".join(["-m rpfilter", *sorted(opts)])
    rest = [m for m in matches if m.op != "rpfilter_opt"]
    return [*rest, _m("rpfilter", ("--loose" in opts, "--accept-local" in opts),
                      "--invert" in opts, text)]


def _unknown(module: str, options: list[str]) -> Match:
    text = f"-m {module} {' '.join(options)}"
    return _m("unknown", (text,), False, text)


def unreadable_rule(tokens: list[str], line: str, lineno: int, why: str) -> Rule:
    """A rule this parser cannot read: it may match anything, with its target when one can
    be told (`-j X` / `-g X`), else an unmodelled one (the verdict is then uncertain)."""
    m = Match("unknown", (why,), False, f"unreadable rule ({why})")
    target, arg = "UNREADABLE", ""
    for j, t in enumerate(tokens[:-1]):
        if t in ("-j", "--jump", "-g", "--goto"):
            v = tokens[j + 1]
            if t in ("-g", "--goto"):
                target, arg = "GOTO", v
            elif v in ("ACCEPT", "DROP", "REJECT", "RETURN"):
                target = v
            else:
                target, arg = "UNREADABLE", v
            break
    return Rule((m,), target, arg, line, lineno)


def _target_options(name: str, rest: list[str]) -> tuple[str, tuple]:
    """The target options the evaluator needs: (arg, effects). arg: the DNAT destination,
    REDIRECT/TPROXY ports, REJECT type; effects: mark changes (see model.Rule)."""
    opts: dict[str, str] = {}
    for j, t in enumerate(rest):
        if t.startswith("--"):
            nxt = rest[j + 1] if j + 1 < len(rest) else ""
            opts[t] = nxt if nxt[:2] != "--" else ""
        elif name in INTERPRETED and (j == 0 or not rest[j - 1].startswith("--")):
            # options of the targets read here take one value at most: a stray word
            # (a pasted dump broken mid-token) is not a rule iptables would load
            raise ValueError(f"unexpected {t!r} after -j {name}")
    if name == "MARK":
        for o, how in (("--set-xmark", "x"), ("--set-mark", "s"), ("--or-mark", "o"),
                       ("--and-mark", "a"), ("--xor-mark", "^")):
            if o in opts:
                return "", (_mark_effect("mark", how, opts[o]),)
        raise ValueError("MARK without a mark option")
    if name == "CONNMARK":
        for o, how in (("--set-xmark", "x"), ("--set-mark", "s"), ("--or-mark", "o"),
                       ("--and-mark", "a"), ("--xor-mark", "^")):
            if o in opts:
                return "", (_mark_effect("ct", how, opts[o]),)
        nf = int(opts.get("--nfmask") or opts.get("--mask") or "0xffffffff", 0)
        ct = int(opts.get("--ctmask") or opts.get("--mask") or "0xffffffff", 0)
        if "--save-mark" in opts:  # ctmark = (ctmark & ~ctmask) ^ (mark & nfmask)
            return "", (("mix", "ct", "mark", ct, nf),)
        if "--restore-mark" in opts:  # mark = (mark & ~nfmask) ^ (ctmark & ctmask)
            return "", (("mix", "mark", "ct", nf, ct),)
        raise ValueError("CONNMARK without a mark option")
    if name == "TPROXY":
        port = opts.get("--on-port", "0")
        effects = ()
        if "--tproxy-mark" in opts:
            effects = (_mark_effect("mark", "x", opts["--tproxy-mark"]),)
        return f"{int(port)}", effects
    for o in ("--to-destination", "--to-ports", "--to", "--reject-with"):
        if opts.get(o):
            return opts[o], ()
    if "--notrack" in opts:
        return "--notrack", ()
    return "", ()


def _mark_effect(reg: str, how: str, text: str) -> tuple:
    """A MARK/CONNMARK option as ("set", reg, reg, keep, xor): reg = (reg & keep) ^ xor,
    the kernel's xt_MARK form (libxt_MARK turns every option into --set-xmark value/mask:
    reg = (reg & ~mask) ^ value)."""
    if how == "x":
        value, mask = _value_mask(text)
    elif how == "s":
        value, mask = _value_mask(text)
        mask |= value
    else:
        bits = int(text, 0) & MASK32
        value, mask = {"o": (bits, bits), "a": (0, ~bits & MASK32), "^": (bits, 0)}[how]
    return ("set", reg, reg, ~mask & MASK32, value)


#: Dumps of the wrong kind, told by their first meaningful line: the fix in one line.
_WRONG_KIND = (("table ", "this is `nft list ruleset` text: save it with "
                          "`nft -j list ruleset` (JSON) instead"),
               ("-P ", "this is `iptables -S` output: use `iptables-save` instead"),
               ("-N ", "this is `iptables -S` output: use `iptables-save` instead"),
               ("flush ruleset", "this is an `nft -f` script: load it and save it with "
                                 "`nft -j list ruleset`"),
               ("create ", "this is `ipset save` output, not a ruleset"))


def _same_answer(rule: Rule, chains: dict) -> bool:
    """Whether `rule`'s one outside input, whether its `-j` value names a chain (JUMP) or
    not (a target), has the same answer against the declared `chains` (and it was read)."""
    target = rule.target
    if target == "JUMP":
        return rule.arg in chains
    return target != "UNREADABLE" and (target not in chains or target in BUILTIN_TARGETS)


def _reusable(rule: Rule, line: str, chains: dict) -> bool:
    """Whether parsing `line` (`rule`'s text in its chain) against the declared `chains` gives
    `rule` again. The only outside input of parse_rule is whether a `-j` value names a
    chain (JUMP) or not (a target, which ends the rule), so a line with one `-j` or `-g`
    at most (no long forms, no tabs) is reused when that answer is unchanged; anything
    else is parsed again."""
    if "--jump" in line or "--goto" in line or "\t" in line or \
            line.count(" -j ") + line.count(" -g ") > 1:
        return False
    return _same_answer(rule, chains)


#: What _reusable refuses in a line, looked for in a chain's lines at once (its texts joined
#: by NULs): such a line's parse may hang on more names than its rule's one target.
_TANGLED = re.compile(r"--jump|--goto|\t| -[jg] (?:[^\0]* )?-[jg] ")


def _adoptable(chain: Chain, chains: dict) -> bool:
    """Whether each rule of `chain` (a chain of the last parse whose lines are the same,
    not tangled) parses the same against the declared `chains`: _reusable for every rule,
    from the rules alone (the lines are not needed: none of them is tangled)."""
    return all(_same_answer(rule, chains) for rule in chain.rules)


def parse_iptables_save(text: str | list[str], *, frontend: str = "iptables-legacy",
                        family: int = 4,
                        source: str = "iptables-save", strict: bool = False,
                        reuse: Sequence[Table] = (),
                        kept: Callable[[int], tuple[int, Chain | None]] | None = None
                        ) -> tuple[Table, ...]:
    """Parse iptables-save output (`-c` counters accepted). An option it does not know
    makes that rule uncertain; a rule it cannot read at all (a value the kernel would
    refuse) does too (see unreadable_rule), never the whole dump's failure, unless
    `strict` (a file an operator handed over: tell them the line instead). The structure
    (tables, chains, COMMIT) must be right. Raises RulesetParseError naming the line.

    `reuse`: the tables of the same front-end's last parse. A rule whose line equals the
    rule at the same place of the same chain there (and parses the same: _reusable) is
    that Rule object, not a new one; a chain whose rules and policy are all the same is
    that Chain (with its run index), a table whose chains all are, that Table. On a
    churning node a re-read then builds only the rules that changed: no second ruleset
    beside the live one while it parses, no 50,000 short-lived objects a cycle (what
    fragmented the heap), a fraction of the CPU. A carried-over rule keeps the line number
    of the dump it was first read from.

    `kept(i)`: (j, chain) for the first j >= i where lines[j:] begin with the rules'
    texts of `chain`, one of the last parse's chains (as the iptables-nft splice renders
    its unchanged chains); (len(lines), None) past the last. Such a chain is taken whole
    when it parses the same (_adoptable): its lines are not looked
    at, nor unpacked (the splice's 50,000 lines were walked one by one each churn cycle to
    find 15,000 chains' rules equal again)."""
    fam = "ip" if family == 4 else "ip6"
    tables: list[Table] = []
    tname: str | None = None
    start = 0
    decl: dict[str, tuple[str | None, int]] = {}
    rules: dict[str, list[Rule]] = {}
    # per chain its rules' lines, packed (model.pack_texts) once another chain's lines come:
    # a dump's lines then never all exist at once (the legacy decoder hands them out one at
    # a time), nor leave 50,000 freed strs between the rules in the heap
    texts: dict[str, list[str] | bytes] = {}
    last = ""  # the chain of the last -A line
    tangled: set[str] = set()  # the current table's chains with a tangled line (Table)

    def close(name: str) -> None:
        got = texts[name]
        if not isinstance(got, list):
            return
        if _TANGLED.search("\0".join(got)):
            tangled.add(name)
        was = old.get(name)
        new = rules[name]
        if was is not None and was.texts and len(was.rules) == len(new) and \
                all(a is b for a, b in zip(was.rules, new, strict=True)):
            texts[name] = was.texts  # (the chain itself is reused: see _table)
        else:
            blob = pack_texts(got, name)
            if blob is not None:
                texts[name] = blob

    def add(name: str, line: str) -> None:
        nonlocal last
        if name != last:
            if last:
                close(last)
            last = name
            got = texts[name]
            if not isinstance(got, list):  # its rules again after another chain's
                texts[name] = unpack_texts(got, name) if got else []
        texts[name].append(line)  # type: ignore[union-attr]
    before = {t.name: t for t in reuse if t.family == fam} if not strict else {}
    old: dict[str, Chain] = {}  # the current table's chains in the last parse
    was_tangled: frozenset[str] = frozenset()  # and those of them with a tangled line
    # the chain of the last -A line, its rules and their texts in the last parse, those by
    # text (on a miss)
    cur, cur_prefix, cur_old = "", "", ()
    cur_texts: Sequence[str] = ()
    by_text: dict[str, Rule] | None = None
    # a list of lines is taken as is (the live collector reads a dump that way)
    lines = text.splitlines() if isinstance(text, str) else text
    lineno = 0
    k = 0
    nlines = len(lines)
    # the next line a kept chain starts at, and that chain
    kept_at, whole = kept(0) if kept is not None else (nlines, None)
    while k < nlines:
        if k == kept_at:  # (never without `kept`: kept_at is then past the last line)
            kept_at, whole, taken = *kept(k + 1), whole  # type: ignore[misc]
            if taken is not None and old and taken.texts and old.get(taken.name) is taken \
                    and taken.name not in was_tangled and rules.get(taken.name) == [] and \
                    _adoptable(taken, rules):
                # the whole chain, as it was (see `kept`): its lines are not read
                if last:
                    close(last)
                last = ""
                rules[taken.name].extend(taken.rules)
                texts[taken.name] = taken.texts
                k += len(taken.rules)
                lineno = k
                cur, cur_prefix, cur_old = "", "", ()
                if kept_at < k:  # (not from a well-formed `kept`: its chains do not overlap)
                    kept_at, whole = kept(k)  # type: ignore[misc]
                continue
        raw = lines[k]
        k += 1
        lineno = k
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        c = line[0]
        if c == "[" and line.find("] -", 1, 48) > 0:  # `iptables-save -c`: [packets:bytes]
            line = line[line.index("]") + 1:].lstrip()
            c = "-"
        if c == "-":
            if tname is None:
                raise RulesetParseError(source, lineno, _kind_hint(line) or
                                        "rule outside a table (no '*table')")
            if old:  # the last parse's Rule for an equal line (see `reuse`)
                if not cur_prefix or not line.startswith(cur_prefix):
                    name = line.split(" ", 2)[1] if line.startswith("-A ") else ""
                    was = old.get(name)
                    if name in rules and was is not None:
                        cur, cur_prefix, cur_old, by_text = name, f"-A {name} ", was.rules, None
                        cur_texts = was.rule_texts()
                    else:
                        cur, cur_prefix, cur_old = "", "", ()
                if cur_prefix:
                    have = rules[cur]
                    at = len(have)
                    prev = cur_old[at] if at < len(cur_old) and cur_texts[at] == line else None
                    if prev is None:  # moved (an insert): by its text
                        if by_text is None:
                            by_text = dict(zip(cur_texts, cur_old, strict=True))
                        prev = by_text.get(line)
                    if prev is not None and _reusable(prev, line, rules):
                        have.append(prev)
                        add(cur, line)
                        continue
            while True:
                try:
                    tokens = tokenize(line)
                    break
                except Unterminated:
                    # a comment holding a newline: iptables-save prints it as is
                    if k >= nlines or k - lineno >= 64:
                        raise RulesetParseError(source, lineno,
                                                "unterminated quote") from None
                    line = f"{line}\n{lines[k]}"
                    k += 1
            if tokens[0] not in ("-A", "--append") or len(tokens) < 2:
                raise RulesetParseError(source, lineno, _kind_hint(line) or
                                        f"expected '-A CHAIN ...', got {tokens[0]!r}")
            if tokens[1] not in rules:
                raise RulesetParseError(source, lineno, f"rule for undeclared chain "
                                                        f"{tokens[1]!r} in table {tname}")
            try:
                chain, rule = parse_rule(tokens, rules, "", lineno)  # (its text: `texts`)
            except (ValueError, IndexError) as e:
                if strict:
                    raise RulesetParseError(source, lineno, str(e) or "malformed rule") \
                        from None
                chain, rule = tokens[1], unreadable_rule(tokens, "", lineno,
                                                         str(e) or "malformed rule")
            rules[chain].append(rule)
            add(chain, line)
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
            texts[name] = []
        elif c == "*":
            if tname is not None:
                raise RulesetParseError(source, lineno, f"table {tname} (line {start}) "
                                                        "has no COMMIT")
            tname = line[1:].strip()
            if not tname:
                raise RulesetParseError(source, lineno, "empty table name")
            start, decl, rules, texts, last = lineno, {}, {}, {}, ""
            tangled = set()
            was_table = before.get(tname)
            old = was_table.chains if was_table is not None else {}
            was_tangled = was_table.tangled if was_table is not None else frozenset()
            cur, cur_prefix, cur_old = "", "", ()
        elif line == "COMMIT":
            if tname is None:
                raise RulesetParseError(source, lineno, "COMMIT outside a table")
            if last:
                close(last)
            # a chain taken whole (`kept`) keeps what the last parse knew of it: not tangled
            tables.append(_table(frontend, fam, tname, decl, rules, texts, before.get(tname),
                                 frozenset(tangled)))
            tname = None
            old = {}
        else:
            raise RulesetParseError(source, lineno, (_kind_hint(line) if tname is None
                                                     else "") or
                                    f"unrecognised line {line[:60]!r}")
    if tname is not None:
        raise RulesetParseError(source, lineno, f"table {tname} (line {start}) has no COMMIT")
    return tuple(tables)


def _kind_hint(line: str) -> str:
    for prefix, hint in _WRONG_KIND:
        if line.startswith(prefix):
            return hint
    return ""


def guess_family(text: str) -> int:
    """4 or 6 for an iptables-save text without a header that says: the family of the
    first address in it (0: none)."""
    import re

    for m in re.finditer(r" ! ?-[sd] (\S+)| -[sd] (\S+)|--to-destination (\S+)", text):
        addr = (m.group(1) or m.group(2) or m.group(3)).split("/")[0]
        if ":" in addr.strip("[]").split("]")[0] and addr.count(":") >= 2:
            return 6
        if addr[:1].isdigit() and "." in addr:
            return 4
    if "icmp6" in text or "ipv6-icmp" in text or "icmpv6" in text:
        return 6
    return 0


def _table(frontend: str, fam: str, name: str, decl: dict, rules: dict, texts: dict,
           was: Table | None = None, tangled: frozenset[str] = frozenset()) -> Table:
    """The table; its chains (and itself) the last parse's objects where nothing changed.
    A new chain holds its rules' lines packed (model.pack_texts), its rules none."""
    prio = IPT_PRIORITY.get(name, 0)
    chains = {}
    old = was.chains if was is not None and was.frontend == frontend else {}
    same = len(old) == len(decl)
    for cname, (policy, _) in decl.items():
        hook = IPT_HOOKS.get(cname) if policy is not None else None
        new = rules[cname]
        prev = old.get(cname)
        if prev is not None and prev.policy == policy and prev.hook == hook and \
                prev.priority == prio and len(prev.rules) == len(new) and \
                all(a is b for a, b in zip(prev.rules, new, strict=True)):
            chains[cname] = prev
        else:
            lines = texts[cname]
            blob = lines if isinstance(lines, bytes) else pack_texts(lines, cname) if lines \
                else b""
            if blob is None:  # (a NUL in a line: each rule keeps its own)
                chains[cname] = Chain(cname, tuple(r._replace(text=t) for r, t in
                                                   zip(new, lines, strict=True)),
                                      policy, hook, prio)
            else:
                chains[cname] = Chain(cname, tuple(new), policy, hook, prio, blob)
            same = False
    if same and was is not None and list(old) == list(chains) and was.tangled == tangled:
        return was
    return Table(frontend, fam, name, chains, tangled & chains.keys())
