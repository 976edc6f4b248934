"""`nodeward relay`: the fan-out relay for large clusters (see nodeward.relay)."""

from __future__ import annotations

import argparse
import select
import signal
import socket
import sys

from ..config import Config
from . import seconds_arg


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def cmd_relay(args: argparse.Namespace, cfg: Config) -> int:
    from ..collect.cluster import ClusterSettings, api_config
    from ..kubeapi import ApiUnavailable, KubeApi
    from ..relay.auth import TokenReviewer
    from ..relay.server import Relay, RelayOptions

    upstream = ClusterSettings(api_url=args.api_url, kubeconfig=args.kubeconfig,
                               token_file=args.token_file, ca_file=args.ca_file,
                               timeout=10.0, retries=2)
    try:
        api = KubeApi(api_config(upstream))
        review_api = KubeApi(api_config(upstream))  # a session of its own for reviews
    except ApiUnavailable as e:
        print(f"nodeward relay: upstream API: {e.reason}", file=sys.stderr)
        return 2
    host, port = args.listen
    opts = RelayOptions(host=host, port=port, cert_file=args.cert, key_file=args.key,
                        stale_after_s=args.stale_after)
    reviewer = TokenReviewer(review_api, frozenset(args.allow or
                                                   ["system:serviceaccount:nodeward:nodeward"]),
                             audiences=tuple(args.audience or ()))
    try:
        relay = Relay(api, reviewer, opts).start()
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        print(f"nodeward relay: cannot serve on {host}:{port} with {args.cert}: {e}",
              file=sys.stderr)
        return 2
    # woken through a socket the C-level handler writes to: a Python handler that set a
    # threading.Event could find its lock held by the very wait it interrupted
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    print(f"nodeward relay: serving on https://{host}:{relay.server.port}", flush=True)
    select.select([wake_r], [], [])
    relay.stop()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("relay", help="watch the API once and fan the projected cluster view "
                                     "out to agents (large clusters)")
    p.add_argument("--listen", type=_listen, default=("0.0.0.0", 5443), metavar="HOST:PORT")
    p.add_argument("--cert", required=True, metavar="PEM", help="serving certificate")
    p.add_argument("--key", required=True, metavar="PEM", help="its private key")
    p.add_argument("--allow", action="append", metavar="USER",
                   help="username allowed to read (repeatable; default "
                        "system:serviceaccount:nodeward:nodeward)")
    p.add_argument("--audience", action="append", metavar="AUD",
                   help="TokenReview audience agents' tokens must carry (repeatable)")
    p.add_argument("--stale-after", type=seconds_arg(3600), default=90.0, metavar="S",
                   help="upstream failing this long: agents are told (default 90)")
    p.add_argument("--api-url", default="", help="upstream API (default: in-cluster)")
    p.add_argument("--kubeconfig", default="")
    p.add_argument("--token-file", default="")
    p.add_argument("--ca-file", default="")
    p.set_defaults(handler=cmd_relay)
