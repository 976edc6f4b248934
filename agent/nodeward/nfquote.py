"""The one gate between values from config or the live system and netfilter text.

Whatever reaches an `iptables-restore` or `nft -f` payload passes here: component names and
interface patterns are checked when the config and catalog load (a one-line config error,
exit 2), comments are built from checked parts only and quoted per backend, and a finished
payload is checked line by line to name nothing but nodeward's own objects before any
backend runs it. A value that fails is refused, never escaped into something that parses.
"""

from __future__ import annotations

import ipaddress
import re
import string

#: Component names: what kube components, Helm charts and DNS labels use.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
#: Linux IFNAMSIZ (16) including the terminating NUL.
IFNAME_MAX = 15
#: Interface names the firewall can match: the kernel also allows quotes, braces, `;`, `#`
#: and the like (anything but '/', ':', whitespace and NUL), which no CNI uses and which
#: would need quoting rules that differ between iptables and nft. Refused instead.
IF_CHARS = frozenset(string.ascii_letters + string.digits + "._-@")
#: What a rendered comment may hold (checked parts: names, CIDRs, ports, patterns).
COMMENT_CHARS = frozenset(string.ascii_letters + string.digits + " ._-:/,@*")
COMMENT_MAX = 255  # xt_comment keeps 256 bytes with the NUL


class UnsafeText(ValueError):
    """A value cannot be put into netfilter text; the message says which and why."""


def check_name(value: object, where: str) -> str:
    """A component name: letters, digits, '.', '_', '-', at most 63, starting alnum."""
    if not isinstance(value, str) or not NAME.match(value):
        raise UnsafeText(f"{where}: {value!r} is not a valid name (letters, digits, '.', '_', "
                         "'-'; at most 63; starting with a letter or digit)")
    return value


def check_ifglob(value: object, where: str) -> str:
    """An interface name, or a prefix ending in '*' (the only wildcard).

    As the kernel's dev_valid_name: 1-15 bytes, not '.' or '..', no '/', ':' or whitespace;
    narrower still (see IF_CHARS). A bare '*' would make every interface, the uplink
    included, a pod interface: refused."""
    if not isinstance(value, str) or not value:
        raise UnsafeText(f"{where}: expected an interface name or a prefix ending in '*'")
    body = value[:-1] if value.endswith("*") else value
    if not body:
        raise UnsafeText(f"{where}: {value!r} matches every interface, the node's uplink "
                         "included: every source would be treated as a pod and the control "
                         "plane cut off; list the pod interfaces (e.g. 'cali*')")
    bad = sorted(set(body) - IF_CHARS)
    if bad:
        raise UnsafeText(f"{where}: {value!r} has {bad[0]!r}: an interface pattern may hold "
                         "letters, digits, '.', '_', '-', '@' and one trailing '*'")
    if body.startswith("-"):
        # iptables' own getopt takes `-i -F` as an interface named -F (tried), but a word
        # that reads as an option is one mistake away from being one, in every tool that
        # tokenises these rules; no CNI names its interfaces so
        raise UnsafeText(f"{where}: {value!r} starts with '-': an interface pattern must "
                         "start with a letter, digit, '.', '_' or '@'")
    if len(body) > IFNAME_MAX or body in (".", ".."):
        raise UnsafeText(f"{where}: {value!r} is not a possible interface name (at most "
                         f"{IFNAME_MAX} characters, not '.' or '..')")
    return value


def comment_text(text: str) -> str:
    """A rule comment, built from checked parts: refused if anything else got in."""
    bad = sorted(set(text) - COMMENT_CHARS)
    if bad or not text or len(text) > COMMENT_MAX:
        raise UnsafeText(f"rule comment {text[:40]!r}: {bad[0]!r} cannot be rendered" if bad
                         else f"rule comment {text[:40]!r}: empty or too long")
    return text


_IPT_BARE = frozenset("_-" + string.ascii_letters + string.digits)


def ipt_comment(text: str) -> str:
    """A comment argument exactly as iptables-save prints it (so rendered lines compare
    equal to saved ones). COMMENT_CHARS has no quote or backslash to escape."""
    comment_text(text)
    return text if all(ch in _IPT_BARE for ch in text) else f'"{text}"'


