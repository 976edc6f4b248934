"""`nft -j list ruleset` -> Table values (front-end "nft").

Tables that iptables-nft owns also appear here (with xt compat expressions); they are read
through iptables-nft-save instead, so the caller passes them in `skip` and they are not
evaluated twice. Expressions this module does not model become Match(op="unknown") (the
evaluator then follows both outcomes) rather than being dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from sys import intern

from .errors import RulesetParseError
from .iptables import parse_net
from .model import Chain, IpSet, Match, Rule, Table

_VERDICTS = {"accept": "ACCEPT", "drop": "DROP", "reject": "REJECT", "return": "RETURN"}
_NONTERM = {"counter", "log", "limit", "meta", "mangle", "ct", "set", "quota", "notrack"}


def _nets(right) -> tuple | None:
    """Address literal / prefix / range / anonymous set -> tuple of (ver, lo, hi)."""
    if isinstance(right, str):  # not through parse_net's cache: the rule memo shares
        return (parse_net.__wrapped__(right),)  # repeats, a cache entry each is ~7 MB more
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


MASK32 = 0xFFFFFFFF


def _selector(left) -> str | None:
    """A key expression nft can look up in a set/map -> the evaluator's selector name
    (see evaluate._field); None when not modelled."""
    if not isinstance(left, dict):
        return None
    if "payload" in left:
        pl = left["payload"]
        return f"{pl.get('protocol')} {pl.get('field')}"
    if "meta" in left:
        return f"meta {left['meta'].get('key')}"
    if "ct" in left and "dir" not in left["ct"]:
        return f"ct {left['ct'].get('key')}"
    if "fib" in left and left["fib"].get("result") == "type" and \
            left["fib"].get("flags") == ["daddr"]:
        return "fib daddr type"
    return None


def _selectors(key) -> tuple[str, ...] | None:
    parts = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
    out = []
    for k in parts:
        sel = _selector(k)
        if sel is None:
            return None
        out.append(sel)
    return tuple(out)


_ADDR_SELS = ("saddr", "daddr")
_PROTO_NUM = {"6": "tcp", "17": "udp", "1": "icmp", "58": "ipv6-icmp", "132": "sctp",
              "icmpv6": "ipv6-icmp"}


def _component(sel: str, val) -> tuple:
    """One element key part -> (lo, hi), comparable with evaluate._field's value."""
    if isinstance(val, dict) and "elem" in val:
        val = val["elem"]["val"]
    if sel.endswith(_ADDR_SELS):
        ver, lo, hi = _nets(val)[0]
        return ((ver, lo), (ver, hi))
    if isinstance(val, dict) and "range" in val:
        a, b = val["range"]
        if sel.endswith(_ADDR_SELS):
            raise ValueError("address range")
        return (a, b)
    if isinstance(val, bool):
        raise ValueError(f"bad key {val!r}")
    if isinstance(val, int):
        if sel in ("meta l4proto", "ip protocol", "ip6 nexthdr"):
            p = _PROTO_NUM.get(str(val), str(val))
            return (p, p)
        return (val, val)
    if isinstance(val, str):
        if sel in ("meta iifname", "meta oifname") and val.endswith("*") and \
                not val.endswith("\\*"):
            return (val[:-1], val[:-1] + "\U0010ffff")
        if sel in ("meta l4proto", "ip protocol", "ip6 nexthdr"):
            val = _PROTO_NUM.get(val, val)
        return (val, val)
    raise ValueError(f"key {json.dumps(val)[:60]} not understood")


def _key_parts(sels: tuple[str, ...], val) -> tuple:
    if isinstance(val, dict) and "elem" in val:
        val = val["elem"]["val"]
    parts = val["concat"] if isinstance(val, dict) and "concat" in val else [val]
    if len(parts) != len(sels):
        raise ValueError("key does not have the map's fields")
    return tuple(_component(sel, v) for sel, v in zip(sels, parts, strict=True))


def _compact(memo: dict, key: tuple) -> tuple:
    """An element key with its (lo, hi) parts shared: one object for an exact part's lo
    and hi, one pair object per distinct part within a parse (kube-proxy's maps repeat a
    few protocols and ports over thousands of elements; ~3 MB at 50,000 rules)."""
    out = []
    for lo, hi in key:
        pair = (lo, lo) if lo == hi else (lo, hi)
        out.append(memo.setdefault(pair, pair))
    return tuple(out)


