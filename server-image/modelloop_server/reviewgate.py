"""The server's side of review authentication: a bearer token in, a reviewer's name out, or a 4xx.

The server faces the network and holds no Kubernetes credentials, so it asks the Pod's sidecar
(over the review-auth Unix socket, see :mod:`modelloop_server.reviewauth`) who a token belongs to
and whether RBAC lets them review this model. Each reviewer then has a token bucket: a leaked or
buggy review client can flood neither the bucket nor the retraining trigger faster than the rate
the Deployment allows (429 with ``Retry-After``).

``MODELLOOP_REVIEW_AUTH=off`` accepts anonymous reviews (recorded as ``anonymous``); the server
says so in its log at start-up. It exists for development setups without a sidecar, not for
production.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .control import REVIEW_AUTH_PATH, ControlClient

MODE_SIDECAR = "sidecar"
MODE_OFF = "off"
MODES = (MODE_SIDECAR, MODE_OFF)
ANONYMOUS = "anonymous"


class ReviewRefused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class RateLimiter:
    """A token bucket per reviewer: ``rate`` reviews per second sustained, ``burst`` at once."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait_seconds(self, key: str) -> float:
        """0 when ``key`` may go now (and one token is taken), else how long until it may."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        return ""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


@dataclass
class ReviewGate:
    mode: str
    socket: Path
    limiter: RateLimiter

    def reviewer(self, authorization: str | None) -> str:
        """The reviewer's identity; raises :class:`ReviewRefused`. Blocking: call it off the event loop."""
        if self.mode == MODE_OFF:
            name = ANONYMOUS
        else:
            token = bearer_token(authorization)
            if not token:
                raise ReviewRefused(
                    401,
                    "reviews need 'Authorization: Bearer <token>': a ServiceAccount token minted for audience "
                    "'modelloop' (kubectl create token <serviceaccount> --audience modelloop) whose identity may "
                    "create retrainpolicies/feedback on this model's policy, or a static reviewer token",
                    {"WWW-Authenticate": 'Bearer realm="modelloop"'},
                )
            name = self._ask_sidecar(token)
        wait = self.limiter.wait_seconds(name)
        if wait > 0:
            raise ReviewRefused(
                429,
                f"reviewer {name} is over the review rate limit ({self.limiter.rate * 60:g}/min, burst "
                f"{self.limiter.burst:g}); retry in {wait:.1f}s",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return name

    def _ask_sidecar(self, token: str) -> str:
        try:
            status, raw = ControlClient(self.socket).request(
                "POST", REVIEW_AUTH_PATH, json.dumps({"token": token}).encode(), timeout=15
            )
        except OSError as e:
            raise ReviewRefused(
                503,
                f"cannot check the reviewer's token: the sidecar's review-auth socket {self.socket} is unreachable ({e})",
            ) from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        if status == 200 and isinstance(answer.get("reviewer"), str):
            return str(answer["reviewer"])
        message = str(answer.get("error") or f"review-auth answered HTTP {status}")
        if status == 401:
            raise ReviewRefused(401, message, {"WWW-Authenticate": 'Bearer realm="modelloop", error="invalid_token"'})
        if status == 403:
            raise ReviewRefused(403, message)
        raise ReviewRefused(503, message, {"Retry-After": "5"})
