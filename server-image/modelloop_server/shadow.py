"""Shadow scoring: the candidate version scores the same inputs as the active one, off the response path.

The sidecar asks the server (``POST /v1/shadow`` on the control socket) to load the verified
candidate beside the serving model; from then on every answered request is also handed to
:class:`ShadowScorer`, which queues it for one low-priority worker thread. The answer never waits
for the candidate: :meth:`ShadowScorer.submit` only appends to a bounded queue, and when the queue
is full the shadow work is dropped (``modelloop_server_shadow_dropped``), never queued without
bound and never pushed back onto the client. Under load the shadow sample thins out; the answers
do not slow down.

Each scored request yields a :class:`ShadowPair` (the active and the candidate predictions on the
same input). Pairs go to the listeners registered with :meth:`ShadowScorer.add_listener` (the
prediction receipts store both predictions, so a review labels both models: the paired test in
``modelloop.decide.paired``) and into a bounded map by prediction id (the id a review names) that the control socket's
``GET /v1/shadow?requestId=`` answers from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .metrics import ServerMetrics
from .model import LoadedModel

log = logging.getLogger(__name__)

SHADOW_NICE = 10
"""The worker's nice value (Linux: per thread): the inference threads answering clients come first."""


@dataclass(frozen=True)
class ShadowPair:
    """Both models' predicted class indices for one request, row by row."""

    request_id: str
    active_version: str
    active: tuple[int, ...]
    candidate_version: str
    candidate: tuple[int, ...]

    @property
    def agreed(self) -> int:
        return sum(a == b for a, b in zip(self.active, self.candidate, strict=True))

    def as_json(self) -> dict[str, object]:
        return {
            "requestId": self.request_id,
            "active": {"version": self.active_version, "predicted": list(self.active)},
            "candidate": {"version": self.candidate_version, "predicted": list(self.candidate)},
        }


@dataclass(frozen=True)
class _Job:
    model: LoadedModel
    request_id: str
    active_version: str
    x: Tensor
    active_probs: Tensor
    encoded: list[bytes] | None = None  # the encoded inputs, for a candidate that decodes them differently


def _input_for(model: LoadedModel, job: _Job) -> Tensor:
    """The job's input as ``model`` takes it: as the active model decoded it, or decoded again from the encoded
    bytes when the candidate was trained with other preprocessing (its input shape differs)."""
    if model.plugin is None or tuple(job.x.shape[1:]) == tuple(model.plugin.input_shape):
        return job.x
    if job.encoded is None:
        raise ValueError(
            f"{model.version} takes inputs of shape {list(model.plugin.input_shape)} and the request sent numbers of "
            f"shape {list(job.x.shape[1:])}; only encoded (BYTES) inputs can be decoded again for a candidate trained "
            "with other preprocessing"
        )
    return model.plugin.preprocess([model.plugin.decode_bytes(raw) for raw in job.encoded])


