"""Who may review, decided by the real API server: TokenReview for the identity, RBAC for the right.

The authorizer runs with the serving ServiceAccount's own token (bound to ``system:auth-delegator``
as the example binds it), so these tests also prove the sidecar's RBAC is enough and no more is needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client
from test_server_support import Cluster, publish_versions

from modelloop.api import constants as c
from modelloop.api.artifacts import feedback_prefix
from modelloop.api.feedback import decode_batch
from modelloop_dev.controlplane import ControlPlane
from modelloop_dev.minio import MinioServer
from modelloop_dev.processes import wait_for
from modelloop_server.reviewauth import AUDIENCE, ReviewAuthorizer, StaticTokens

pytestmark = pytest.mark.integration

POLICY = "digits"


def apply(cp: ControlPlane, *items: dict[str, object]) -> None:
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)}))


def token(cp: ControlPlane, namespace: str, sa: str, audience: str | None = AUDIENCE) -> str:
    args = ["-n", namespace, "create", "token", sa, "--duration=1h"]
    if audience:
        args.append(f"--audience={audience}")
    return cp.kubectl(*args).stdout.strip()


def reviewer_role(namespace: str, names: list[str]) -> list[dict[str, object]]:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "digits-reviewer", "namespace": namespace},
        "rules": [
            {
                "apiGroups": [c.GROUP],
                "resources": [f"{c.RETRAINPOLICY_PLURAL}/feedback"],
                "resourceNames": [POLICY],
                "verbs": ["create"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "digits-reviewer", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "digits-reviewer"},
        "subjects": [{"kind": "ServiceAccount", "name": n, "namespace": namespace} for n in names],
    }
    return [role, binding]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def serving_api(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[client.ApiClient]:
    """An API client with the serving ServiceAccount's token, bound to system:auth-delegator only."""
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "serving", "namespace": namespace}}
    delegator = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"{namespace}-serving-auth-delegator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"kind": "ServiceAccount", "name": "serving", "namespace": namespace}],
    }
    accounts = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n, "namespace": namespace}}
        for n in ("review-app", "stranger")
    ]
    apply(control_plane, sa, delegator, *accounts, *reviewer_role(namespace, ["review-app"]))
    cfg = client.Configuration()
    cfg.host = control_plane.server
    cfg.ssl_ca_cert = str(control_plane.ca_file)
    cfg.api_key = {"authorization": f"Bearer {token(control_plane, namespace, 'serving', None)}"}
    api = client.ApiClient(cfg)
    try:
        yield api
    finally:
        api.close()
        control_plane.kubectl("delete", "clusterrolebinding", f"{namespace}-serving-auth-delegator", check=False)


def test_rbac_decides_who_may_review(
    control_plane: ControlPlane, namespace: str, serving_api: client.ApiClient
) -> None:
    auth = ReviewAuthorizer(serving_api, namespace, POLICY, StaticTokens({"alice": "s3cr3t-alice"}))

    allowed = auth.check(token(control_plane, namespace, "review-app"))
    assert (allowed.status, allowed.reviewer) == (200, f"system:serviceaccount:{namespace}:review-app")

    none = auth.check("")
    assert none.status == 401 and "Authorization: Bearer" in none.message and "--audience modelloop" in none.message

    # The same reviewer's token minted for the API server (the default audience) is not ours: it may
    # have been handed to another service, which must not be able to replay it here.
    wrong_audience = auth.check(token(control_plane, namespace, "review-app", None))
    assert wrong_audience.status == 401 and "not accepted" in wrong_audience.message

    stranger = auth.check(token(control_plane, namespace, "stranger"))
    assert stranger.status == 403
    assert f"system:serviceaccount:{namespace}:stranger may not review" in stranger.message
    assert "retrainpolicies/feedback" in stranger.message

    assert auth.check("forged").status == 401
    assert auth.check("s3cr3t-alice") == auth.check("s3cr3t-alice")
    assert auth.check("s3cr3t-alice").reviewer == "static:alice"


def test_revoked_rights_take_effect_after_the_cache_ttl(
    control_plane: ControlPlane, namespace: str, serving_api: client.ApiClient
) -> None:
    clock = Clock()
    auth = ReviewAuthorizer(serving_api, namespace, POLICY, allow_ttl=60, clock=clock)
    t = token(control_plane, namespace, "review-app")
    assert auth.check(t).status == 200
    control_plane.kubectl("-n", namespace, "delete", "rolebinding", "digits-reviewer")
    clock.now += 59
    assert auth.check(t).status == 200, "an allowed token is trusted for the TTL without asking again"
    clock.now += 2
    assert auth.check(t).status == 403, "after the TTL the revoked RoleBinding is seen"


