"""UDP echo servers for the differential test: every datagram is sent back to its sender.

Usage: echo.py ADDR:PORT ...  ([v6]:PORT for IPv6). Prints "ready" once bound.
Bind each of the host's addresses separately rather than 0.0.0.0: a wildcard UDP socket
replies from the address routing picks, not from the one the client sent to, and a
connected client socket discards such a reply (which would look like a DROP). IPv6 sockets
are IPV6_V6ONLY so [::]:PORT and 0.0.0.0:PORT can both be bound.
"""

import selectors
import socket
import sys


def main() -> None:
    sel = selectors.DefaultSelector()
    for spec in sys.argv[1:]:
        host, _, port = spec.rpartition(":")
        host = host.strip("[]")
        v6 = ":" in host
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, int(port)))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            try:
                data, peer = key.fileobj.recvfrom(2048)
                key.fileobj.sendto(data, peer)
            except OSError:  # an ICMP error for an earlier reply, a full buffer: go on
                pass


if __name__ == "__main__":
    main()
