"""The CRD's cron and image-reference expressions, held against the parsers that read those strings later.

The API server runs them as RE2 (tests/integration/test_crd_validation.py); Python's ``re`` agrees
with RE2 on everything they use, so the comparison with croniter can sweep many values here.
"""

from __future__ import annotations

import re

import pytest
from croniter import croniter

from modelloop.api.syntax import CRON_FIELDS, CRON_SHAPE, FIVE_FIELDS, IMAGE_REFERENCE, cron_field_pattern


def refused_by(schedule: str) -> str | None:
    """The name of the first rule that refuses ``schedule`` (``shape`` or a field), None if accepted."""
    if not re.match(CRON_SHAPE, schedule):
        return "shape"
    if re.match(FIVE_FIELDS, schedule):
        for index, field in enumerate(CRON_FIELDS):
            if not re.match(cron_field_pattern(index), schedule):
                return field.name
    return None


@pytest.mark.parametrize(
    ("schedule", "refused"),
    [
        ("61 * * * *", "minute"),
        ("* 25 * * *", "hour"),
        ("*/0 * * * *", "minute"),
        ("0 0 0 * *", "day-of-month"),
        ("0 0 32 * *", "day-of-month"),
        ("0 0 * 13 *", "month"),
        ("0 0 * 0 *", "month"),
        ("0 0 * * 8", "day-of-week"),
        ("0 0 * * 1L", "day-of-week"),
        ("1,,2 * * * *", "minute"),
        ("1-5/0 * * * *", "minute"),
        ("*/60 * * * *", "minute"),
        ("0 0 * * 9#1", "day-of-week"),
        ("*/5 * * *", "shape"),
        ("@every 5m", "shape"),
        ("0 3 * * 1", None),
        ("*/15 0-6,22-23 * * *", None),
        ("0-59/15 * * * *", None),
        ("5/15 * * * *", None),
        ("0 0 1,15 * *", None),
        ("0 0 L * *", None),
        ("0 0 ? * MON-FRI", None),
        ("0 0 * jan-mar sun", None),
        ("0 0 * * 5#2", None),
        ("0 0 * * 7", None),
        ("0  3  *  *  1", None),
        ("@daily", None),
    ],
)
def test_schedule_is_refused_by_the_rule_of_the_wrong_field(schedule: str, refused: str | None) -> None:
    assert refused_by(schedule) == refused


def test_every_schedule_the_crd_accepts_croniter_accepts_and_values_agree_exactly() -> None:
    """Sound against the operator's parser; stricter only on steps past the field's range (``*/59`` hours)."""
    disagree = []
    for index in range(len(CRON_FIELDS)):
        for value in [*map(str, range(100)), "00", "01", "1-5/2", "L", "?", "5#2", "MON", "jan", "*/0", "*/1", "*/59"]:
            fields = ["*"] * 5
            fields[index] = value
            schedule = " ".join(fields)
            accepted, valid = refused_by(schedule) is None, croniter.is_valid(schedule)
            if (accepted and not valid) or (not accepted and valid and "/" not in value):
                disagree.append(schedule)
    assert disagree == []


@pytest.mark.parametrize(
    ("image", "valid"),
    [
        ("trainer:1", True),
        ("modelloop-trainer:dev", True),
        ("ghcr.io/modelloop/trainer:0.1.0", True),
        ("localhost:5000/team/trainer@sha256:" + "a" * 64, True),
        ("docker.io/library/python:3.11-slim@sha256:" + "0" * 64, True),
        ("registry.example.com/a__b/c-d.e", True),
        ("Trainer:1", False),
        ("ghcr.io/team/trainer:", False),
        ("ghcr.io//trainer", False),
        ("trainer 1", False),
        ("trainer@sha256:12", False),
        ("https://ghcr.io/team/trainer", False),
        ("trainer:" + "x" * 129, False),
    ],
)
def test_image_reference(image: str, valid: bool) -> None:
    assert bool(re.match(IMAGE_REFERENCE, image)) is valid
