"""CLI argument and config errors: one line on stderr, exit 2."""

import pytest

from nodeward import cli


@pytest.mark.parametrize("argv", [
    ["scan", "--format", "xml"],
    ["scan", "--fail-on", "bogus"],
    ["frobnicate"],
    [],
    ["scan", "--nope"],
])
def test_usage_errors(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nodeward: error: ") and err.count("\n") == 1


def test_config_error_exit_2_before_scanning(tmp_path, capsys, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text("node_cidrs: [not-a-cidr]\n")
    monkeypatch.setattr(cli, "take_snapshot", lambda *a, **k: pytest.fail("scanned"))
    assert cli.main(["--config", str(p), "scan"]) == 2
    assert capsys.readouterr().err == (
        f"nodeward: config error: {p}: node_cidrs: 'not-a-cidr' is not a valid CIDR\n")


def test_version(capsys):
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize(("content", "argv", "expected"), [
    ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 10.0.0.300 -j DROP\nCOMMIT\n", [],
     "nodeward: error: ruleset: {p}:3: '10.0.0.300' does not appear"),
    ('{"nftables": 5}', [], "nodeward: error: ruleset: {p}:1: not nft JSON"),
    (b"\xff\xfe*filter", [], "nodeward: error: ruleset: {p}:1: not UTF-8 text"),
    (None, [], "nodeward: error: ruleset: {p}: No such file or directory"),
    ("*filter\nCOMMIT\n", ["--no-firewall"],
     "nodeward: error: --ruleset and --no-firewall contradict each other"),
    (None, ["--no-firewall", "--explain", "22"],
     "nodeward: error: --explain needs the firewall (drop --no-firewall)"),
])
def test_bad_ruleset_files_are_one_line_and_scan_nothing(tmp_path, capsys, monkeypatch,
                                                        content, argv, expected):
    p = tmp_path / "rules.v4"
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    monkeypatch.setattr(cli, "take_snapshot", lambda *a, **k: pytest.fail("scanned"))
    extra = [] if "--explain" in argv else ["--ruleset", str(p)]
    assert cli.main(["--config", "/dev/null", "scan", *extra, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(expected.format(p=p)), err
