"""Persistent TCP/UDP prober for differential tests: one process per source namespace.

Reads one JSON request per line on stdin, {"timeout": s, "targets": [[host, port], ...]}
(a target may name its protocol: [host, port, "udp"]; TCP when it does not), starts every
probe at once (non-blocking) and answers one JSON line with one result per target:

* TCP: "open" (handshake completed), "refused" (RST or ICMP error: a REJECT) or "timeout"
  (no answer: a DROP). ICMP errors are read from the socket's error queue (IP_RECVERR):
  when the error comes back while connect() still holds the socket (a REJECT next door,
  over veth, is answered within the syscall) the kernel only notes a soft error and
  would report it after the SYN's 1 s retransmission, which IPv6 always hits.
* UDP: the socket is connected and sends one datagram; "open" when the reply (an echo
  server, tests/lab/echo.py) arrives, "refused" when an ICMP error (port unreachable,
  prohibited, ...) is reported on the connected socket (ECONNREFUSED, EHOSTUNREACH, EACCES),
  "timeout" when neither arrives in time.

One process, many probes: no fork per probe.
"""

import errno
import json
import os
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

IP_RECVERR, IPV6_RECVERR = 11, 25  # linux/in.h, linux/in6.h (not all in the socket module)


def _icmp_error(s: socket.socket) -> bool:
    """An ICMP error waits in the socket's error queue."""
    try:
        s.recvmsg(1, 1024, socket.MSG_ERRQUEUE)
    except OSError:  # EAGAIN: nothing queued
        return False
    return True


def probe(targets: list, timeout: float) -> list[str]:
    sel = selectors.DefaultSelector()
    out = ["timeout"] * len(targets)
    socks = []
    for i, target in enumerate(targets):
        host, port = target[0], target[1]
        udp = len(target) > 2 and target[2] == "udp"
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                          socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        s.setblocking(False)
        socks.append(s)
        if udp:
            try:
                s.connect((host, port))  # no packet yet: fixes the peer, so ICMP errors count
                s.send(f"nw-probe {i}".encode())
            except OSError:
                out[i] = "refused"
                continue
            sel.register(s, selectors.EVENT_READ, (i, True))
            continue
        if s.family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        addr = (host, port) if "%" not in host else socket.getaddrinfo(  # fe80::1%eth0
            host, port, socket.AF_INET6, socket.SOCK_STREAM)[0][4]
        rc = s.connect_ex(addr)
        if rc == 0:
            out[i] = "open"
        elif rc in (errno.EINPROGRESS, errno.EAGAIN):
            sel.register(s, selectors.EVENT_WRITE, (i, False))
        else:
            out[i] = "refused"
    deadline = time.monotonic() + timeout
    while sel.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            i, udp = key.data
            if udp:
                try:
                    key.fileobj.recv(2048)
                    out[i] = "open"
                except BlockingIOError:
                    continue
                except OSError:  # ECONNREFUSED, EHOSTUNREACH, EACCES: an ICMP error
                    out[i] = "refused"
            else:
                err = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                out[i] = "refused" if err or _icmp_error(key.fileobj) else "open"
            sel.unregister(key.fileobj)
    for s in socks:
        s.close()
    return out


def main() -> None:
    if len(sys.argv) > 1:
        from tests.lab.netns import setns

        setns(sys.argv[1])
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(probe(req["targets"], req["timeout"])), flush=True)


if __name__ == "__main__":
    main()
