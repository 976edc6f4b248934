# ruff: noqa: E501  (fixture lines are copied /proc/net layout)
"""The sock_diag decoder and the /proc/net parser, on bytes and text the test builds."""

import socket
import struct

import pytest

from nodeward.collect import sockets as S


def diag_msg(family, addr, port, inode, uid=0, ifindex=0, v6only=None, state=10):
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    src = socket.inet_pton(af, addr).ljust(16, b"\0")
    body = struct.pack("=BBBB", af, state, 0, 0) + struct.pack("!HH", port, 0)
    body += src + b"\0" * 16 + struct.pack("=I", ifindex) + b"\0" * 8
    body += struct.pack("=IIIII", 0, 0, 0, uid, inode)
    if v6only is not None:
        body += struct.pack("=HHB3x", 5, S.INET_DIAG_SKV6ONLY, int(v6only))
    body += struct.pack("=HHB3x", 5, 8, 0)  # INET_DIAG_SHUTDOWN, ignored
    return struct.pack("=IHHII", 16 + len(body), S.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def done():
    return struct.pack("=IHHIIi", 20, S.NLMSG_DONE, 2, 1, 0, 0)


def test_decodes_v4_and_v6_and_stops_at_done():
    buf = diag_msg(4, "10.1.2.3", 10250, 111, uid=0, ifindex=3)
    buf += diag_msg(6, "fd00::1", 6443, 222, uid=1000, v6only=True)
    buf += diag_msg(6, "::", 2380, 333, v6only=False)
    out = []
    assert S.parse_diag_messages(buf + done(), "tcp", out)
    assert out == [
        S.RawSocket("tcp", 4, "10.1.2.3", 10250, 111, 0, 3, None),
        S.RawSocket("tcp", 6, "fd00::1", 6443, 222, 1000, 0, True),
        S.RawSocket("tcp", 6, "::", 2380, 333, 0, 0, False),
    ]


def test_partial_buffer_wants_more():
    out = []
    assert not S.parse_diag_messages(diag_msg(4, "127.0.0.1", 53, 9), "udp", out)
    assert out[0].port == 53 and out[0].protocol == "udp"


def test_error_message_raises_unavailable():
    err = struct.pack("=IHHIIi", 36, S.NLMSG_ERROR, 0, 1, 0, -2) + b"\0" * 16
    with pytest.raises(S.SockDiagUnavailable):
        S.parse_diag_messages(err, "udp", [])


def test_corrupt_length_is_an_error():
    with pytest.raises(ValueError):
        S.parse_diag_messages(struct.pack("=IHHII", 4, 20, 0, 0, 0), "tcp", [])


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2AF8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0
   1: 0100007F:0016 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:192B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 777 1 0
   1: 000080FE00000000FF00FC00010000FE:0035 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1 0
"""
PROC_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 55 2 0 0
  2: 0500000A:E1F4 0600000A:0035 01 00000000:00000000 00:00000000 00000000     0        0 56 2 0 0
"""


@pytest.mark.skipif(not S._LITTLE, reason="fixture text is from a little-endian host")
def test_proc_net_parsing():
    assert S.parse_proc_net(PROC_TCP, "tcp", 4) == [
        S.RawSocket("tcp", 4, "127.0.0.1", 11000, 4242, 0)]
    assert S.parse_proc_net(PROC_TCP6, "tcp", 6) == [
        S.RawSocket("tcp", 6, "::", 6443, 777, 998),
        S.RawSocket("tcp", 6, "fe80::fc:ff:fe00:1", 53, 778, 0)]
    # only the unconnected UDP socket is a service
    assert S.parse_proc_net(PROC_UDP, "udp", 4) == [
        S.RawSocket("udp", 4, "0.0.0.0", 4789, 55, 0)]


def test_proc_net_malformed_line_named():
    bad = "header\n   0: 0100007F:ZZZZ 00000000:0000 0A 0 0 0 0 0 0 99 1 0\n"
    with pytest.raises(ValueError, match=r"/proc/net/tcp line 2: cannot parse"):
        S.parse_proc_net(bad, "tcp", 4)
