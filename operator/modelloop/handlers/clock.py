"""The handlers' one clock reading; decisions take ``now`` as an argument and never read a clock."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Whole seconds: status timestamps are RFC 3339 without fractions, so comparisons stay exact."""
    return datetime.now(UTC).replace(microsecond=0)
