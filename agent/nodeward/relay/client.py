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

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..kubeapi import SA_DIR, ApiConfig, read_token


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
