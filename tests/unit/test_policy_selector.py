"""Calico's selector grammar, every form the Calico docs show (reference/resources/
networkpolicy 'Selectors'), checked on label sets; and every selector in the real-world
Calico YAML parses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nodeward.policy.selector import SelectorError, parse

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "realworld" / "yaml"
WEB = {"app": "web", "tier": "frontend", "kubernetes.io/metadata.name": "shop",
       "version": "v1.2.3"}


@pytest.mark.parametrize("sel,labels,want", [
    ("all()", {}, True),
    ("", {}, True),
    ("global()", WEB, False),
    ("app == 'web'", WEB, True),
    ('app == "web"', WEB, True),
    ("app == 'db'", WEB, False),
    ("app != 'db'", WEB, True),
    ("missing != 'x'", WEB, True),  # != matches an absent key
    ("has(tier)", WEB, True),
    ("!has(tier)", WEB, False),
    ("has(kubernetes.io/metadata.name)", WEB, True),
    ("tier in {'frontend', 'backend'}", WEB, True),
    ("tier in {}", WEB, False),
    ("tier not in {'frontend'}", WEB, False),
    ("missing not in {'a'}", WEB, True),  # not in matches an absent key
    ("version contains '.2.'", WEB, True),
    ("version starts with 'v1'", WEB, True),
    ("version ends with '.4'", WEB, False),
    ("missing contains 'x'", WEB, False),
    ("app == 'web' && tier == 'frontend'", WEB, True),
    ("app == 'db' || tier == 'frontend'", WEB, True),
    ("!(app == 'db' || tier == 'backend')", WEB, True),
    ("app == 'web' && !has(tier)", WEB, False),
    ("(app == 'db' || app == 'web') && tier == 'frontend'", WEB, True),
    ("app == 'db' || app == 'web' && tier == 'backend'", WEB, False),  # && binds tighter
    ("!!has(app)", WEB, True),
    ("kubernetes.io/metadata.name not in {\"calico-system\", \"kube-system\"}", WEB, True),
])
def test_forms(sel, labels, want):
    assert parse(sel).match(labels) is want


def test_global_selects_non_namespaced():
    assert parse("global()").match({}, namespaced=False)
    assert not parse("global()").match({}, namespaced=True)


@pytest.mark.parametrize("bad", [
    "app = 'web'", "app == web", "has(app", "app in {'a' 'b'}", "app ==", "&& app == 'a'",
    "app == 'a' ||", "(app == 'a'", "app starts 'x'", "app == 'a' )", "app @ 'x'",
])
def test_outside_the_grammar_is_an_error(bad):
    with pytest.raises(SelectorError):
        parse(bad)


@pytest.mark.skipif(not REAL.is_dir(), reason=f"no real-world corpus at {REAL}")
def test_every_real_selector_parses():
    """Every selector and namespaceSelector in the real Calico YAML (docs, repo, issues)."""
    found = 0

    def walk(o):
        nonlocal found
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("selector", "namespaceSelector", "serviceAccountSelector") \
                        and isinstance(v, str):
                    parse(v)
                    found += 1
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    for p in sorted(REAL.rglob("*.yaml")):
        for doc in yaml.safe_load_all(p.read_text()):
            walk(doc)
    assert found >= 15, found