def verdict_text(v) -> str:
    """A map's verdict -> "ACCEPT", "DROP", "JUMP chain", "GOTO chain", "CONTINUE"..."""
    if isinstance(v, dict) and len(v) == 1:
        (k, arg), = v.items()
        if k in ("jump", "goto") and isinstance(arg, dict):
            return f"{k.upper()} {arg['target']}"
        if k in ("accept", "drop", "reject", "return", "continue"):
            return k.upper()
    raise ValueError(f"verdict {json.dumps(v)[:60]} not understood")


_SET_KINDS = {"ipv4_addr": "ip daddr", "ipv6_addr": "ip6 daddr", "inet_service": "th dport",
              "inet_proto": "meta l4proto", "ifname": "meta iifname", "mark": "meta mark",
              "ct_state": "ct state"}


def _elements(s: dict, sels: tuple[str, ...] | None, verdicts: bool) -> tuple:
    """A set's/map's elements as (key, verdict) with keys for the given selectors (the
    set's own type decides how each key part reads)."""
    types = s.get("type")
    types = types if isinstance(types, list) else [types]
    kinds = tuple(_SET_KINDS.get(t, t) for t in types)
    sels = sels or kinds
    out = []
    memo: dict = {}
    for el in s.get("elem", []) or []:
        if verdicts:
            if not (isinstance(el, list) and len(el) == 2):
                raise ValueError("map element is not [key, verdict]")
            key, data = el
            out.append((_compact(memo, _key_parts(kinds, key)), verdict_text(data)))
        else:
            out.append((_compact(memo, _key_parts(kinds, el)), ""))
    return tuple(out)


#: An `ip ...` / `ip6 ...` header match only ever matches its own family: in an inet table
#: nft puts a "meta nfproto" check before it, which the JSON listing leaves out. Without it
#: `ip6 saddr != X` would match every IPv4 packet, where the kernel matches none.
_FAMILY_DEP = {"ip": (Match("nfproto", (4,), False, "meta nfproto ipv4"),),
               "ip6": (Match("nfproto", (6,), False, "meta nfproto ipv6"),)}


_TCP = Match("proto", ("tcp",), False, "meta l4proto tcp")


_VERBS = ("accept", "drop", "return", "continue", "notrack", "counter", "masquerade")


def show(e, limit: int = 200) -> str:
    """An nft JSON expression in nft's own syntax (`ip daddr 10.0.0.1`, `meta mark & 0x4`,
    `tcp dport { 22, 80 }`): the evidence an operator reads, and far cheaper than
    serialising JSON for every rule of a 30,000-rule ruleset."""
    out = _show(e)
    return out if len(out) <= limit else out[:limit - 3] + "..."


def _show(e) -> str:
    if isinstance(e, bool):
        return str(e).lower()
    if isinstance(e, (str, int, float)):
        return str(e)
    if e is None:
        return ""
    if isinstance(e, list):
        if len(e) > 8:
            return "{ " + ", ".join(_show(x) for x in e[:8]) + f", ... ({len(e)}) }}"
        return "{ " + ", ".join(_show(x) for x in e) + " }"
    if not isinstance(e, dict) or len(e) != 1:
        return json.dumps(e, separators=(",", ":"))
    k = next(iter(e))
    v = e[k]
    if k in _VERBS:
        return k
    if isinstance(v, dict):
        if k == "payload":
            return f"{v.get('protocol')} {v.get('field')}"
        if k in ("meta", "ct"):
            return f"{k} {v.get('key')}"
        if k == "prefix":
            return f"{v.get('addr')}/{v.get('len')}"
        if k == "match" and "left" in v:
            op = v.get("op", "==")
            return f"{_show(v['left'])} {'' if op in ('==', 'in') else op + ' '}" \
                   f"{_show(v.get('right'))}"
        if k in ("jump", "goto"):
            return f"{k} {v.get('target')}"
        if k == "vmap":
            return f"{_show(v.get('key'))} vmap {_show(v.get('data'))}"
        if k == "mangle":
            return f"{_show(v.get('key'))} set {_show(v.get('value'))}"
        if k == "dnat" and "addr" in v:
            return f"dnat to {v['addr']}" + (f":{v['port']}" if "port" in v else "")
        if k == "elem" and "val" in v:
            return _show(v["val"])
    if isinstance(v, list):
        if k in ("set", "concat") or k in ("&", "|", "^"):
            if k == "set":
                return _show(v)
            sep = " . " if k == "concat" else f" {k} "
            return sep.join(_show(x) for x in v)
        if k == "range" and len(v) == 2:
            return f"{_show(v[0])}-{_show(v[1])}"
    return json.dumps(e, separators=(",", ":"))


