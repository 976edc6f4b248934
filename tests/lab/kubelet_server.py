"""A kubelet-shaped HTTPS server for the authentication lab tests.

Exec'd with argv[0] = "kubelet" (and comm set to it) so the catalog identifies it as the
kubelet, and given `--config FILE`: a KubeletConfiguration YAML whose
`authentication.anonymous.enabled` decides, as in the real kubelet, whether a request
without valid credentials gets `/pods` (200, a PodList) or 401. `/healthz` always answers.
Serves TLS with --tls-cert-file/--tls-private-key-file on every --address:--port.
Prints "ready" once listening.
"""

import argparse
import ctypes
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PR_SET_NAME = 15
#: The one bearer token this kubelet accepts (a real one asks the API server: TokenReview).
TOKEN = "nodeward-lab-kubelet-token"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--netns")
    ap.add_argument("--config", required=True)
    ap.add_argument("--address", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=10250)
    ap.add_argument("--tls-cert-file", required=True)
    ap.add_argument("--tls-private-key-file", required=True)
    args, _extra = ap.parse_known_args()
    if args.netns:
        from tests.lab.netns import setns

        setns(args.netns)
    ctypes.CDLL(None).prctl(PR_SET_NAME, b"kubelet", 0, 0, 0)
    with open(args.config) as f:
        cfg = yaml.safe_load(f) or {}
    anonymous = bool(cfg.get("authentication", {}).get("anonymous", {}).get("enabled", False))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                return self._send(200, b"ok", "text/plain")
            if self.path.startswith("/pods"):
                if anonymous or self.headers.get("Authorization") == f"Bearer {TOKEN}":
                    body = json.dumps({"kind": "PodList", "apiVersion": "v1",
                                       "items": [{"metadata": {"name": "secret-pod"}}]})
                    return self._send(200, body.encode(), "application/json")
                return self._send(401, b"Unauthorized", "text/plain")
            return self._send(404, b"404 page not found", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a) -> None:
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_cert_file, args.tls_private_key_file)
    server = ThreadingHTTPServer((args.address, args.port), Handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
