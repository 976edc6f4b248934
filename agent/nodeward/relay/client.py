"""The agent's side of the relay: the `cluster.relay` settings and the ApiConfig they make.

    cluster:
      relay:
        url: https://nodeward-relay.nodeward.svc:5443
        ca_file: /etc/nodeward/relay/ca.crt      # the CA the relay's certificate is from
        token_file: ...                          # default: the pod's ServiceAccount token

With a relay, the daemon's cluster view is listed and watched from it and from nothing
else. When the relay is unreachable or refuses, the view keeps its last state and names
what failed (`unknown`: NW500), and the watcher retries the relay with jittered backoff
(0.5 s doubling to 30 s): agents never fall back to the API server, so a relay outage
cannot turn into 5,000 agents listing every Node from it at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import structlog

from ..kubeapi import SA_DIR, ApiConfig, ApiUnavailable, KubeApi, read_token

log = structlog.get_logger("nodeward.relay")


@dataclass(frozen=True)
class RelaySettings:
    url: str
    ca_file: str = ""  # "" = the system trust store
    token_file: str = str(SA_DIR / "token")


def relay_settings(value: Any) -> RelaySettings | None:
    """`cluster.relay`, checked (the one place its keys are parsed). ValueError names the
    key as `relay.<key>: ...` for the settings owner to prefix with the section."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("relay: expected a mapping with url, ca_file, token_file")
    extra = set(value) - {"url", "ca_file", "token_file"}
    if extra:
        raise ValueError(f"relay.{sorted(extra)[0]}: unknown key")
    for key in ("url", "ca_file", "token_file"):
        if key in value and not isinstance(value[key], str):
            raise ValueError(f"relay.{key}: expected a string")
    url = str(value.get("url", "")).rstrip("/")
    u = urlparse(url)
    if u.scheme != "https" or not u.hostname or u.path or u.query or u.username:
        raise ValueError("relay.url: expected https://HOST[:PORT] (the relay is only "
                         "trusted over verified TLS)")
    return RelaySettings(url=url, ca_file=value.get("ca_file", ""),
                         token_file=value.get("token_file") or str(SA_DIR / "token"))


def relay_api_config(relay: RelaySettings, timeout: float, retries: int) -> ApiConfig:
    """Verified TLS to the relay (its CA, else the system store; never unverified) and the
    agent's bearer token for the relay's TokenReview. ApiUnavailable when unreadable."""
    token = read_token(Path(relay.token_file), f"relay token_file {relay.token_file}")
    return ApiConfig(url=relay.url, token=token, ca_file=relay.ca_file,
                     connect_timeout=timeout, read_timeout=timeout, retries=retries)


class FileToken:
    """A requests auth callable sending the token file's current content: the projected
    ServiceAccount token the relay checks expires (1 h in kubernetes/relay) and the kubelet
    rewrites the file well before, so a token read once would lock the agent out."""

    def __init__(self, path: str, token: str, refresh_s: float = 60.0) -> None:
        self.path, self.token, self.refresh_s = path, token, refresh_s
        self.read_at = time.monotonic()

    def __call__(self, r: Any) -> Any:
        if time.monotonic() - self.read_at >= self.refresh_s:
            self.read_at = time.monotonic()
            try:
                self.token = read_token(Path(self.path), f"relay token_file {self.path}")
            except ApiUnavailable as e:  # keep the last one; the relay will say if it is bad
                log.warning("relay_token_unreadable", reason=e.reason)
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


def relay_api(relay: RelaySettings, timeout: float, retries: int,
              token_refresh_s: float = 60.0) -> KubeApi:
    """The agent's client for the relay, its token re-read from the file as it rotates."""
    cfg = relay_api_config(relay, timeout, retries)
    api = KubeApi(cfg)
    api.s.headers.pop("Authorization", None)
    api.s.auth = FileToken(relay.token_file, cfg.token, token_refresh_s)
    return api
