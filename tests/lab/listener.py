"""A listener whose process name is set, for tests: binds every --tcp/--udp ADDR:PORT.

Started with argv[0] = the component name (kubelet, kube-apiserver, ...) and sets its comm
with prctl, so it looks like that component to a scanner. Prints "ready" once bound. Other
arguments are ignored, so a test can give it a real component's flags (secrets included).
"""

import argparse
import ctypes
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PR_SET_NAME = 15


def split(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host.strip("[]"), int(port)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--netns")
    ap.add_argument("--tcp", action="append", default=[])
    ap.add_argument("--udp", action="append", default=[])
    ap.add_argument("--device", help="SO_BINDTODEVICE every socket to this interface")
    args, _extra = ap.parse_known_args()  # extra argv: what a real component would carry
    if args.netns:
        from tests.lab.netns import setns

        setns(args.netns)
    with open("/proc/self/cmdline", "rb") as f:
        argv0 = f.read().split(b"\0")[0].decode()
    comm = os.environ.get("NW_COMM") or os.path.basename(argv0)
    ctypes.CDLL(None).prctl(PR_SET_NAME, comm.encode()[:15], 0, 0, 0)
    socks = []
    for proto, specs in (("tcp", args.tcp), ("udp", args.udp)):
        for spec in specs:
            host, port = split(spec)
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if args.device:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.device.encode())
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
            if proto == "tcp":
                s.listen(128)
            socks.append(s)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
