"""A small read-only Kubernetes API client on the standard library (http.client, ssl).

Why not the official client: nodeward needs four list calls, must never crash on an
unreachable or broken API, and must keep its dependency set small. Every failure becomes
`ApiUnavailable(reason)`, which the cluster collector turns into an "unknown" finding.
TLS is always verified (cluster CA, or the system store for an explicit URL without CA).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from . import settings_load
from .report.logs import get_logger

log = get_logger("nodeward.kubeapi")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiUnavailable(Exception):
    """The API could not answer; `reason` is one line for the finding and the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ApiConfig:
    url: str
    token: str = field(default="", repr=False)
    ca_file: str = ""  # "" = system trust store
    client_cert: str = ""  # PEM file paths for client-certificate auth
    client_key: str = field(default="", repr=False)
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    retries: int = 2  # extra attempts on 5xx / connection errors only
    backoff: float = 0.2  # seconds, doubled per attempt
    keep: tuple = field(default=(), repr=False, compare=False)  # memfds behind the paths


TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token


def check_token(token: str, source: str) -> str:
    """The token itself, or ApiUnavailable naming its source but never its content: an
    invalid token in a message is a leaked token (it may be valid somewhere else)."""
    if token and (len(token) > 16384 or not TOKEN_CHARS.fullmatch(token)):
        raise ApiUnavailable(f"{source}: the token has characters not allowed in a bearer "
                             f"token (RFC 6750); not sent")
    return token


def read_token(path: str | Path, source: str) -> str:
    try:
        raw = settings_load.read_bytes(str(path), source, max_bytes=16384)
    except (OSError, settings_load.SettingsError) as e:
        why = e.strerror if isinstance(e, OSError) else str(e)
        raise ApiUnavailable(f"{source}: unreadable: {why}") from None
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        token = "\x00"  # reported by check_token without the content
    return check_token(token, source)


def in_cluster(sa_dir: Path = SA_DIR, **kw: Any) -> ApiConfig:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ApiUnavailable("not in a cluster: KUBERNETES_SERVICE_HOST is unset")
    token = read_token(sa_dir / "token", "service-account token")
    if ":" in host:
        host = f"[{host}]"
    return ApiConfig(url=f"https://{host}:{port}", token=token, ca_file=str(sa_dir / "ca.crt"),
                     **kw)


def _materialize(data_b64: str, keep: list) -> str:
    """kubeconfig *-data fields into an anonymous memory file (memfd): ssl wants a
    path, and a path under /proc/self/fd names memory, never the disk. The file lives as
    long as the ApiConfig holding it (`keep`); nothing is ever written to $TMPDIR."""
    data = base64.b64decode("".join(str(data_b64).split()), validate=True)
    fd = os.memfd_create("nodeward-kube", os.MFD_CLOEXEC)
    f = os.fdopen(fd, "w+b")
    f.write(data)
    f.flush()
    keep.append(f)
    return f"/proc/self/fd/{fd}"


