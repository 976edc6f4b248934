"""Kernel WireGuard on Debian 12's kernel, in the guest: a 3-node dual-stack mesh with
Calico's device names (wireguard.cali, wg-v6.cali), read by nodeward's scan path inside
node a (interface kinds from rtnetlink, the generic-netlink collector, routes, an offline
cluster view with Calico's key annotations) and checked phase by phase.

The oracle for the collector is wg(8) reading the same devices; for the checks, the
fault each phase made."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.realkernel


@pytest.fixture(scope="module")
def mesh(guest):
    return guest.call("tests.realkernel.scenarios:wireguard_mesh", timeout=240)


def _findings(mesh, phase):
    p = mesh["phases"][phase]
    assert p["notes"] == [], p["notes"]  # every collector read its part
    return [tuple(f) for f in p["findings"]]


def test_calico_devices_are_kernel_wireguard(mesh):
    kinds = mesh["phases"]["healthy"]["kinds"]
    assert kinds["wireguard.cali"] == "wireguard" and kinds["wg-v6.cali"] == "wireguard"
    devs = mesh["phases"]["healthy"]["devices"]
    assert [(d["name"], d["source"], d["listen_port"]) for d in devs] == [
        ("wireguard.cali", "netlink", 51820), ("wg-v6.cali", "netlink", 51821)]


def test_netlink_collector_agrees_with_wg_dump(mesh):
    """Every field the collector reports equals what `wg show all dump` says; the
    private keys in that dump appear nowhere in the collector's output."""
    want, private = {}, []
    for line in mesh["wg_dump"].splitlines():
        f = line.split("\t")
        if len(f) == 5:  # device: name, private key, public key, port, fwmark
            private.append(f[1])
            want[f[0]] = {"public_key": f[2], "listen_port": int(f[3]),
                          "fwmark": 0 if f[4] == "off" else int(f[4], 16), "peers": {}}
        else:  # peer: dev, key, psk, endpoint, allowed, handshake, rx, tx, keepalive
            want[f[0]]["peers"][f[1]] = {
                "endpoint": f[3], "allowed_ips": f[4].split(","),
                "last_handshake": int(f[5]), "rx_bytes": int(f[6]), "tx_bytes": int(f[7])}
    got = {}
    for d in mesh["phases"]["healthy"]["devices"]:
        got[d["name"]] = {"public_key": d["public_key"], "listen_port": d["listen_port"],
                          "fwmark": d["fwmark"],
                          "peers": {p["public_key"]: {
                              "endpoint": p["endpoint"], "allowed_ips": p["allowed_ips"],
                              "last_handshake": int(p["last_handshake"]),
                              "rx_bytes": p["rx_bytes"], "tx_bytes": p["tx_bytes"]}
                              for p in d["peers"]}}
    assert got == want
    assert {d["fwmark"] for d in want.values()} == {0x100000}
    assert len(private) == 2 and all(
        p["last_handshake"] > 0 for d in want.values() for p in d["peers"].values())
    text = json.dumps(mesh["phases"])
    assert not any(k in text for k in private)


def test_healthy_mesh_no_finding(mesh):
    assert _findings(mesh, "healthy") == []


def test_missing_peer_is_nw401_for_that_family(mesh):
    # c's IPv4 peer removed; its IPv6 peer on wg-v6.cali does not stand in for it.
    assert _findings(mesh, "missing_peer") == [("NW401", "c", "10.244.3.0/24")]


def test_wrong_allowed_ip_is_nw403(mesh):
    assert _findings(mesh, "wrong_allowed_ip") == [("NW403", "b", "10.244.2.0/24")]


def test_peer_that_never_handshakes_is_nw402(mesh):
    assert _findings(mesh, "never_handshakes") == [("NW402", "d", "10.244.4.0/24"),
                                                   ("NW402", "d", "fd00:244:4::/64")]


def test_key_mismatch_with_node_annotation_is_nw405(mesh):
    # b rotated its key: a's old session is still younger than 180 s, so no NW402 yet.
    assert _findings(mesh, "key_mismatch") == [("NW405", "b", "10.244.2.0/24")]


POD = {"10.244.2.1": "10.244.2.0/24", "10.244.3.1": "10.244.3.0/24",
       "fd00:244:2::1": "fd00:244:2::/64", "fd00:244:3::1": "fd00:244:3::/64"}


@pytest.mark.parametrize(("phase", "plain"), [
    # a leftover IPIP route for c's IPv4 pods, a direct IPv6 route via eth0
    ("plain_routes", {"10.244.3.0/24": "tunl0", "fd00:244:3::/64": "eth0"}),
    # Calico's layout: WireGuard routes in table 1 behind `not fwmark ... lookup 1`
    ("calico_table", {}),
    # table 1 still there, its rule gone: the kernel falls back to the main table
    ("table_without_rule", {"10.244.3.0/24": "tunl0", "fd00:244:3::/64": "eth0"}),
])
def test_nw404_is_where_the_kernel_routes_in_clear(mesh, phase, plain):
    p = mesh["phases"][phase]
    # the oracle: `ip route get` in node a
    assert {POD[d]: dev for d, dev in p["lookup"].items()
            if dev not in ("wireguard.cali", "wg-v6.cali")} == plain
    nw404 = {f[2] for f in _findings(mesh, phase) if f[0] == "NW404"}
    assert nw404 == set(plain)
    assert ("NW405", "b", "10.244.2.0/24") in _findings(mesh, phase)  # still rotated


def test_nodeward_scan_command_reports_the_same(mesh):
    """`nodeward scan` in node a (cluster section: wireguard, the offline view) gives the
    last phase's findings and exits 1 (high findings)."""
    cli = mesh["cli"]
    assert cli["rc"] == 1, cli["stderr"]
    got = sorted([f["id"], f["component"], f["address"]]
                 for f in json.loads(cli["stdout"])["findings"] if f["id"].startswith("NW4"))
    assert [tuple(f) for f in got] == _findings(mesh, "table_without_rule")


def test_calico_sized_device_read_whole(guest):
    """600 peers with two pod blocks each (~90 KB of attributes: the kernel splits the
    dump over many messages, each repeating the device): every peer, endpoint and
    allowed IP comes back as `wg show dump` has it."""
    big = guest.call("tests.realkernel.scenarios:wireguard_many_peers", timeout=240)
    assert big["got"]["errors"] == []
    assert len(big["want"]) == 600 and set(big["want"]) == set(big["keys"])
    assert big["got"]["peers"] == big["want"]