def _match(m: dict, setkey, text: str = "") -> list[Match]:
    """One nft match expression -> Matches (may be two: "tcp dport" implies l4proto tcp)."""
    op, left, right = m.get("op", "=="), m.get("left"), m.get("right")
    text = text or show({"match": m})
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
        sels = _selectors(left)
        if sels is not None:
            return [Match("lookup", (sels, setkey(right[1:])), neg, text)]
        return unknown
    reg = _mark_reg(left)
    if reg is not None and isinstance(right, int) and not isinstance(right, bool):
        return [Match("mark", (reg, MASK32, right & MASK32), neg, text)]
    if "&" in left and isinstance(left["&"], list) and len(left["&"]) == 2 and \
            _mark_reg(left["&"][0]) is not None and isinstance(left["&"][1], int) and \
            isinstance(right, int):
        mask = left["&"][1] & MASK32
        return [Match("mark", (_mark_reg(left["&"][0]), mask, right & mask), neg, text)]
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
        if key == "pkttype" and isinstance(right, str):
            return [Match("pkttype", (right,), neg, text)]
        if key == "nfproto" and isinstance(right, str):
            return [Match("nfproto", ({"ipv4": 4, "ipv6": 6}.get(right, 0),), neg, text)]
        return unknown
    if "ct" in left and left["ct"].get("key") == "state":
        words = _words(right)
        if words:
            return [Match("ctstate", tuple(w.upper() for w in words), neg, text)]
        return unknown
    if "fib" in left and left["fib"].get("result") == "oif" and \
            "saddr" in left["fib"].get("flags", []) and right in (0, "0", False, "missing"):
        # reverse path filter: `fib saddr [. mark] [. iif] oif != 0` holds when it passes
        flags = left["fib"]["flags"]
        return [Match("rpfilter", ("iif" not in flags, False), op != "!=", text)]
    if "fib" in left and left["fib"].get("result") == "type":
        flags = left["fib"].get("flags", [])
        words = _words(right)
        if words and ("daddr" in flags or "saddr" in flags) and "iif" not in flags \
                and "oif" not in flags:
            d = "dst" if "daddr" in flags else "src"
            return [Match("addrtype", (d, tuple(w.upper() for w in words)), neg, text)]
        return unknown
    return unknown


def _mark_reg(e) -> str | None:
    """`meta mark` -> "mark", `ct mark` -> "ct"."""
    if isinstance(e, dict):
        if e.get("meta", {}).get("key") == "mark" if isinstance(e.get("meta"), dict) else False:
            return "mark"
        if isinstance(e.get("ct"), dict) and e["ct"].get("key") == "mark" and \
                "dir" not in e["ct"]:
            return "ct"
    return None


def _mark_value(e) -> tuple[str, int, int] | None:
    """A mark expression as (source register, keep, xor): value = (src & keep) ^ xor;
    a constant has keep 0. None when not of that form."""
    if isinstance(e, int) and not isinstance(e, bool):
        return ("mark", 0, e & MASK32)
    reg = _mark_reg(e)
    if reg is not None:
        return (reg, MASK32, 0)
    if isinstance(e, dict) and len(e) == 1:
        (op, args), = e.items()
        if op in ("&", "|", "^") and isinstance(args, list) and len(args) == 2 and \
                isinstance(args[1], int):
            inner = _mark_value(args[0])
            if inner is None:
                return None
            src, keep, xor = inner
            v = args[1] & MASK32
            if op == "&":
                return (src, keep & v, xor & v)
            if op == "|":
                return (src, keep & ~v & MASK32, (xor & ~v & MASK32) ^ v)
            return (src, keep, xor ^ v)
    return None


