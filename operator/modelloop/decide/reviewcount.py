"""How one stored review moves the operator's counts: once per prediction id, the latest label winning.

Reviews of one prediction id can be stored more than once: a reviewer revises a label, or the same id
is reviewed on two serving replicas. The trainer keeps the latest review per id; the counts that
trigger training and decide the shadow and canary stages and the automatic rollback must agree with
it, without the operator remembering ids (there can be millions; status must stay small). So the
server says, in the record, which stored review it replaces (``FeedbackRecord.revises``, found from
the id's review marker, ``modelloop_server.reviewmarks``), and a record is counted as a signed sum:
``+1`` for what it says, ``-1`` for what it replaces. An id's first review adds one review; every
later one adds none and moves the correction, accuracy and shadow/canary tallies from the old label
to the new one.

Counts never go below zero: a revision of a review counted before the last training started (which
reset the pending counts) takes back what is no longer there, and is then clamped.
"""

from __future__ import annotations

from modelloop.api.feedback import FeedbackRecord, RevisedReview
from modelloop.api.retrainpolicy import RetrainPolicyStatus

from .canary import count_canary_review
from .shadowstage import count_review


def contributions(record: FeedbackRecord) -> list[tuple[RevisedReview, int]]:
    """(review facts, sign): what ``record`` adds, and what it takes back when it replaces a stored review."""
    out = [(record.counted_as(), 1)]
    if record.revises is not None:
        out.append((record.revises, -1))
    return out


def count_record(status: RetrainPolicyStatus, record: FeedbackRecord) -> None:
    """Applies one stored review to the pending counts, the live accuracy and the shadow/canary tallies."""
    fb, live = status.feedback, status.live_accuracy
    for facts, sign in contributions(record):
        correction = facts.label != facts.predicted
        fb.pending_reviews = max(0, fb.pending_reviews + sign)
        if correction:
            fb.pending_corrections = max(0, fb.pending_corrections + sign)
        if status.canary is not None:
            count_canary_review(status.canary, facts.version, not correction, sign)
        if status.shadow is not None:
            count_review(
                status.shadow, facts.version, facts.predicted, facts.label, facts.shadow_version,
                facts.shadow_predicted, sign,
            )  # fmt: skip
        if status.active_version is not None and facts.version == status.active_version == live.version:
            live.reviews = max(0, live.reviews + sign)
            live.correct = min(live.reviews, max(0, live.correct + (0 if correction else sign)))
