"""Version numbering and the one-in-flight rule."""

from __future__ import annotations

import pytest

from modelloop.api.modelversion import Phase
from modelloop.decide.versions import in_flight, modelversion_name, next_version


@pytest.mark.parametrize(
    ("existing", "latest", "expected"),
    [
        ([], None, "v1"),
        (["v1"], None, "v2"),
        (["v9", "v10"], None, "v11"),
        (["v2"], "v7", "v8"),  # v3..v7 pruned: never reuse a number
        ([], "v3", "v4"),
        (["v12"], "v3", "v13"),  # status lagging behind (a lost write) does not go backwards
    ],
)
def test_next_version(existing: list[str], latest: str | None, expected: str) -> None:
    assert next_version(existing, latest) == expected


def test_next_version_rejects_malformed() -> None:
    with pytest.raises(ValueError, match="not of the form v<N>"):
        next_version(["v01"], None)


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        ({}, None),
        ({"v1": Phase.ACTIVE, "v2": Phase.REJECTED}, None),
        ({"v1": Phase.ACTIVE, "v2": Phase.PENDING}, "v2"),
        ({"v2": Phase.VERIFYING, "v10": Phase.TRAINING}, "v2"),
        ({"v1": Phase.VERIFIED}, None),
    ],
)
def test_in_flight(phases: dict[str, Phase], expected: str | None) -> None:
    assert in_flight(phases) == expected


def test_name() -> None:
    assert modelversion_name("digits", "v3") == "digits-v3"
