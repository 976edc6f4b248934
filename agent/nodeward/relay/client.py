"""The agent's side of the relay: the ApiConfig the `cluster.relay` settings make (the keys
are checked where every key is: nodeward.settings_table.RELAY).

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
from pathlib import Path

from ..kubeapi import SA_DIR, ApiConfig, ApiUnavailable, KubeApi, read_token
from ..report.logs import get_logger
from ..settings_table import RelaySettings

log = get_logger("nodeward.relay")


def relay_api_config(relay: RelaySettings, timeout: float, retries: int) -> ApiConfig:
    """Verified TLS to the relay (its CA, else the system store; never unverified) and the
    agent's bearer token for the relay's TokenReview. ApiUnavailable when unreadable."""
    path = token_file(relay)
    token = read_token(Path(path), f"relay token_file {path}")
    return ApiConfig(url=relay.url, token=token, ca_file=relay.ca_file,
                     connect_timeout=timeout, read_timeout=timeout, retries=retries)


def token_file(relay: RelaySettings) -> str:
    """The configured token file, else the pod's ServiceAccount token."""
    return relay.token_file or str(SA_DIR / "token")


class FileToken:
    """KubeApi's `auth`: the token file's current content, re-read each minute: the projected
    ServiceAccount token the relay checks expires (1 h in kubernetes/relay) and the kubelet
    rewrites the file well before, so a token read once would lock the agent out."""

    def __init__(self, path: str, token: str, refresh_s: float = 60.0) -> None:
        self.path, self.token, self.refresh_s = path, token, refresh_s
        self.read_at = time.monotonic()

    def __call__(self) -> str:
        if time.monotonic() - self.read_at >= self.refresh_s:
            self.read_at = time.monotonic()
            try:
                self.token = read_token(Path(self.path), f"relay token_file {self.path}")
            except ApiUnavailable as e:  # keep the last one; the relay will say if it is bad
                log.warning("relay_token_unreadable", reason=e.reason)
        return self.token


def relay_api(relay: RelaySettings, timeout: float, retries: int,
              token_refresh_s: float = 60.0) -> KubeApi:
    """The agent's client for the relay, its token re-read from the file as it rotates."""
    cfg = relay_api_config(relay, timeout, retries)
    return KubeApi(cfg, auth=FileToken(token_file(relay), cfg.token, token_refresh_s))
