"""TCP listeners that accept and close at once, for tests making thousands of connects.

(tests/lab/listener.py never accepts, so its backlog fills after ~128 connections and
further SYNs are dropped, which would look like a firewall DROP.)
Usage: acceptor.py ADDR:PORT ...  ([v6]:PORT for IPv6) Prints "ready" once bound. IPv6
sockets are IPV6_V6ONLY, so [::]:PORT and 0.0.0.0:PORT can both be bound.
"""

import selectors
import socket
import sys


def main() -> None:
    sel = selectors.DefaultSelector()
    for spec in sys.argv[1:]:
        host, _, port = spec.rpartition(":")
        host = host.strip("[]")
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if ":" in host:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, int(port)))
        s.listen(1024)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            try:
                conn, _ = key.fileobj.accept()
                conn.close()
            except BlockingIOError:
                pass


if __name__ == "__main__":
    main()
