"""The canary split: which loaded model answers a request when the candidate answers a share of them.

The operator's canary stage (``modelloop.decide.canary``) names a percent in
``status.candidate.canaryPercent``; the sidecar passes it to the server over the control socket
(``POST /v1/canary``), and from then on that share of requests is answered by the candidate already
loaded as the shadow (no second load, no second process: the split is in-process). The answer and
its receipt name the version that gave it, so reviews measure each version's own answers.

A request that carries a routing key (header ``X-Modelloop-Routing-Key``, or OIP
``parameters.routing_key``) is split by the key's hash into one of 10,000 buckets: the same key
always gets the same version at a given percent, and, since a bucket below 10 % is also below 50 %,
a key the candidate answered keeps it when the step grows. A request without a key is split at
random. Used by the predict handlers of ``app.py`` and ``oip.py``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from .model import LoadedModel

ROUTING_KEY_HEADER = "x-modelloop-routing-key"
ROUTING_KEY_PARAMETER = "routing_key"
MAX_ROUTING_KEY = 256
BUCKETS = 10_000


@dataclass(frozen=True)
class CanarySplit:
    """The candidate ``version`` answers ``percent`` % of requests (while it is the loaded shadow)."""

    version: str
    percent: int


def bucket(key: str) -> int:
    """A stable bucket in ``[0, BUCKETS)`` for a routing key (sha256: the same in every replica and process)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % BUCKETS


def check_routing_key(key: object) -> str:
    """A routing key as given, or ValueError naming what is wrong with it."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_ROUTING_KEY:
        raise ValueError(
            f"routing key must be a string of 1-{MAX_ROUTING_KEY} characters (the same key keeps its version)"
        )
    return key


def choose(
    current: LoadedModel | None,
    shadow: LoadedModel | None,
    split: CanarySplit | None,
    key: str | None,
    draw: float | None = None,
) -> LoadedModel | None:
    """The model that answers: the shadow when a split names it and the request falls in its share, else current.

    ``draw`` in ``[0, 1)`` replaces the random draw of a request without a key (tests)."""
    if current is None or shadow is None or split is None or split.percent <= 0 or split.version != shadow.version:
        return current
    if key is not None:
        return shadow if bucket(key) < split.percent * (BUCKETS // 100) else current
    return shadow if (random.random() if draw is None else draw) * 100 < split.percent else current
