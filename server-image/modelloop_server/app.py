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
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
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
from modelloop.api.feedback import FeedbackRecord
from modelloop.clients.objectstore import ObjectStore
from modelloop_trainer.plugin import InputError, ModelPlugin, load_plugin

from .batching import RETRY_AFTER_SECONDS, InferenceBatcher, Overloaded
from .bodylimits import BodyTooLarge, nesting_depth, read_bounded
from .control import bind_control_socket
from .feedback import BacklogFull, FeedbackBuffer, SpoolUnavailable
from .inputrefs import InputRefs, RefLimits, S3Reader
from .memory import REASON_TOO_LARGE, MemoryCheck, ModelTooLarge, read_limits, size
from .metrics import NO_VERSION, REFUSED_INVALID, REFUSED_TOO_LARGE, ServerMetrics
from .model import LoadedModel, ModelHolder
from .modeldir import startup_version, write_current
from .oip import routes as oip_routes
from .reviewgate import ANONYMOUS, MODE_OFF, RateLimiter, ReviewGate, ReviewRefused
from .settings import DEFAULT_MAX_JSON_DEPTH, ENV_REVIEW_AUTH, ServerSettings, SettingsError

log = logging.getLogger("modelloop_server")

SPOOL_RETRY_AFTER_SECONDS = 30
_EXAMPLE = '{"input": [...]} or {"inputs": [[...], ...]}'


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
    unknown = sorted(set(body) - {"input", "inputs"})
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
    refs: InputRefs

    def publish(self, model: LoadedModel) -> None:
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(model.version, model.digest).set(1)
        self.metrics.ready.set(1)
        try:
            write_current(self.settings.model_dir, model.version)
        except OSError as e:
            log.warning(
                "cannot record the serving version in %s (%s); a restart loads the newest", self.settings.model_dir, e
            )


def _headers(model: LoadedModel, request_id: str) -> dict[str, str]:
    return {"X-Model-Version": model.version, "X-Model-Digest": model.digest, "X-Request-Id": request_id}


def _answer(probs: Tensor, class_names: Sequence[str]) -> list[dict[str, Any]]:
    conf, idx = probs.max(dim=1)
    out = []
    for row, p, k in zip(probs.tolist(), conf.tolist(), idx.tolist(), strict=True):
        out.append({"predicted": k, "className": class_names[k], "confidence": p, "probabilities": row})
    return out


async def predict(request: Request) -> Response:
    s: Serving = request.app.state.serving
    started = time.perf_counter()
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    model = s.holder.current  # read once: this request finishes on this model whatever swaps meanwhile
    version = model.version if model else NO_VERSION
    try:
        parsed = await read_json(request, s.settings.max_body_bytes, s.settings.max_json_depth)
        x, batched = parse_inputs(parsed, s.plugin, s.settings.max_batch)
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
    body: dict[str, Any] = {"requestId": request_id, "version": model.version, "digest": model.digest}
    if batched:
        body["predictions"] = answers
    else:
        body.update(answers[0])
    s.metrics.requests.labels("200", model.version).inc()
    s.metrics.latency.labels(model.version).observe(time.perf_counter() - started)
    return json_response(body, 200, _headers(model, request_id))


REFUSAL_REASONS = {401: "unauthenticated", 403: "forbidden", 429: "rate_limited"}


