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
