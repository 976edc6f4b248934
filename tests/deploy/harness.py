"""Build and run the deployment forms with Debian's own tools, no registry.

- `rootfs_tar`: a Debian 12 root filesystem made by mmdebstrap, cached (keyed by its package
  list) under NODEWARD_DEPLOY_CACHE (default /var/cache/nodeward-deploy), so reruns on the
  same machine skip the download.
- `Podman`: podman with its storage and configuration in that cache (nothing in
  /var/lib/containers): host network namespace by default (no CNI bridge, no iptables chains
  on the host), runc (crun refuses cgroup v1 hybrid hosts), default ulimits a root without
  CAP_SYS_RESOURCE can set.
- `Machine`: systemd as PID 1 in a directory tree, booted by systemd-nspawn inside a test
  network namespace; commands run inside it through nsenter.

Under CI=true a missing tool is a failure, not a skip (`need`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("NODEWARD_DEPLOY_CACHE", "/var/cache/nodeward-deploy"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(*commands: str) -> None:
    """Skip (fail under CI=true) unless root and every command is on PATH."""
    missing = [c for c in commands if shutil.which(c) is None]
    reason = ""
    if os.geteuid() != 0:
        reason = "needs root"
    elif missing:
        reason = f"needs {', '.join(missing)} (tests/run.sh installs them)"
    if reason:
        if IN_CI:
            pytest.fail(f"deploy harness broken under CI: {reason}")
        pytest.skip(reason)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


#: The image's base (what `debian:bookworm-…-slim` plus the interpreter amounts to) and the
#: systemd machine's tree.
IMAGE_BASE = ("image-base", ["python3", "python3-venv", "python-is-python3",
                             "ca-certificates"])
MACHINE = ("systemd-machine", ["systemd", "systemd-sysv", "dbus", "iptables", "nftables",
                               "iproute2", "python3", "python3-venv"])


def prefetch(*trees: tuple[str, list[str]]) -> list[threading.Thread]:
    """Make the tarballs in the background (a fresh machine downloads both at once instead
    of one after the other); `rootfs_tar` later waits on the same lock."""

    def make(name: str, include: list[str]) -> None:
        with contextlib.suppress(BaseException):  # the test that needs it reports it
            rootfs_tar(name, include)

    threads = [threading.Thread(target=make, args=t, daemon=True, name=f"prefetch-{t[0]}")
               for t in trees if not _cached(*t)]
    for t in threads:
        t.start()
    return threads


def _tar_path(name: str, include: list[str], variant: str = "minbase") -> Path:
    key = hashlib.sha256(f"{variant} {','.join(include)}".encode()).hexdigest()[:12]
    return CACHE / f"{name}-{key}.tar"


def _cached(name: str, include: list[str]) -> bool:
    return _tar_path(name, include).exists()


def rootfs_tar(name: str, include: list[str], variant: str = "minbase") -> Path:
    """A cached `mmdebstrap --variant=VARIANT --include=... bookworm` tarball."""
    out = _tar_path(name, include, variant)
    with _locked(CACHE / f"{name}.lock"):
        for stale in CACHE.glob(f"{name}-*.tmp*.tar"):  # a run killed mid-download
            stale.unlink(missing_ok=True)
        if not out.exists():
            tmp = out.with_suffix(f".tmp{os.getpid()}.tar")  # the suffix picks the format
            try:
                subprocess.run(["mmdebstrap", "--quiet", f"--variant={variant}",
                                f"--include={','.join(include)}", "bookworm", str(tmp)],
                               check=True, capture_output=True, text=True, timeout=900)
            except subprocess.CalledProcessError as e:
                tmp.unlink(missing_ok=True)
                if not IN_CI:  # e.g. no route to the Debian mirror on this machine
                    pytest.skip(f"mmdebstrap failed: {e.stderr.strip()[-300:]}")
                raise RuntimeError(f"mmdebstrap failed: {e.stderr[-2000:]}") from e
            tmp.rename(out)
    return out


def extract(tar: Path, dest: Path) -> Path:
    """Unpack a rootfs tarball (numeric owners, devices) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-C", str(dest), "--numeric-owner", "-xpf", str(tar)], check=True,
                   timeout=300)
    return dest


# -- podman --------------------------------------------------------------------------------

STORAGE_CONF = """[storage]
driver = "overlay"
graphroot = "{graph}"
runroot = "{run}"
"""

CONTAINERS_CONF = """[containers]
netns = "host"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{events}"
tmp_dir = "{tmp}"
static_dir = "{static}"
volume_path = "{volumes}"
"""