def nft_string(text: str) -> str:
    """A quoted nft string (comments, log prefixes)."""
    return f'"{comment_text(text)}"'


def ipt_iface(glob: str) -> str:
    check_ifglob(glob, "interface")
    return glob[:-1] + "+" if glob.endswith("*") else glob


def nft_iface(glob: str) -> str:
    """nft matches a trailing '*' inside the quoted string as a prefix wildcard."""
    return f'"{check_ifglob(glob, "interface")}"'


def cidr(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Re-parse an address or CIDR (whatever its source) into a network object."""
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise UnsafeText(f"{value!r} is not an IP address or CIDR") from None


# -- payload containment: what a finished payload may say ---------------------------------

_QUOTED = re.compile(r'"[^"\n]*"')
_BASE = re.compile(r"type filter hook (?:input|forward) priority [a-z0-9 +-]+; policy accept;")
_SET = re.compile(r" dport \{ [0-9, -]+ \}")


def check_ipt_payload(payload: str, tables: tuple[str, ...], chains: tuple[str, ...],
                      builtins: tuple[str, ...]) -> None:
    """Every line declares, fills, flushes or deletes one of `chains`, or adds/deletes a
    jump to them from one of `builtins`; anything else (a second table, `-F`, a foreign
    chain, a NUL) raises before the payload reaches iptables-restore."""
    ours = "|".join(map(re.escape, chains))
    hooks = "|".join(map(re.escape, builtins))
    allowed = re.compile(
        rf"\*(?:{'|'.join(tables)})|COMMIT"
        rf"|:(?:{ours}) - \[0:0\]"
        rf"|-[AD] (?:{ours}) [^\x00-\x1f\"]*(?:\"[^\"\x00-\x1f]*\"[^\x00-\x1f\"]*)*"
        rf"|-[FX] (?:{ours})"
        rf"|-(?:D|I) (?:{hooks})(?: 1)? -m comment --comment nodeward -j (?:{ours})")
    if "\x00" in payload or "\r" in payload:
        raise UnsafeText("iptables payload holds a NUL or CR; refusing")
    for line in payload.splitlines():
        if not allowed.fullmatch(line):
            raise UnsafeText(f"iptables payload line outside nodeward's chains: {line[:80]!r}")
        if line.startswith("-A ") and re.search(r"\s-[jg]\s", _QUOTED.sub("", line)):
            targets = re.findall(r"\s-[jg]\s+(\S+)", _QUOTED.sub("", line))
            if len(targets) != 1 or targets[0] not in ("RETURN", "DROP", "LOG", *chains):
                raise UnsafeText(f"iptables payload rule with target {targets}: {line[:80]!r}")


def check_nft_payload(payload: str, table: str, chains: tuple[str, ...]) -> None:
    """Only `table inet <table>` and its chains are named; braces and `;` appear only in
    the shapes the renderer writes (outside quoted strings, which hold COMMENT_CHARS)."""
    if "\x00" in payload or "\r" in payload:
        raise UnsafeText("nft payload holds a NUL or CR; refusing")
    depth = 0
    head = {f"table inet {table} {{}}", f"delete table inet {table}"}
    for raw in payload.splitlines():
        line = _QUOTED.sub("STR", raw).strip()
        if '"' in line:
            raise UnsafeText(f"nft payload has an unbalanced quote: {raw[:80]!r}")
        if not line:
            continue
        if depth == 0 and line in head:
            continue
        if depth == 0 and line == f"table inet {table} {{":
            depth = 1
        elif depth == 1 and re.fullmatch(rf"chain (?:{'|'.join(chains)}) {{", line):
            depth = 2
        elif line == "}" and depth > 0:
            depth -= 1
        elif depth == 2 and (_BASE.fullmatch(line) or not re.search(r"[{};]", _SET.sub("", line))):
            continue
        else:
            raise UnsafeText(f"nft payload line outside table inet {table}: {raw[:80]!r}")
    if depth:
        raise UnsafeText("nft payload leaves a block open; refusing")
