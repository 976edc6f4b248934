"""Hostile config values shared by the unit fuzz test and the netns injection lab: the
payloads from issue 18 (each once broke out of nodeward's own objects) and a strategy
that mixes every character and token that means something to iptables-restore or nft."""

from __future__ import annotations

ISSUE_NAMES = [
    "x\n-F\n#",
    "x\n-I INPUT 1 -j ACCEPT\n#",
    "kubelet\x00",
    'e" ; } ; chain pod { } ; } ; insert rule ip filter INPUT counter accept ; table inet '
    'nodeward { chain input { meta nfproto ipv4 counter comment "x',
    'x" ; flush ruleset ; #',
    "x\nCOMMIT\n*filter\n-P INPUT ACCEPT",
]
ISSUE_IFACES = ['cali"; flush ruleset; "', "cali+\n-F", "eth0 -j ACCEPT", "*", "a/b", "x\x00",
                "-F", "-X*"]  # hypothesis found "-F" rendered as `-i -F`
#: Characters and tokens with a meaning to one of the two parsers.
NASTY = [*"\"'\\;{}#\n\r\x00\t -/*+:.@$`|&<>!=,",
    "-j", "-g", "-F", "-X", "-P", "COMMIT", "*filter", "ACCEPT", "flush ruleset", "table",
    "chain", "}", "{", "insert rule", "comment", "counter accept", "ip filter INPUT"]
#: Names that are legal and still look like syntax: they must stay inside our objects.
TRICKY_OK = ["COMMIT", "x-j-ACCEPT", "flush.ruleset", "table_inet_filter", "a" * 63,
             "9-F-X", "ip.filter.INPUT"]


def strategy():
    from hypothesis import strategies as st

    piece = st.one_of(st.sampled_from(NASTY), st.text("abcXYZ019._-", min_size=1, max_size=4))
    return st.one_of(st.sampled_from(ISSUE_NAMES + TRICKY_OK),
                     st.lists(piece, min_size=1, max_size=8).map("".join))
