"""Room on the model volume: which versions to drop, or why to refuse, before a download starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelloop_server.diskroom import VolumeLimit, disk_usage, reserve_for, room_decision, volume_limit

MiB = 1 << 20
GiB = 1 << 30
LIMIT = VolumeLimit("models", "1Gi", GiB)
RESERVE = reserve_for(GiB)


@pytest.mark.parametrize(
    ("need", "used", "droppable", "fits", "drop"),
    [
        (100 * MiB, 0, [], True, ()),
        (GiB - RESERVE, 0, [], True, ()),
        (GiB - RESERVE + 1, 0, [], False, ()),
        (400 * MiB, 500 * MiB, [], True, ()),
        (600 * MiB, 500 * MiB, [], False, ()),
        # the previous version's copy goes first, then an old candidate, only as many as needed
        (600 * MiB, 900 * MiB, [("v3", 300 * MiB), ("v4", 300 * MiB)], True, ("v3", "v4")),
        (400 * MiB, 900 * MiB, [("v3", 300 * MiB), ("v4", 300 * MiB)], True, ("v3",)),
        (900 * MiB, 900 * MiB, [("v3", 300 * MiB)], False, ()),
    ],
)
def test_room_decision(
    need: int, used: int, droppable: list[tuple[str, int]], fits: bool, drop: tuple[str, ...]
) -> None:
    decision = room_decision("v6", need, LIMIT, used, droppable, ["v5"])
    assert (decision.fits, decision.drop) == (fits, drop)
    if not fits:
        assert "v6 needs" in decision.message and "sizeLimit 1Gi" in decision.message
        assert "with v5 kept" in decision.message and "Raise sizeLimit of volume 'models'" in decision.message


def test_no_limit_means_no_check() -> None:
    assert room_decision("v2", 10 * GiB, None, 0, [], []).fits


def test_the_message_names_a_limit_that_would_be_enough() -> None:
    decision = room_decision("v2", 800 * MiB, LIMIT, 500 * MiB, [], ["v1"])
    assert not decision.fits
    enough = float(decision.message.rsplit("at least ", 1)[1].split(" ")[0])
    assert enough * GiB >= 500 * MiB + 800 * MiB + RESERVE


def pod(mount: str, volume: dict[str, Any]) -> dict[str, Any]:
    return {
        "spec": {
            "containers": [
                {"name": "server", "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
                {"name": "sidecar", "volumeMounts": [{"name": "models", "mountPath": mount}]},
            ],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Mi"}}, {"name": "models", **volume}],
        }
    }


@pytest.mark.parametrize(
    ("mount", "volume", "expected"),
    [
        ("/models", {"emptyDir": {"sizeLimit": "4Gi"}}, VolumeLimit("models", "4Gi", 4 * GiB)),
        ("/models/", {"emptyDir": {"sizeLimit": "500M"}}, VolumeLimit("models", "500M", 500_000_000)),
        ("/models", {"emptyDir": {}}, None),
        ("/models", {"persistentVolumeClaim": {"claimName": "x"}}, None),
        ("/elsewhere", {"emptyDir": {"sizeLimit": "4Gi"}}, None),
    ],
)
def test_volume_limit_from_the_pod_spec(mount: str, volume: dict[str, Any], expected: VolumeLimit | None) -> None:
    assert volume_limit(pod(mount, volume), Path("/models")) == expected


def test_disk_usage_counts_allocated_blocks(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "weights").write_bytes(b"x" * 10_000)
    with (tmp_path / "sparse").open("wb") as f:
        f.truncate(1 << 30)
    used = disk_usage(tmp_path)
    assert 10_000 <= used < 1 << 20, "a sparse file takes no room; written bytes do"