@dataclass
class Podman:
    """podman whose whole state is under `root` (shared across runs: the layer cache)."""

    root: Path = CACHE / "podman"
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "conf"
        conf.mkdir(exist_ok=True)
        # runroot holds locks and mounts of running containers: a tmpfs-like place per boot.
        run = Path("/run/nodeward-deploy-podman")
        (conf / "storage.conf").write_text(STORAGE_CONF.format(graph=self.root / "storage",
                                                               run=run))
        (conf / "containers.conf").write_text(CONTAINERS_CONF.format(
            events=self.root / "events.log", tmp=run / "libpod-tmp",
            static=self.root / "libpod", volumes=self.root / "volumes"))
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
                    "CONTAINERS_CONF": str(conf / "containers.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf")}
        (conf / "registries.conf").write_text("unqualified-search-registries = []\n")

    def __call__(self, *args: str, check: bool = True, timeout: float = 600,
                 **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout, check=False, **kw)
        if check and r.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])}... failed ({r.returncode}): "
                               f"{r.stderr[-3000:]}")
        return r

    def start(self, *args: str) -> str:
        """`podman run -d ARGS`: the container id. Foreground `podman run` is not used: on
        some hosts conmon's exit file never appears and podman waits its 20 s conmon
        timeout after every container, although the exit code is known at once."""
        return self("run", "-d", *args).stdout.strip().splitlines()[-1]

    def state(self, cid: str) -> tuple[str, int]:
        out = self("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", cid)
        status, code = out.stdout.split()
        return status, int(code)

    def finish(self, cid: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Wait for the container to end; its exit code, stdout and stderr; removed."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                status, code = self.state(cid)
                if status in ("exited", "stopped"):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"container {cid[:12]} still {status} after {timeout}s")
                time.sleep(0.1)
            logs = self("logs", cid)
            return subprocess.CompletedProcess(["podman", "run", cid], code, logs.stdout,
                                               logs.stderr)
        finally:
            self("rm", "-f", "-t", "0", cid, check=False)

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return self.finish(self.start(*args), timeout)

    def has_image(self, name: str) -> bool:
        return self("image", "exists", name, check=False).returncode == 0

    def import_base(self, tar: Path, name: str) -> None:
        """The tarball as image `name`, unless an image of that name came from it already."""
        digest = hashlib.sha256(f"{tar.name} {tar.stat().st_size}".encode()).hexdigest()[:16]
        if self.has_image(name):
            labels = json.loads(self("image", "inspect", name).stdout)[0].get("Labels") or {}
            if labels.get("nodeward.test.base") == digest:
                return
        self("import", "--change", f"LABEL nodeward.test.base={digest}",
             "--change", 'CMD ["bash"]', str(tar), name)


def dockerfile_base(dockerfile: Path) -> str:
    """The default of the Dockerfile's `ARG BASE=` (what its FROM lines use)."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ARG BASE="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{dockerfile}: no ARG BASE=")


def host_ca_mount() -> list[str]:
    """The host's CA bundle over the build container's (pip behind a TLS-inspecting egress
    proxy needs it; on an ordinary machine it is the same Debian bundle)."""
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    return ["-v", f"{ca}:{ca}:ro"] if ca.exists() else []


# -- systemd machine -----------------------------------------------------------------------

@dataclass
class Machine:
    """systemd as PID 1 in `tree`, in network namespace `netns`, via systemd-nspawn."""

    tree: Path
    netns: str
    name: str
    proc: subprocess.Popen | None = None
    leader: int = 0
    log: Path | None = None
    _console: Any = None

    def boot(self, timeout: float = 90, binds: tuple[str, ...] = ()) -> None:
        self.log = self.tree.parent / f"{self.name}.console"
        out = self._console = open(self.log, "w")  # noqa: SIM115 (closed in stop)
        argv = ["systemd-nspawn", "-q", "-b", "-D", str(self.tree), "--register=no",
                "--keep-unit", f"--network-namespace-path=/run/netns/{self.netns}",
                "--capability=CAP_NET_ADMIN", f"--machine={self.name}",
                *(f"--bind-ro={b}" for b in binds)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nspawn exited {self.proc.returncode}: "
                                   f"{self.log.read_text()[-3000:]}")
            if not self.leader:
                self.leader = self._find_leader()
            if self.leader:
                r = self.sh("systemctl", "is-system-running", check=False, timeout=10)
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.5)
        raise TimeoutError(f"{self.name}: not up within {timeout}s (state {state!r}): "
                           f"{self.log.read_text()[-3000:]}")

    def _find_leader(self) -> int:
        """The container's PID 1: the child of nspawn's own child (nspawn forks a helper
        that becomes the container's init after clone)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        for _ in range(3):
            nxt = []
            for p in pids:
                with contextlib.suppress(OSError):
                    kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
                    nxt += [int(k) for k in kids]
            for k in nxt:
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{k}/comm").read_text().strip() == "systemd":
                        return k
            pids = nxt
        return 0

    def sh(self, *argv: str, check: bool = True, timeout: float = 60,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run argv inside the machine (all its namespaces, its root, as its root user)."""
        base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
        cmd = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r",
               "-w", "--", "env", "-i", *(f"{k}={v}" for k, v in {**base, **(env or {})}.items()),
               *argv]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"in {self.name}: {' '.join(argv)} failed ({r.returncode}):\n"
                               f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def stop(self) -> None:
        try:
            self._poweroff()
        finally:
            if self._console is not None:
                self._console.close()

    def _poweroff(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # The tree is thrown away: no orderly shutdown. SIGKILL to the container's init ends
        # every process of its PID namespace at once, and nspawn then exits.
        if self.leader:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def project_wheels(dest: Path, *extra: str) -> Path:
    """Wheels of the working tree's nodeward and its dependencies (plus `extra`
    requirements), built on the host with its pip configuration, for offline installs into a
    tree whose Python is the host's (Debian 12, 3.11)."""
    dest.mkdir(parents=True, exist_ok=True)
    src = Path(tempfile.mkdtemp(prefix="nw-src-", dir=dest.parent))
    try:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, src / name)
        shutil.copytree(REPO / "agent", src / "agent",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        pip = [str(Path(sys.executable).parent / "pip")]
        subprocess.run([*pip, "wheel", "-q", "--wheel-dir", str(dest), str(src), *extra],
                       check=True, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return dest