_DECODER = json.JSONDecoder()
_WS = " \t\n\r"


def _stream_items(text: str) -> Iterator[object] | None:
    """The elements of `{"nftables": [...]}` decoded one at a time (None when the text is
    not laid out that way: the caller decodes it whole). nft prints 21 MB of JSON at 50,000
    rules; decoded whole that is ~200 MB of dicts alive at once, one by one it is one rule's."""
    head = text.lstrip(_WS)
    if not head.startswith('{"nftables":'):
        return None
    pos = text.find("[", text.index('"nftables":'))
    if pos < 0 or text[text.index('"nftables":') + 11:pos].strip(_WS):
        return None

    def gen() -> Iterator[object]:
        i = pos + 1
        end = len(text)
        first = True
        while True:
            while i < end and text[i] in _WS:
                i += 1
            if i < end and text[i] == "]":
                i += 1
                while i < end and text[i] in _WS:
                    i += 1
                if text[i:].rstrip(_WS) != "}":
                    raise ValueError("unexpected text after the nftables list")
                return
            if not first:
                if i >= end or text[i] != ",":
                    raise ValueError(f"',' expected at character {i}")
                i += 1
                while i < end and text[i] in _WS:
                    i += 1
            item, i = _DECODER.raw_decode(text, i)
            first = False
            yield item

    return gen()


def _piece_items(pieces: list[str]) -> Iterator[object] | None:
    """_stream_items over a dump read in pieces (collect's run_local pieces=True), taking
    the pieces out of the list as it goes: the dump (16 MB of JSON at 50,000 rules) is let
    go while it is parsed instead of being held to the end. None when it is not laid out as
    `{"nftables": [...]}` (the pieces are then left as they were)."""
    head = ""
    for p in pieces:
        head += p
        if len(head.lstrip(_WS)) >= 16:
            break
    head = head.lstrip(_WS)
    if not head.startswith('{"nftables":'):
        return None
    rest = head[len('{"nftables":'):].lstrip(_WS)
    if rest and rest[0] != "[":
        return None
    pieces.reverse()  # popped from the end, in order
    buf = ""

    def more() -> bool:
        nonlocal buf, i
        if not pieces:
            return False
        buf = buf[i:] + pieces.pop()
        i = 0
        return True

    def skip_ws() -> bool:
        """Past whitespace; False at the end of the dump."""
        nonlocal i
        while True:
            while i < len(buf) and buf[i] in _WS:
                i += 1
            if i < len(buf) or not more():
                return i < len(buf)

    i = 0

    def gen() -> Iterator[object]:
        nonlocal i
        skip_ws()
        while i + 1 >= len(buf) or "[" not in buf[i:i + 64]:
            if not more():
                break
        i = buf.index("[", i) + 1  # the header was checked above
        first_item = True
        while True:
            if not skip_ws():
                raise ValueError("the nftables list is not closed")
            if buf[i] == "]":
                while more():
                    pass
                if buf[i + 1:].strip(_WS) != "}":
                    raise ValueError("unexpected text after the nftables list")
                return
            if not first_item:
                if buf[i] != ",":
                    raise ValueError("',' expected")
                i += 1
                if not skip_ws():
                    raise ValueError("the nftables list is not closed")
            if buf[i] != "{":  # not an object: decoded from everything left, to be sure
                while more():
                    pass
            while True:
                try:
                    item, i = _DECODER.raw_decode(buf, i)
                    break
                except ValueError:
                    # an object cut at a piece boundary never decodes: add the next one
                    if not more():
                        raise
            first_item = False
            yield item

    return gen()


