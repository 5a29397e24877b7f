"""The in-process canary split (modelloop_server.canary): which loaded model answers a request."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from torch import nn

from modelloop_server.canary import BUCKETS, CanarySplit, bucket, check_routing_key, choose
from modelloop_server.model import LoadedModel

V1 = LoadedModel("v1", "sha256:" + "1" * 64, Path("v1"), nn.Identity())
V2 = LoadedModel("v2", "sha256:" + "2" * 64, Path("v2"), nn.Identity())


@pytest.mark.parametrize(
    ("current", "shadow", "split", "draw", "answers"),
    [
        (V1, None, CanarySplit("v2", 50), 0.0, V1),  # no shadow loaded: nothing to split to
        (V1, V2, None, 0.0, V1),  # shadow only: it answers nobody
        (V1, V2, CanarySplit("v3", 50), 0.0, V1),  # a split for another candidate
        (V1, V2, CanarySplit("v2", 0), 0.0, V1),
        (V1, V2, CanarySplit("v2", 10), 0.05, V2),
        (V1, V2, CanarySplit("v2", 10), 0.10, V1),
        (V1, V2, CanarySplit("v2", 50), 0.49, V2),
        (None, V2, CanarySplit("v2", 50), 0.0, None),  # nothing served yet: the candidate does not stand in
    ],
)
def test_the_shadow_answers_only_its_declared_share(
    current: LoadedModel | None,
    shadow: LoadedModel | None,
    split: CanarySplit | None,
    draw: float,
    answers: LoadedModel | None,
) -> None:
    assert choose(current, shadow, split, None, draw) is answers


def test_a_routing_key_keeps_its_version_and_keeps_the_candidate_as_the_step_grows() -> None:
    keys = [f"user-{i}" for i in range(5000)]
    at10 = {k for k in keys if choose(V1, V2, CanarySplit("v2", 10), k) is V2}
    at50 = {k for k in keys if choose(V1, V2, CanarySplit("v2", 50), k) is V2}
    assert 0.08 < len(at10) / len(keys) < 0.12 and 0.46 < len(at50) / len(keys) < 0.54
    assert at10 <= at50, "a key the candidate answered at 10% went back to the active version at 50%"
    assert all(choose(V1, V2, CanarySplit("v2", 10), k) is V2 for k in sorted(at10)[:50])  # same answer again


def test_buckets_are_stable_across_processes() -> None:
    assert bucket("user-1") == bucket("user-1")
    assert 0 <= bucket("") < BUCKETS
    assert bucket("user-1") == int.from_bytes(hashlib.sha256(b"user-1").digest()[:8], "big") % BUCKETS


@pytest.mark.parametrize("key", ["", "x" * 257, 7, None])
def test_a_bad_routing_key_is_refused_with_its_rule(key: object) -> None:
    with pytest.raises(ValueError, match="routing key must be a string of 1-256"):
        check_routing_key(key)
