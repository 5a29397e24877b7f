"""How deep a request body nests, measured on the raw bytes before any recursive code sees them."""

from __future__ import annotations

import json

import orjson
import pytest

from modelloop_server.bodylimits import nesting_depth


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        pytest.param(b"1", 0, id="scalar"),
        pytest.param(b'"[[["', 0, id="brackets-in-a-string-do-not-count"),
        pytest.param(b"[]", 1, id="empty-list"),
        pytest.param(b'{"input": [[1, 2], [3]]}', 3, id="object-list-list"),
        pytest.param(b'{"a": [1], "b": {"c": [[2]]}}', 4, id="deepest-branch-wins"),
        pytest.param(b'["\\"[[[", [1]]', 2, id="escaped-quote-inside-a-string"),
        pytest.param(b'["\\\\", [[1]]]', 3, id="escaped-backslash-ends-the-string"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, 100_000, id="far-beyond-the-recursion-limit"),
    ],
)
def test_nesting_depth(raw: bytes, depth: int) -> None:
    assert nesting_depth(raw) == depth


def test_depth_matches_the_parsed_structure_of_real_bodies() -> None:
    def parsed_depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max((parsed_depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((parsed_depth(x) for x in v.values()), default=0)
        return 0

    bodies = [
        {"inputs": [[float(i)] * 64 for i in range(8)]},
        {"input": [1, 2], "meta": {"k": ["]]]", {"x": "{{"}]}},
        [{"a": []}, [[[]]], '\\"]'],
    ]
    for body in bodies:
        raw = json.dumps(body).encode()
        assert nesting_depth(raw) == parsed_depth(orjson.loads(raw)), raw