def parse_nft_json(text: str | list[str], *, source: str = "nft -j list ruleset",
                   skip: Iterable[tuple[str, str]] = ()) -> tuple[tuple[Table, ...],
                                                                 dict[str, IpSet]]:
    """Tables (minus `skip` (family, name) pairs) and named sets (keyed "nft:fam:table:name")."""
    stripped = text.lstrip() if isinstance(text, str) else \
        next((p for p in text if p.strip()), "").lstrip()
    if stripped.startswith(("table ", "flush ruleset", "add table", "#!")) or \
            stripped.startswith("define "):
        raise RulesetParseError(source, 1, "this is nft text: save it with "
                                           "`nft -j list ruleset` (JSON) instead")
    try:
        items = _stream_items(text) if isinstance(text, str) else _piece_items(text)
        if items is None and not isinstance(text, str):
            text = "".join(text)
        if items is None:
            doc = json.loads(text)
            items = doc["nftables"]
    except RecursionError:
        raise RulesetParseError(source, 1, "not nft JSON: nested too deeply") from None
    except (ValueError, KeyError, TypeError) as e:
        raise RulesetParseError(source, 1, f"not nft JSON: {e}") from None
    if not isinstance(items, list | Iterator):
        raise RulesetParseError(source, 1, "not nft JSON: 'nftables' is not a list")
    skip = set(skip)
    chains: dict[tuple, dict] = {}
    rules: dict[tuple, list[Rule]] = {}
    tables: list[tuple[str, str]] = []
    sets: dict[str, IpSet] = {}
    shared: tuple[dict, dict] = ({}, {})  # one object per distinct Match / tuple (_rule)
    n = 0
    while True:
        n += 1
        try:
            item = next(items) if isinstance(items, Iterator) else items[n - 1]
        except (StopIteration, IndexError):
            break
        except RecursionError:
            raise RulesetParseError(source, n, "nested too deeply") from None
        except ValueError as e:
            raise RulesetParseError(source, n, f"not nft JSON: {e}") from None
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
            elif "set" in item or "map" in item:
                s = item.get("set") or item["map"]
                key = f"nft:{s['family']}:{s['table']}:{s['name']}"
                sets[key] = _set(s, key, "map" in item)
            elif "rule" in item:
                r = item["rule"]
                key = (r["family"], r["table"], r["chain"])
                fam, tab = r["family"], r["table"]
                try:
                    rule = _rule(r, n, lambda name, fam=fam, tab=tab: f"nft:{fam}:{tab}:{name}",
                                 shared)
                except RecursionError:  # one absurdly nested rule: that rule is unknown
                    why = "expression nested too deeply"
                    rule = Rule((Match("unknown", (why,), False, why),), "NFT-nested", "",
                                f"{fam} {tab} {r['chain']} handle {r.get('handle', '?')}", n)
                rules.setdefault(key, []).append(rule)
        except RecursionError:
            raise RulesetParseError(source, n, "nested too deeply") from None
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


def _set(s: dict, key: str, is_map: bool) -> IpSet:
    """An nft set or map. Address sets keep their members as text (like an ipset); every
    set and verdict map also gets its elements keyed for evaluate._lookup. A map of other
    data (not verdicts) or an element not understood leaves it without keys (undecidable)."""
    members: list[str] | None = []
    # members are addresses (an ifname set has none: its names are no networks to parse)
    if not is_map and s.get("type") in ("ipv4_addr", "ipv6_addr"):
        for el in s.get("elem", []) or []:
            nets = _nets(el if not isinstance(el, dict) or "elem" not in el
                         else el["elem"]["val"]) if members is not None else None
            if nets is None:
                members = None
                break
            members.extend(f"{_txt(v)}" for v in nets)
    typ = "hash:net" if s.get("type") in ("ipv4_addr", "ipv6_addr") and not is_map and \
        members is not None else f"nft:{s.get('type')}"
    elements: tuple = ()
    keyed: tuple = ()
    if not is_map or s.get("map") == "verdict":
        try:
            elements = _elements(s, None, is_map)
            types = s.get("type")
            keyed = tuple(types if isinstance(types, list) else [types])
        except (ValueError, TypeError, KeyError, IndexError):
            elements, keyed = (), ()
    return IpSet(key, typ, tuple(members or ()), elements, keyed)


def _txt(net: tuple) -> str:
    import ipaddress

    ver, lo, hi = net
    first = ipaddress.ip_address(lo) if ver == 4 else ipaddress.IPv6Address(lo)
    nets = list(ipaddress.summarize_address_range(first, type(first)(hi)))
    return str(nets[0]) if len(nets) == 1 else f"{first}-{type(first)(hi)}"


