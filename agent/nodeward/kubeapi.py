"""A small read-only Kubernetes API client on requests.

Why not the official client: nodeward needs four list calls, must never crash on an
unreachable or broken API, and must keep its dependency set small. Every failure becomes
`ApiUnavailable(reason)`, which the cluster collector turns into an "unknown" finding.
TLS is always verified (cluster CA, or the system store for an explicit URL without CA).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import settings_load
from .report.logs import get_logger

if TYPE_CHECKING:  # requests (~60 ms to import) loads only when an API is used
    import requests

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
    """kubeconfig *-data fields into an anonymous memory file (memfd): requests wants a
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
    """An exception's text with the token and URL credentials taken out (requests puts
    header values into InvalidHeader messages and URLs into connection errors)."""
    if cfg.token:
        text = text.replace(cfg.token, "<redacted>")
    return _USERINFO.sub(r"\1***@", text)


_USERINFO = re.compile(r"(\w+://)[^/@\s]*@")


class KubeApi:
    def __init__(self, cfg: ApiConfig, session: requests.Session | None = None) -> None:
        import requests

        self.cfg = cfg
        self.s = session or requests.Session()
        # Passed on every request too: a session-level `verify` loses to REQUESTS_CA_BUNDLE
        # in the environment (requests#3829), which would silently drop the cluster CA.
        self.verify: str | bool = cfg.ca_file or True
        self.s.verify = self.verify
        if cfg.client_cert:
            self.s.cert = (cfg.client_cert, cfg.client_key) if cfg.client_key else cfg.client_cert
        if cfg.token:
            self.s.headers["Authorization"] = f"Bearer {cfg.token}"
        self.s.headers["Accept"] = "application/json"

    def get(self, path: str, params: dict | None = None) -> dict:
        """GET with bounded retries on 5xx and connection errors; 4xx fails at once."""
        import requests

        url = self.cfg.url + path
        attempt = 0
        while True:
            try:
                r = self.s.get(url, params=params, verify=self.verify,
                               timeout=(self.cfg.connect_timeout, self.cfg.read_timeout))
            except requests.exceptions.SSLError as e:
                raise ApiUnavailable(scrub(f"GET {path}: TLS verification failed: {e}",
                                           self.cfg)) from None
            except (requests.RequestException, ValueError) as e:
                reason = scrub(f"GET {path}: {type(e).__name__}: {e}", self.cfg)
            else:
                if r.status_code == 404:
                    raise NotFound(path)
                if r.status_code < 400:
                    try:
                        body = r.json()
                    except ValueError as e:
                        raise ApiUnavailable(f"GET {path}: malformed JSON: {e}") from None
                    if not isinstance(body, dict):
                        raise ApiUnavailable(f"GET {path}: malformed JSON: not an object")
                    return body
                reason = f"GET {path}: HTTP {r.status_code} {r.reason}"
                if r.status_code < 500:
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
        import requests

        params = {"watch": "1", "resourceVersion": resource_version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(int(timeout_s))}
        try:
            # read timeout: bookmarks come about every minute; past timeoutSeconds + slack
            # the server is gone even if the socket is not closed
            r = self.s.get(self.cfg.url + path, params=params, verify=self.verify,
                           stream=True, timeout=(self.cfg.connect_timeout, timeout_s + 30))
        except requests.RequestException as e:
            raise ApiUnavailable(
                f"WATCH {path}: {type(e).__name__}: {scrub(str(e), self.cfg)}") from None
        with contextlib.closing(r):
            if r.status_code == 404:
                raise NotFound(path)
            if r.status_code == 410:
                raise Gone(path)
            if r.status_code >= 400:
                raise ApiUnavailable(f"WATCH {path}: HTTP {r.status_code} {r.reason}")
            try:
                for line in r.iter_lines(chunk_size=65536):
                    if stop is not None and stop.is_set():
                        return
                    if not line:
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError as e:
                        raise ApiUnavailable(f"WATCH {path}: malformed event: {e}") from None
                    if not isinstance(event, dict) or not isinstance(event.get("object"),
                                                                      dict):
                        raise ApiUnavailable(f"WATCH {path}: malformed event: no object")
                    obj = event["object"]
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(path)
                        raise ApiUnavailable(f"WATCH {path}: error event "
                                             f"{obj.get('code')} {obj.get('reason', '')}")
                    yield event
            except requests.RequestException as e:
                raise ApiUnavailable(
                f"WATCH {path}: {type(e).__name__}: {scrub(str(e), self.cfg)}") from None

    def apply(self, path: str, obj: dict) -> None:
        """Server-side apply (create or update) as field manager `nodeward`. One attempt:
        the caller re-applies the whole object next cycle anyway."""
        import requests

        try:
            r = self.s.patch(self.cfg.url + path, data=json.dumps(obj), verify=self.verify,
                             params={"fieldManager": "nodeward", "force": "true"},
                             headers={"Content-Type": "application/apply-patch+yaml"},
                             timeout=(self.cfg.connect_timeout, self.cfg.read_timeout))
        except (requests.RequestException, ValueError) as e:
            raise ApiUnavailable(scrub(f"PATCH {path}: {type(e).__name__}: {e}",
                                       self.cfg)) from None
        if r.status_code >= 400:
            raise ApiUnavailable(f"PATCH {path}: HTTP {r.status_code} {r.reason}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.s.close()
        _close_all(self.cfg.keep)


class Gone(ApiUnavailable):
    """410: the resourceVersion a watch asked for is too old; list again."""

    def __init__(self, path: str) -> None:
        super().__init__(f"WATCH {path}: 410 Gone (resourceVersion too old)")


class NotFound(ApiUnavailable):
    """404: the resource type is not served (e.g. no Calico CRDs). Not an outage."""

    def __init__(self, path: str) -> None:
        super().__init__(f"GET {path}: not found")
