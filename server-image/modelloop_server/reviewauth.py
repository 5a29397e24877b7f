"""Who may review a model: the sidecar checks a reviewer's bearer token for the model server.

Reviews become training data and, through live accuracy, decide what serves, so the feedback
endpoint needs an identity and a permission. Kubernetes has both. A caller in the cluster presents
a ServiceAccount token minted for the ``modelloop`` audience: a TokenReview says who it is (and
that the token was minted for us, not replayed from another service that received it), and a
SubjectAccessReview asks RBAC whether that identity may ``create`` the ``retrainpolicies/feedback``
subresource of this policy. RBAC therefore decides who reviews which model, and ``kubectl auth
can-i create retrainpolicies/feedback --as ...`` explains any refusal. Callers outside the cluster
use static tokens, one file per reviewer in a mounted Secret.

This runs in the sidecar, the one container of the Pod that holds API credentials: the server,
which faces the network, asks it over the Pod's control socket and holds no Kubernetes token. A
decision is cached by a hash of the token (allowed for a minute, refused for a few seconds), so a
burst of reviews costs one pair of API calls; a transient API failure is answered 503 and not
cached.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import logging
import socket
import socketserver
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from modelloop.api import constants as c

from .control import REVIEW_AUTH_PATH, bind_control_socket

log = logging.getLogger(__name__)

AUDIENCE = c.REVIEW_AUDIENCE
SUBRESOURCE = c.REVIEW_SUBRESOURCE
STATIC_PREFIX = "static:"
MAX_TOKEN_BYTES = 16 << 10


@dataclass(frozen=True)
class Verdict:
    """200 with the reviewer's name, or 401/403/503 with a message that says what to fix."""

    status: int
    reviewer: str = ""
    message: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 200


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StaticTokens:
    """Reviewers outside the cluster: ``<dir>/<reviewer>`` holds that reviewer's token (a Secret's keys)."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._by_hash = {token_hash(t): name for name, t in tokens.items() if t}

    @classmethod
    def from_dir(cls, path: Path | None) -> StaticTokens:
        if path is None or not path.is_dir():
            return cls({})
        tokens = {}
        for f in sorted(path.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                tokens[f.name] = f.read_text().strip()
        return cls(tokens)

    def lookup(self, token: str) -> str | None:
        """The reviewer's name; every stored hash is compared, in constant time, whatever matches."""
        wanted = token_hash(token)
        found = None
        for known, name in self._by_hash.items():
            if hmac.compare_digest(known, wanted):
                found = name
        return found

    def __len__(self) -> int:
        return len(self._by_hash)


