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
            "Reviews refused before they were read, by reason: unauthenticated (401), forbidden (403: RBAC does not "
            "let the caller review this model), rate_limited (429) or auth_unavailable (503: the sidecar or the API "
            "server could not be asked). Forbidden or rate-limited reviews in numbers mean a misconfigured or "
            "misbehaving review client.",
            ["reason"],
            registry=r,
        )
        for reason in ("unauthenticated", "forbidden", "rate_limited", "auth_unavailable"):
            self.feedback_refused.labels(reason)
        self.feedback_flushed = Counter(
            "modelloop_server_feedback_flushed_records",
            "Feedback records stored in the object store.",
            registry=r,
        )
        self.feedback_flush_errors = Counter(
            "modelloop_server_feedback_flush_errors",
            "Failed attempts to store a feedback batch (kept in memory and in the spool, retried).",
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
