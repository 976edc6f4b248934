"""An HTTP server that records every request it gets, for tests of what leaves the agent.

Runs in a lab namespace (--netns), appends one JSON line per request (method, path,
headers, body text) to FILE, answers POST/PATCH with 200 `{}` and anything else with 404.
Prints "ready PORT" once listening on 127.0.0.1.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--netns")
    ap.add_argument("file")
    args = ap.parse_args()
    if args.netns:
        from tests.lab.netns import setns

        setns(args.netns)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _record(self, code: int) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n).decode("utf-8", "replace") if n else ""
            with lock, open(args.file, "a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path,
                                    "headers": dict(self.headers), "body": body}) + "\n")
            payload = b"{}" if code < 300 else b'{"kind":"Status","code":404}'
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            self._record(200)

        def do_PATCH(self) -> None:
            self._record(200)

        def do_GET(self) -> None:
            self._record(404)

        def log_message(self, *a) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
