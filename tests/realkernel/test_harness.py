"""The harness's own pure parts (no guest): module load order from modules.dep, the ELF
found inside a bzImage-like blob, the static-binary test busybox must pass."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from .kernel import HarnessError, _is_static, extract_vmlinux, module_order


def test_module_order_puts_dependencies_first(tmp_path: Path):
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko\n"
        "kernel/fs/netfs/netfs.ko:\n"
        "kernel/net/9p/9pnet.ko:\n"
        "kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/virtio/virtio.ko\n"
        "kernel/virtio/virtio.ko:\n")
    (tmp_path / "modules.builtin").write_text("kernel/fs/overlayfs/overlay.ko\n")
    order = module_order(tmp_path, ("9pnet_virtio", "9p", "overlay"))
    assert order == ["kernel/net/9p/9pnet.ko", "kernel/virtio/virtio.ko",
                     "kernel/net/9p/9pnet_virtio.ko", "kernel/fs/netfs/netfs.ko",
                     "kernel/fs/9p/9p.ko"]  # overlay is built in: nothing to load
    with pytest.raises(HarnessError, match="nosuch"):
        module_order(tmp_path, ("nosuch",))


def test_extract_vmlinux_skips_false_magic(tmp_path: Path):
    elf = b"\x7fELF" + bytes(range(256)) * 64
    blob = (b"MZ" + b"\0" * 100 + b"\xfd7zXZ\x00 not a stream" + b"\0" * 50
            + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailing setup data")
    (tmp_path / "vmlinuz").write_bytes(blob)
    extract_vmlinux(tmp_path / "vmlinuz", tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == elf
    (tmp_path / "bad").write_bytes(b"MZ no kernel here")
    with pytest.raises(HarnessError):
        extract_vmlinux(tmp_path / "bad", tmp_path / "x")


def test_static_binary_check():
    ls = Path("/usr/bin/ls")
    if ls.exists():
        assert not _is_static(ls.read_bytes())
    assert not _is_static(b"#!/bin/sh\n")
