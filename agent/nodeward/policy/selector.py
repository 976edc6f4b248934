"""Calico's label-selector language, parsed in full (libcalico-go's grammar).

    all()                      every endpoint
    global()                   (namespaceSelector) the non-namespaced endpoints
    k == 'v'   k != 'v'        equality; != also matches when k is absent
    has(k)     !has(k)         presence
    k in {'a', 'b'}            membership; `not in` also matches when k is absent
    k contains 's'  k starts with 's'  k ends with 's'   substring tests (k present)
    !e   e && e   e || e   (e) negation binds tightest, then &&, then ||

An expression outside the grammar raises SelectorError naming the position: a policy whose
selector cannot be read is reported, never guessed at.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Labels = Mapping[str, str]


class SelectorError(ValueError):
    pass


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<op>&&|\|\||==|!=|!|\(|\)|\{|\}|,)
  | (?P<str>"[^"]*"|'[^']*')
  | (?P<word>[A-Za-z0-9_./-]+)
""", re.X)
_KEYWORDS = {"in", "not", "contains", "starts", "ends", "with", "has", "all", "global"}


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, i = [], 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if not m:
            raise SelectorError(f"unexpected {text[i:i + 12]!r} at {i}")
        if m.lastgroup != "ws":
            out.append((m.lastgroup or "", m.group(), i))
        i = m.end()
    return out


@dataclass(frozen=True)
class Node:
    """One operation of the parsed selector; `match` evaluates it."""

    op: str  # all global has eq ne in notin contains starts ends not and or
    key: str = ""
    value: str = ""
    values: frozenset[str] = frozenset()
    args: tuple[Node, ...] = ()

    def match(self, labels: Labels, namespaced: bool = True) -> bool:
        op = self.op
        if op == "all":
            return True
        if op == "global":
            return not namespaced
        if op == "has":
            return self.key in labels
        if op == "eq":
            return labels.get(self.key) == self.value
        if op == "ne":
            return labels.get(self.key) != self.value
        if op == "in":
            return labels.get(self.key) in self.values
        if op == "notin":
            return labels.get(self.key) not in self.values
        if op in ("contains", "starts", "ends"):
            v = labels.get(self.key)
            if v is None:
                return False
            return (self.value in v if op == "contains" else
                    v.startswith(self.value) if op == "starts" else v.endswith(self.value))
        if op == "not":
            return not self.args[0].match(labels, namespaced)
        if op == "and":
            return all(a.match(labels, namespaced) for a in self.args)
        return any(a.match(labels, namespaced) for a in self.args)

    def required_pair(self) -> tuple[str, str] | None:
        """A (key, value) every matching label set has, if the expression requires one
        (an `==` at the top or inside a top-level conjunction)."""
        if self.op == "eq":
            return self.key, self.value
        if self.op == "and":
            for a in self.args:
                pair = a.required_pair()
                if pair is not None:
                    return pair
        return None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.pos = 0

    def peek(self, k: int = 0) -> tuple[str, str, int] | None:
        i = self.pos + k
        return self.toks[i] if i < len(self.toks) else None

    def val(self, k: int = 0) -> str | None:
        t = self.peek(k)
        return t[1] if t else None

    def take(self, expect: str | None = None) -> tuple[str, str, int]:
        t = self.peek()
        if t is None:
            raise SelectorError(f"unexpected end, expected {expect or 'more'}")
        if expect is not None and t[1] != expect:
            raise SelectorError(f"expected {expect!r} at {t[2]}, got {t[1]!r}")
        self.pos += 1
        return t

    def string(self) -> str:
        kind, text, at = self.take()
        if kind != "str":
            raise SelectorError(f"expected a quoted string at {at}, got {text!r}")
        return text[1:-1]

    def key(self) -> str:
        kind, text, at = self.take()
        if kind != "word":
            raise SelectorError(f"expected a label key at {at}, got {text!r}")
        return text

    def parse(self) -> Node:
        if not self.toks:
            return Node("all")  # Calico: an empty selector selects everything
        node = self.expr()
        t = self.peek()
        if t is not None:
            raise SelectorError(f"unexpected {t[1]!r} at {t[2]}")
        return node

    def expr(self) -> Node:
        parts = [self.conj()]
        while self.val() == "||":
            self.take()
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else Node("or", args=tuple(parts))

    def conj(self) -> Node:
        parts = [self.unary()]
        while self.val() == "&&":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else Node("and", args=tuple(parts))

    def unary(self) -> Node:
        if self.val() == "!":
            self.take()
            return Node("not", args=(self.unary(),))
        if self.val() == "(":
            self.take()
            node = self.expr()
            self.take(")")
            return node
        return self.atom()

    def atom(self) -> Node:
        word = self.val()
        if word in ("all", "global", "has") and self.val(1) == "(":
            self.take()
            self.take("(")
            if word == "has":
                k = self.key()
                self.take(")")
                return Node("has", key=k)
            self.take(")")
            return Node(word)
        k = self.key()
        op = self.val()
        if op in ("==", "!="):
            self.take()
            return Node("eq" if op == "==" else "ne", key=k, value=self.string())
        if op == "in" or (op == "not" and self.val(1) == "in"):
            self.take()
            if op == "not":
                self.take("in")
            self.take("{")
            values = set()
            while self.val() != "}":
                values.add(self.string())
                if self.val() == ",":
                    self.take()
                elif self.val() != "}":
                    t = self.peek()
                    raise SelectorError(f"expected ',' or '}}' at {t[2] if t else 'end'}")
            self.take("}")
            return Node("in" if op == "in" else "notin", key=k, values=frozenset(values))
        if op == "contains":
            self.take()
            return Node("contains", key=k, value=self.string())
        if op in ("starts", "ends") and self.val(1) == "with":
            self.take()
            self.take("with")
            return Node(op, key=k, value=self.string())
        t = self.peek()
        raise SelectorError(f"expected an operator after {k!r} at "
                            f"{t[2] if t else 'end'}" + (f", got {t[1]!r}" if t else ""))


@functools.lru_cache(maxsize=8192)
def parse(text: str) -> Node:
    """The selector as a tree (cached: policies are asked of thousands of endpoints)."""
    return _Parser(text or "").parse()


def matcher(text: str) -> Callable[[Labels], bool]:
    node = parse(text)
    return lambda labels: node.match(labels)