def test_the_api_server_down_is_a_503_that_is_not_cached(namespace: str) -> None:
    cfg = client.Configuration()
    cfg.host = "https://127.0.0.1:9"  # nothing listens
    with client.ApiClient(cfg) as api:
        auth = ReviewAuthorizer(api, namespace, POLICY)
        first = auth.check("some-token")
        assert first.status == 503 and "TokenReview failed" in first.message
        assert auth._cache == {}


def test_static_tokens_from_a_mounted_secret(tmp_path: Path) -> None:
    (tmp_path / "alice").write_text("token-a\n")
    (tmp_path / "bob").write_text("token-b")
    (tmp_path / "..data").mkdir()  # what a Secret volume also contains
    static = StaticTokens.from_dir(tmp_path)
    assert len(static) == 2
    assert static.lookup("token-a") == "alice" and static.lookup("token-b") == "bob"
    assert static.lookup("token-c") is None and static.lookup("") is None
    assert len(StaticTokens.from_dir(tmp_path / "missing")) == 0


def test_reviews_through_the_server_need_a_token_rbac_accepts(
    control_plane: ControlPlane, minio: MinioServer, namespace: str, bucket: str, tmp_path: Path
) -> None:
    """The example's wiring end to end: server (no Kubernetes token) → sidecar → API server; identity stored."""
    digests = publish_versions(minio, bucket, ["v1"])
    cluster = Cluster(control_plane, namespace, minio, bucket)
    tokens_dir = tmp_path / "reviewer-tokens"
    tokens_dir.mkdir()
    (tokens_dir / "alice").write_text("alice-static-token")
    replica = cluster.start_replica(
        tmp_path,
        "digits-0",
        "v1",
        digests["v1"],
        sidecar_env={"MODELLOOP_REVIEWER_TOKENS_DIR": str(tokens_dir)},
        MODELLOOP_REVIEW_BURST="3",
        MODELLOOP_REVIEW_RATE_PER_MINUTE="1",
        MODELLOOP_FEEDBACK_FLUSH_SECONDS="0.5",
    )
    apply(
        control_plane,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "stranger", "namespace": namespace}},
    )
    app = token(control_plane, namespace, "digits-review-app")

    def post(review_id: str, bearer: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
        # Reviews name a prediction: ask first (with our own id), then review that answer.
        answered = httpx.post(f"{replica.base}/v1/predict", json={"input": INPUT, "id": review_id}, timeout=30)
        assert answered.status_code == 200 and answered.json()["id"] == review_id, answered.text
        body = {"id": review_id, "label": 5, "reason": "auth test"}
        return httpx.post(f"{replica.base}/v1/feedback", json=body, headers=headers, timeout=30)

    try:
        anonymous = post("r-anon", None)
        assert anonymous.status_code == 401 and "Authorization: Bearer" in anonymous.json()["error"]
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert post("r-aud", token(control_plane, namespace, "digits-review-app", None)).status_code == 401
        forbidden = post("r-stranger", token(control_plane, namespace, "stranger"))
        assert forbidden.status_code == 403 and "may not review" in forbidden.json()["error"]
        assert post("r-app", app).status_code == 202
        assert post("r-alice", "alice-static-token").status_code == 202
        # The app has spent one of its 3; two more pass, the fourth is refused with a retry time.
        assert [post(f"r-burst-{i}", app).status_code for i in range(3)] == [202, 202, 429]
        limited = post("r-limited", app)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1

        store = minio.store(bucket)

        def stored() -> dict[str, str | None]:
            keys = store.list_keys(feedback_prefix(MODEL))
            return {r.id: r.reviewer for k in keys for r in decode_batch(store.get_bytes(k))}

        wait_for(lambda: len(stored()) == 4, 30, "the accepted reviews in the bucket", replica.server)
        assert stored() == {
            "r-app": f"system:serviceaccount:{namespace}:digits-review-app",
            "r-alice": "static:alice",
            "r-burst-0": f"system:serviceaccount:{namespace}:digits-review-app",
            "r-burst-1": f"system:serviceaccount:{namespace}:digits-review-app",
        }
        refused = {k: replica.metric("modelloop_server_feedback_refused_total", {"reason": k}) for k in REASONS}
        assert refused == {"unauthenticated": 2, "forbidden": 1, "rate_limited": 2}
    finally:
        replica.stop()
        cluster.close()


REASONS = ("unauthenticated", "forbidden", "rate_limited")
INPUT = [float(i % 17) for i in range(64)]
MODEL = "digits"
