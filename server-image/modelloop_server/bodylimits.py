"""How deeply a JSON body nests, measured without parsing it and without recursion.

The request handlers walk parsed bodies recursively (and so does ``torch.tensor``), so a body such
as ``{"input": [[[[...]]]]}`` a few thousand levels deep used to end in ``RecursionError`` and a
500. The server measures the depth on the raw bytes first and refuses anything deeper than its
limit with a 400, before any recursive code sees the body. Run once per request on bodies of up to
``max_body_bytes``, so it is written with C-speed primitives (a regex, ``bytes.translate`` and a
numpy cumulative sum), not a Python loop over every byte.
"""

from __future__ import annotations

import re

import numpy as np
from starlette.requests import Request

# A JSON string, unrolled so that the match is linear in its length: brackets inside strings do not nest.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = np.frombuffer(b"[", np.uint8)[0], np.frombuffer(b"{", np.uint8)[0]


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (0 for a scalar).

    Exact for valid JSON; for invalid JSON it is some number the parser's error then supersedes
    (a body that is both too deep and malformed may be refused for either reason).
    """
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    a = np.frombuffer(brackets, np.uint8)
    steps = np.where((a == _OPEN[0]) | (a == _OPEN[1]), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max())


class BodyTooLarge(Exception):
    """The request body is over the limit; the message says by how much it may be (answer 413)."""


async def read_bounded(request: Request, limit: int) -> bytes:
    """The whole body, refused as soon as it passes ``limit`` bytes: declared or streamed, never buffered past it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
