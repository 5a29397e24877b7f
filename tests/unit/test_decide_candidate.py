"""status.candidate: the newest verifying/verified version with published artifacts, above the active one."""

from __future__ import annotations

import pytest

from modelloop.api.modelversion import Phase
from modelloop.decide.candidate import VersionView, decide_candidate


def _d(n: int) -> str:
    return "sha256:" + f"{n:x}" * 64


def view(version: str, phase: Phase, published: bool = True) -> VersionView:
    n = int(version[1:])
    if not published:
        return VersionView(version, phase)
    return VersionView(version, phase, f"s3://models/digits/{version}/", _d(n))


A = Phase.ACTIVE
CASES = [
    ("nothing at all", [], None, None, None),
    ("only the active version", [view("v1", A)], "v1", "v1", None),
    ("verifying with artifacts", [view("v1", A), view("v2", Phase.VERIFYING)], "v1", "v1", "v2"),
    ("verified, not yet promoted", [view("v1", A), view("v2", Phase.VERIFIED)], "v1", "v1", "v2"),
    ("first version ever, nothing active", [view("v1", Phase.VERIFYING)], None, None, "v1"),
    ("training: no artifacts yet", [view("v1", A), view("v2", Phase.TRAINING, False)], "v1", "v1", None),
    ("verifying without artifact ref", [view("v1", A), view("v2", Phase.VERIFYING, False)], "v1", "v1", None),
    ("pending", [view("v1", A), view("v2", Phase.PENDING, False)], "v1", "v1", None),
    ("promoted: desired names it, cleared", [view("v1", A), view("v2", Phase.PROMOTING)], "v1", "v2", None),
    ("verified but already desired", [view("v1", A), view("v2", Phase.VERIFIED)], "v1", "v2", None),
    ("rejected is cleared", [view("v1", A), view("v2", Phase.REJECTED)], "v1", "v1", None),
    ("failed is cleared", [view("v1", A), view("v2", Phase.FAILED)], "v1", "v1", None),
    ("now active: cleared", [view("v1", Phase.SUPERSEDED), view("v2", A)], "v2", "v2", None),
    ("older than active (after a rollback forward)", [view("v2", Phase.VERIFIED), view("v3", A)], "v3", "v3", None),
    (
        "newest wins while another rolls out",
        [view("v1", A), view("v2", Phase.PROMOTING), view("v3", Phase.VERIFYING)],
        "v1",
        "v2",
        "v3",
    ),
    (
        "numeric, not lexical order",
        [view("v9", A), view("v10", Phase.VERIFIED), view("v11", Phase.VERIFYING)],
        "v9",
        "v9",
        "v11",
    ),
    (
        "a rolled-back version is never prefetched",
        [view("v1", A), view("v2", Phase.ROLLED_BACK)],
        "v1",
        "v1",
        None,
    ),
]


@pytest.mark.parametrize(
    ("versions", "active", "desired", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide_candidate(
    versions: list[VersionView], active: str | None, desired: str | None, expected: str | None
) -> None:
    got = decide_candidate(versions, active, desired)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert got.version == expected
    assert got.artifact_uri == f"s3://models/digits/{expected}/"
    assert got.manifest_digest == _d(int(expected[1:]))
    assert got.model_dump(by_alias=True) == {
        "version": expected,
        "artifactURI": f"s3://models/digits/{expected}/",
        "manifestDigest": _d(int(expected[1:])),
        "canaryPercent": None,  # set by the canary stage only (handlers/retrainpolicy.py)
    }
