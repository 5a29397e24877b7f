"""Review markers: which review of a prediction id is stored, so that every replica counts it once.

Reviews of one prediction id can reach the bucket more than once: a reviewer revises a label, the
same id is reviewed on two replicas (each joins it to the receipt), or a client retries on another
replica. The trainer keeps the latest review per id; the operator counts records as they arrive,
remembers no ids (status stays small however many are reviewed), and so needs each record to say
whether it is an id's first review or replaces a stored one. That is what the marker is for: one
small object per reviewed id, ``<model>/receipts/.reviews/<id>.json`` (writable with the serving
credentials like the receipts, and expiring with them under the same lifecycle rule), holding the
facts of the review stored last.

``POST /v1/feedback``, after joining the review to its receipt:

1. :meth:`ReviewMarks.read`: the same review (label, reason, reviewer) is the one stored → a replay,
   answered 200 and not written again, whichever replica stored it; another review is stored → the
   new record carries it in ``revises`` and the operator counts the pair as one review whose latest
   label wins (``modelloop.decide.reviewcount``).
2. The record is stored (write-through) or spooled (fsynced), exactly as before.
3. :meth:`ReviewMarks.settle` writes the marker with a conditional PUT: ``If-None-Match: *`` for an
   id's first review, ``If-Match`` the ETag read in 1 for a revision, so two replicas cannot both
   believe they stored the id's first review without one of them seeing it.

The marker is written after the record, never before: a marker names only a review that is stored,
so a replay answered from it is always true and a failed store never leaves a marker behind that
would make the client's retry look like a replay (a lost review). The price is a window: two
replicas that store reviews of one id between each other's read and write both count it as new;
the conditional PUT catches it (``conflict``, logged) and the counts are off by one until training,
which reads the latest. A marker that cannot be read or written (store down) is counted as
``failed`` and the review is still taken (stored if write-through's commit succeeds, spooled in
spool mode, which must accept reviews through an outage): it then counts as the id's first.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from modelloop.api.feedback import MAX_REASON, FeedbackRecord, RevisedReview
from modelloop.api.receipts import review_mark_key
from modelloop.clients.objectstore import NotFound, ObjectStore

from .metrics import ServerMetrics

log = logging.getLogger(__name__)


class MarkUnavailable(RuntimeError):
    """The marker could not be read; the message says why."""


class ReviewMark(BaseModel):
    """The stored review of one prediction id: what it counted as, and what tells a replay from a revision."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    counted: RevisedReview = Field(description="What the review contributed to the counts.")
    reason: str | None = Field(default=None, max_length=MAX_REASON)
    reviewer: str | None = Field(default=None, max_length=512)

    @classmethod
    def of(cls, record: FeedbackRecord) -> ReviewMark:
        return cls(counted=record.counted_as(), reason=record.reason, reviewer=record.reviewer)

    def same_review(self, record: FeedbackRecord) -> bool:
        """Whether ``record`` says what the stored review said (a replay), not a revision."""
        return (self.counted.label, self.reason, self.reviewer) == (record.label, record.reason, record.reviewer)


class ReviewMarks:
    def __init__(self, model: str, store: ObjectStore, metrics: ServerMetrics, attempts: int = 4) -> None:
        self.model = model
        self.store = store
        self.metrics = metrics
        self.attempts = attempts

    def read(self, prediction_id: str) -> tuple[ReviewMark | None, str | None]:
        """(the stored review's marker, its ETag), or (None, None) for an id never reviewed.

        Blocks on the object store: call it off the event loop. :class:`MarkUnavailable` when the
        bucket cannot be read; an unreadable marker (not what this module writes) reads as none.
        """
        key = review_mark_key(self.model, prediction_id)
        try:
            data, etag = self.store.get_with_etag(key)
        except NotFound:
            return None, None
        except Exception as e:  # noqa: BLE001 - any store failure: the caller decides whether to go on without it
            raise MarkUnavailable(f"cannot read the review marker s3://{self.store.bucket}/{key}: {e}") from None
        try:
            return ReviewMark.model_validate_json(data), etag
        except ValueError as e:
            log.error("review marker s3://%s/%s is unreadable (%s); overwriting it", self.store.bucket, key, e)
            return None, etag

    def settle(self, record: FeedbackRecord, etag: str | None) -> None:
        """Marks ``record`` (stored, or durably spooled) as its id's stored review. Never raises: a marker that
        cannot be written costs counting accuracy, not the review.

        ``etag``: the marker's ETag that :meth:`read` returned before ``record`` was built (None: there was
        none). A failed condition means another replica stored a review of the id since, or an earlier
        attempt of this PUT landed; the marker is read again to tell them apart.
        """
        key = review_mark_key(self.model, record.id)
        mine = ReviewMark.of(record)
        data = mine.model_dump_json(by_alias=True, exclude_none=True).encode()
        expected = etag
        outcome = "revision" if record.revises else "first"  # one outcome per settled review
        for _ in range(self.attempts):
            try:
                if self.store.put_if(key, data, expected, "application/json") is not None:
                    self.metrics.review_marks.labels(outcome).inc()
                    return
                current, expected = self.read(record.id)
            except Exception as e:  # noqa: BLE001 - see the docstring
                self._failed(record, e)
                return
            if current == mine:
                self.metrics.review_marks.labels(outcome).inc()
                return  # an earlier attempt of this PUT landed
            if current is not None and current.counted != record.revises and outcome != "conflict":
                outcome = "conflict"
                log.warning(
                    "prediction %s was reviewed here and on another replica at the same moment; the operator may "
                    "count it twice toward pending reviews and live tallies until training keeps the latest review "
                    '(modelloop_server_review_marks_total{outcome="conflict"})',
                    record.id,
                )
            # Ours was stored after what is there: it is the latest, so the marker names it.
        self._failed(record, RuntimeError(f"the marker kept changing under {self.attempts} conditional writes"))

    def _failed(self, record: FeedbackRecord, e: Exception) -> None:
        self.metrics.review_marks.labels("failed").inc()
        log.warning(
            "could not record that prediction %s has a stored review (%s); a later review of it may count as a new "
            "one until training keeps the latest",
            record.id, e,
        )  # fmt: skip
