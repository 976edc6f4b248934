"""One QEMU (TCG) guest running Debian 12's generic kernel over the host's own root
filesystem, and the host end of its job protocol (see jobserver.py).

No NIC (`-nodefaults -net none`): everything a test does stays in the guest. The host's
`/` is shared read-only; the guest writes only to tmpfs and to a per-session results
directory.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .kernel import HarnessError, Kernel, build_initramfs

ROOT = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"

BOOT = """#!/bin/busybox sh
# pid 1 after switch_root: the host's tools, the kernel's modules; one job server.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export PYTHONDONTWRITEBYTECODE=1 CI=@CI@
mkdir -p /run/netns /var/run/wireguard /dev/shm /dev/pts
mount -t tmpfs shm /dev/shm
ip link set lo up
echo nwboot: userspace up
cd @ROOT@ && @PYTHON@ @ROOT@/tests/realkernel/jobserver.py /nwlab >/nwlab/jobserver.log 2>&1
echo "nwboot: job server exited $?"
sync
/bin/busybox reboot -f
"""


@dataclass
class JobResult:
    rc: int
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0


class GuestError(Exception):
    pass


def _die_with_parent() -> None:
    """QEMU gets SIGKILL when the pytest process goes away (killed, crashed): no guest
    outlives its session."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Guest:
    """Boot with `start()`, then `run()` commands or `call()` functions in the guest."""

    def __init__(self, kernel: Kernel, *, memory: int = 512) -> None:
        self.kernel = kernel
        self.memory = memory
        self.dir = Path(tempfile.mkdtemp(prefix="nodeward-realkernel-"))
        self.share = self.dir / "share"
        self.share.mkdir()
        self.console = self.dir / "console.log"
        self.proc: subprocess.Popen | None = None
        self.boot_seconds = 0.0
        self.uname = ""
        self.jobs = 0
        self.job_seconds = 0.0
        self._seq = 0

    def argv(self, initrd: Path) -> list[str]:
        share = "security_model=none,multidevs=remap"
        return [QEMU, "-accel", "tcg,tb-size=256", "-cpu", "max", "-M", "pc",
                "-m", str(self.memory), "-smp", "1", "-nodefaults", "-net", "none",
                "-display", "none", "-no-reboot", "-serial", f"file:{self.console}",
                "-kernel", str(self.kernel.vmlinux), "-initrd", str(initrd),
                "-append", "console=ttyS0 panic=-1 loglevel=4 mitigations=off "
                           "rdinit=/init",
                "-virtfs", f"local,path=/,mount_tag=hostroot,readonly=on,{share}",
                "-virtfs", f"local,path={self.share},mount_tag=results,{share}",
                "-virtfs", f"local,path={ROOT},mount_tag=repo,readonly=on,{share}"]

    def start(self, timeout: float = 180.0) -> None:
        if not shutil.which(QEMU):
            raise HarnessError(f"needs {QEMU} (qemu-system-x86)")
        initrd = build_initramfs(self.kernel, self.dir / "initrd.cpio")
        boot = BOOT.replace("@ROOT@", str(ROOT)).replace("@PYTHON@", sys.executable)
        boot = boot.replace("@CI@", os.environ.get("CI", ""))
        (self.share / "boot.sh").write_text(boot)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv(initrd), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        ready = self.share / "ready.json"
        while not ready.exists():
            if self.proc.poll() is not None:
                raise HarnessError(f"QEMU exited ({self.proc.returncode}) before the job "
                                   f"server was up: {self._tail()}")
            if time.monotonic() - t0 > timeout:
                self.close()
                raise HarnessError(f"guest not ready within {timeout:.0f}s: {self._tail()}")
            time.sleep(0.1)
        self.boot_seconds = time.monotonic() - t0
        self.uname = json.loads(ready.read_text())["uname"]

    def _tail(self, n: int = 25) -> str:
        parts = []
        for f in (self.console, self.share / "jobserver.log"):
            if f.exists():
                parts.append(f"--- {f.name}:\n" + "\n".join(
                    f.read_text(errors="replace").splitlines()[-n:]))
        if self.proc and self.proc.stderr and self.proc.poll() is not None:
            parts.append("--- qemu stderr:\n" + self.proc.stderr.read().decode(errors="replace"))
        return "\n".join(parts)

    def _submit(self, job: dict, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            raise GuestError(f"guest is not running: {self._tail()}")
        self._seq += 1
        name = f"{self._seq:06d}.json"
        (self.share / "jobs").mkdir(exist_ok=True)
        tmp = self.share / "jobs" / f"{self._seq:06d}.tmp"
        tmp.write_text(json.dumps(job))
        os.rename(tmp, self.share / "jobs" / name)
        out = self.share / "done" / name
        deadline = time.monotonic() + timeout + 30  # the guest enforces `timeout` itself
        while not out.exists():
            if self.proc.poll() is not None:
                raise GuestError(f"guest died during {job.get('func') or job.get('argv')}: "
                                 f"{self._tail()}")
            if time.monotonic() > deadline:
                raise GuestError(f"no answer within {timeout + 30:.0f}s for {job}")
            time.sleep(0.05)
        res = json.loads(out.read_text())
        out.unlink()
        self.jobs += 1
        self.job_seconds += res.get("seconds", 0.0)
        return res

    def run(self, argv: list[str], timeout: float = 60, input: str | None = None) -> JobResult:
        """A command in the guest's root namespace."""
        r = self._submit({"kind": "sh", "argv": argv, "timeout": timeout, "input": input},
                         timeout)
        return JobResult(r["rc"], r.get("stdout", ""), r.get("stderr", ""),
                         r.get("seconds", 0.0))

    def call(self, func: str, timeout: float = 180, **kwargs) -> object:
        """`module:function(**kwargs)` in a fork of the guest's job server; its JSON
        result, or GuestError carrying the guest-side traceback."""
        r = self._submit({"kind": "call", "func": func, "kwargs": kwargs,
                          "timeout": timeout}, timeout)
        if r.get("rc") != 0:
            raise GuestError(f"{func} failed in the guest:\n{r.get('error')}")
        return r["result"]

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self._submit({"kind": "exit"}, 10)
                self.proc.wait(20)
            except (GuestError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
