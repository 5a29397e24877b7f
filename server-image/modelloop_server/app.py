"""``modelloop-server``: the HTTP model server (predict, feedback, reload, health, metrics).

One process per serving Pod, beside the reload sidecar. Predictions run in a thread pool under
``torch.inference_mode()``; models are swapped by :class:`~modelloop_server.model.ModelHolder`
without dropping a request. Every rejected request gets a 4xx whose message says what to fix:
a client should never have to read the server's log to learn why its input was refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import torch
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from torch import Tensor

from modelloop.api import constants as c
from modelloop.api.artifacts import ArtifactError, check_version
from modelloop.api.feedback import MAX_REASON
from modelloop.api.receipts import check_client_id, check_review_id, issued_at, join
from modelloop.clients.objectstore import CABundleInvalid, ObjectStore
from modelloop_trainer.plugin import InputError, ModelPlugin, load_plugin
from modelloop_trainer.runtime import cpu_threads

from .batching import RETRY_AFTER_SECONDS, InferenceBatcher, Overloaded
from .bodylimits import BodyTooLarge, nesting_depth, read_bounded
from .canary import ROUTING_KEY_HEADER, CanarySplit, check_routing_key, choose
from .control import bind_control_socket
from .feedback import BacklogFull, FeedbackBuffer, SpoolUnavailable
from .groupcommit import COMMIT_RETRY_AFTER_SECONDS, GroupCommit, StoreUnavailable
from .inputrefs import InputRefs, RefLimits, S3Reader
from .memory import REASON_TOO_LARGE, MemoryCheck, ModelTooLarge, read_limits, size
from .metrics import NO_VERSION, REFUSED_INVALID, REFUSED_TOO_LARGE, ServerMetrics
from .model import LoadedModel, ModelHolder, SwapResult
from .modeldir import startup_version, write_current
from .oip import routes as oip_routes
from .receipts import InputFacts, ReceiptBook, ReceiptStoreUnavailable, tensor_facts
from .replays import ReviewLedger
from .reviewgate import ANONYMOUS, MODE_OFF, RateLimiter, ReviewGate, ReviewRefused
from .reviewmarks import MarkUnavailable, ReviewMarks
from .settings import (
    DEFAULT_MAX_JSON_DEPTH,
    ENV_FEEDBACK_DURABILITY,
    ENV_RECEIPT_MAX_AGE_HOURS,
    ENV_REVIEW_AUTH,
    SPOOL,
    WRITE_THROUGH,
    ServerSettings,
    SettingsError,
)
from .shadow import ShadowScorer

log = logging.getLogger("modelloop_server")

SPOOL_RETRY_AFTER_SECONDS = 30
_EXAMPLE = '{"input": [...]} or {"inputs": [[...], ...]} (and optionally your own "id")'
_REVIEW = '{"id": "<the prediction id>", "label": <class index or name>, "reason": "<optional, why>"}'
FORGEABLE = ("predicted", "version", "input")
"""Review fields the server takes from its receipt; a client sending them is refused, not ignored."""


class Problem(Exception):
    """A request we refuse, with the status and the message the client sees."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def read_json(request: Request, limit: int, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> Any:
    """The body as JSON, with the checks a public endpoint needs before parsing anything.

    Size and nesting depth are checked on the raw bytes, before the parser or any recursive
    validation sees the body: no body can make the server run out of stack or memory.
    """
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        got = f"{media!r}" if media else "no Content-Type"
        raise Problem(415, f"Content-Type must be application/json, got {got}")
    try:
        raw = await read_bounded(request, limit)
    except BodyTooLarge as e:
        raise Problem(413, str(e)) from None
    if not raw.strip():
        raise Problem(400, f"empty request body: send a JSON object like {_EXAMPLE}")
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise Problem(
            400,
            f"request body nests arrays/objects {depth} levels deep; the limit is {max_depth} (MODELLOOP_MAX_JSON_DEPTH)",
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        hint = ""
        if any(w in raw for w in (b"NaN", b"Infinity")):
            hint = " (NaN and Infinity are not valid JSON numbers, and not valid model inputs)"
        raise Problem(400, f"request body is not valid JSON: {e}{hint}") from None


def _check_numbers(item: Any, where: str) -> None:
    """JSON booleans, strings and nulls are not numbers, even where numpy would coerce them."""
    if isinstance(item, list):
        for v in item:
            _check_numbers(v, where)
    elif isinstance(item, bool) or not isinstance(item, (int, float)):
        shown = orjson.dumps(item).decode()[:40]
        raise Problem(422, f"{where}: every value must be a number, got {type(item).__name__} {shown}")


def parse_inputs(body: Any, plugin: ModelPlugin, max_batch: int) -> tuple[Tensor, bool]:
    """(tensor ``[N, *input_shape]``, batched?) from a predict body, or a Problem naming the fault."""
    if not isinstance(body, dict):
        raise Problem(422, f"request body must be a JSON object like {_EXAMPLE}, got a JSON {type(body).__name__}")
    unknown = sorted(set(body) - {"input", "inputs", "id"})
    if unknown:
        raise Problem(422, f"unknown field(s) {', '.join(unknown)}: send {_EXAMPLE}")
    if ("input" in body) == ("inputs" in body):
        raise Problem(422, f"give exactly one of 'input' (one example) or 'inputs' (a batch): {_EXAMPLE}")
    batched = "inputs" in body
    items: Any = body["inputs"] if batched else [body["input"]]
    if batched and not isinstance(items, list):
        raise Problem(422, f"'inputs' must be a list of inputs, got {type(items).__name__}")
    if batched and not items:
        raise Problem(422, "'inputs' is an empty list: send at least one input")
    if len(items) > max_batch:
        raise Problem(422, f"batch of {len(items)} inputs exceeds the limit of {max_batch}; split it")
    for i, item in enumerate(items):
        where = f"inputs[{i}]" if batched else "input"
        if not isinstance(item, list):
            raise Problem(422, f"{where} must be a list of numbers, got {type(item).__name__}")
        _check_numbers(item, where)
    try:
        return plugin.preprocess(items), batched
    except InputError as e:
        msg = str(e)
        if not batched:
            msg = msg.removeprefix("input 0: ")
        raise Problem(422, msg) from None


def prediction_id(body: Any) -> str | None:
    """The client's own id for a predict request (``"id"``), checked, or None for a generated one."""
    if not isinstance(body, dict) or "id" not in body:
        return None
    try:
        return check_client_id(body["id"])
    except ValueError as e:
        raise Problem(422, str(e)) from None


@dataclass
class Serving:
    """Everything the handlers share; built by the lifespan, not at import."""

    settings: ServerSettings
    plugin: ModelPlugin
    holder: ModelHolder
    metrics: ServerMetrics
    feedback: FeedbackBuffer
    infer_pool: ThreadPoolExecutor
    batcher: InferenceBatcher
    load_pool: ThreadPoolExecutor
    flush_pool: ThreadPoolExecutor
    spool_pool: ThreadPoolExecutor
    flush_wakeup: asyncio.Event
    reviews: ReviewGate
    auth_pool: ThreadPoolExecutor
    shadow: ShadowScorer
    receipts: ReceiptBook
    ledger: ReviewLedger
    join_pool: ThreadPoolExecutor

    def receipt(
        self, model: LoadedModel, probs: Tensor, inputs: Sequence[InputFacts], client_id: str | None
    ) -> tuple[str, list[str]]:
        """Record what ``model`` answered (one receipt per row); (the request's id, each row's id) for the response.

        Also counts the answers by predicted class name, for dashboards of what the model says.
        """
        names = self.plugin.class_names
        for k, n in Counter(probs.argmax(dim=1).tolist()).items():
            self.metrics.predictions.labels(model.version, names[k]).inc(n)
        return self.receipts.record(model.version, probs, inputs, client_id)

    refs: InputRefs
    commits: GroupCommit | None = None  # write-through durability (the default); None: the spool answers
    commit_pool: ThreadPoolExecutor | None = None
    marks: ReviewMarks | None = None  # with an object store: which review of each id is stored
    canary: CanarySplit | None = None
    """The share of requests the shadow candidate answers (``POST /v1/canary``); None: it answers nobody."""

    def route(self, key: str | None) -> LoadedModel | None:
        """The model that answers a request with routing key ``key``: read once, as ``holder.current`` is."""
        return choose(self.holder.current, self.holder.shadow, self.canary, key)

    def publish_canary(self) -> None:
        self.metrics.canary_percent.clear()
        split, shadow = self.canary, self.holder.shadow
        if split is not None and shadow is not None and split.version == shadow.version:
            self.metrics.canary_percent.labels(split.version).set(split.percent)

    def publish(self, model: LoadedModel) -> None:
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(model.version, model.digest).set(1)
        self.metrics.ready.set(1)
        self.publish_shadow()
        self.publish_canary()
        try:
            write_current(self.settings.model_dir, model.version)
        except OSError as e:
            log.warning(
                "cannot record the serving version in %s (%s); a restart loads the newest", self.settings.model_dir, e
            )

    def publish_shadow(self) -> None:
        self.metrics.shadow_info.clear()
        shadow, cur = self.holder.shadow, self.holder.current
        if shadow is not None:
            self.metrics.shadow_info.labels(shadow.version, shadow.digest, cur.version if cur else NO_VERSION).set(1)


def _headers(model: LoadedModel, request_id: str) -> dict[str, str]:
    return {"X-Model-Version": model.version, "X-Model-Digest": model.digest, "X-Request-Id": request_id}


def _answer(probs: Tensor, class_names: Sequence[str]) -> list[dict[str, Any]]:
    conf, idx = probs.max(dim=1)
    out = []
    for row, p, k in zip(probs.tolist(), conf.tolist(), idx.tolist(), strict=True):
        out.append({"predicted": k, "className": class_names[k], "confidence": p, "probabilities": row})
    return out


def routing_key(request: Request) -> str | None:
    """The client's ``X-Modelloop-Routing-Key``, checked, or None (the canary split is then random)."""
    key = request.headers.get(ROUTING_KEY_HEADER)
    if key is None:
        return None
    try:
        return check_routing_key(key)
    except ValueError as e:
        raise Problem(422, f"header X-Modelloop-Routing-Key: {e}") from None


async def predict(request: Request) -> Response:
    s: Serving = request.app.state.serving
    started = time.perf_counter()
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    model = s.holder.current
    version = model.version if model else NO_VERSION
    try:
        # read once: this request finishes on this model whatever swaps meanwhile
        model = s.route(routing_key(request))
        version = model.version if model else NO_VERSION
        parsed = await read_json(request, s.settings.max_body_bytes, s.settings.max_json_depth)
        x, batched = parse_inputs(parsed, s.plugin, s.settings.max_batch)
        client_id = prediction_id(parsed)
        if model is None:
            raise Problem(503, "no model loaded yet: the server is waiting for its sidecar to deliver a version")
        try:
            probs = await s.batcher.probabilities(model, x)
        except Overloaded as e:
            s.metrics.shed.inc()
            raise Problem(429, str(e), {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    except Problem as p:
        s.metrics.requests.labels(str(p.status), version).inc()
        headers = {"X-Request-Id": request_id, **p.headers}
        return json_response({"error": p.message, "requestId": request_id}, p.status, headers)
    assert model is not None
    answers = _answer(probs, s.plugin.class_names)
    pid, ids = s.receipt(model, probs, tensor_facts(x, s.settings.receipt_inline_values), client_id)
    s.shadow.submit(pid, model, x, probs)
    for answer, row in zip(answers, ids, strict=True):
        answer["id"] = row
    body: dict[str, Any] = {"id": pid, "requestId": request_id, "version": model.version, "digest": model.digest}
    if batched:
        body["predictions"] = answers
    else:
        body.update(answers[0])
    s.metrics.requests.labels("200", model.version).inc()
    s.metrics.latency.labels(model.version).observe(time.perf_counter() - started)
    return json_response(body, 200, _headers(model, request_id))


REFUSAL_REASONS = {401: "unauthenticated", 403: "forbidden", 429: "rate_limited"}


@dataclass(frozen=True)
class Review:
    """What a reviewer says about a prediction: its id, the right class, and why."""

    id: str
    label: int
    reason: str | None


def parse_review(body: Any, class_names: Sequence[str]) -> Review:
    """``{id, label, reason?}``, or a Problem naming the field. What the prediction was (its version,
    its answer, its input) is not the reviewer's to say: those fields are refused, not ignored."""
    if not isinstance(body, dict):
        raise Problem(422, f"a review must be a JSON object: {_REVIEW}")
    forged = [f for f in FORGEABLE if f in body]
    if forged:
        raise Problem(
            422,
            f"field {forged[0]!r} is not accepted in a review: the server takes the version, the predicted class and "
            f"the input from its receipt of the prediction, never from the client. Send {_REVIEW}",
        )
    if "requestId" in body:
        raise Problem(
            422,
            f"field 'requestId' is not accepted in a review: name the prediction by the 'id' its response returned, {_REVIEW}",
        )
    unknown = sorted(set(body) - {"id", "label", "reason"})
    if unknown:
        raise Problem(422, f"unknown review field(s) {', '.join(unknown)}; a review is {_REVIEW}")
    missing = [f for f in ("id", "label") if f not in body]
    if missing:
        raise Problem(422, f"the review is missing {', '.join(missing)}: {_REVIEW}")
    try:
        review_id = check_review_id(body["id"])
    except ValueError as e:
        raise Problem(422, str(e)) from None
    label = body["label"]
    if isinstance(label, str) and label in class_names:
        label = list(class_names).index(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(class_names):
        names = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
        raise Problem(
            422,
            f"label must be a class index 0..{len(class_names) - 1} or a class name ({names}), "
            f"got {orjson.dumps(label).decode()[:40]}",
        )
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise Problem(422, f"reason must be a string of at most {MAX_REASON} characters (why the label is what it is)")
    return Review(review_id, label, reason or None)


def _unknown(s: Serving, review_id: str) -> Problem:
    """404 for a review of a prediction this server has no receipt of, saying where receipts are kept."""
    bucket = s.receipts.store.bucket if s.receipts.store else "<bucket>"
    where = f"s3://{bucket}/{s.settings.model}/receipts/"
    t = issued_at(review_id)
    if t is not None and (datetime.now(UTC) - t).total_seconds() < 3 * s.settings.receipt_flush_seconds + 30:
        return Problem(
            404,
            f"no receipt for prediction id {review_id!r} yet: it was answered moments ago by another replica, which "
            f"uploads receipts to {where} every {s.settings.receipt_flush_seconds:g}s; retry shortly",
            {"Retry-After": str(max(1, round(s.settings.receipt_flush_seconds)))},
        )
    return Problem(
        404,
        f"no receipt for prediction id {review_id!r}: a review must name the id a prediction response of this model "
        f"returned. Receipts are kept in memory by the replica that answered (the last {s.settings.receipt_index_size}) "
        f"and in {where} for {s.settings.receipt_max_age_hours:g} hours ({ENV_RECEIPT_MAX_AGE_HOURS}); an id the "
        f"client chose is found from another replica only within {s.settings.receipt_search_minutes:g} minutes",
    )


async def feedback(request: Request) -> Response:
    s: Serving = request.app.state.serving
    try:
        if s.feedback.store is None:
            raise Problem(503, f"feedback storage is not configured on this server (set {c.ENV_BUCKET} and the S3 env)")
        loop = asyncio.get_running_loop()
        try:
            reviewer = await loop.run_in_executor(s.auth_pool, s.reviews.reviewer, request.headers.get("authorization"))
        except ReviewRefused as e:
            s.metrics.feedback_refused.labels(REFUSAL_REASONS.get(e.status, "auth_unavailable")).inc()
            raise Problem(e.status, e.message, e.headers) from None
        body = await read_json(request, s.settings.max_body_bytes, s.settings.max_json_depth)
        review = parse_review(body, s.plugin.class_names)
        if s.receipts.expired(review.id):
            raise Problem(
                410,
                f"prediction {review.id!r} was answered more than {s.settings.receipt_max_age_hours:g} hours ago "
                f"({ENV_RECEIPT_MAX_AGE_HOURS}); reviews of it are no longer accepted",
            )
        try:
            receipt, found = await loop.run_in_executor(s.join_pool, s.receipts.lookup, review.id)
        except ReceiptStoreUnavailable as e:
            s.metrics.feedback_refused.labels("store_unavailable").inc()
            raise Problem(503, f"{e}; the review was not taken, retry later", {"Retry-After": "5"}) from None
        if receipt is None:
            s.metrics.review_joins.labels("unknown").inc()
            raise _unknown(s, review.id)
        record = join(receipt, review.label, datetime.now(UTC), reviewer, review.reason)
        shadowed = s.shadow.candidate_answer(record.id, record.version, record.predicted)
        if shadowed is not None:
            record = record.model_copy(update={"shadow_version": shadowed[0], "shadow_predicted": shadowed[1]})
        if s.ledger.is_replay(record):
            s.metrics.review_joins.labels("replay").inc()
            return json_response({"id": record.id, "correction": record.is_correction, "replay": True}, 200)
        # Which review of this id is stored (any replica's): a replay, or the one this review replaces.
        marked, mark_etag, mark_read = None, None, False
        if s.marks is not None:
            try:
                marked, mark_etag = await loop.run_in_executor(s.join_pool, s.marks.read, record.id)
                mark_read = True
            except MarkUnavailable as e:
                # Not a refusal: write-through answers from its commit (which fails too if the store is down),
                # spool mode takes reviews through an outage; the review counts as new.
                s.metrics.review_marks.labels("failed").inc()
                log.warning("%s; the review of %s is taken as the id's first", e, record.id)
        if marked is not None and marked.same_review(record):
            s.metrics.review_joins.labels("replay").inc()
            s.ledger.remember(record)
            return json_response({"id": record.id, "correction": record.is_correction, "replay": True}, 200)
        if marked is not None:
            record = record.model_copy(update={"revises": marked.counted})
        s.metrics.review_joins.labels(found).inc()
        if s.commits is not None:
            try:
                await s.commits.commit(record)
            except StoreUnavailable as e:
                s.metrics.feedback_refused.labels("store_unavailable").inc()
                raise Problem(503, str(e), {"Retry-After": str(COMMIT_RETRY_AFTER_SECONDS)}) from None
            s.metrics.feedback_received.labels("correction" if record.is_correction else "confirmation").inc()
        else:
            try:
                # On the spool thread: the fsyncs that make a 202 durable must not stall the event loop.
                if await loop.run_in_executor(s.spool_pool, s.feedback.add, record):
                    s.flush_wakeup.set()
            except (BacklogFull, SpoolUnavailable) as e:
                raise Problem(503, str(e), {"Retry-After": str(SPOOL_RETRY_AFTER_SECONDS)}) from None
        s.ledger.remember(record)
        if s.marks is not None and mark_read:  # unread (store down): it would only guess
            await loop.run_in_executor(s.join_pool, s.marks.settle, record, mark_etag)
    except Problem as p:
        return json_response({"error": p.message}, p.status, p.headers)
    return json_response(
        {
            "id": record.id,
            "correction": record.is_correction,
            "version": record.version,
            "predicted": record.predicted,
            "label": record.label,
        },
        202,
    )


async def reload(request: Request) -> Response:
    """Served on the control socket only (see :mod:`modelloop_server.control`): the public port has no such route."""
    s: Serving = request.app.state.serving
    try:
        version, path = _version_dir(s, await read_json(request, 64 << 10), "reload")
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(s.load_pool, s.holder.load, version, path)
        except ModelTooLarge as e:
            return _too_large(s, e)
        except ArtifactError as e:
            s.metrics.swaps.labels("failed").inc()
            s.metrics.reload_refusals.labels(REFUSED_INVALID).inc()
            cur = s.holder.current
            log.error(
                "refused to load %s from %s: %s; still serving %s", version, path, e, cur.version if cur else "nothing"
            )
            raise Problem(422, str(e)) from None
    except Problem as p:
        return json_response({"error": p.message}, p.status)
    if result.from_shadow:
        s.shadow.forget(result.model.version)
        s.canary = None  # the candidate answers every request now
    if result.replaced is not None or not result.from_memory:
        s.metrics.swaps.labels(_swap_kind(result)).inc()
        s.metrics.swap_seconds.observe(result.swap_seconds)
        if not result.from_memory:
            s.metrics.load_seconds.observe(result.model.load_seconds)
    s.publish(result.model)
    old = result.replaced.version if result.replaced else None
    how = (
        "promoted from the shadow, no second load"
        if result.from_shadow
        else "kept in memory, no load"
        if result.from_memory
        else f"loaded and warmed up in {result.model.load_seconds:.3f}s"
    )
    log.info(
        "now serving %s (%s), replacing %s; %s, swap %.1fµs",
        result.model.version, result.model.digest, old or "nothing", how, result.swap_seconds * 1e6,
    )  # fmt: skip
    return json_response(
        {
            "version": result.model.version,
            "digest": result.model.digest,
            "previous": old,
            "fromMemory": result.from_memory,
            "fromShadow": result.from_shadow,
            "loadSeconds": result.model.load_seconds,
            "swapSeconds": result.swap_seconds,
        }
    )


def _swap_kind(result: SwapResult) -> str:
    return "shadow" if result.from_shadow else "memory" if result.from_memory else "loaded"


def _version_dir(s: Serving, body: Any, what: str) -> tuple[str, Path]:
    """(version, directory) from a reload or shadow body, with the same checks for both."""
    if not isinstance(body, dict) or not isinstance(body.get("version"), str) or not isinstance(body.get("path"), str):
        raise Problem(422, f'{what} body must be {{"version": "v<N>", "path": "<dir under the model dir>"}}')
    try:
        version = check_version(body["version"])
    except ValueError as e:
        raise Problem(422, str(e)) from None
    root = s.settings.model_dir.resolve()
    path = Path(body["path"]).resolve()
    if not path.is_relative_to(root) or path == root:
        raise Problem(403, f"path {body['path']!r} is not a version directory under {root}")
    if not path.is_dir():
        raise Problem(404, f"{path} does not exist")
    return version, path


def _shadow_state(s: Serving) -> dict[str, Any]:
    shadow, cur = s.holder.shadow, s.holder.current
    out: dict[str, Any] = {"active": cur.version if cur else None, "shadow": None, "queued": s.shadow.queued}
    if shadow is not None:
        scored, agreed = s.shadow.counts(shadow.version)
        out["shadow"] = {
            "version": shadow.version,
            "digest": shadow.digest,
            "predictions": scored,
            "agreed": agreed,
            "agreement": agreed / scored if scored else None,
        }
    return out


async def shadow_load(request: Request) -> Response:
    """Control socket only: load the candidate beside the serving model to score live inputs in the shadow."""
    s: Serving = request.app.state.serving
    try:
        version, path = _version_dir(s, await read_json(request, 64 << 10), "shadow")
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(s.load_pool, s.holder.load_shadow, version, path)
        except ModelTooLarge as e:
            return _too_large(s, e)
        except ArtifactError as e:
            s.metrics.reload_refusals.labels(REFUSED_INVALID).inc()
            log.error("refused to load %s from %s as the shadow: %s; serving is unaffected", version, path, e)
            raise Problem(422, str(e)) from None
    except Problem as p:
        return json_response({"error": p.message}, p.status)
    if result.replaced is not None and result.replaced is not result.model:
        s.shadow.forget(result.replaced.version)
    s.publish_shadow()
    s.publish_canary()
    if result.replaced is not result.model:
        how = "kept in memory, no load" if result.from_memory else f"loaded in {result.model.load_seconds:.3f}s"
        log.info(
            "shadow scoring %s (%s) beside %s; %s", result.model.version, result.model.digest,
            s.holder.current.version if s.holder.current else "nothing", how,
        )  # fmt: skip
    return json_response({**_shadow_state(s), "fromMemory": result.from_memory})


async def shadow_unload(request: Request) -> Response:
    """Control socket only: stop shadow scoring (the candidate was withdrawn)."""
    s: Serving = request.app.state.serving
    old = s.holder.unload_shadow()
    if old is not None:
        s.shadow.forget(old.version)
        log.info("stopped shadow scoring %s", old.version)
    if s.canary is not None:
        log.info("the canary split of %s ended with its shadow", s.canary.version)
        s.canary = None
    s.publish_shadow()
    s.publish_canary()
    return json_response({**_shadow_state(s), "unloaded": old.version if old else None})


async def shadow_get(request: Request) -> Response:
    """Control socket only: the shadow's tallies, and with ``?requestId=`` that request's prediction pair."""
    s: Serving = request.app.state.serving
    body = _shadow_state(s)
    request_id = request.query_params.get("requestId")
    if request_id is not None:
        pair = s.shadow.pair(request_id)
        if pair is None:
            return json_response(
                {"error": f"no shadow pair for request {request_id!r} (not scored, or forgotten)"}, 404
            )
        body["pair"] = pair.as_json()
    return json_response(body)


def _canary_state(s: Serving) -> dict[str, Any]:
    split, shadow = s.canary, s.holder.shadow
    live = split is not None and shadow is not None and split.version == shadow.version
    return {
        "active": s.holder.current.version if s.holder.current else None,
        "shadow": shadow.version if shadow else None,
        "canary": {"version": split.version, "percent": split.percent} if live and split else None,
    }


async def canary_set(request: Request) -> Response:
    """Control socket only: the loaded shadow candidate answers ``percent`` % of requests (0 stops it).

    409 when ``version`` is not the loaded shadow: the split never loads anything itself, so a
    candidate is only served once it was verified, loaded and warmed up as the shadow."""
    s: Serving = request.app.state.serving
    try:
        body = await read_json(request, 4 << 10)
        if not isinstance(body, dict) or not isinstance(body.get("version"), str):
            raise Problem(422, 'canary body must be {"version": "v<N>", "percent": 0-99}')
        try:
            version = check_version(body["version"])
        except ValueError as e:
            raise Problem(422, str(e)) from None
        percent = body.get("percent")
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 99:
            raise Problem(
                422, f"percent must be an integer 0-99 (100 is a promotion: POST /v1/reload), got {percent!r}"
            )
        shadow = s.holder.shadow
        if percent > 0 and (shadow is None or shadow.version != version):
            loaded = f"the shadow is {shadow.version}" if shadow else "no shadow is loaded"
            raise Problem(409, f"{version} is not loaded as the shadow ({loaded}); POST /v1/shadow first")
    except Problem as p:
        return json_response({"error": p.message}, p.status)
    before = s.canary
    s.canary = CanarySplit(version, percent) if percent > 0 else None
    s.publish_canary()
    if before != s.canary:
        log.info(
            "canary: %s answers %d%% of requests (was %s)", version, percent,
            f"{before.percent}% for {before.version}" if before else "none",
        )  # fmt: skip
    return json_response(_canary_state(s))


async def canary_get(request: Request) -> Response:
    """Control socket only: the canary split in force."""
    return json_response(_canary_state(request.app.state.serving))


def _too_large(s: Serving, e: ModelTooLarge) -> Response:
    """409: the version does not fit in this container's memory now; nothing was loaded, nothing changed.

    409 rather than 422: the artifact is fine, it conflicts with the container's current limit and
    usage (a larger limit, or a smaller model, makes the same request succeed).
    """
    s.metrics.reload_refusals.labels(REFUSED_TOO_LARGE).inc()
    cur = s.holder.current
    serving = cur.version if cur else None
    log.error("refused to load %s: %s; still serving %s", e.version, e.message, serving or "nothing")
    return json_response(
        {
            "error": e.message,
            "reason": REASON_TOO_LARGE,
            "version": e.version,
            "neededBytes": e.need,
            "limitBytes": e.limits.limit_bytes,
            "usageBytes": e.limits.usage_bytes,
            "serving": serving,
        },
        409,
    )


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    s: Serving = request.app.state.serving
    model = s.holder.current
    if model is None:
        return json_response({"ready": False, "reason": "no model loaded yet (waiting for the sidecar)"}, 503)
    shadow = s.holder.shadow
    return json_response(
        {"ready": True, "version": model.version, "digest": model.digest, "shadow": shadow.version if shadow else None}
    )


async def metrics(request: Request) -> Response:
    s: Serving = request.app.state.serving
    return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _flusher(s: Serving) -> None:
    loop = asyncio.get_running_loop()
    tick = min(1.0, s.settings.feedback_flush_seconds)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(s.flush_wakeup.wait(), tick)
        s.flush_wakeup.clear()
        for spool in (s.feedback, s.receipts.spool):
            if spool.due():
                await loop.run_in_executor(s.flush_pool, spool.flush)


def _one_torch_thread() -> None:
    """Parallelism comes from concurrent requests, one core each. Set in every worker: OpenMP's
    thread count is per calling thread, and a worker left at the default spins up its own team,
    oversubscribing the cores many times over under load."""
    torch.set_num_threads(1)


def _log_memory_limit(settings: ServerSettings) -> None:
    limits = read_limits(settings.cgroup_root)
    if limits is None:
        log.warning("no cgroup memory files under %s: models are loaded without a memory check", settings.cgroup_root)
    elif limits.limit_bytes is None:
        log.info("no memory limit (%s): models are loaded without a memory check", limits.source)
    else:
        log.info(
            "memory limit %s (%s), in use %s: a version needing more than what is free is refused before loading",
            size(limits.limit_bytes), limits.source, size(limits.usage_bytes),
        )  # fmt: skip


def _input_refs(settings: ServerSettings, store: ObjectStore | None, metrics: ServerMetrics) -> InputRefs:
    """Inputs sent by reference are read with the server's own store credentials (see inputrefs.py)."""
    limits = RefLimits(
        settings.input_ref_max_bytes,
        settings.input_ref_timeout_seconds,
        settings.input_ref_concurrency,
        settings.input_ref_max_request_bytes,
    )
    reader = S3Reader(store.config, limits.timeout_seconds, limits.concurrency) if store is not None else None
    if reader is not None and settings.input_ref_prefixes:
        log.info("inputs by reference are read from %s", ", ".join(settings.input_ref_prefixes))
    return InputRefs(settings.input_ref_prefixes, reader, limits, metrics)


def create_app(settings: ServerSettings, store: ObjectStore | None, plugin: ModelPlugin | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        threads = settings.inference_threads or cpu_threads(1)  # the container's CPU quota, not the node's cores
        p = plugin or load_plugin(settings.plugin)
        m = ServerMetrics()
        infer_pool = ThreadPoolExecutor(threads, thread_name_prefix="infer", initializer=_one_torch_thread)
        holder = ModelHolder(
            p,
            settings.warmup_passes,
            MemoryCheck(settings.cgroup_root, settings.memory_overhead_factor, settings.memory_reserve_bytes),
        )
        s = Serving(
            settings=settings,
            plugin=p,
            holder=holder,
            metrics=m,
            feedback=FeedbackBuffer(
                settings.model,
                store,
                settings.spool_dir,
                m,
                settings.feedback_batch_records,
                settings.feedback_flush_seconds,
                settings.feedback_max_backlog,
                max_bytes=settings.feedback_max_spool_bytes,
            ),
            infer_pool=infer_pool,
            batcher=InferenceBatcher(
                infer_pool, threads, settings.inference_batch_rows, m.batch_rows.observe, settings.max_queued_rows
            ),
            load_pool=ThreadPoolExecutor(1, thread_name_prefix="load", initializer=_one_torch_thread),
            flush_pool=ThreadPoolExecutor(1, thread_name_prefix="feedback"),
            spool_pool=ThreadPoolExecutor(1, thread_name_prefix="spool"),
            flush_wakeup=asyncio.Event(),
            reviews=ReviewGate(
                settings.review_auth,
                settings.review_path,
                RateLimiter(settings.review_rate_per_minute / 60.0, settings.review_burst),
            ),
            auth_pool=ThreadPoolExecutor(4, thread_name_prefix="review-auth"),
            shadow=ShadowScorer(
                lambda: holder.shadow,
                m,
                settings.shadow_queue_rows,
                settings.shadow_pairs_kept,
                settings.shadow_batch_rows,
            ),
            receipts=ReceiptBook(
                settings.model,
                store,
                settings.receipts_spool,
                m,
                batch_records=settings.receipt_batch_records,
                flush_seconds=settings.receipt_flush_seconds,
                max_backlog=settings.receipt_max_backlog,
                max_bytes=settings.receipt_max_spool_bytes,
                index_size=settings.receipt_index_size,
                cache_batches=settings.receipt_cache_batches,
                max_age=timedelta(hours=settings.receipt_max_age_hours),
                search_window=timedelta(minutes=settings.receipt_search_minutes),
                search_batches=settings.receipt_search_batches,
            ),
            ledger=ReviewLedger(settings.receipt_index_size),
            join_pool=ThreadPoolExecutor(4, thread_name_prefix="receipt-join"),  # joins and review markers
            refs=_input_refs(settings, store, m),
        )
        if store is not None:
            s.marks = ReviewMarks(settings.model, store, m)
        if store is not None and settings.feedback_durability == WRITE_THROUGH:
            s.commit_pool = ThreadPoolExecutor(1, thread_name_prefix="feedback-commit")
            s.commits = GroupCommit(
                settings.model,
                store,
                s.commit_pool,
                m,
                window=settings.feedback_commit_window_seconds,
                max_records=settings.feedback_commit_records,
                timeout=settings.feedback_commit_timeout_seconds,
                on_stored=s.ledger.remember_all,
                on_late=lambda records: [s.join_pool.submit(s.marks.settle, r, None) for r in records if s.marks],
            )
            s.commits.start()
        elif store is not None:
            log.info(
                "%s=%s: reviews are answered once fsynced to %s; they outlive the Pod only if that volume does",
                ENV_FEEDBACK_DURABILITY, SPOOL, settings.spool_dir,
            )  # fmt: skip
        s.shadow.start()
        app.state.serving = s
        if settings.review_auth == MODE_OFF:
            log.warning(
                "%s=off: POST /v1/feedback accepts reviews from anyone who can reach this port, recorded as '%s'",
                ENV_REVIEW_AUTH, ANONYMOUS,
            )  # fmt: skip
        if store is None:
            log.warning("no object store configured (%s unset): POST /v1/feedback answers 503", c.ENV_BUCKET)
        s.feedback.restore_spool()
        s.receipts.spool.restore_spool()
        _log_memory_limit(settings)
        loop = asyncio.get_running_loop()
        version = startup_version(settings.model_dir)
        if version is not None:
            try:
                result = await loop.run_in_executor(s.load_pool, s.holder.load, version, settings.model_dir / version)
                s.publish(result.model)
                log.info("serving %s (%s) from %s after start-up", version, result.model.digest, settings.model_dir)
            except (ArtifactError, OSError, ModelTooLarge) as e:
                if isinstance(e, ModelTooLarge):
                    s.metrics.reload_refusals.labels(REFUSED_TOO_LARGE).inc()
                log.error(
                    "cannot load %s found in %s at start-up (%s); waiting for the sidecar",
                    version,
                    settings.model_dir,
                    e,
                )
        else:
            log.info("no version in %s yet; not ready until the sidecar delivers one", settings.model_dir)
        control_app.state.serving = s
        control = await _start_control(control_app, settings.control_path)
        flusher = asyncio.create_task(_flusher(s))
        try:
            yield
        finally:
            await control.stop()
            if s.commits is not None:
                await s.commits.close()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            backlog = s.feedback.backlog
            stored = await loop.run_in_executor(s.flush_pool, lambda: s.feedback.flush(force=True))
            s.feedback.close()
            left = s.feedback.backlog
            if left:
                log.error(
                    "shutting down with %d feedback records not stored (object store unreachable); they are in %s "
                    "and are uploaded by the next server start on this volume",
                    left, s.feedback.spool_dir,
                )  # fmt: skip
            elif backlog:
                log.info("stored the last %d feedback records before shutting down", stored)
            await loop.run_in_executor(s.flush_pool, lambda: s.receipts.spool.flush(force=True))
            s.receipts.spool.close()
            if s.receipts.spool.backlog:
                log.warning(
                    "shutting down with %d receipts not stored; they are in %s for the next start on this volume",
                    s.receipts.spool.backlog, s.receipts.spool.spool_dir,
                )  # fmt: skip
            s.batcher.close()
            s.shadow.close()
            s.refs.close()
            for pool in (s.infer_pool, s.load_pool, s.flush_pool, s.spool_pool, s.auth_pool, s.join_pool):
                pool.shutdown(wait=True)
            if s.commit_pool is not None:
                s.commit_pool.shutdown(wait=True)

    routes = [
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *oip_routes(),
    ]
    control_app = create_control_app()
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.control_app = control_app
    return app


def create_control_app() -> Starlette:
    """The routes of the control socket: what the Pod's own sidecar needs, and nothing the world may call."""
    routes = [
        Route("/v1/reload", reload, methods=["POST"]),
        Route("/v1/shadow", shadow_load, methods=["POST"]),
        Route("/v1/shadow", shadow_unload, methods=["DELETE"]),
        Route("/v1/shadow", shadow_get, methods=["GET"]),
        Route("/v1/canary", canary_set, methods=["POST"]),
        Route("/v1/canary", canary_get, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes)


class _ControlServer(uvicorn.Server):
    """The control listener runs inside the public server's loop; the public server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class _RunningControl:
    server: _ControlServer
    task: asyncio.Task[None]
    path: Path

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        with contextlib.suppress(OSError):
            self.path.unlink()


async def _start_control(app: Starlette, path: Path) -> _RunningControl:
    """Listen on the control socket for as long as the public app's lifespan runs."""
    try:
        sock = bind_control_socket(path)
    except OSError as e:
        raise RuntimeError(
            f"cannot listen on the control socket {path} ({e}); the sidecar could not reach this server. "
            "Check that MODELLOOP_CONTROL_SOCKET is on a writable volume shared with the sidecar"
        ) from None
    config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None, http="h11")
    server = _ControlServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"the control listener on {path} stopped during start-up")
        await asyncio.sleep(0.01)
    log.info("control endpoints (/v1/reload for the sidecar) on unix socket %s, not on the public port", path)
    return _RunningControl(server, task, path)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ServerSettings.from_env()
    except SettingsError as e:
        raise SystemExit(f"modelloop-server: bad configuration: {e}") from None
    store: ObjectStore | None = None
    if os.environ.get(c.ENV_BUCKET):
        try:
            store = ObjectStore.from_env(attempts=2, base_delay=0.2, max_delay=1.0)
        except (RuntimeError, CABundleInvalid) as e:
            raise SystemExit(f"modelloop-server: bad object store configuration: {e}") from None
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, store)
    config = uvicorn.Config(
        app,
        host=settings.bind_host,
        port=settings.port,
        access_log=False,
        log_config=None,
        lifespan="on",
        loop="uvloop",  # named, not "auto": a missing wheel should stop the start, not quietly cost ~30% of throughput
        http="httptools",
        timeout_graceful_shutdown=20,
        backlog=2048,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
