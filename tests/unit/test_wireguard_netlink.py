"""Kernel-path WireGuard parsing from generic netlink messages built here and decoded by
pyroute2 (the host kernel has no WireGuard module; real devices are read in the
real-kernel lab, tests/realkernel/test_wireguard_kernel.py)."""

from __future__ import annotations

import base64
import socket

from nodeward.collect.wireguard import collect_netlink, device_from_netlink

K1 = base64.b64encode(bytes(range(32))).decode()
PRIV = base64.b64encode(b"\x01" * 32).decode()


def _msg(attrs):
    from pyroute2.netlink.generic.wireguard import wgmsg

    m = wgmsg()
    m["cmd"], m["version"] = 0, 1
    m["header"]["type"], m["header"]["flags"] = 30, 0
    m["attrs"] = attrs
    m.encode()
    d = wgmsg(m.data)
    d.decode()
    return d


def _aip(family, addr, mask):
    return {"attrs": [["WGALLOWEDIP_A_FAMILY", family],
                      ["WGALLOWEDIP_A_IPADDR", socket.inet_pton(family, addr)],
                      ["WGALLOWEDIP_A_CIDR_MASK", mask]]}


def test_device_from_built_messages():
    peer = {"attrs": [
        ["WGPEER_A_PUBLIC_KEY", K1],
        ["WGPEER_A_ENDPOINT", {"addr": "10.0.0.2", "port": 51820}],
        ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000, "tv_nsec": 500000000}],
        ["WGPEER_A_RX_BYTES", 10], ["WGPEER_A_TX_BYTES", 20],
        ["WGPEER_A_ALLOWEDIPS", [_aip(socket.AF_INET, "10.244.2.0", 24)]]]}
    # second message of the dump continues the same peer's allowed IPs
    cont = {"attrs": [["WGPEER_A_PUBLIC_KEY", K1],
                      ["WGPEER_A_ALLOWEDIPS", [_aip(socket.AF_INET6, "fd00:2::", 64)]]]}
    m1 = _msg([["WGDEVICE_A_IFNAME", "wireguard.cali"], ["WGDEVICE_A_LISTEN_PORT", 51820],
               ["WGDEVICE_A_PRIVATE_KEY", PRIV], ["WGDEVICE_A_PEERS", [peer]]])
    m2 = _msg([["WGDEVICE_A_IFNAME", "wireguard.cali"], ["WGDEVICE_A_PEERS", [cont]]])
    dev = device_from_netlink([m1, m2])
    assert (dev.name, dev.listen_port, dev.source) == ("wireguard.cali", 51820, "netlink")
    (p,) = dev.peers
    assert p.public_key == K1 and p.endpoint == "10.0.0.2:51820"
    assert p.allowed_ips == ("10.244.2.0/24", "fd00:2::/64")
    assert p.last_handshake == 1700000000.5 and (p.rx_bytes, p.tx_bytes) == (10, 20)
    assert PRIV not in repr(dev)


def test_collect_netlink_without_module_is_an_error_not_a_crash():
    devices, errors = collect_netlink(["wg-nonexistent0"])
    assert devices == () and len(errors) == 1
