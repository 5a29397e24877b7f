"""Replayed reviews: the same review of the same prediction, sent again (a client retrying after a timeout).

A replay that this replica can see (it accepted the review, and the id is still among the last
``size`` it remembers) is acknowledged with 200 and ``"replay": true`` and not written again. A
different review of the same id (another label or reason) is written: the trainer keeps the latest
review per id (``modelloop.api.feedback.latest_per_id``), so it replaces the first. A replay that
reaches another replica is written too and is likewise collapsed in training.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from modelloop.api.feedback import FeedbackRecord


class ReviewLedger:
    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._last: OrderedDict[str, tuple[int, str | None, str | None]] = OrderedDict()

    @staticmethod
    def _what(record: FeedbackRecord) -> tuple[int, str | None, str | None]:
        return record.label, record.reason, record.reviewer

    def is_replay(self, record: FeedbackRecord) -> bool:
        """True when this replica already accepted exactly this review of this prediction."""
        with self._lock:
            return self._last.get(record.id) == self._what(record)

    def remember(self, record: FeedbackRecord) -> None:
        with self._lock:
            self._last[record.id] = self._what(record)
            self._last.move_to_end(record.id)
            while len(self._last) > self.size:
                self._last.popitem(last=False)

    def remember_all(self, records: list[FeedbackRecord]) -> None:
        """A stored batch: its reviews are accepted even if their callers gave up waiting, so a retry is a replay."""
        for record in records:
            self.remember(record)
