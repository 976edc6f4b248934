"""One real-kernel guest for all tests under tests/realkernel (booted on first use, shut
down when the package's tests are done). Without what it needs it skips with the reason;
under CI=true a harness that cannot come up fails every test that wanted it."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from .guest import QEMU, Guest, GuestError
from .kernel import BUSYBOX, HarnessError, prepare_kernel

_STATS: dict[str, object] = {}


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (apt-get download, 9p export of /)"
    if not shutil.which(QEMU):
        return f"needs {QEMU} (apt: qemu-system-x86)"
    if not BUSYBOX.exists():
        return f"needs {BUSYBOX} (apt: busybox-static)"
    return None


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"real-kernel lab broken under CI: {reason}", pytrace=False)
    pytest.skip(f"real-kernel lab unavailable: {reason}")


@pytest.fixture(scope="package")
def guest():
    reason = _missing()
    if reason:
        _unavailable(reason)
    if _STATS.get("broken"):
        _unavailable(str(_STATS["broken"]))
    t0 = time.monotonic()
    try:
        kernel = prepare_kernel()
        _STATS["prepare_s"] = time.monotonic() - t0
        g = Guest(kernel)
        g.start()
    except (HarnessError, GuestError, OSError) as e:
        _STATS["broken"] = str(e)
        _unavailable(str(e))
    _STATS.update(kernel=g.uname, boot_s=g.boot_seconds)
    try:
        yield g
    finally:
        _STATS.update(jobs=g.jobs, job_s=g.job_seconds, total_s=time.monotonic() - t0)
        g.close()


_MARKED: set[str] = set()


def pytest_collection_modifyitems(items):
    _MARKED.update(i.nodeid for i in items if i.get_closest_marker("realkernel"))


def pytest_terminal_summary(terminalreporter):
    if "kernel" not in _STATS:
        return
    passed = [r for r in terminalreporter.stats.get("passed", [])
              if r.nodeid in _MARKED and r.when == "call"]
    s = _STATS
    terminalreporter.write_line(
        f"real-kernel lab: Linux {s['kernel']} under QEMU TCG: kernel ready in "
        f"{s['prepare_s']:.1f}s, boot {s['boot_s']:.1f}s, {s.get('jobs', 0)} guest jobs "
        f"({s.get('job_s', 0):.1f}s), {len(passed)} tests passed, "
        f"{s.get('total_s', 0):.1f}s in all")
