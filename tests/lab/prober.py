"""Persistent TCP prober for differential tests: one process per source namespace.

Reads one JSON request per line on stdin, {"timeout": s, "targets": [[host, port], ...]},
starts every connect at once (non-blocking) and answers one JSON line: a list with
"open" (handshake completed), "refused" (RST or ICMP error: a REJECT) or "timeout"
(no answer: a DROP) per target. One process, many probes: no fork per probe.
"""

import errno
import json
import os
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def probe(targets: list, timeout: float) -> list[str]:
    sel = selectors.DefaultSelector()
    out = ["timeout"] * len(targets)
    socks = []
    for i, (host, port) in enumerate(targets):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.setblocking(False)
        socks.append(s)
        rc = s.connect_ex((host, port))
        if rc == 0:
            out[i] = "open"
        elif rc in (errno.EINPROGRESS, errno.EAGAIN):
            sel.register(s, selectors.EVENT_WRITE, i)
        else:
            out[i] = "refused"
    deadline = time.monotonic() + timeout
    while sel.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            err = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            out[key.data] = "open" if err == 0 else "refused"
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