def _share(memo: dict, value):
    """The first object equal to `value` seen in this parse (`value` itself if none):
    50,000 kube-proxy rules repeat a few hundred distinct matches ("tcp dport 80", "meta
    l4proto tcp"), and one object each was ~15 MB at 50,000 rules."""
    try:
        return memo.setdefault(value, value)
    except TypeError:  # an unhashable argument: not shared
        return value


def _rule(r: dict, n: int, setkey, shared: tuple[dict, dict] | None = None) -> Rule:
    matches: list[Match] = []
    target, arg = "", ""
    effects: list[tuple] = []
    vmap: tuple = ()
    shown: list[str] = []
    for e in r.get("expr", []):
        (k, v), = e.items()
        shown.append(show(e, 120))
        if k == "match":
            matches.extend(_match(v, setkey, shown[-1]))
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
        elif k == "vmap":
            sels = _selectors(v.get("key"))
            data = v.get("data")
            target = "VMAP"
            ng = (v.get("key") or {}).get("numgen") if isinstance(v.get("key"), dict) else None
            if isinstance(ng, dict) and isinstance(ng.get("mod"), int):
                # random/incremental load balancing: every value below mod (+ offset)
                sels = (f"numgen {ng.get('offset', 0)} {ng['mod']}",)
            if sels is None:
                target = "NFT-vmap"  # a key the evaluator cannot read
            elif isinstance(data, str) and data.startswith("@"):
                vmap = (sels, setkey(data[1:]))
            elif isinstance(data, dict) and "set" in data:
                inline = {"type": _inline_types(sels), "elem": data["set"]}
                try:
                    kmemo = shared[1] if shared is not None else {}
                    els = tuple((_compact(kmemo, _key_parts(sels, key)), verdict_text(val))
                                for key, val in data["set"])
                    vmap = (sels, IpSet("anonymous", "nft:vmap", (), els, tuple(inline["type"])))
                except (ValueError, TypeError, KeyError, IndexError):
                    target = "NFT-vmap"
            else:
                target = "NFT-vmap"
            break
        elif k == "notrack":
            target = "NOTRACK"  # non-terminating; a later verdict in the rule overrides it
        elif k == "mangle" and isinstance(v, dict) and _mark_reg(v.get("key")) is not None:
            val = _mark_value(v.get("value"))
            if val is None:
                target = "NFT-mangle"
                break
            src, keep, xor = val
            dst = _mark_reg(v["key"])
            effects.append(("set", dst, src if keep else dst, keep, xor))
        elif k == "xt" and isinstance(v, dict):
            # iptables-nft wrote a match/target nft cannot show: its options are not in
            # the listing, so a match may or may not hold (comments always do)
            name = v.get("name", "?")
            if v.get("type") == "match":
                if name != "comment":
                    text = f"xt match {name} (options not in the nft listing)"
                    matches.append(Match("unknown", (text,), False, text))
            elif v.get("type") == "target" and name in ("MASQUERADE", "SNAT"):
                target = "MASQUERADE"
                break
            else:
                target = f"XT-{name}"
                break
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
        elif k == "tproxy" and isinstance(v, dict):
            target, arg = "TPROXY", str(v.get("port", 0))
            break
        elif k in ("masquerade", "snat"):
            target = "MASQUERADE"
            break
        elif k in ("limit", "quota"):
            text = show(e)
            matches.append(Match("unknown", (text,), False, text))
        elif k in _NONTERM:
            continue
        else:
            target = f"NFT-{k}"
            break
    expr = r.get("expr", [])
    shown += [show(e, 120) for e in expr[len(shown):]]  # after the verdict: rarely any
    text = f"{r['family']} {r['table']} {r['chain']} handle {r.get('handle', '?')}: " + \
        " ".join(shown)[:300]
    if shared is None:
        return Rule(tuple(matches), target, arg, text, n, tuple(effects), vmap)
    ms, ts = shared
    return Rule(_share(ts, tuple(_share(ms, m) for m in matches)), intern(target), intern(arg),
                text, n, _share(ts, tuple(_share(ts, e) for e in effects)), vmap)


def _inline_types(sels) -> list[str]:
    return list(sels or ("numgen",))
