"""Every Prometheus metric of the model server, defined once (names are what the alerts and dashboard use).

A registry per server instance rather than the global one, so tests can run several servers in
one process without duplicate-registration errors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
NO_VERSION = "none"
REFUSED_TOO_LARGE = "model_too_large"
REFUSED_INVALID = "artifact_invalid"
REFUSAL_REASONS = (REFUSED_TOO_LARGE, REFUSED_INVALID)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "modelloop_server_requests",
            "Prediction requests answered, by HTTP status code and the model version that answered "
            f"({NO_VERSION!r} when none was involved, e.g. a rejected body).",
            ["code", "version"],
            registry=r,
        )
        self.predictions = Counter(
            "modelloop_server_predictions",
            "Predictions answered (one per input row), by answering version and predicted class name. The class "
            "label takes only the names the model's plug-in declares, so the series stay bounded.",
            ["version", "class"],
            registry=r,
        )
        self.latency = Histogram(
            "modelloop_server_request_duration_seconds",
            "Time from a prediction request's arrival to its answer, by answering version.",
            ["version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "modelloop_server_model_info",
            "1 for the model version this server answers with now.",
            ["version", "digest"],
            registry=r,
        )
        self.ready = Gauge("modelloop_server_ready", "1 once a warmed-up model is loaded.", registry=r)
        self.swaps = Counter(
            "modelloop_server_swaps",
            "Model swaps by result: loaded (from disk), memory (instant rollback to the kept previous model), failed.",
            ["result"],
            registry=r,
        )
        self.reload_refusals = Counter(
            "modelloop_server_reload_refusals",
            "Reload requests refused before anything was swapped, by reason: model_too_large (the version would "
            "not fit in the container's memory limit; nothing was loaded) or artifact_invalid (the files failed "
            "verification or do not fit the plug-in; also counted as a failed swap).",
            ["reason"],
            registry=r,
        )
        for reason in REFUSAL_REASONS:
            self.reload_refusals.labels(reason)
        self.swap_seconds = Histogram(
            "modelloop_server_swap_duration_seconds",
            "Time the reference swap itself took (the window in which requests could see either version).",
            buckets=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1),
            registry=r,
        )
        self.load_seconds = Histogram(
            "modelloop_server_load_duration_seconds",
            "Time to read, verify, build and warm up a version before it is swapped in.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.shed = Counter(
            "modelloop_server_shed_requests",
            "Prediction requests refused with 429 because the inference queue was full (MODELLOOP_MAX_QUEUED_ROWS); "
            "any rate above zero means the replicas cannot keep up: scale out or lower the offered load.",
            registry=r,
        )
        self.batch_rows = Histogram(
            "modelloop_server_inference_batch_rows",
            "Rows per forward pass. Requests that queue while the inference threads are busy share a pass, "
            "so this grows with load; a high median with rising latency means the threads are saturated.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.input_ref_fetches = Counter(
            "modelloop_server_input_ref_fetches",
            "Objects fetched for inputs sent by reference (s3://...), successful or not.",
            registry=r,
        )
        self.input_ref_bytes = Counter(
            "modelloop_server_input_ref_bytes",
            "Bytes of referenced inputs fetched from the object store.",
            registry=r,
        )
        self.input_ref_failures = Counter(
            "modelloop_server_input_ref_failures",
            "Inputs sent by reference that were refused or not fetched, by reason: malformed (400), forbidden (403: "
            "outside MODELLOOP_INPUT_REF_PREFIXES, or not readable with the server's credentials), missing (404), "
            "too_large (413), undecodable (422), unavailable (503: store unreachable or slow) or busy (503: every "
            "fetch slot taken). Unavailable or busy in numbers means the store is the bottleneck.",
            ["reason"],
            registry=r,
        )
        for reason in ("malformed", "forbidden", "missing", "too_large", "undecodable", "unavailable", "busy"):
            self.input_ref_failures.labels(reason)
        self.input_ref_seconds = Histogram(
            "modelloop_server_input_ref_fetch_seconds",
            "Time to fetch one referenced input (HEAD + bounded read), for fetches that succeeded.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.feedback_received = Counter(
            "modelloop_server_feedback_received",
            "Feedback records accepted, by kind: correction (label differs from the prediction) or confirmation.",
            ["kind"],
            registry=r,
        )
        for kind in ("correction", "confirmation"):
            self.feedback_received.labels(kind)
        self.feedback_refused = Counter(
            "modelloop_server_feedback_refused",
            "Reviews refused, by reason: unauthenticated (401), forbidden (403: RBAC does not let the caller review "
            "this model), rate_limited (429) or auth_unavailable (503: the sidecar or the API server could not be "
            "asked), before the review was read; store_unavailable (503: the object store could not store it, "
            "write-through mode, or could not be read to join it to its receipt; alert "
            "ModelloopFeedbackStoreUnavailable). Forbidden or rate-limited reviews in numbers mean a misconfigured "
            "or misbehaving review client.",
            ["reason"],
            registry=r,
        )
        for reason in ("unauthenticated", "forbidden", "rate_limited", "auth_unavailable", "store_unavailable"):
            self.feedback_refused.labels(reason)
        self.feedback_flushed = Counter(
            "modelloop_server_feedback_flushed_records",
            "Feedback records stored in the object store.",
            registry=r,
        )
        self.feedback_flush_errors = Counter(
            "modelloop_server_feedback_flush_errors",
            "Failed attempts to store a feedback batch (spool mode: kept in memory and in the spool, retried; "
            "write-through mode: its reviews answered 503, the clients retry).",
            registry=r,
        )
        self.feedback_commit_records = Histogram(
            "modelloop_server_feedback_commit_records",
            "Reviews stored by one PUT in write-through mode (MODELLOOP_FEEDBACK_DURABILITY=write-through): "
            "concurrent reviews share a PUT (group commit), so under load this grows above 1.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.feedback_backlog = Gauge(
            "modelloop_server_feedback_backlog_records",
            "Feedback records accepted but not yet stored in the object store.",
            registry=r,
        )
        self.feedback_backlog_bytes = Gauge(
            "modelloop_server_feedback_backlog_bytes",
            "Bytes of accepted feedback not yet stored in the object store (what the spool holds); at "
            "MODELLOOP_FEEDBACK_MAX_SPOOL_BYTES new reviews are refused with 503.",
            registry=r,
        )
        self.shadow_info = Gauge(
            "modelloop_server_shadow_info",
            "1 for the candidate version loaded as a shadow beside the serving one (scores live inputs off the "
            "response path; never answers a client). Absent when no shadow is loaded.",
            ["version", "digest", "active"],
            registry=r,
        )
        self.canary_percent = Gauge(
            "modelloop_server_canary_percent",
            "Percent of requests the candidate loaded as the shadow answers itself (the canary stage's step). "
            "Absent when it answers nobody. modelloop_server_requests_total by version counts the split done.",
            ["version"],
            registry=r,
        )
        self.shadow_scored = Counter(
            "modelloop_server_shadow_scored_requests",
            "Answered requests the shadow candidate also scored, by candidate version.",
            ["candidate"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "modelloop_server_shadow_dropped_requests",
            "Answered requests the shadow candidate did not score because its queue was full "
            "(MODELLOOP_SHADOW_QUEUE_ROWS input rows): shadow work is shed under load so that answers never wait for it. "
            "A high share only thins the paired sample; raise the queue or add CPU if reviews come too slowly.",
            ["candidate"],
            registry=r,
        )
        self.shadow_failed = Counter(
            "modelloop_server_shadow_failed_requests",
            "Requests the shadow candidate raised an error on (the client got the active model's answer).",
            ["candidate"],
            registry=r,
        )
        self.shadow_predictions = Counter(
            "modelloop_server_shadow_predictions",
            "Predictions (rows) scored by the shadow candidate; the denominator of the agreement ratio.",
            ["candidate"],
            registry=r,
        )
        self.shadow_agreed = Counter(
            "modelloop_server_shadow_agreed_predictions",
            "Shadow-scored predictions where the candidate predicted the same class as the serving model.",
            ["candidate"],
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "modelloop_server_shadow_agreement_ratio",
            "Share of shadow-scored predictions where candidate and serving model agree, since the candidate "
            "was loaded. Agreement is not accuracy: reviews of the disagreements decide promotion.",
            ["candidate"],
            registry=r,
        )
        self.receipts_written = Counter(
            "modelloop_server_receipts_written",
            "Prediction receipts stored in the object store (under <model>/receipts/); reviews are joined to them.",
            registry=r,
        )
        self.receipt_flush_errors = Counter(
            "modelloop_server_receipt_flush_errors",
            "Failed attempts to store a receipt batch (kept in memory and in the receipt spool, retried).",
            registry=r,
        )
        self.receipts_failed = Counter(
            "modelloop_server_receipts_failed",
            "Receipts that could not be spooled, by reason (backlog_full: the object store has been unreachable "
            "long enough to fill MODELLOOP_RECEIPT_MAX_BACKLOG or _MAX_SPOOL_BYTES; spool_unavailable: the spool "
            "volume refused the write). The prediction was answered; its receipt is only in this replica's memory, "
            "so a review of it reaching another replica, or arriving after a restart, is refused as unknown.",
            ["reason"],
            registry=r,
        )
        for reason in ("backlog_full", "spool_unavailable"):
            self.receipts_failed.labels(reason)
        self.receipt_backlog = Gauge(
            "modelloop_server_receipt_backlog_records",
            "Receipts written but not yet stored in the object store.",
            registry=r,
        )
        self.receipt_backlog_bytes = Gauge(
            "modelloop_server_receipt_backlog_bytes",
            "Bytes of receipts not yet stored in the object store (what the receipt spool holds).",
            registry=r,
        )
        self.review_joins = Counter(
            "modelloop_server_review_joins",
            "Reviews by prediction id, by where the receipt was found: memory (this replica answered), bucket "
            "(another replica or an earlier run did), unknown (no receipt: refused with 404), replay (the same "
            "review again, acknowledged without writing a second record).",
            ["result"],
            registry=r,
        )
        for result in ("memory", "bucket", "unknown", "replay"):
            self.review_joins.labels(result)
        self.review_marks = Counter(
            "modelloop_server_review_marks",
            "Review markers (one per reviewed prediction id, modelloop_server.reviewmarks), by outcome: first (the "
            "id's first stored review), revision (it replaces a stored review: counted as a change, not a new "
            "review), conflict (another replica stored a review of the same id at the same moment: it may count "
            "twice until training keeps the latest), failed (the marker could not be read or written: the next "
            "review of that id may count as a new one).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("first", "revision", "conflict", "failed"):
            self.review_marks.labels(outcome)
