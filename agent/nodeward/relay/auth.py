"""Who may read the relay: a bearer token the API server vouches for (TokenReview), of a
user on the allow list (the agents' ServiceAccount).

The relay decides what enforcement takes for the control plane's addresses, so it must not
answer anyone. Answers are cached a short while (2 min for a yes, as the API server's own
webhook token cache; 10 s for a no) under the token's SHA-256, never the token itself, so
5,000 agents renewing their watches do not become 5,000 TokenReviews each time.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field

from ..kubeapi import TOKEN_CHARS, KubeApi, Transport

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


@dataclass(frozen=True)
class Verdict:
    status: int  # 200 allowed, 401 not authenticated, 403 not allowed, 503 cannot tell
    reason: str  # one line for the log and the answer; never the token
    user: str = ""


@dataclass
class TokenReviewer:
    api: KubeApi
    allowed: frozenset[str]  # usernames, e.g. system:serviceaccount:nodeward:nodeward
    audiences: tuple[str, ...] = ()
    ok_ttl_s: float = 120.0
    fail_ttl_s: float = 10.0
    max_cached: int = 20_000
    reviews: int = 0  # TokenReviews sent (for tests and the bench)
    _cache: dict[str, tuple[float, Verdict]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _inflight: dict[str, threading.Event] = field(default_factory=dict)

    def check(self, header: str | None) -> Verdict:
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 16384 \
                or not TOKEN_CHARS.fullmatch(token):
            return Verdict(401, "no bearer token")
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        while True:  # one review per token at a time: an agent opens 7 watches at once
            with self._lock:
                hit = self._cache.get(digest)
                if hit is not None and hit[0] > now:
                    return hit[1]
                pending = self._inflight.get(digest)
                if pending is None:
                    self._inflight[digest] = threading.Event()
                    break
            pending.wait(self.api.cfg.read_timeout + self.api.cfg.connect_timeout)
            if not pending.is_set():
                return Verdict(503, "TokenReview did not answer")
        try:
            return self._reviewed(token, digest, now)
        finally:
            with self._lock:
                self._inflight.pop(digest).set()

    def _reviewed(self, token: str, digest: str, now: float) -> Verdict:
        verdict = self._review(token)
        if verdict.status != 503:  # an unreachable API is asked again next time
            ttl = self.ok_ttl_s if verdict.status == 200 else self.fail_ttl_s
            with self._lock:
                if len(self._cache) >= self.max_cached:
                    self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                    if len(self._cache) >= self.max_cached:
                        self._cache.clear()
                self._cache[digest] = (now + ttl, verdict)
        return verdict

    def _review(self, token: str) -> Verdict:
        spec: dict = {"token": token}
        if self.audiences:
            spec["audiences"] = list(self.audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        with self._lock:
            self.reviews += 1
        try:
            r = self.api.request("POST", REVIEW_PATH, body=json.dumps(body).encode(),
                                 content_type="application/json")
        except Transport as e:
            return Verdict(503, f"TokenReview failed: {e.kind}")
        try:
            answer = json.loads(r.body) if r.status < 400 else None
        except ValueError as e:
            return Verdict(503, f"TokenReview failed: {type(e).__name__}")
        if answer is None or not isinstance(answer, dict):
            return Verdict(503, f"TokenReview failed: HTTP {r.status}")
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            return Verdict(401, "token not authenticated by the API server")
        user = str((status.get("user") or {}).get("username", ""))
        if user not in self.allowed:
            return Verdict(403, f"user {user!r} is not allowed to read the relay", user)
        return Verdict(200, "ok", user)