def parse_feedback(body: Any, plugin: ModelPlugin, reviewer: str | None = None) -> FeedbackRecord:
    if not isinstance(body, dict):
        raise Problem(422, "feedback must be a JSON object with input, predicted, label, version (requestId optional)")
    allowed = {"requestId", "input", "predicted", "label", "version"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Problem(422, f"unknown feedback field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted({"input", "predicted", "label", "version"} - set(body))
    if missing:
        raise Problem(422, f"feedback is missing {', '.join(missing)}")
    request_id = body.get("requestId") or uuid.uuid4().hex
    if not isinstance(request_id, str) or len(request_id) > 128:
        raise Problem(422, "requestId must be a string of at most 128 characters")
    for name in ("predicted", "label"):
        v = body[name]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < plugin.num_classes:
            raise Problem(
                422, f"{name} must be a class index 0..{plugin.num_classes - 1}, got {orjson.dumps(v).decode()[:40]}"
            )
    version = body["version"]
    try:
        check_version(version if isinstance(version, str) else "")
    except ValueError:
        raise Problem(422, f"version must name the version that answered (v1, v2, ...), got {version!r}") from None
    x, _ = parse_inputs({"input": body["input"]}, plugin, 1)
    return FeedbackRecord(
        id=request_id,
        version=version,
        input=x[0].reshape(-1).tolist(),
        predicted=body["predicted"],
        label=body["label"],
        reviewed_at=datetime.now(UTC),
        reviewer=reviewer,
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
        record = parse_feedback(body, s.plugin, reviewer)
        try:
            # On the spool thread: the fsyncs that make a 202 durable must not stall the event loop.
            if await loop.run_in_executor(s.spool_pool, s.feedback.add, record):
                s.flush_wakeup.set()
        except (BacklogFull, SpoolUnavailable) as e:
            raise Problem(503, str(e), {"Retry-After": str(SPOOL_RETRY_AFTER_SECONDS)}) from None
    except Problem as p:
        return json_response({"error": p.message}, p.status, p.headers)
    return json_response({"id": record.id, "correction": record.is_correction}, 202)


async def reload(request: Request) -> Response:
    """Served on the control socket only (see :mod:`modelloop_server.control`): the public port has no such route."""
    s: Serving = request.app.state.serving
    try:
        body = await read_json(request, 64 << 10)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("version"), str)
            or not isinstance(body.get("path"), str)
        ):
            raise Problem(422, 'reload body must be {"version": "v<N>", "path": "<dir under the model dir>"}')
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
    if result.replaced is not None or not result.from_memory:
        s.metrics.swaps.labels("memory" if result.from_memory else "loaded").inc()
        s.metrics.swap_seconds.observe(result.swap_seconds)
        if not result.from_memory:
            s.metrics.load_seconds.observe(result.model.load_seconds)
    s.publish(result.model)
    old = result.replaced.version if result.replaced else None
    how = (
        "kept in memory, no load" if result.from_memory else f"loaded and warmed up in {result.model.load_seconds:.3f}s"
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
            "loadSeconds": result.model.load_seconds,
            "swapSeconds": result.swap_seconds,
        }
    )


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
    return json_response({"ready": True, "version": model.version, "digest": model.digest})


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
        if s.feedback.due():
            await loop.run_in_executor(s.flush_pool, s.feedback.flush)


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
        threads = settings.inference_threads or (os.cpu_count() or 1)
        p = plugin or load_plugin(settings.plugin)
        m = ServerMetrics()
        infer_pool = ThreadPoolExecutor(threads, thread_name_prefix="infer", initializer=_one_torch_thread)
        s = Serving(
            settings=settings,
            plugin=p,
            holder=ModelHolder(
                p,
                settings.warmup_passes,
                MemoryCheck(settings.cgroup_root, settings.memory_overhead_factor, settings.memory_reserve_bytes),
            ),
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
            refs=_input_refs(settings, store, m),
        )
        app.state.serving = s
        if settings.review_auth == MODE_OFF:
            log.warning(
                "%s=off: POST /v1/feedback accepts reviews from anyone who can reach this port, recorded as '%s'",
                ENV_REVIEW_AUTH, ANONYMOUS,
            )  # fmt: skip
        if store is None:
            log.warning("no object store configured (%s unset): POST /v1/feedback answers 503", c.ENV_BUCKET)
        s.feedback.restore_spool()
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
            s.batcher.close()
            s.refs.close()
            for pool in (s.infer_pool, s.load_pool, s.flush_pool, s.spool_pool, s.auth_pool):
                pool.shutdown(wait=True)

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
        except RuntimeError as e:
            raise SystemExit(f"modelloop-server: {e}") from None
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
