"""Regular expressions for the strings a RetrainPolicy carries that the operator parses later.

A cron schedule or an image reference the API server lets through fails only later, in the
operator's reconcile or in a Pod that cannot pull: so the CRD checks them (as CEL ``matches``,
which the API server runs as RE2) and says which part is wrong. The expressions use no
backslashes (they sit inside CEL string literals) and nothing RE2 lacks.

Cron: five fields (minute hour day-of-month month day-of-week) or a macro, each field a comma
list of ``*``, ``N`` or ``N-M``, optionally ``/STEP``, with values in the field's range; the
subset croniter (the operator) and Kubernetes CronJobs both accept, plus names (JAN, MON),
``?`` and ``L`` for the day of month and ``N#K`` for the day of week, which croniter accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

CRON_MACROS = "@(yearly|annually|monthly|weekly|daily|hourly)"
_ANY_FIELD = "[^ ]+"
FIVE_FIELDS = f"^{_ANY_FIELD}( +{_ANY_FIELD}){{4}}$"
"""The shape of a five-field schedule; the per-field rules only look at schedules of this shape."""
CRON_SHAPE = f"^({CRON_MACROS}|[0-9*/,?A-Za-z#-]+( +[0-9*/,?A-Za-z#-]+){{4}})$"

_MONTHS = "(?i:JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)"
_DAYS = "(?i:SUN|MON|TUE|WED|THU|FRI|SAT)"


@dataclass(frozen=True)
class CronField:
    """One of the five fields: its name, the regex of one value and of a step, and the whole-element extras."""

    name: str
    ordinal: str
    value: str
    step: str
    extras: tuple[str, ...]
    allowed: str
    """What the field takes, in words, for the message."""

    @property
    def element(self) -> str:
        v = self.value
        plain = f"([*]|{v}(-{v})?)(/{self.step})?"
        return "(" + "|".join((plain, *self.extras)) + ")"

    @property
    def list_(self) -> str:
        return f"{self.element}(,{self.element})*"


CRON_FIELDS: tuple[CronField, ...] = (
    CronField("minute", "1st", "([0-5]?[0-9])", "([1-9]|[1-5][0-9])", (), "0-59"),
    CronField("hour", "2nd", "([01]?[0-9]|2[0-3])", "([1-9]|1[0-9]|2[0-3])", (), "0-23"),
    CronField(
        "day-of-month", "3rd", "(0?[1-9]|[12][0-9]|3[01])", "([1-9]|[12][0-9]|3[01])", ("[?]", "L"), "1-31, ? or L"
    ),
    CronField("month", "4th", f"(0?[1-9]|1[0-2]|{_MONTHS})", "([1-9]|1[0-2])", (), "1-12 or JAN-DEC"),
    CronField(
        "day-of-week",
        "5th",
        f"(0?[0-7]|{_DAYS})",
        "[1-7]",
        ("[?]", "[0-7]#[1-5]"),
        "0-7 (0 and 7 are Sunday), SUN-SAT, ? or N#K (the Kth weekday N of the month)",
    ),
)


def cron_field_pattern(index: int) -> str:
    """A five-field schedule whose field ``index`` is valid (the other four are not looked at)."""
    parts = [_ANY_FIELD] * len(CRON_FIELDS)
    parts[index] = CRON_FIELDS[index].list_
    return "^" + " +".join(parts) + "$"


# distribution/reference's grammar: [host[:port]/]path[:tag][@digest]; path components lowercase.
_DOMAIN_COMPONENT = "([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = f"{_DOMAIN_COMPONENT}([.]{_DOMAIN_COMPONENT})*(:[0-9]+)?"
_PATH_COMPONENT = "[a-z0-9]+(([._]|__|[-]+)[a-z0-9]+)*"
_TAG = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = "[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = f"^({_DOMAIN}/)?{_PATH_COMPONENT}(/{_PATH_COMPONENT})*(:{_TAG})?(@{_DIGEST})?$"
"""An OCI image reference as a container runtime parses it (``ghcr.io/team/trainer:1.2``, ``trainer@sha256:...``)."""
