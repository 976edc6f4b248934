"""Debian 12's generic kernel, ready to boot under QEMU: the package fetched with apt,
unpacked, depmod'ed and its ELF vmlinux extracted, cached by version outside the repo so
reruns do not download again; and a small busybox initramfs that mounts the host's `/`
read-only (9p + tmpfs overlay) and switch_roots into it.

Why the generic flavour: the cloud one has no 9p. Why the ELF vmlinux: QEMU boots it
through its PVH note, ~3 s faster under TCG than the compressed bzImage.
"""

from __future__ import annotations

import fcntl
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("NODEWARD_REALKERNEL_CACHE", "/var/cache/nodeward-realkernel"))
BUSYBOX = Path("/bin/busybox")
_PKG = re.compile(r"^linux-image-(6\.1\.0-(\d+)-amd64) ")
#: initramfs modules (their dependencies are added from modules.dep)
#: the checkout: shared into the guest at the same path
REPO = Path(__file__).resolve().parents[2]
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
_XZ_MAGIC = b"\xfd7zXZ\x00"


class HarnessError(Exception):
    """The lab cannot be built here; the message says why (a skip, or a CI failure)."""


@dataclass(frozen=True)
class Kernel:
    version: str  # "6.1.0-57-amd64"
    root: Path  # the unpacked package (boot/, lib/modules/VERSION)
    vmlinux: Path

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"{argv[0]}: {e}") from None
    if r.returncode != 0:
        raise HarnessError(f"{' '.join(argv)}: {r.stderr.strip()[-300:]}")
    return r


def newest_version() -> str | None:
    """The highest 6.1.0-NN-amd64 apt knows of (None when apt lists none)."""
    if not shutil.which("apt-cache"):
        return None
    r = subprocess.run(["apt-cache", "search", "--names-only",
                        r"^linux-image-6\.1\.0-[0-9]+-amd64$"],
                       capture_output=True, text=True, timeout=60)
    found = [(int(m.group(2)), m.group(1)) for line in r.stdout.splitlines()
             if (m := _PKG.match(line))]
    return max(found)[1] if found else None


