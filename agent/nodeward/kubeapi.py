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
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import yaml

if TYPE_CHECKING:  # requests (~60 ms to import) loads only when an API is used
    import requests

log = structlog.get_logger("nodeward.kubeapi")

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


def in_cluster(sa_dir: Path = SA_DIR, **kw: Any) -> ApiConfig:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ApiUnavailable("not in a cluster: KUBERNETES_SERVICE_HOST is unset")
    try:
        token = (sa_dir / "token").read_text().strip()
    except OSError as e:
        raise ApiUnavailable(f"service-account token unreadable: {e}") from None
    if ":" in host:
        host = f"[{host}]"
    return ApiConfig(url=f"https://{host}:{port}", token=token, ca_file=str(sa_dir / "ca.crt"),
                     **kw)


def _materialize(data_b64: str, suffix: str) -> str:
    """kubeconfig *-data fields to a private temp file (requests wants paths)."""
    fd, path = tempfile.mkstemp(prefix="nodeward-kube-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data_b64))
    return path


def from_kubeconfig(path: str | Path, context: str = "", **kw: Any) -> ApiConfig:
    """Token, client certificate and CA from a kubeconfig (file paths or inline data).
    Exec/auth-provider plugins are not run: a read-only agent should not spawn them."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
        ctx_name = context or doc["current-context"]
        ctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
        user = next((u["user"] for u in doc.get("users") or []
                     if u["name"] == ctx.get("user")), {}) or {}
        base = Path(path).parent

        def file_or_data(key: str, suffix: str, src: dict) -> str:
            if src.get(f"{key}-data"):
                return _materialize(src[f"{key}-data"], suffix)
            if src.get(key):
                return str((base / src[key]).resolve())
            return ""

        token = user.get("token", "")
        if not token and user.get("tokenFile"):
            token = (base / user["tokenFile"]).read_text().strip()
        if cluster.get("insecure-skip-tls-verify"):
            raise ApiUnavailable(f"{path}: insecure-skip-tls-verify is not honoured")
        return ApiConfig(url=cluster["server"].rstrip("/"), token=token,
                         ca_file=file_or_data("certificate-authority", ".crt", cluster),
                         client_cert=file_or_data("client-certificate", ".crt", user),
                         client_key=file_or_data("client-key", ".key", user), **kw)
    except ApiUnavailable:
        raise
    except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration, ValueError) as e:
        raise ApiUnavailable(f"kubeconfig {path}: {type(e).__name__}: {e}") from None


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
                raise ApiUnavailable(f"GET {path}: TLS verification failed: {e}") from None
            except requests.RequestException as e:
                reason = f"GET {path}: {type(e).__name__}: {e}"
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

    def apply(self, path: str, obj: dict) -> None:
        """Server-side apply (create or update) as field manager `nodeward`. One attempt:
        the caller re-applies the whole object next cycle anyway."""
        import requests

        try:
            r = self.s.patch(self.cfg.url + path, data=json.dumps(obj), verify=self.verify,
                             params={"fieldManager": "nodeward", "force": "true"},
                             headers={"Content-Type": "application/apply-patch+yaml"},
                             timeout=(self.cfg.connect_timeout, self.cfg.read_timeout))
        except requests.RequestException as e:
            raise ApiUnavailable(f"PATCH {path}: {type(e).__name__}: {e}") from None
        if r.status_code >= 400:
            raise ApiUnavailable(f"PATCH {path}: HTTP {r.status_code} {r.reason}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.s.close()


class NotFound(ApiUnavailable):
    """404: the resource type is not served (e.g. no Calico CRDs). Not an outage."""

    def __init__(self, path: str) -> None:
        super().__init__(f"GET {path}: not found")