def from_kubeconfig(path: str | Path, context: str = "", **kw: Any) -> ApiConfig:
    """Token, client certificate and CA from a kubeconfig (file paths or inline data).
    Exec/auth-provider plugins are not run: a read-only agent should not spawn them.
    Messages name keys, never values: a kubeconfig is full of secrets."""
    keep: list = []
    try:
        doc = settings_load.load_file(str(path), f"kubeconfig {path}")
        ctx_name = context or doc["current-context"]
        ctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
        user = next((u["user"] for u in doc.get("users") or []
                     if u["name"] == ctx.get("user")), {}) or {}
        base = Path(path).parent

        def file_or_data(key: str, src: dict) -> str:
            if src.get(f"{key}-data"):
                return _materialize(src[f"{key}-data"], keep)
            if src.get(key):
                return str((base / src[key]).resolve())
            return ""

        token = check_token(user.get("token", "") or "", f"kubeconfig {path}: user token")
        if not token and user.get("tokenFile"):
            token = read_token(base / user["tokenFile"], f"kubeconfig {path}: tokenFile")
        if cluster.get("insecure-skip-tls-verify"):
            raise ApiUnavailable(f"kubeconfig {path}: insecure-skip-tls-verify is not "
                                 f"honoured")
        return ApiConfig(url=cluster["server"].rstrip("/"), token=token,
                         ca_file=file_or_data("certificate-authority", cluster),
                         client_cert=file_or_data("client-certificate", user),
                         client_key=file_or_data("client-key", user), keep=tuple(keep), **kw)
    except ApiUnavailable:
        _close_all(keep)
        raise
    except settings_load.SettingsError as e:
        _close_all(keep)
        raise ApiUnavailable(str(e)) from None
    except (OSError, KeyError, TypeError, StopIteration, ValueError, AttributeError) as e:
        _close_all(keep)
        what = f"missing key {e}" if isinstance(e, KeyError) else type(e).__name__
        raise ApiUnavailable(f"kubeconfig {path}: {what}") from None


def _close_all(files: Any) -> None:
    for f in files:
        with contextlib.suppress(OSError):
            f.close()


def scrub(text: str, cfg: ApiConfig) -> str:
    """An exception's text with the token, any bearer header value and URL credentials
    taken out (http.client puts an invalid header's value into its ValueError)."""
    if cfg.token:
        text = text.replace(cfg.token, "<redacted>")
    text = _BEARER.sub("Bearer <redacted>", text)
    return _USERINFO.sub(r"\1***@", text)


_USERINFO = re.compile(r"(\w+://)[^/@\s]*@")
_BEARER = re.compile(r"Bearer\s+[^\s'\"]+")
MAX_LINE = 64 << 20  # one watch event; a Node is ~10 kB, a huge CRD object ~1 MB
MAX_BODY = 1 << 30  # one decompressed answer (a page of 500 Nodes is ~4 MB)
MAX_IDLE = 8  # kept-alive connections per KubeApi (the watcher runs ~7 streams at once)


