"""Traffic for the development environment: a load generator and a reviewer that posts feedback.

``make demo`` and the full-loop test use them to stand for production: clients calling
``POST /v1/predict`` on every serving replica while versions are hot-swapped (so a failed request
during a swap is seen and counted), and reviewers confirming or correcting answers through
``POST /v1/feedback`` (the corrections are what trigger retraining). Inputs are the handwritten
digits of the bundled example, perturbed (shifted, noisy) the way production inputs drift from a
curated training set, so the serving model makes real mistakes for reviewers to correct.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import urllib3

Targets = Callable[[], Sequence[str]]  # base URLs of the serving replicas, e.g. http://127.0.3.4:8080


def production_inputs(
    n: int, seed: int = 7
) -> tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.int64]]]:
    """``n`` digits (64 pixel values 0..16) with their true labels, shifted by a pixel and noisy."""
    from sklearn.datasets import load_digits  # imported here: only the traffic generators need it

    digits = load_digits()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(digits.target), size=n)
    images = digits.images[idx].astype(np.float32)
    shifts = rng.integers(-1, 2, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):
        images[i] = np.roll(images[i], (int(dy), int(dx)), axis=(0, 1))
    images += rng.normal(0.0, 2.0, size=images.shape).astype(np.float32)
    x = np.clip(images, 0.0, 16.0).reshape(n, 64)
    return x, digits.target[idx].astype(np.int64)


@dataclass
class Tally:
    """What the clients saw. ``failures`` keeps the first few failures verbatim for the report."""

    ok: int = 0
    failed: int = 0
    by_version: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ok: bool, version: str | None, latency_ms: float, detail: str = "") -> None:
        with self.lock:
            if ok:
                self.ok += 1
                self.by_version[version or "?"] += 1
                self.latencies_ms.append(latency_ms)
            else:
                self.failed += 1
                if len(self.failures) < 20:
                    self.failures.append(detail)

    def p95_ms(self) -> float | None:
        with self.lock:
            if not self.latencies_ms:
                return None
            return float(np.percentile(self.latencies_ms, 95))


def predict(
    pool: urllib3.PoolManager, base: str, x: Sequence[float], timeout_s: float = 10.0
) -> tuple[int, dict[str, Any], str | None]:
    resp = pool.request(
        "POST",
        f"{base}/v1/predict",
        body=json.dumps({"input": [float(v) for v in x]}).encode(),
        headers={"Content-Type": "application/json"},
        timeout=timeout_s,
    )
    payload: dict[str, Any] = {}
    if resp.data:
        try:
            payload = json.loads(resp.data)
        except ValueError:
            payload = {"raw": resp.data[:200].decode(errors="replace")}
    return resp.status, payload, resp.headers.get("X-Model-Version") or payload.get("version")


def predicted_class(payload: dict[str, Any]) -> int | None:
    for key in ("predicted", "class", "prediction", "label"):
        value = payload.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, list) and value and isinstance(value[0], int):
            return int(value[0])
    return None


class LoadGenerator:
    """``concurrency`` clients sending predictions round-robin to every replica until stopped."""

    def __init__(self, targets: Targets, concurrency: int = 4, seed: int = 11) -> None:
        self.targets = targets
        self.concurrency = concurrency
        self.inputs, _ = production_inputs(512, seed=seed)
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGenerator:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._client, args=(i,), name=f"loadgen-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _client(self, i: int) -> None:
        pool = urllib3.PoolManager(retries=False, maxsize=4)
        n = i
        while not self._stop.is_set():
            targets = list(self.targets())
            if not targets:
                self._stop.wait(0.2)
                continue
            base = targets[n % len(targets)]
            x = self.inputs[n % len(self.inputs)]
            n += 1
            started = time.perf_counter()
            try:
                status, payload, version = predict(pool, base, x)
            except urllib3.exceptions.HTTPError as e:
                self.tally.record(False, None, 0.0, f"{base}: {e}")
                continue
            ms = (time.perf_counter() - started) * 1000
            if status == 200:
                self.tally.record(True, version, ms)
            else:
                self.tally.record(False, version, ms, f"{base}: HTTP {status} {payload}")

    def stop(self) -> Tally:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
        return self.tally


def post_review(
    pool: urllib3.PoolManager, base: str, body: bytes, headers: dict[str, str], timeout_s: float, attempts: int = 5
) -> urllib3.BaseHTTPResponse:
    """POST a review; a 404 with Retry-After (the receipt is on its way to the bucket from the replica that
    answered, when a Service sent the review to another one) or a 503 with Retry-After (the object store
    could not take it: nothing was accepted) is retried after the delay it asks for."""
    for _ in range(attempts - 1):
        resp = pool.request("POST", f"{base}/v1/feedback", body=body, headers=headers, timeout=timeout_s)
        wait = resp.headers.get("Retry-After")
        if resp.status not in (404, 503) or wait is None:
            return resp
        time.sleep(min(float(wait), 10.0))
    return pool.request("POST", f"{base}/v1/feedback", body=body, headers=headers, timeout=timeout_s)


@dataclass
class ReviewResult:
    reviewed: int
    corrections: int
    failed: int


def review(
    targets: Sequence[str], n: int, seed: int = 3, timeout_s: float = 10.0, token: str | None = None
) -> ReviewResult:
    """Asks the serving replicas ``n`` questions, then posts every answer's true label as feedback.

    A correction is a review whose label differs from what the model predicted; only those count
    toward a retraining trigger. ``token``: the reviewer's bearer token (servers require one).
    The answers are all given before the first review, as reviewers see answers after they were
    given: by then a candidate in the shadow stage has scored the same inputs on the replica that
    answered, and each review (posted to that replica) labels both models.
    """
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    x, y = production_inputs(n, seed=seed)
    pool = urllib3.PoolManager(retries=False, maxsize=4)
    reviewed = corrections = failed = 0
    answered: list[tuple[str, str, int, int]] = []  # (replica, prediction id, predicted, true label)
    for i in range(n):
        base = targets[i % len(targets)]
        try:
            status, payload, _version = predict(pool, base, x[i], timeout_s)
            predicted = predicted_class(payload)
            if status != 200 or predicted is None:
                failed += 1
                continue
            answered.append((base, str(payload["id"]), predicted, int(y[i])))
        except (urllib3.exceptions.HTTPError, KeyError):
            failed += 1
    for base, prediction_id, predicted, label in answered:
        # The review names the prediction by its id; the server takes the version, the predicted
        # class and the input from its receipt of that answer.
        body = json.dumps({"id": prediction_id, "label": label, "reason": "loadgen: the true digit"})
        try:
            resp = post_review(pool, base, body.encode(), headers, timeout_s)
        except urllib3.exceptions.HTTPError:
            failed += 1
            continue
        if resp.status >= 300:
            failed += 1
            continue
        reviewed += 1
        corrections += int(predicted != label)
    return ReviewResult(reviewed=reviewed, corrections=corrections, failed=failed)
