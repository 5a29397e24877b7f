"""Go-style durations as the CRDs accept them ("168h", "1h30m", "500ms", "1.5d")."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> timedelta:
    """The schema already validates the pattern; this still refuses garbage so a bad value names itself."""
    pos = 0
    seconds = 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"duration {text!r} is not of the form 1h30m (units ms, s, m, h, d)")
    return timedelta(seconds=seconds)