class ReviewAuthorizer:
    """TokenReview + SubjectAccessReview for one policy, with a small cache."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        policy: str,
        static: StaticTokens | None = None,
        audience: str = AUDIENCE,
        allow_ttl: float = 60.0,
        deny_ttl: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authn = client.AuthenticationV1Api(api)
        self.authz = client.AuthorizationV1Api(api)
        self.namespace = namespace
        self.policy = policy
        self.static = static or StaticTokens({})
        self.audience = audience
        self.allow_ttl = allow_ttl
        self.deny_ttl = deny_ttl
        self.max_entries = max_entries
        self.clock = clock
        self._cache: OrderedDict[str, tuple[Verdict, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, token: str) -> Verdict:
        if not token:
            return Verdict(401, message=self._how_to_authenticate("no bearer token"))
        if len(token) > MAX_TOKEN_BYTES:
            return Verdict(401, message=f"the bearer token is longer than {MAX_TOKEN_BYTES} bytes")
        key = token_hash(token)
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[1] > now:
                return hit[0]
        verdict = self._decide(token)
        if verdict.status in (200, 401, 403):
            ttl = self.allow_ttl if verdict.allowed else self.deny_ttl
            with self._lock:
                self._cache[key] = (verdict, now + ttl)
                self._cache.move_to_end(key)
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        return verdict

    def _how_to_authenticate(self, what: str) -> str:
        return (
            f"{what}: send 'Authorization: Bearer <token>' with a ServiceAccount token minted for audience "
            f"'{self.audience}' (kubectl -n {self.namespace} create token <serviceaccount> --audience {self.audience}) "
            "or a reviewer token from the serving Pod's reviewer-tokens Secret"
        )

    def _decide(self, token: str) -> Verdict:
        name = self.static.lookup(token)
        if name is not None:
            return Verdict(200, reviewer=f"{STATIC_PREFIX}{name}")
        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience]))
        try:
            answer = self.authn.create_token_review(review, _request_timeout=(3, 10))
        except Exception as e:  # noqa: BLE001 — API server unreachable or erroring: say so, do not cache
            log.warning("TokenReview failed: %s", e)
            return Verdict(503, message=f"cannot check the reviewer's token now (TokenReview failed: {e}); retry")
        status = answer.status
        if status is None or not status.authenticated or status.user is None:
            error = (status.error if status is not None else None) or "not authenticated"
            return Verdict(401, message=self._how_to_authenticate(f"the token was not accepted ({error})"))
        user = status.user
        attributes = client.V1ResourceAttributes(
            namespace=self.namespace,
            verb="create",
            group=c.GROUP,
            resource=c.RETRAINPOLICY_PLURAL,
            subresource=SUBRESOURCE,
            name=self.policy,
        )
        sar = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user.username, groups=user.groups, uid=user.uid, extra=user.extra, resource_attributes=attributes
            )
        )
        try:
            decision = self.authz.create_subject_access_review(sar, _request_timeout=(3, 10))
        except Exception as e:  # noqa: BLE001
            log.warning("SubjectAccessReview failed: %s", e)
            return Verdict(
                503, message=f"cannot check the reviewer's permission now (SubjectAccessReview failed: {e}); retry"
            )
        if decision.status is None or not decision.status.allowed:
            return Verdict(
                403,
                reviewer=str(user.username),
                message=(
                    f"{user.username} may not review model policy {self.namespace}/{self.policy}: RBAC grants no "
                    f"'create' on '{c.RETRAINPOLICY_PLURAL}/{SUBRESOURCE}' (group {c.GROUP}, resourceName "
                    f"{self.policy}); bind a Role granting it (see examples/serving-deployment.yaml, Role "
                    "<model>-reviewer)"
                ),
            )
        return Verdict(200, reviewer=str(user.username))


MAX_REQUEST_BYTES = MAX_TOKEN_BYTES + 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    """``POST /v1/review-auth {"token": ...}`` → the verdict's status, ``{"reviewer"}`` or ``{"error"}``."""

    server: _ReviewAuthServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        if self.path != REVIEW_AUTH_PATH:
            self._reply(404, {"error": f"no route {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 < length <= MAX_REQUEST_BYTES:
            self._reply(400, {"error": f"body must be 1..{MAX_REQUEST_BYTES} bytes of JSON"})
            return
        try:
            body = json.loads(self.rfile.read(length))
            token = body["token"] if isinstance(body, dict) else None
        except (ValueError, KeyError):
            token = None
        if not isinstance(token, str):
            self._reply(400, {"error": 'body must be {"token": "<bearer token>"}'})
            return
        verdict = self.server.authorizer.check(token)
        answer = {"reviewer": verdict.reviewer} if verdict.allowed else {"error": verdict.message}
        self._reply(verdict.status, answer)

    def _reply(self, status: int, body: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("review-auth: " + format, *args)


class _ReviewAuthServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, authorizer: ReviewAuthorizer) -> None:
        super().__init__("", _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.authorizer = authorizer


def serve_review_auth(path: Path, authorizer: ReviewAuthorizer) -> _ReviewAuthServer:
    """Answer the server's review-auth requests on a Unix socket in the Pod's shared volume, in a thread.

    A socket file, like the control socket: no network path reaches it, so nothing outside the
    Pod can use the sidecar as a token oracle. Call ``shutdown()`` on the result to stop.
    """
    server = _ReviewAuthServer(bind_control_socket(path), authorizer)
    threading.Thread(target=server.serve_forever, name="review-auth", daemon=True).start()
    return server
