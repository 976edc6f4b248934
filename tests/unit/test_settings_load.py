"""The bounded settings loader: any text is data or one SettingsError line, never another
exception, and every number check refuses NaN and infinities."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeward import config, settings_load

TOKENS = [*"ab:-[]{}&*!|>'\",.#\n 0123456789?%@`~", ".nan", ".inf", "mode", "interval", "²",
          "\x00", "\ufeff", "daemon", "sink", "&a", "*a", "url", "timeout", "tcp/"]
YAMLISH = st.lists(st.sampled_from(TOKENS), max_size=80).map("".join)


@settings(max_examples=300, deadline=None)
@given(YAMLISH)
def test_any_text_is_a_config_or_one_config_error_line(text):
    try:
        data = settings_load.load_text(text, "f.yaml")
    except settings_load.SettingsError as e:
        assert "\n" not in str(e) and str(e).startswith("f.yaml: ")
        return
    try:
        config.from_mapping(data, "f.yaml")
    except config.ConfigError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "1", None, 10**400])
def test_number_refuses_non_finite_and_non_numbers(value):
    with pytest.raises(settings_load.SettingsError):
        settings_load.number(value, "k", 0, 1e9)


@pytest.mark.parametrize(("text", "port"), [("443", 443), ("65535", 65535), ("0", 0),
                                            ("65536", None), ("²", None), ("٨٠", None),
                                            ("1_0", None), (" 80", None), ("", None)])
def test_port_takes_ascii_digits_only(text, port):
    assert settings_load.port(text) == port


def test_bomb_is_measured_without_expanding_it():
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 12)]
    with pytest.raises(settings_load.SettingsError, match="expand to more than"):
        settings_load.load_text("\n".join(levels), "b.yaml")
    # A few honest aliases are fine.
    assert settings_load.load_text("a: &x [1, 2]\nb: *x\n", "ok.yaml") == {"a": [1, 2],
                                                                           "b": [1, 2]}


def test_permission_warnings(tmp_path):
    token, cfg = tmp_path / "token", tmp_path / "config.yaml"
    token.write_text("t")
    cfg.write_text("{}")
    token.chmod(0o640)
    cfg.chmod(0o644)
    warned = settings_load.permission_warnings({str(token): "secret", str(cfg): "config"})
    assert [p for p, _ in warned] == [str(token)]
    cfg.chmod(0o664)
    token.chmod(0o600)
    warned = settings_load.permission_warnings({str(token): "secret", str(cfg): "config"})
    assert [p for p, _ in warned] == [str(cfg)]
