"""The server's review gate: bearer parsing, the per-reviewer token bucket, the off switch."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelloop_server.reviewgate import (
    ANONYMOUS,
    MODE_OFF,
    MODE_SIDECAR,
    RateLimiter,
    ReviewGate,
    ReviewRefused,
    bearer_token,
)
from modelloop_server.settings import ServerSettings, SettingsError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("header", "token"),
    [(None, ""), ("", ""), ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", ""), ("Bearer", "")],
)
def test_bearer_token(header: str | None, token: str) -> None:
    assert bearer_token(header) == token


def test_each_reviewer_has_its_own_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    assert [limiter.wait_seconds("a") for _ in range(3)] == [0.0, 0.0, 1.0]
    assert limiter.wait_seconds("b") == 0.0, "another reviewer is not slowed by the first"
    clock.now = 0.5
    assert limiter.wait_seconds("a") == pytest.approx(0.5)
    clock.now = 1.0
    assert limiter.wait_seconds("a") == 0.0
    clock.now = 100.0
    assert [limiter.wait_seconds("a") for _ in range(3)] == [0.0, 0.0, 1.0], "the burst refills, never beyond it"


def test_the_bucket_map_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=3)
    for k in "abcde":
        limiter.wait_seconds(k)
    assert list(limiter._buckets) == ["c", "d", "e"]


def test_off_records_anonymous_and_still_limits(tmp_path: Path) -> None:
    gate = ReviewGate(MODE_OFF, tmp_path / "none.sock", RateLimiter(rate=1e-9, burst=1))
    assert gate.reviewer(None) == ANONYMOUS
    with pytest.raises(ReviewRefused) as refused:
        gate.reviewer(None)
    assert refused.value.status == 429 and "Retry-After" in refused.value.headers


def test_sidecar_mode_without_a_token_is_401_and_an_unreachable_sidecar_503(tmp_path: Path) -> None:
    gate = ReviewGate(MODE_SIDECAR, tmp_path / "none.sock", RateLimiter(rate=1, burst=1))
    with pytest.raises(ReviewRefused) as no_token:
        gate.reviewer(None)
    assert no_token.value.status == 401 and "--audience modelloop" in no_token.value.message
    with pytest.raises(ReviewRefused) as down:
        gate.reviewer("Bearer abc")
    assert down.value.status == 503 and "review-auth socket" in down.value.message


def test_settings_default_to_authenticated_reviews(tmp_path: Path) -> None:
    env = {"MODELLOOP_MODEL_DIR": str(tmp_path), "MODELLOOP_MODEL": "digits"}
    s = ServerSettings.from_env(env)
    assert s.review_auth == MODE_SIDECAR and s.review_path == tmp_path / ".review-auth.sock"
    assert ServerSettings.from_env({**env, "MODELLOOP_REVIEW_AUTH": "off"}).review_auth == MODE_OFF
    with pytest.raises(SettingsError, match="MODELLOOP_REVIEW_AUTH='none' must be"):
        ServerSettings.from_env({**env, "MODELLOOP_REVIEW_AUTH": "none"})
