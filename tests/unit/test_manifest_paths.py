"""Manifest file paths are checked where the manifest is parsed, and an invalid promoted manifest is refused for good."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from modelloop.api.artifacts import Manifest, ManifestFile
from modelloop_server.sidecar import REJECTED_RETRY_SECONDS, Rejected, RejectedForGood, TooLarge, rejected_retry_delay

SHA = "0" * 64


@pytest.mark.parametrize("path", ["model.safetensors", "checkpoints/epoch-3.pt", "a/b/c.json", "..hidden", "x..y"])
def test_relative_paths_are_accepted(path: str) -> None:
    assert ManifestFile(path=path, size=1, sha256=SHA).path == path


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("../../etc/passwd", "a '..' segment"),
        ("checkpoints/../../x", "a '..' segment"),
        ("..", "a '..' segment"),
        ("/etc/passwd", "is absolute"),
        ("a//b", "an empty segment"),
        ("dir/", "an empty segment"),
        ("./model.safetensors", "a '.' segment"),
        ("", "file path is empty"),
        ("a\\..\\b", "a NUL or a backslash"),
        ("a\x00b", "a NUL or a backslash"),
    ],
)
def test_paths_that_could_leave_the_version_directory_are_refused(path: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as e:
        ManifestFile(path=path, size=1, sha256=SHA)
    assert fragment in str(e.value)


def test_a_parsed_manifest_is_checked_too() -> None:
    good = Manifest(model="digits", version="v1", created_at=datetime(2026, 1, 1, tzinfo=UTC), files=[])
    raw = good.to_bytes().replace(
        b'"files": []', b'"files": [{"path": "../v0/model.safetensors", "size": 1, "sha256": "' + SHA.encode() + b'"}]'
    )
    with pytest.raises(ValidationError, match=r"files\.0\.path"):
        Manifest.model_validate_json(raw)


def test_an_invalid_promoted_manifest_is_never_retried_other_refusals_are_later() -> None:
    assert rejected_retry_delay(RejectedForGood("bad path"), 1) == math.inf
    for attempts in (1, 5, 50):
        assert REJECTED_RETRY_SECONDS <= rejected_retry_delay(Rejected("corrupt weights"), attempts) <= 1800 * 1.2
        assert math.isfinite(rejected_retry_delay(TooLarge("too big"), attempts))
