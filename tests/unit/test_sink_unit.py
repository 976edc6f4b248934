"""What the sink logs of a URL, and how it turns the URL into a request."""

from __future__ import annotations

import pytest

from nodeward.report.sink import _target, redact_url


@pytest.mark.parametrize(("url", "shown"), [
    ("https://c.example/v1", "https://c.example/v1"),
    ("https://u:pw@c.example:8443/v1?key=abc#frag", "https://***@c.example:8443/v1?***"),
    ("http://tok@[fd00::1]:80/x", "http://***@[fd00::1]:80/x"),
    ("http://c.example:99999/x", "<unparseable url>"),
])
def test_redact_url_keeps_no_credential(url, shown):
    assert redact_url(url) == shown


def test_target_sends_query_and_userinfo_as_basic_auth():
    t = _target("https://us%40er:p%3Aw@c.example/v1/f?key=abc")
    assert (t.scheme, t.host, t.port, t.path) == ("https", "c.example", 443, "/v1/f?key=abc")
    import base64

    assert base64.b64decode(t.basic.split()[1]) == b"us@er:p:w"
