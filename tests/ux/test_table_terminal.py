"""The table as an operator meets it: the real CLI on a real pseudo-terminal 80 columns
wide (wrapped to fit, colour on, every title whole) and piped to a file (no wrapping, no
colour, every title whole on one line). Nothing is cut in either."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from nodeward.report import render
from tests.ux import fixture

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
pytestmark = pytest.mark.skipif(not fixture.DUMP.is_file(),
                                reason=f"real-world dump missing: {fixture.DUMP}")


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ux") / "config.yaml"
    p.write_text("node_cidrs: [10.77.0.0/24]\npod_cidrs: [10.244.0.0/16]\n")
    return p


def titles() -> list[str]:
    _, result = fixture.scan()
    assert len(result.findings) >= 15  # the fixture really exposes a lot
    return [f.title for f in result.findings]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    return {**env, "TERM": "xterm-256color", **extra}


def run_on_pty(args: list[str], columns: int = 80, **env: str) -> str:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tests.ux.fixture", *args],
                                cwd=ROOT, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                                env=_env(**env))
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=60)
    finally:
        os.close(master)
    assert proc.returncode == 1, proc.stderr.read().decode()  # high findings: exit 1
    return b"".join(chunks).decode().replace("\r\n", "\n")


def findings_column(text: str) -> str:
    """The FINDINGS column of the findings table, read by its header's offset, its
    wrapped lines joined: what a reader reads down that column."""
    lines = ANSI.sub("", text).splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("SEVERITY"))
    col = lines[head].index("FINDINGS")
    body = []
    for ln in lines[head + 1:]:
        if not ln.strip():
            break
        body.append(ln[col:])
    return " ".join(" ".join(body).split())


def test_pty_80_columns_wraps_to_fit_and_keeps_every_title(config):
    out = run_on_pty(["--config", str(config), "scan"])
    plain = ANSI.sub("", out)
    assert "\x1b[31mHIGH\x1b[0m" in out and "\x1b[1;31mCRITICAL\x1b[0m" in out
    too_long = [ln for ln in plain.splitlines() if len(ln) > 80]
    assert not too_long, too_long
    assert "…" not in plain
    column = findings_column(out)
    for title in titles():
        assert title in column, title
    assert "REMEDIATION" in plain
    assert "Set readOnlyPort: 0 in the KubeletConfiguration" in " ".join(plain.split())
    # One row per socket: the kubelet read-only port's five findings share one row.
    rows = [ln for ln in plain.splitlines() if re.match(r"(CRITICAL|HIGH|MEDIUM|LOW|INFO) ", ln)]
    assert sum("10.244.1.1:10255/tcp" in r for r in rows) == 1


def test_pty_honours_no_color_and_no_remediation(config):
    out = run_on_pty(["scan", "--no-remediation", "--config", str(config)], NO_COLOR="1")
    assert "\x1b[" not in out
    assert "REMEDIATION" not in out
    assert "FINDINGS" in out


def test_pty_wide_terminal_does_not_wrap(config):
    out = run_on_pty(["--config", str(config), "scan"], columns=250)
    lines = ANSI.sub("", out).splitlines()
    for title in titles():
        assert any(title in ln for ln in lines), title


def test_piped_to_a_file_nothing_wraps_or_is_coloured(config, tmp_path):
    path = tmp_path / "out.txt"
    with path.open("w") as f:
        r = subprocess.run([sys.executable, "-m", "tests.ux.fixture", "scan", "--config",
                            str(config)], cwd=ROOT, stdout=f, stderr=subprocess.PIPE,
                           env=_env(COLUMNS="40"), timeout=60)
    assert r.returncode == 1, r.stderr
    text = path.read_text()
    assert "\x1b[" not in text and "…" not in text
    lines = text.splitlines()
    for title in titles():
        assert any(title in ln for ln in lines), title  # whole, on one line
    assert max(map(len, lines)) > 120  # the old table cut here


def test_output_file_is_the_same_table(config, tmp_path):
    out = tmp_path / "report.txt"
    r = subprocess.run([sys.executable, "-m", "tests.ux.fixture", "scan", "--output", str(out),
                        "--config", str(config)], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    snap, result = fixture.scan()
    assert out.read_text() == render.to_table(snap, result, fixture.CFG.catalog, None)


def test_table_wraps_long_words_never_cuts_them():
    from nodeward.report import table

    lines = table.render(["A", "B"], [[["x"], ["averyveryverylongword and more words"]]], 12)
    # The column is as wide as its longest word (the line runs past 12), never narrower.
    assert lines[1:] == ["x  averyveryverylongword", "     and more words"]
    lines = table.render(["A", "B"], [[["x"], ["one two three four"]]], 10)
    assert lines == ["A  B", "x  one two", "     three", "     four"]