def extract_vmlinux(vmlinuz: Path, out: Path) -> None:
    """The XZ stream inside the bzImage, decompressed (what scripts/extract-vmlinux does)."""
    data = vmlinuz.read_bytes()
    start = data.find(_XZ_MAGIC)
    while start >= 0:
        try:
            elf = lzma.LZMADecompressor().decompress(data[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(b"\x7fELF"):
            out.write_bytes(elf)
            return
        start = data.find(_XZ_MAGIC, start + 1)
    raise HarnessError(f"{vmlinuz}: no XZ-compressed ELF inside")


def _cached(cache: Path) -> list[str]:
    return sorted(p.parent.name for p in cache.glob("*/READY"))


def prepare_kernel(cache: Path = CACHE) -> Kernel:
    """The newest kernel apt offers, from the cache or fetched into it (locked: two
    sessions at once share one download)."""
    for tool in ("apt-get", "dpkg-deb", "depmod"):
        if not shutil.which(tool):
            raise HarnessError(f"needs {tool} (apt, dpkg, kmod)")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HarnessError(f"cannot create {cache}: {e}") from None
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        version = newest_version()
        if version is None:
            have = _cached(cache)
            if not have:
                raise HarnessError("apt-cache lists no linux-image-6.1.0-NN-amd64 "
                                   "(a Debian 12 apt source and `apt-get update` are needed)")
            version = have[-1]
        d = cache / version
        if not (d / "READY").exists():
            try:
                _fetch(version, d)
            except HarnessError:
                shutil.rmtree(d, ignore_errors=True)
                have = _cached(cache)
                if not have:
                    raise
                version, d = have[-1], cache / have[-1]  # offline: the last one fetched
            else:
                for old in cache.iterdir():  # one kernel kept (~560 MB unpacked)
                    if old.is_dir() and old.name != version:
                        shutil.rmtree(old, ignore_errors=True)
        return Kernel(version, d / "root", d / "vmlinux")


def _fetch(version: str, d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        os.chmod(tmp, 0o755)  # apt's sandbox user must be able to write the .deb
        _run(["apt-get", "download", "-q", f"linux-image-{version}"], cwd=tmp)
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise HarnessError(f"apt-get download gave {len(debs)} packages for {version}")
        _run(["dpkg-deb", "-x", str(debs[0]), str(d / "root")])
    _run(["depmod", "-b", str(d / "root"), version])
    extract_vmlinux(d / "root" / "boot" / f"vmlinuz-{version}", d / "vmlinux")
    (d / "READY").write_text(version + "\n")


def module_order(modules_dir: Path, wanted: tuple[str, ...] = BOOT_MODULES) -> list[str]:
    """Paths (relative to modules_dir) of `wanted` and their dependencies, each after
    what it needs, from modules.dep."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[Path(mod).name.removesuffix(".ko").replace("-", "_")] = mod
    builtin = (modules_dir / "modules.builtin").read_text()
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in deps[mod]:
            visit(dep)
        order.append(mod)

    for name in wanted:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif f"/{name}.ko" not in builtin:
            raise HarnessError(f"module {name} neither in modules.dep nor built in")
    return order


INIT = """#!/bin/busybox sh
# pid 1 of the initramfs: host / (9p, read-only) under a tmpfs overlay, then switch_root
# so that module autoloading uses the host's modprobe and the real modules directory.
B=/bin/busybox
$B mkdir -p /proc /sys /dev /ro /rw /newroot
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in $($B cat /modules.list); do $B insmod /$m || echo "nwinit: insmod $m failed"; done
O=trans=virtio,version=9p2000.L,msize=512000
$B mount -t 9p -o $O,ro,cache=loose hostroot /ro || echo "nwinit: 9p hostroot failed"
$B mount -t tmpfs -o mode=0755 rw /rw
$B mkdir -p /rw/u /rw/w
$B mount -t overlay overlay -o lowerdir=/ro,upperdir=/rw/u,workdir=/rw/w /newroot \\
  || echo "nwinit: overlay failed"
N=/newroot
$B mount -t tmpfs -o mode=0755 run $N/run
$B mount -t tmpfs -o mode=1777 tmp $N/tmp
# the checkout (and its venv) from its own share: wherever it lives (CI may clone it under
# /tmp, which the tmpfs above hides), the guest sees it at the same path
$B mkdir -p $N@ROOT@
$B mount -t 9p -o $O,ro,cache=loose repo $N@ROOT@ || echo "nwinit: 9p repo failed"
$B mkdir -p $N/nwlab $N/lib/modules/@VERSION@
$B mount -t 9p -o $O,cache=none results $N/nwlab || echo "nwinit: 9p results failed"
$B mount --bind $N@MODULES@ $N/lib/modules/@VERSION@
$B mount --move /dev $N/dev
$B mount --move /sys $N/sys
$B mount --move /proc $N/proc
exec $B switch_root $N /bin/busybox sh /nwlab/boot.sh
"""


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc archive of (name, mode, data) entries (symlinks: data is the target). The
    one character device, /dev/console (5:1), is what pid 1's first output goes to."""
    out = bytearray()

    def add(ino: int, name: str, mode: int, data: bytes) -> None:
        nb = name.encode() + b"\0"
        rdev = (5, 1) if name == "dev/console" else (0, 0)
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(nb), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + nb)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(entries, 1):
        add(ino, name, mode, data)
    add(0, "TRAILER!!!", 0, b"")
    return bytes(out)


def _is_static(elf: bytes) -> bool:
    """No PT_INTERP program header: runs without a dynamic loader (the initramfs has none)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return all(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] != 3
               for i in range(phnum))


def build_initramfs(kernel: Kernel, out: Path) -> Path:
    if not BUSYBOX.exists():
        raise HarnessError(f"needs {BUSYBOX} (busybox-static)")
    busybox = BUSYBOX.read_bytes()
    if not _is_static(busybox):
        raise HarnessError(f"{BUSYBOX} is dynamically linked: needs busybox-static")
    mods = module_order(kernel.modules)
    init = INIT.replace("@VERSION@", kernel.version).replace("@MODULES@", str(kernel.modules)) \
        .replace("@ROOT@", str(REPO))
    entries: list[tuple[str, int, bytes]] = [("bin", 0o40755, b""), ("dev", 0o40755, b""),
                                         ("dev/console", 0o20600, b"")]
    dirs = sorted({str(p) for m in mods for p in Path(m).parents if str(p) != "."})
    entries += [(d, 0o40755, b"") for d in dirs]
    entries += [(m, 0o100644, (kernel.modules / m).read_bytes()) for m in mods]
    entries += [("bin/busybox", 0o100755, BUSYBOX.read_bytes()),
                ("bin/sh", 0o120777, b"busybox"),
                ("modules.list", 0o100644, "\n".join(mods).encode() + b"\n"),
                ("init", 0o100755, init.encode())]
    out.write_bytes(_cpio(entries))
    return out
