"""`nft -j list ruleset` -> Table values (front-end "nft").

Tables that iptables-nft owns also appear here (with xt compat expressions); they are read
through iptables-nft-save instead, so the caller passes them in `skip` and they are not
evaluated twice. Expressions this module does not model become Match(op="unknown") (the
evaluator then follows both outcomes) rather than being dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .errors import RulesetParseError
from .iptables import parse_net
from .model import Chain, IpSet, Match, Rule, Table

_VERDICTS = {"accept": "ACCEPT", "drop": "DROP", "reject": "REJECT", "return": "RETURN"}
_NONTERM = {"counter", "log", "limit", "meta", "mangle", "ct", "set", "quota", "notrack"}


def _nets(right) -> tuple | None:
    """Address literal / prefix / range / anonymous set -> tuple of (ver, lo, hi)."""
    if isinstance(right, str):
        return (parse_net(right),)
    if isinstance(right, dict):
        if "prefix" in right:
            return (parse_net(f"{right['prefix']['addr']}/{right['prefix']['len']}"),)
        if "range" in right:
            a, b = parse_net(right["range"][0]), parse_net(right["range"][1])
            return ((a[0], a[1], b[2]),)
        if "set" in right:
            out = []
            for el in right["set"]:
                got = _nets(el)
                if got is None:
                    return None
                out.extend(got)
            return tuple(out)
    if isinstance(right, list):
        return _nets({"set": right})
    return None


def _ports(right) -> tuple | None:
    if isinstance(right, int):
        return ((right, right),)
    if isinstance(right, dict) and "range" in right:
        return ((int(right["range"][0]), int(right["range"][1])),)
    if isinstance(right, dict) and "set" in right:
        out = []
        for el in right["set"]:
            got = _ports(el)
            if got is None:
                return None
            out.extend(got)
        return tuple(out)
    return None


def _words(right) -> tuple | None:
    if isinstance(right, str):
        return (right,)
    if isinstance(right, list):
        return tuple(right) if all(isinstance(x, str) for x in right) else None
    if isinstance(right, dict) and "set" in right:
        return _words(right["set"])
    return None


#: An `ip ...` / `ip6 ...` header match only ever matches its own family: in an inet table
#: nft puts a "meta nfproto" check before it, which the JSON listing leaves out. Without it
#: `ip6 saddr != X` would match every IPv4 packet, where the kernel matches none.
_FAMILY_DEP = {"ip": (Match("nfproto", (4,), False, "meta nfproto ipv4"),),
               "ip6": (Match("nfproto", (6,), False, "meta nfproto ipv6"),)}


_TCP = Match("proto", ("tcp",), False, "meta l4proto tcp")


def _match(m: dict, setkey) -> list[Match]:
    """One nft match expression -> Matches (may be two: "tcp dport" implies l4proto tcp)."""
    op, left, right = m.get("op", "=="), m.get("left"), m.get("right")
    text = json.dumps(m, separators=(",", ":"))
    if op not in ("==", "!=", "in"):
        return [Match("unknown", (text,), False, text)]
    neg = op == "!="
    unknown = [Match("unknown", (text,), False, text)]
    if not isinstance(left, dict):
        return unknown
    if isinstance(right, str) and right.startswith("@"):
        if "payload" in left and left["payload"].get("field") in ("saddr", "daddr"):
            d = "src" if left["payload"]["field"] == "saddr" else "dst"
            return [*_FAMILY_DEP.get(left["payload"].get("protocol"), ()),
                    Match("set", (setkey(right[1:]), (d,)), neg, text)]
        return unknown
    if "&" in left and isinstance(left["&"], list) and len(left["&"]) == 2:
        pl, mask = left["&"]
        if isinstance(pl, dict) and pl.get("payload", {}).get("field") == "flags" and \
                pl["payload"].get("protocol") == "tcp" and not neg:
            mask_w, comp_w = _words(mask), _words(right) if right != 0 else ()
            if mask_w is not None and comp_w is not None:
                return [Match("proto", ("tcp",), False, "tcp"),
                        Match("tcpflags", (frozenset(w.upper() for w in mask_w),
                                           frozenset(w.upper() for w in comp_w)), False, text)]
        return unknown
    if "payload" in left:
        proto, field = left["payload"].get("protocol"), left["payload"].get("field")
        if proto in ("icmp", "icmpv6", "tcp", "udp") and field not in ("dport", "sport"):
            # the header match implies the protocol; keep the field itself as unknown
            return [Match("proto", ({"icmpv6": "ipv6-icmp"}.get(proto, proto),), False, proto),
                    *unknown]
        if proto in ("ip", "ip6"):
            dep = _FAMILY_DEP[proto]
            if field in ("saddr", "daddr"):
                nets = _nets(right)
                if nets is None:
                    return [*dep, *unknown]
                op2 = "src" if field == "saddr" else "dst"
                if len(nets) == 1:
                    return [*dep, Match(op2, nets[0], neg, text)]
                return [*dep, Match(op2 + "_any", nets, neg, text)]
            if field in ("protocol", "nexthdr"):
                words = _words(right)
                if words:
                    return [*dep, Match("l4proto_any", words, neg, text)]
            return [*dep, *unknown]
        if proto in ("tcp", "udp", "sctp", "th") and field in ("dport", "sport"):
            ports = _ports(right)
            if ports is None:
                return unknown
            out = [Match(field, ports, neg, text)]
            if proto != "th":
                out.insert(0, Match("proto", (proto,), False, proto))
            return out
        return unknown
    if "meta" in left:
        key = left["meta"].get("key")
        if key in ("iifname", "oifname") and isinstance(right, str):
            wild = right.endswith("*") and not right.endswith("\\*")
            return [Match("iif" if key == "iifname" else "oif",
                          (right[:-1] if wild else right, wild), neg, text)]
        if key in ("l4proto", "protocol") and key == "l4proto":
            words = _words(right)
            if words:
                words = tuple({"6": "tcp", "17": "udp", "1": "icmp"}.get(str(w), str(w))
                              for w in words)
                return [Match("l4proto_any", words, neg, text)]
        if key == "nfproto" and isinstance(right, str):
            return [Match("nfproto", ({"ipv4": 4, "ipv6": 6}.get(right, 0),), neg, text)]
        return unknown
    if "ct" in left and left["ct"].get("key") == "state":
        words = _words(right)
        if words:
            return [Match("ctstate", tuple(w.upper() for w in words), neg, text)]
        return unknown
    if "fib" in left and left["fib"].get("result") == "type":
        flags = left["fib"].get("flags", [])
        words = _words(right)
        if words and ("daddr" in flags or "saddr" in flags) and "iif" not in flags \
                and "oif" not in flags:
            d = "dst" if "daddr" in flags else "src"
            return [Match("addrtype", (d, tuple(w.upper() for w in words)), neg, text)]
        return unknown
    return unknown


def parse_nft_json(text: str, *, source: str = "nft -j list ruleset",
                   skip: Iterable[tuple[str, str]] = ()) -> tuple[tuple[Table, ...],
                                                                 dict[str, IpSet]]:
    """Tables (minus `skip` (family, name) pairs) and named sets (keyed "nft:fam:table:name")."""
    try:
        doc = json.loads(text)
        items = doc["nftables"]
    except (ValueError, KeyError, TypeError) as e:
        raise RulesetParseError(source, 1, f"not nft JSON: {e}") from None
    if not isinstance(items, list):
        raise RulesetParseError(source, 1, "not nft JSON: 'nftables' is not a list")
    skip = set(skip)
    chains: dict[tuple, dict] = {}
    rules: dict[tuple, list[Rule]] = {}
    tables: list[tuple[str, str]] = []
    sets: dict[str, IpSet] = {}
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise RulesetParseError(source, n, "object expected")
        try:
            if "table" in item:
                t = item["table"]
                if (t["family"], t["name"]) not in skip:
                    tables.append((t["family"], t["name"]))
            elif "chain" in item:
                c = item["chain"]
                chains[(c["family"], c["table"], c["name"])] = (c, n)
                rules.setdefault((c["family"], c["table"], c["name"]), [])
            elif "set" in item:
                s = item["set"]
                members = []
                for el in s.get("elem", []):
                    nets = _nets(el if not isinstance(el, dict) or "elem" not in el
                                 else el["elem"]["val"])
                    if nets is None:
                        members = None
                        break
                    members.extend(f"{_txt(v)}" for v in nets)
                typ = "hash:net" if s.get("type") in ("ipv4_addr", "ipv6_addr") and \
                    members is not None else f"nft:{s.get('type')}"
                key = f"nft:{s['family']}:{s['table']}:{s['name']}"
                sets[key] = IpSet(key, typ, tuple(members or ()))
            elif "rule" in item:
                r = item["rule"]
                key = (r["family"], r["table"], r["chain"])
                fam, tab = r["family"], r["table"]
                rules.setdefault(key, []).append(
                    _rule(r, n, lambda name, fam=fam, tab=tab: f"nft:{fam}:{tab}:{name}"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RulesetParseError(source, n, f"malformed {next(iter(item), '?')}: {e}") \
                from None
    out = []
    for fam, name in tables:
        ch = {}
        for (f, t, cname), (c, n) in chains.items():
            if (f, t) != (fam, name):
                continue
            try:
                hook = c.get("hook") if c.get("type") in ("filter", "nat", "route") else None
                ch[cname] = Chain(cname, tuple(rules.get((f, t, cname), ())),
                                  (c.get("policy", "accept").upper() if hook else None), hook,
                                  int(c.get("prio", 0)) if hook else 0)
            except (TypeError, ValueError, AttributeError) as e:
                raise RulesetParseError(source, n, f"malformed chain: {e}") from None
        out.append(Table("nft", fam, name, ch))
    return tuple(out), sets


def _txt(net: tuple) -> str:
    import ipaddress

    ver, lo, hi = net
    first = ipaddress.ip_address(lo) if ver == 4 else ipaddress.IPv6Address(lo)
    nets = list(ipaddress.summarize_address_range(first, type(first)(hi)))
    return str(nets[0]) if len(nets) == 1 else f"{first}-{type(first)(hi)}"


def _rule(r: dict, n: int, setkey) -> Rule:
    matches: list[Match] = []
    target, arg = "", ""
    for e in r.get("expr", []):
        (k, v), = e.items()
        if k == "match":
            matches.extend(_match(v, setkey))
        elif k in _VERDICTS:
            target = _VERDICTS[k]
            if k == "reject" and isinstance(v, dict) and v.get("type") == "tcp reset":
                # nft puts "meta l4proto tcp" before a "reject with tcp reset" and lists the
                # rule without it: the rule never matches anything but TCP
                matches.append(_TCP)
            break
        elif k in ("jump", "goto"):
            target, arg = k.upper(), v["target"]
            break
        elif k == "notrack":
            target = "NOTRACK"  # non-terminating; a later verdict in the rule overrides it
        elif k == "dnat" and isinstance(v, dict) and isinstance(v.get("addr"), str):
            target = "DNAT"
            addr = v["addr"]
            if "port" in v:  # iptables' --to-destination form: a.b.c.d:port, [v6]:port
                addr = f"[{addr}]:{v['port']}" if ":" in addr else f"{addr}:{v['port']}"
            arg = addr
            # inet: "dnat ip6 to" does nothing to an IPv4 packet (nor "ip" to IPv6), and
            # the rule goes on as if it had not matched
            matches.extend(_FAMILY_DEP.get(v.get("family"), ()))
            break
        elif k == "redirect" and (v is None or isinstance(v, dict)):
            target = "REDIRECT"  # to the incoming interface's address; same port if none
            port = (v or {}).get("port", "")
            arg = f"{port['range'][0]}-{port['range'][1]}" if isinstance(port, dict) and \
                "range" in port else str(port)
            break
        elif k in ("masquerade", "snat"):
            target = "MASQUERADE"
            break
        elif k in ("limit", "quota"):
            text = json.dumps(e, separators=(",", ":"))
            matches.append(Match("unknown", (text,), False, text))
        elif k in _NONTERM:
            continue
        else:
            target = f"NFT-{k}"
            break
    text = f"{r['family']} {r['table']} {r['chain']} handle {r.get('handle', '?')}: " + \
        json.dumps(r.get("expr", []), separators=(",", ":"))[:300]
    return Rule(tuple(matches), target, arg, text, n)