class Transport(ApiUnavailable):
    """The request did not get an answer: `kind` names what failed (ConnectTimeout,
    ReadTimeout, ConnectionError, SSLError, InvalidRequest), the texts operators know."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


class _Failed(Exception):
    def __init__(self, kind: str, err: BaseException) -> None:
        super().__init__(kind)
        self.kind, self.err = kind, err


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    body: bytes


class KubeApi:
    """HTTP/1.1 on the standard library (http.client + ssl): importing requests and urllib3
    cost the daemon 5-9 MB of RSS for a few lists and watches (bench/kubeclient.py). TLS is verified
    with hostname checks (the cluster CA, else the system store); proxies from the
    environment are not used (see README, cluster settings). Connections are kept alive
    and reused; a kept-alive connection the server dropped is redialled once, silently.
    Thread-safe: each request takes a connection of its own from the idle list."""

    def __init__(self, cfg: ApiConfig, auth: Callable[[], str] | None = None) -> None:
        u = urlsplit(cfg.url)
        self.cfg = cfg
        self.auth = auth  # the current bearer token when it rotates (relay); else cfg.token
        self.tls = u.scheme == "https"
        self.host = u.hostname or ""
        self.bad = "" if u.scheme in ("https", "http") and u.hostname else \
            "not an http(s) URL"  # reported by the first request, as any failure
        try:
            self.port = u.port or (443 if self.tls else 80)
        except ValueError:
            self.port, self.bad = 0, "bad port"
        self.prefix = u.path.rstrip("/")
        self.where = f"[{self.host}]:{self.port}" if ":" in self.host else \
            f"{self.host}:{self.port}"
        self._ctx: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._open: set[http.client.HTTPConnection] = set()

    # -- transport --------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        if self._ctx is None:
            try:
                ctx = ssl.create_default_context(cafile=self.cfg.ca_file or None)
                if self.cfg.client_cert:
                    ctx.load_cert_chain(self.cfg.client_cert, self.cfg.client_key or None)
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                raise _Failed("SSLError", e) from None
            self._ctx = ctx
        return self._ctx

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        if self.bad:
            raise _Failed("InvalidURL", ValueError(f"{self.cfg.url}: {self.bad}"))
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if self.tls:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.cfg.connect_timeout,
                context=self._context())
        else:
            conn = http.client.HTTPConnection(self.host, self.port,
                                              timeout=self.cfg.connect_timeout)
        with self._lock:
            self._open.add(conn)
        return conn, False

    def _give(self, conn: http.client.HTTPConnection, r: http.client.HTTPResponse) -> None:
        """Back to the idle list when the answer was read to its end and may be followed."""
        if r.isclosed() and not r.will_close:
            with self._lock:
                if conn in self._open and len(self._idle) < MAX_IDLE:
                    self._idle.append(conn)
                    return
        self._drop(conn)

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._open.discard(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def _headers(self, extra: dict | None) -> dict:
        h = {"Accept": "application/json", "User-Agent": "nodeward"}
        token = self.auth() if self.auth is not None else self.cfg.token
        if token:
            h["Authorization"] = f"Bearer {token}"
        return {**h, **(extra or {})}

    def _send(self, method: str, path: str, params: dict | None, body: bytes | None,
              headers: dict | None, read_timeout: float
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A connection and the response's head; _Failed(kind) when there is none."""
        target = self.prefix + path + ("?" + urlencode(params) if params else "")
        hdrs = self._headers(headers)
        while True:
            conn, reused = self._take()
            try:
                if conn.sock is None:
                    reused = False
                    try:
                        conn.connect()
                    except TimeoutError as e:
                        raise _Failed("ConnectTimeout", e) from None
                    except ssl.SSLError as e:
                        raise _Failed("SSLError", e) from None
                    except OSError as e:
                        raise _Failed("ConnectionError", e) from None
                conn.sock.settimeout(read_timeout)
                conn.request(method, target, body=body, headers=hdrs)
                return conn, conn.getresponse()
            except _Failed:
                self._drop(conn)
                raise
            except (ConnectionError, http.client.BadStatusLine, ssl.SSLEOFError,
                    ssl.SSLZeroReturnError) as e:
                self._drop(conn)
                if reused:  # the server closed an idle keep-alive: dial again
                    continue
                raise _Failed("ConnectionError", e) from None
            except BaseException as e:
                self._drop(conn)
                raise _kind(e) from None

    def _exchange(self, method: str, path: str, params: dict | None = None,
                  body: bytes | None = None, headers: dict | None = None) -> Reply:
        conn, r = self._send(method, path, params, body, headers, self.cfg.read_timeout)
        try:
            data = r.read()
        except BaseException as e:
            self._drop(conn)
            raise _kind(e) from None
        self._give(conn, r)
        if (r.getheader("Content-Encoding") or "").strip().lower() == "gzip":
            data = _gunzip(data, f"{method} {path}")
        return Reply(r.status, r.reason, data)

    def request(self, method: str, path: str, params: dict | None = None,
                body: bytes | None = None, content_type: str = "") -> Reply:
        """One request, no retry (TokenReview, health probes). Transport when unanswered."""
        try:
            return self._exchange(method, path, params, body,
                                  {"Content-Type": content_type} if content_type else None)
        except _Failed as f:
            raise Transport(self._why(method, path, f), f.kind) from None

    def _why(self, verb: str, path: str, f: _Failed) -> str:
        """One unanswered request's reason: verb, path, what failed, where, and why, with
        no secret in it (scrub)."""
        return scrub(f"{verb} {path}: {f.kind}: {self.where}: {f.err}", self.cfg)

    # -- the API ----------------------------------------------------------------------

    def get(self, path: str, params: dict | None = None) -> dict:
        """GET with bounded retries on 5xx and connection errors; 4xx fails at once."""
        attempt = 0
        while True:
            try:
                # gzip, as requests asked: the API server compresses answers over 128 kB
                # (a Node list ~10x), which 5,000 agents listing at once feel
                r = self._exchange("GET", path, params, headers={"Accept-Encoding": "gzip"})
            except _Failed as f:
                if f.kind == "SSLError":
                    raise ApiUnavailable(scrub(f"GET {path}: TLS verification failed: "
                                               f"{f.err}", self.cfg)) from None
                reason = self._why("GET", path, f)
            else:
                if r.status == 404:
                    raise NotFound(path)
                if r.status < 400:
                    try:
                        body = json.loads(r.body)
                    except ValueError as e:
                        raise ApiUnavailable(f"GET {path}: malformed JSON: {e}") from None
                    if not isinstance(body, dict):
                        raise ApiUnavailable(f"GET {path}: malformed JSON: not an object")
                    return body
                reason = f"GET {path}: HTTP {r.status} {r.reason}"
                if r.status < 500:
                    raise ApiUnavailable(reason)
            if attempt >= self.cfg.retries:
                raise ApiUnavailable(f"{reason} (after {attempt + 1} attempts)")
            log.warning("kubeapi_retry", path=path, attempt=attempt + 1, reason=reason)
            time.sleep(self.cfg.backoff * (2 ** attempt))
            attempt += 1

    def list(self, path: str, limit: int = 500) -> Iterator[dict]:
        """Items of a list, following `continue` tokens."""
        token = ""
        for _ in range(10_000):  # bounded: a server looping on the same token cannot hang us
            params: dict[str, Any] = {"limit": limit}
            if token:
                params["continue"] = token
            body = self.get(path, params)
            items = body.get("items")
            if not isinstance(items, list):
                raise ApiUnavailable(f"GET {path}: malformed list: no items array")
            yield from (i for i in items if isinstance(i, dict))
            token = (body.get("metadata") or {}).get("continue") or ""
            if not token:
                return
        raise ApiUnavailable(f"GET {path}: pagination did not end")

    def list_versioned(self, path: str, limit: int = 500,
                       transform: Callable[[dict], dict] | None = None
                       ) -> tuple[list[dict], str]:
        """All items of a list and the list's resourceVersion (where a watch starts).
        `transform` trims each item as its page arrives, so a big list is never held
        whole (a page of 500 Nodes is ~4 MB of JSON)."""
        items: list[dict] = []
        token, version = "", ""
        for _ in range(10_000):
            params: dict[str, Any] = {"limit": limit}
            if token:
                params["continue"] = token
            body = self.get(path, params)
            page = body.get("items")
            if not isinstance(page, list):
                raise ApiUnavailable(f"GET {path}: malformed list: no items array")
            items.extend((transform(i) if transform else i) for i in page
                         if isinstance(i, dict))
            meta = body.get("metadata") or {}
            del body, page
            version = str(meta.get("resourceVersion") or version)
            token = meta.get("continue") or ""
            if not token:
                return items, version
        raise ApiUnavailable(f"GET {path}: pagination did not end")

    def watch(self, path: str, resource_version: str, timeout_s: int = 300,
              stop: Any = None) -> Iterator[dict]:
        """Watch events after `resource_version` (one JSON object per line of a chunked
        stream), with bookmarks, until the server ends the watch (`timeoutSeconds`) or
        `stop` (a threading.Event) is set. A broken stream raises ApiUnavailable."""
        params = {"watch": "1", "resourceVersion": resource_version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(int(timeout_s))}
        try:
            # read timeout: bookmarks come about every minute; past timeoutSeconds + slack
            # the server is gone even if the socket is not closed
            conn, r = self._send("GET", path, params, None, None, timeout_s + 30)
        except _Failed as f:
            raise ApiUnavailable(self._why("WATCH", path, f)) from None
        ended = False
        try:
            if r.status >= 400:
                with contextlib.suppress(Exception):
                    r.read(65536)
                if r.status == 404:
                    raise NotFound(path)
                if r.status == 410:
                    raise Gone(path)
                raise ApiUnavailable(f"WATCH {path}: HTTP {r.status} {r.reason}")
            while True:
                try:
                    line = r.readline(MAX_LINE)
                except BaseException as e:
                    raise ApiUnavailable(self._why("WATCH", path, _kind(e))) from None
                if not line:
                    ended = True
                    return
                if stop is not None and stop.is_set():
                    return
                if not line.endswith(b"\n") and len(line) >= MAX_LINE:
                    raise ApiUnavailable(f"WATCH {path}: malformed event: longer than "
                                         f"{MAX_LINE >> 20} MiB")
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as e:
                    raise ApiUnavailable(f"WATCH {path}: malformed event: {e}") from None
                if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                    raise ApiUnavailable(f"WATCH {path}: malformed event: no object")
                obj = event["object"]
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(path)
                    raise ApiUnavailable(f"WATCH {path}: error event "
                                         f"{obj.get('code')} {obj.get('reason', '')}")
                yield event
        finally:
            if ended:
                self._give(conn, r)
            else:  # stopped, failed or abandoned mid-stream: the connection is spent
                self._drop(conn)

    def apply(self, path: str, obj: dict) -> None:
        """Server-side apply (create or update) as field manager `nodeward`. One attempt:
        the caller re-applies the whole object next cycle anyway."""
        try:
            r = self._exchange("PATCH", path, {"fieldManager": "nodeward", "force": "true"},
                               json.dumps(obj).encode(),
                               {"Content-Type": "application/apply-patch+yaml"})
        except _Failed as f:
            raise ApiUnavailable(scrub(f"PATCH {path}: {f.kind}: {f.err}", self.cfg)) from None
        if r.status >= 400:
            raise ApiUnavailable(f"PATCH {path}: HTTP {r.status} {r.reason}")

    def close(self) -> None:
        """Every connection closed, streams in flight too (a watcher's stop unblocks its
        readers this way); the client may still be used after, on new connections."""
        with self._lock:
            idle, busy = self._idle, self._open.difference(self._idle)
            self._open, self._idle = set(), []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()
        for conn in busy:  # shut, not closed: the thread reading it closes it (_drop)
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        _close_all(self.cfg.keep)


