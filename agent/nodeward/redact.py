"""The one place that decides what a secret looks like, and removes it.

Applied twice: at the collect boundary (a ProcessInfo's command line never holds a secret,
so no later stage can leak one) and at every output boundary (table, json, jsonl, log
events, sink payload, PolicyReport) as defence in depth for text that reached a finding
some other way. The rules, all in RULES below:

- the value of a command-line option whose name contains password/passwd/token/secret/key/
  credential/auth-header, in both `--opt=value` and `--opt value` forms (a value that is an
  absolute path of a `...-file`/`...-dir`/`...-path` option is kept: it says where a secret
  lives, not what it is);
- `user:pass@` in URLs (the user is kept, the password goes);
- `name=value` pairs in query strings or environment-style text whose name contains one of
  the words above (`?password=x`, `&access_token=x`, `ETCD_PASSWORD=x`);
- `Bearer <token>` and `Basic <credentials>` (Authorization headers).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

MASK = "<redacted>"
#: Words that make an option or parameter name secret-bearing.
SECRET_WORDS = ("password", "passwd", "pwd", "token", "secret", "key", "credential",
                "auth-header", "apikey")
_WORD = "|".join(re.escape(w) for w in SECRET_WORDS)
_NAME = re.compile(rf"(?:{_WORD})", re.IGNORECASE)
#: Option suffixes whose absolute-path values name a file, not a secret.
_PATH_OPTION = re.compile(r"(?:file|dir|path|kubeconfig)$", re.IGNORECASE)
_PATH_VALUE = re.compile(r"^/[^\s]*$")

def _name_value(m: re.Match[str]) -> str:
    name, value = m.group("name"), m.group("value")
    if _keep_path(name, value.strip("\"'")):
        return m.group(0)
    return f"{name}={MASK}"


def _option_value(m: re.Match[str]) -> str:
    name, value = m.group("name"), m.group("value")
    if value == MASK or _keep_path(name.lstrip("-"), value):
        return m.group(0)
    return f"{name}{m.group('sep')}{MASK}"


def _keep_path(name: str, value: str) -> bool:
    return bool(_PATH_OPTION.search(name.rstrip("-_")) and _PATH_VALUE.match(value))


#: Text rules, applied in order to every string.
RULES: tuple[tuple[str, re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # scheme://user:password@host -> scheme://user:<redacted>@host
    ("url-userinfo", re.compile(r"(?P<pre>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?=@)",
                                re.IGNORECASE), rf"\g<pre>{MASK}"),
    # "Authorization: Bearer abc", "authorization=Basic abc": whatever follows
    ("authorization", re.compile(
        r"(?P<pre>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)"
        r"[^\s\"',;]+", re.IGNORECASE), rf"\g<pre>{MASK}"),
    # "Bearer eyJhbGc...", "basic dXNlcjpwYXNz": a token-shaped word (has a digit or
    # base64 punctuation, 8+ characters) after the scheme name, so prose is left alone
    ("bearer", re.compile(
        r"(?P<pre>\b(?:bearer|basic)\s+)(?=[\w.~+/=-]*[0-9_~+/=])[\w.~+/=-]{8,}",
        re.IGNORECASE), rf"\g<pre>{MASK}"),
    # --secret-opt=value, ?token=value, &password=value, ETCD_PASSWORD=value
    ("name-value", re.compile(
        rf"(?:^|(?<=[\s?&;,\"'(]))(?P<name>[-\w.]*(?:{_WORD})[-\w.]*)="
        r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s&;,\"')]+)", re.IGNORECASE), _name_value),
    # "--token abc" inside a joined command line (argv lists get redact_argv instead)
    ("option-value", re.compile(
        rf"(?<![\w-])(?P<name>--?[\w.-]*(?:{_WORD})[\w.-]*)(?P<sep>\s+)(?P<value>[^\s-]\S*)",
        re.IGNORECASE), _option_value),
)


#: Every rule needs one of these; most strings (addresses, names) have none and skip the
#: rules with one search.
_TRIGGER = re.compile(rf"[=@]|bearer|basic|authoriz|-[\w.-]*(?:{_WORD})", re.IGNORECASE)


@functools.lru_cache(maxsize=8192)
def redact_text(text: str) -> str:
    """`text` with every secret the rules recognise replaced by MASK. Cached: a scan
    renders the same command lines and titles many times."""
    if not text or not _TRIGGER.search(text):
        return text
    for _name, pattern, repl in RULES:
        text = pattern.sub(repl, text)
    return text


def secret_option(arg: str) -> bool:
    """Is `arg` an option (`-x`, `--xyz`) whose name says its value is a secret?"""
    if not arg.startswith("-") or arg in ("-", "--"):
        return False
    name = arg.lstrip("-").split("=", 1)[0]
    if any(c.isspace() for c in name):
        return False  # a sentence or a rule text in a list, not one option word
    return bool(_NAME.search(name))


def redact_argv(argv: Iterable[str]) -> tuple[str, ...]:
    """A command line with secret option values masked: `--opt=value` and `--opt value`
    (the next word, unless it is itself an option), then the text rules on every word."""
    out: list[str] = []
    pending = ""  # a secret-bearing option waiting for its value
    for arg in argv:
        if pending:
            opt, pending = pending, ""
            if not arg.startswith("-"):
                out.append(arg if _keep_path(opt.lstrip("-"), arg) else MASK)
                continue
        if secret_option(arg):
            opt, eq, value = arg.partition("=")
            if eq:
                out.append(arg if _keep_path(opt.lstrip("-"), value) else f"{opt}={MASK}")
            else:
                pending = arg
                out.append(arg)
            continue
        out.append(redact_text(arg))
    return tuple(out)


def _scrub_item(key: Any, value: Any) -> Any:
    """A value under a secret-named key (`{"token": ...}`) is a secret whatever it looks
    like; anything else goes through the rules."""
    if (isinstance(key, str) and isinstance(value, str) and value and _NAME.search(key)
            and not _keep_path(key, value)):
        return MASK
    return scrub(value)


def scrub(obj: Any) -> Any:
    """A copy of a JSON-shaped value (dicts, lists, tuples, strings) with every string
    redacted and every list of strings treated as a command line too."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: _scrub_item(k, v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        if obj and all(isinstance(x, str) for x in obj):
            return list(redact_argv(obj))
        return [scrub(x) for x in obj]
    return obj
