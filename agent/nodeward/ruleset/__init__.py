"""The node's netfilter ruleset as values: parsers (iptables-save, nft -j), a pure packet-path
evaluator, and reachability per source class built on it."""

from .errors import RulesetParseError
from .evaluate import evaluate
from .model import Chain, Match, Packet, Rule, Ruleset, Step, Table, Verdict

__all__ = ["Chain", "Match", "Packet", "Rule", "Ruleset", "RulesetParseError", "Step", "Table",
           "Verdict", "evaluate"]