def _gunzip(data: bytes, what: str) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, MAX_BODY)
    except zlib.error as e:
        raise ApiUnavailable(f"{what}: malformed gzip answer: {e}") from None
    if d.unconsumed_tail:
        raise ApiUnavailable(f"{what}: answer over {MAX_BODY >> 20} MiB uncompressed")
    return out


def _kind(e: BaseException) -> _Failed:
    """What a failure after the connection was made is called."""
    if isinstance(e, _Failed):
        return e
    if isinstance(e, TimeoutError):
        return _Failed("ReadTimeout", e)
    if isinstance(e, ssl.SSLError):
        return _Failed("SSLError", e)
    if isinstance(e, (OSError, http.client.HTTPException)):
        return _Failed("ConnectionError", e)
    if isinstance(e, (ValueError, TypeError)):  # a header or path http.client refuses
        return _Failed("InvalidRequest", e)
    raise e


class Gone(ApiUnavailable):
    """410: the resourceVersion a watch asked for is too old; list again."""

    def __init__(self, path: str) -> None:
        super().__init__(f"WATCH {path}: 410 Gone (resourceVersion too old)")


class NotFound(ApiUnavailable):
    """404: the resource type is not served (e.g. no Calico CRDs). Not an outage."""

    def __init__(self, path: str) -> None:
        super().__init__(f"GET {path}: not found")