class ShadowScorer:
    """A queue bounded in input rows and one worker thread scoring queued requests on the shadow model.

    Bounded in rows, not requests, as the inference queue is: a queue of large image batches must
    not hold gigabytes of inputs. ``shadow`` is read at submit time (the holder's attribute,
    rebound atomically on load and unload), so a request is scored by the candidate that was
    loaded when it was answered.
    """

    def __init__(
        self,
        shadow: Callable[[], LoadedModel | None],
        metrics: ServerMetrics,
        queue_rows: int = 256,
        pairs_kept: int = 10_000,
        batch_rows: int = 64,
    ) -> None:
        self._shadow = shadow
        self._metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._rows = 0
        self._max_rows = queue_rows
        self._cond = threading.Condition()
        self._closed = False
        self._pairs: OrderedDict[str, ShadowPair] = OrderedDict()
        self._pairs_kept = pairs_kept
        self._batch_rows = batch_rows
        self._lock = threading.Lock()
        self._listeners: list[Callable[[ShadowPair], None]] = []
        self._counts: dict[str, tuple[int, int]] = {}
        self._worker = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._started = False

    def start(self) -> None:
        if self._max_rows > 0 and not self._started:
            self._started = True
            self._worker.start()

    def close(self) -> None:
        """Stop the worker after the pass in hand; queued shadow work is abandoned (it was optional)."""
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._rows = 0
            self._cond.notify_all()
        if self._started:
            self._worker.join(timeout=10)

    def add_listener(self, listener: Callable[[ShadowPair], None]) -> None:
        """``listener(pair)`` runs on the shadow thread for every scored request; it must not block for long."""
        self._listeners.append(listener)

    def submit(
        self, request_id: str, active: LoadedModel, x: Tensor, probs: Tensor, encoded: list[bytes] | None = None
    ) -> None:
        """Queue ``x`` for the shadow model, or drop it when the queue is full; never blocks.

        ``encoded``: the request's encoded inputs (OIP BYTES), decoded again on the shadow thread for a
        candidate trained with other preprocessing (another image size) than the active model.
        """
        model = self._shadow()
        if model is None or model is active:
            return
        rows = x.shape[0]
        with self._cond:
            # an empty queue takes a request of any size, as the inference queue does
            full = self._closed or self._max_rows <= 0 or bool(self._jobs and self._rows + rows > self._max_rows)
            if not full:
                self._jobs.append(_Job(model, request_id, active.version, x, probs, encoded))
                self._rows += rows
                self._cond.notify()
        if full:
            self._metrics.shadow_dropped.labels(model.version).inc()

    @property
    def queued(self) -> int:
        """Requests waiting for the shadow model."""
        with self._cond:
            return len(self._jobs)

    def pair(self, request_id: str) -> ShadowPair | None:
        with self._lock:
            return self._pairs.get(request_id)

    def candidate_answer(self, prediction_id: str, active_version: str, predicted: int) -> tuple[str, int] | None:
        """(candidate version, its predicted class) for the prediction a review names, when this replica
        scored it in the shadow: a batch row's id is ``<request id>.<row>``. None when the pair is not
        here (another replica answered, or it was dropped under load) or does not match the receipt."""
        pair, row = self.pair(prediction_id), 0
        if pair is None:
            base, _, index = prediction_id.rpartition(".")
            if base and index.isdigit():
                pair, row = self.pair(base), int(index)
        if pair is None or pair.active_version != active_version or row >= len(pair.candidate):
            return None
        if pair.active[row] != predicted:
            return None
        return pair.candidate_version, pair.candidate[row]

    def counts(self, version: str) -> tuple[int, int]:
        """(predictions scored, predictions where both models agreed) for a shadow version."""
        with self._lock:
            return self._counts.get(version, (0, 0))

    def forget(self, version: str) -> None:
        """Drop the per-version series once ``version`` is no longer the shadow (promoted or withdrawn)."""
        with self._lock:
            self._counts.pop(version, None)
        m = self._metrics
        for family in (m.shadow_scored, m.shadow_dropped, m.shadow_failed, m.shadow_predictions, m.shadow_agreed):
            with contextlib.suppress(KeyError):
                family.remove(version)
        with contextlib.suppress(KeyError):
            m.shadow_agreement.remove(version)

    def _run(self) -> None:
        torch.set_num_threads(1)
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = [self._jobs.popleft()]
                rows = batch[0].x.shape[0]
                while (
                    self._jobs
                    and self._jobs[0].model is batch[0].model
                    and rows + self._jobs[0].x.shape[0] <= self._batch_rows
                ):
                    rows += self._jobs[0].x.shape[0]
                    batch.append(self._jobs.popleft())
                self._rows -= rows
            self._score(batch)

    def _score(self, batch: list[_Job]) -> None:
        model = batch[0].model
        inputs, ready = [], []
        for job in batch:
            try:
                inputs.append(_input_for(model, job))
                ready.append(job)
            except ValueError as e:  # this request only: the others of the pass are still scored
                self._metrics.shadow_failed.labels(model.version).inc()
                log.warning("shadow model %s cannot score request %s: %s", model.version, job.request_id, e)
        if not ready:
            return
        batch = ready
        try:
            x = inputs[0] if len(batch) == 1 else torch.cat(inputs)
            predicted = model.probabilities(x).argmax(dim=1)
        except Exception as e:  # noqa: BLE001 — the candidate failing must never reach a client
            self._metrics.shadow_failed.labels(model.version).inc(len(batch))
            log.warning("shadow model %s failed on %d requests: %s", model.version, len(batch), e)
            return
        at = 0
        for job in batch:
            n = job.x.shape[0]
            pair = ShadowPair(
                job.request_id,
                job.active_version,
                tuple(job.active_probs.argmax(dim=1).tolist()),
                model.version,
                tuple(predicted[at : at + n].tolist()),
            )
            at += n
            self._record(pair, counted=self._shadow() is model)

    def _record(self, pair: ShadowPair, counted: bool) -> None:
        """Keep and announce the pair; count it only while its model is still the shadow (a pass in
        flight when the candidate was promoted or withdrawn must not bring its forgotten series back)."""
        v = pair.candidate_version
        scored = agreed = 0
        with self._lock:
            self._pairs[pair.request_id] = pair
            self._pairs.move_to_end(pair.request_id)
            while len(self._pairs) > self._pairs_kept:
                self._pairs.popitem(last=False)
            if counted:
                scored, agreed = self._counts.get(v, (0, 0))
                scored, agreed = scored + len(pair.active), agreed + pair.agreed
                self._counts[v] = (scored, agreed)
        if counted:
            self._count(pair, scored, agreed)
        for listener in self._listeners:
            try:
                listener(pair)
            except Exception as e:  # noqa: BLE001 — a listener's bug must not stop shadow scoring
                log.warning("shadow pair listener %r failed: %s", listener, e)

    def _count(self, pair: ShadowPair, scored: int, agreed: int) -> None:
        m, v = self._metrics, pair.candidate_version
        m.shadow_scored.labels(v).inc()
        m.shadow_predictions.labels(v).inc(len(pair.active))
        m.shadow_agreed.labels(v).inc(pair.agreed)
        m.shadow_agreement.labels(v).set(agreed / scored if scored else 0.0)
