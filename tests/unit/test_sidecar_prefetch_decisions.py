"""Pure parts of candidate prefetch: parsing status.candidate, one download per version, disk retention."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from modelloop.api.artifacts import MANIFEST_FILE
from modelloop_server.modeldir import clean_temp_dirs, prune, versions_on_disk
from modelloop_server.sidecar import PREFETCH, PROMOTION, Desired, DesiredError, Downloads, parse_candidate

DIGEST = "sha256:" + "c" * 64
OK = {"version": "v4", "artifactURI": "s3://models/digits/v4/", "manifestDigest": DIGEST}


def _policy(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "digits"}, "status": status}


def test_parse_candidate_reads_its_own_field() -> None:
    assert parse_candidate(_policy({}), "digits") is None
    assert parse_candidate(_policy({"desired": OK}), "digits") is None, "desired is not a candidate"
    assert parse_candidate(_policy({"candidate": OK}), "digits") == Desired("v4", "s3://models/digits/v4/", DIGEST)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({**OK, "artifactURI": "s3://models/other/v4/"}, "status.candidate.artifactURI"),
        ({**OK, "manifestDigest": "sha256:abc"}, "status.candidate.manifestDigest"),
        ({**OK, "version": "4"}, "status.candidate of the policy is unusable"),
    ],
)
def test_parse_candidate_names_the_bad_field(bad: dict[str, str], fragment: str) -> None:
    with pytest.raises(DesiredError) as e:
        parse_candidate(_policy({"candidate": bad}), "digits")
    assert fragment in str(e.value)


def test_downloads_second_caller_waits_for_the_first() -> None:
    d = Desired("v4", "s3://models/digits/v4/", DIGEST)
    other = Desired("v5", "s3://models/digits/v5/", DIGEST)
    downloads = Downloads()
    assert downloads.begin(d, PREFETCH) is None
    assert downloads.begin(d, PROMOTION) == PREFETCH, "the same version is never fetched twice at once"
    assert downloads.begin(other, PROMOTION) is None
    assert downloads.busy(PROMOTION) and downloads.busy(PREFETCH)
    assert downloads.versions() == {"v4", "v5"}
    assert not downloads.wait(d, 0.01)
    finished: list[bool] = []
    waiter = threading.Thread(target=lambda: finished.append(downloads.wait(d, 30)))
    waiter.start()
    downloads.end(d)
    waiter.join(30)
    assert finished == [True]
    assert not downloads.busy(PREFETCH) and downloads.busy(PROMOTION)
    assert downloads.begin(d, PROMOTION) is None, "free again once the first download ended"


def _version(model_dir: Path, version: str) -> None:
    (model_dir / version).mkdir(parents=True)
    (model_dir / version / MANIFEST_FILE).write_text("{}")


@pytest.mark.parametrize(
    ("on_disk", "protect", "kept"),
    [
        # served v4, previous v3, prefetched candidate v5: the oldest other goes
        (["v1", "v2", "v3", "v4", "v5"], {"v4", "v3", "v5"}, ["v3", "v4", "v5"]),
        # a refused-then-replaced candidate (v5) goes before anything protected
        (["v3", "v4", "v5", "v6"], {"v4", "v3", "v6"}, ["v3", "v4", "v6"]),
        # more protected than keep: all of them stay
        (["v2", "v3", "v4", "v5"], {"v2", "v3", "v4", "v5"}, ["v2", "v3", "v4", "v5"]),
        (["v1", "v2"], {"v2"}, ["v1", "v2"]),
    ],
)
def test_prune_keeps_served_previous_and_candidate(
    tmp_path: Path, on_disk: list[str], protect: set[str], kept: list[str]
) -> None:
    for v in on_disk:
        _version(tmp_path, v)
    removed = prune(tmp_path, 3, protect)
    assert versions_on_disk(tmp_path) == kept
    assert sorted(removed) == sorted(set(on_disk) - set(kept))


def test_clean_temp_dirs_of_one_version_leaves_the_other_download(tmp_path: Path) -> None:
    for name in (".v4.abc", ".v5.def", ".v40.x"):
        (tmp_path / name).mkdir()
    clean_temp_dirs(tmp_path, "v4")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".v40.x", ".v5.def"]
    clean_temp_dirs(tmp_path)
    assert list(tmp_path.iterdir()) == []
