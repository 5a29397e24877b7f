"""``modelloop-sidecar``: makes the model server in its Pod serve what the RetrainPolicy desires.

After KServe's model agent: a watch on the one RetrainPolicy (``MODELLOOP_POLICY``) feeds a
latest-wins slot; a single worker takes the newest ``status.desired``, downloads the version into
a temp dir on the shared volume (every file checked against the manifest, the manifest against
the promoted digest), renames it into place, asks the server over its control socket (a Unix
socket on the shared volume, never the public port) to load it, and then
records on its own Pod (annotations ``modelloop.dev/serving-version``/``-digest``) what the
replica serves, which is how the operator counts rollout progress.

Prefetch: while a version is being verified the operator names it in ``status.candidate``. A
second, low-priority worker downloads and verifies it into the model dir (only once the desired
version is served, and never while a promotion download is running), then annotates the Pod
``modelloop.dev/prefetched-digest``. When that version becomes desired the promotion finds it on
disk (or waits for the prefetch already under way) and is only a local load and a swap.

Failure handling, for whoever reads the Events at night: a corrupt or missing artifact is refused
(Event ``ArtifactRejected`` naming the file) and the old model keeps serving; it is retried only
when the desired version changes or after a long backoff (someone may re-upload it). A manifest
that is itself invalid (for example a file path with ``..`` or an absolute path) while carrying the
promoted digest can never become valid, so that version is refused for good (Event
``ArtifactRejected`` saying so) and not retried until the desired version changes. A version the
server refuses because it would not fit in the container's memory limit gets Event
``ModelTooLarge`` with the server's message (sizes, limit, what to change) and the same retry rule;
so does one that would overflow the model volume's emptyDir ``sizeLimit`` (Event
``ModelVolumeTooSmall``, refused before downloading: the kubelet would evict every replica at once). MinIO or the
API server being down is retried with backoff; a full disk cleans up the partial download. A store
whose certificate is not trusted (or that does not speak TLS) is retried too, but its Event
``StorageTLSFailed`` goes out at the first failure and says which CA file or flag to set. A
candidate that fails verification gets a Warning Event ``CandidatePrefetchFailed`` and nothing
else changes: serving is untouched, and the promotion (if it comes) tries the download again.

Shadow: once the candidate is on disk and passes the same checks a promotion makes (manifest
digest, hashes, and the signature when the policy or a mounted key requires one; an unsigned
candidate is retried with backoff, at least every ``SHADOW_RETRY_SECONDS``, until the operator signs it), the sidecar asks
the server (``POST /v1/shadow``) to load it beside the serving model, where it scores live inputs
off the response path (:mod:`modelloop_server.shadow`). The server refuses it with 409 when it
would not fit in the memory limit (Event ``ShadowSkipped``; serving and promotion are unaffected).
When the candidate is promoted the server makes the shadow model the serving one with no second
load; when it is withdrawn (rejected, failed, overtaken) the sidecar unloads it
(``DELETE /v1/shadow``).

Canary: when the operator's canary stage names a share in ``status.candidate.canaryPercent``, the
sidecar tells the server (``POST /v1/canary``) to answer that percent of requests with the shadow
candidate it already holds (:mod:`modelloop_server.canary`), and 0 when the share is withdrawn.
The share is only applied to the candidate this sidecar loaded as the shadow: a candidate that is not
verified, downloaded and warmed up here answers nobody.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from modelloop.api import constants as c
from modelloop.api.artifacts import (
    VERIFICATION_FILE,
    ArtifactError,
    ManifestInvalid,
    check_version,
    digest_of,
    parse_artifact_uri,
    version_key,
    version_prefix,
)
from modelloop.api.signing import SIGNATURE_FILE, SignatureMismatch, compare_signed, signed_digests
from modelloop.clients.artifactstore import fetch_version
from modelloop.clients.objectstore import CABundleInvalid, NotFound, ObjectStore, StoreConfig, tls_context, tls_failure
from modelloop.clients.signing import SignatureInvalid, SigningKeyError, verify_digests

from .control import REVIEW_AUTH_SOCKET_NAME, ControlClient
from .diskroom import REASON_NO_ROOM, VolumeLimit, disk_usage, room_decision, volume_limit
from .memory import REASON_TOO_LARGE
from .modeldir import clean_temp_dirs, prune, read_local_manifest, verify_local, versions_on_disk
from .reviewauth import AUDIENCE, SUBRESOURCE, ReviewAuthorizer, StaticTokens, serve_review_auth
from .settings import SettingsError, SidecarSettings

log = logging.getLogger("modelloop_sidecar")

COMPONENT = "modelloop-sidecar"
REASON_REJECTED = "ArtifactRejected"
REASON_DOWNLOAD_FAILED = "ArtifactDownloadFailed"
REASON_TLS_FAILED = "StorageTLSFailed"
REASON_LOADED = "ModelLoaded"
REASON_PREFETCH_FAILED = "CandidatePrefetchFailed"
REASON_SHADOW_LOADED = "ShadowLoaded"
REASON_SHADOW_SKIPPED = "ShadowSkipped"
REASON_CANARY = "CanaryServing"
SHADOW_RETRY_SECONDS = 30.0
REJECTED_RETRY_SECONDS = 300.0


@dataclass(frozen=True)
class Desired:
    version: str
    artifact_uri: str
    digest: str

    def __str__(self) -> str:
        return f"{self.version} ({self.digest[:19]}…)"


class DesiredError(ValueError):
    """``status.desired`` (or ``status.candidate``) is present but unusable; the message says which field."""


def _parse_ref(policy: dict[str, Any], model: str, field: str) -> Desired | None:
    ref = (policy.get("status") or {}).get(field) or {}
    if not ref.get("version"):
        return None
    version = ref["version"]
    uri = ref.get("artifactURI") or ""
    digest = ref.get("manifestDigest") or ""
    try:
        check_version(version)
        _, prefix = parse_artifact_uri(uri)
    except ValueError as e:
        raise DesiredError(f"status.{field} of the policy is unusable: {e}") from None
    if prefix != version_prefix(model, version):
        raise DesiredError(
            f"status.{field}.artifactURI {uri!r} does not point at {version_prefix(model, version)} "
            f"(this server serves model {model!r})"
        )
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise DesiredError(f"status.{field}.manifestDigest {digest!r} is not sha256:<64 hex digits>")
    return Desired(version, uri, digest)


def parse_desired(policy: dict[str, Any], model: str) -> Desired | None:
    """The policy's desired version, None when nothing is promoted yet."""
    return _parse_ref(policy, model, "desired")


def parse_candidate(policy: dict[str, Any], model: str) -> Desired | None:
    """The version under verification that may be prefetched, None when there is none."""
    return _parse_ref(policy, model, "candidate")


def parse_canary_percent(policy: dict[str, Any]) -> int:
    """``status.candidate.canaryPercent``: the share of requests the candidate answers, 0 when absent."""
    percent = ((policy.get("status") or {}).get("candidate") or {}).get("canaryPercent") or 0
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 99:
        raise DesiredError(f"status.candidate.canaryPercent must be an integer 0-99, got {percent!r}")
    return percent


def too_large_message(body: str) -> str | None:
    """The server's message from a ``ModelTooLarge`` 409 answer; None for any other body."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict) or answer.get("reason") != REASON_TOO_LARGE:
        return None
    return str(answer.get("error") or "the version does not fit in the container's memory")


class LatestSlot:
    """A one-element queue where a newer value replaces an unread older one (latest wins)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._value: Desired | None = None
        self._fresh = False

    def offer(self, value: Desired) -> None:
        with self._cond:
            self._value, self._fresh = value, True
            self._cond.notify_all()

    def take(self, timeout: float | None) -> Desired | None:
        """The newest unread value, or None after ``timeout`` seconds without one."""
        with self._cond:
            if not self._fresh:
                self._cond.wait(timeout)
            if not self._fresh:
                return None
            self._fresh = False
            return self._value

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def backoff(attempt: int, base: float, cap: float, jitter: Callable[[], float] = random.random) -> float:
    """Exponential backoff with ±20 % jitter so replicas do not retry in lock-step."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)) * (0.8 + 0.4 * jitter()))


def event_body(s: SidecarSettings, pod_uid: str | None, reason: str, message: str, warning: bool) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    involved: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "name": s.pod_name, "namespace": s.namespace}
    if pod_uid:
        involved["uid"] = pod_uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{s.pod_name}.", "namespace": s.namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": s.pod_name,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class Rejected(Exception):
    """This version cannot be served as published; retrying soon would not help."""


class RejectedForGood(Rejected):
    """The promoted bytes themselves are invalid: no retry of this version can succeed."""


def rejected_retry_delay(error: Rejected, attempts: int) -> float:
    """Seconds until a refused version is tried again; ``inf``: only when the desired version changes."""
    if isinstance(error, RejectedForGood):
        return math.inf
    return max(REJECTED_RETRY_SECONDS, backoff(attempts, 60, 1800))


class TooLarge(Rejected):
    """The server refused the version before loading it: it would not fit in the container's memory.

    Retried like a rejected artifact (when the desired version changes, or after the long backoff:
    the limit may be raised in place); the Event carries the server's message, which names the
    sizes and what to change.
    """


class NoRoom(Rejected):
    """The version would overflow the model volume's sizeLimit (the kubelet would evict the Pod).

    Refused before downloading it, retried like a rejected artifact: the Deployment's sizeLimit
    must change, which restarts the Pod anyway.
    """


class Transient(Exception):
    """Something that heals (MinIO, the API server or the model server unreachable); retry with backoff."""


class StorageTLSFailed(Transient):
    """The store's certificate is not trusted, or it does not speak TLS: retried, but said at once (an Event)."""


def tls_failed_message(endpoint: str, why: str) -> str:
    if "plain HTTP" in why:
        advice = f"point {c.ENV_S3_ENDPOINT} at its TLS port, or set {c.ENV_S3_SECURE}=false if it serves plain HTTP"
    else:
        advice = (
            f"set {c.ENV_S3_CA_FILE} to the CA that signed it (mount the ConfigMap the policy names in"
            " spec.storage.tls.caBundle)"
        )
    return f"TLS verification failed for {endpoint}: {why}; {advice}"


PROMOTION = "promotion"
PREFETCH = "prefetch"


class Downloads:
    """Downloads under way, by version: a second caller waits for the first rather than fetching twice.

    Also lets the prefetch worker stay out of the way: it starts nothing while a promotion
    download is running.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: dict[Desired, str] = {}

    def begin(self, d: Desired, kind: str) -> str | None:
        """Claim ``d`` for a download of ``kind``: None when claimed, else the kind already fetching it."""
        with self._cond:
            if d in self._running:
                return self._running[d]
            self._running[d] = kind
            return None

    def end(self, d: Desired) -> None:
        with self._cond:
            self._running.pop(d, None)
            self._cond.notify_all()

    def wait(self, d: Desired, timeout: float) -> bool:
        """Wait until no download of ``d`` is under way; False after ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: d not in self._running, timeout)

    def busy(self, kind: str) -> bool:
        with self._cond:
            return kind in self._running.values()

    def versions(self) -> set[str]:
        with self._cond:
            return {d.version for d in self._running}


class Sidecar:
    def __init__(self, settings: SidecarSettings, api: client.ApiClient, store_config: StoreConfig) -> None:
        self.s = settings
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.store_config = store_config
        self.control = ControlClient(settings.control_socket)
        self._stores: dict[str, ObjectStore] = {}
        self.slot = LatestSlot()
        self.stop = threading.Event()
        self.pod_uid: str | None = None
        self.served: Desired | None = None
        self._watch: watch.Watch | None = None
        self._verified: set[Desired] = set()
        self._stores_lock = threading.Lock()
        self._disk_lock = threading.Lock()
        self.downloads = Downloads()
        self.download_counts: dict[str, int] = {PROMOTION: 0, PREFETCH: 0}
        self.pending: Desired | None = None
        """The desired version the main loop works towards; the prefetch worker and pruning read it."""
        self.previous: str | None = None
        self.candidate: Desired | None = None
        self.prefetched: Desired | None = None
        self.desired: Desired | None = None
        """The newest ``status.desired`` seen by the watch (``pending`` lags it until the main loop takes it)."""
        self.shadowed: Desired | None = None
        self.canary_percent = 0
        """``status.candidate.canaryPercent`` as last watched."""
        self._canary_applied: tuple[Desired, int] | None = None
        """The split the server was last told (candidate, percent); None: it answers nobody."""
        self._server_canary_known = False
        """False until the server's own split has been asked for: a restarted sidecar must end a split the
        operator withdrew while it was down."""
        self._shadow_refused: Desired | None = None
        self._shadow_retry_at = 0.0
        self._shadow_attempts = 0
        self._server_shadow_known = False
        """False until the server's own shadow has been asked for: a restarted sidecar must not leave one
        loaded for a candidate withdrawn while it was down."""
        self.prefetch_wake = threading.Event()
        self._events_lock = threading.Lock()
        self._last_event: dict[tuple[str, str], tuple[str, int]] = {}
        self._volume_limit: tuple[VolumeLimit | None] | None = None
        self.signature_required = False
        """The policy sets spec.serving.signature; with a public key mounted, a signature is required anyway."""

    # --- watch ------------------------------------------------------------------------------

    def watch_policy(self) -> None:
        """List then watch the one policy by name, resuming from the last resourceVersion."""
        selector = f"metadata.name={self.s.policy}"
        rv: str | None = None
        failures = 0
        where = f"RetrainPolicy {self.s.namespace}/{self.s.policy}"
        while not self.stop.is_set():
            try:
                if rv is None:
                    listing: dict[str, Any] = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
                        c.GROUP, c.VERSION, self.s.namespace, c.RETRAINPOLICY_PLURAL,
                        field_selector=selector, _request_timeout=(5, 30),
                    )  # fmt: skip
                    rv = listing["metadata"]["resourceVersion"]
                    items = listing.get("items") or []
                    if not items:
                        log.warning("%s does not exist (yet); waiting for it", where)
                    for item in items:
                        self._offer(item)
                self._watch = watch.Watch()  # type: ignore[no-untyped-call]
                for event in self._watch.stream(  # type: ignore[no-untyped-call]
                    self.custom.list_namespaced_custom_object,
                    c.GROUP, c.VERSION, self.s.namespace, c.RETRAINPOLICY_PLURAL,
                    field_selector=selector, resource_version=rv, allow_watch_bookmarks=True,
                    timeout_seconds=240, _request_timeout=(5, 260),
                ):  # fmt: skip
                    failures = 0
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        if obj.get("code") == 410:
                            rv = None
                            break
                        raise Transient(f"watch error: {obj.get('message')}")
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._offer(obj)
                    elif event["type"] == "DELETED":
                        log.warning("%s was deleted; keeping the current model", where)
                    if self.stop.is_set():
                        break
            except ApiException as e:
                if e.status == 410:
                    log.info("watch of %s expired (410 Gone); listing again", where)
                    rv = None
                    continue
                failures += 1
                delay = backoff(failures, self.s.retry_base_seconds, self.s.retry_max_seconds)
                log.warning("watching %s failed (HTTP %s: %s); retrying in %.1fs", where, e.status, e.reason, delay)
                self.stop.wait(delay)
            except Exception as e:  # noqa: BLE001 — connection errors of any kind: the API server may be restarting
                if self.stop.is_set():
                    break
                failures += 1
                delay = backoff(failures, self.s.retry_base_seconds, self.s.retry_max_seconds)
                log.warning("watching %s failed (%s); retrying in %.1fs", where, e, delay)
                self.stop.wait(delay)

    def _offer(self, policy: dict[str, Any]) -> None:
        self.signature_required = bool(((policy.get("spec") or {}).get("serving") or {}).get("signature"))
        try:
            desired: Desired | None = parse_desired(policy, self.s.model)
            desired_ok = True
        except DesiredError as e:
            log.error("%s; keeping the current model", e)
            desired, desired_ok = None, False
        if desired is not None:
            self.desired = desired  # before the candidate changes: a promoted shadow must not look withdrawn
        try:
            candidate = parse_candidate(policy, self.s.model)
        except DesiredError as e:
            log.error("%s; not prefetching it", e)
            candidate = None
        try:
            percent = parse_canary_percent(policy) if candidate is not None else 0
        except DesiredError as e:
            log.error("%s; the candidate answers nobody", e)
            percent = 0
        if candidate != self.candidate or percent != self.canary_percent:
            self.candidate, self.canary_percent = candidate, percent
            self.prefetch_wake.set()
        if desired_ok and desired is not None:
            self.slot.offer(desired)

    # --- reconcile --------------------------------------------------------------------------

    def _store(self, bucket: str) -> ObjectStore:
        with self._stores_lock:
            if bucket not in self._stores:
                self._stores[bucket] = ObjectStore(dataclasses.replace(self.store_config, bucket=bucket), attempts=3)
            return self._stores[bucket]

    def ensure_local(self, d: Desired, kind: str = PROMOTION) -> Path:
        """The version's directory on the shared volume, verified; downloaded only if not already there.

        If the other worker is already downloading the same version, wait for it and use its copy.
        """
        dest = self.s.model_dir / d.version
        while True:
            if dest.is_dir() and d in self._verified:
                # verified when fetched in this run; the server re-checks the weights when it loads them
                log.info("%s is already on disk and verified; no download", d)
                return dest
            under_way = self.downloads.begin(d, kind)
            if under_way is None:
                break
            log.info(
                "%s is being downloaded by the %s worker; waiting for it instead of downloading twice", d, under_way
            )
            while not self.downloads.wait(d, 1.0):
                if self.stop.is_set():
                    raise Transient(f"stopping while waiting for the download of {d.version}")
        try:
            return self._fetch(d, dest, kind)
        finally:
            self.downloads.end(d)
            self.prefetch_wake.set()

    def _fetch(self, d: Desired, dest: Path, kind: str) -> Path:
        if dest.is_dir():
            try:
                _, digest = verify_local(dest)
                if digest == d.digest:
                    log.info("%s is already on disk and verified; no download", d)
                    self._verified.add(d)
                    return dest
                log.info("%s on disk has digest %s, not the desired one; downloading again", dest, digest)
            except ArtifactError as e:
                log.warning("local copy of %s failed verification (%s); downloading again", d.version, e)
        bucket, _ = parse_artifact_uri(d.artifact_uri)
        started = time.monotonic()
        try:
            fetch_version(
                self._store(bucket),
                self.s.model,
                d.version,
                dest,
                expected_digest=d.digest,
                admit=lambda manifest: self.make_room(d, sum(f.size for f in manifest.files)),
            )
        except ManifestInvalid as e:
            clean_temp_dirs(self.s.model_dir, d.version)
            raise RejectedForGood(str(e)) from e
        except ArtifactError as e:
            raise Rejected(str(e)) from e
        except NoRoom:
            raise
        except OSError as e:
            clean_temp_dirs(self.s.model_dir, d.version)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise Transient(
                    f"disk full while downloading {d.version} into {self.s.model_dir}; partial download removed"
                ) from e
            raise Transient(f"downloading {d.version} from {d.artifact_uri} failed: {e}") from e
        except Exception as e:
            clean_temp_dirs(self.s.model_dir, d.version)
            if (why := tls_failure(e)) is not None:
                raise StorageTLSFailed(tls_failed_message(self.store_config.endpoint, why)) from e
            raise Transient(f"downloading {d.version} from {d.artifact_uri} failed: {e}") from e
        self.download_counts[kind] += 1
        log.info(
            "downloaded and verified %s into %s in %.2fs (%s download #%d)",
            d, dest, time.monotonic() - started, kind, self.download_counts[kind],
        )  # fmt: skip
        self._verified.add(d)
        return dest

    def volume_limit(self) -> VolumeLimit | None:
        """The model volume's sizeLimit, read once from this Pod's spec.

        Through an empty merge patch (a no-op that returns the Pod): the Role grants ``patch`` on
        Pods already, and ``get`` would let the sidecar read every Pod in the namespace.
        """
        if self._volume_limit is None:
            try:
                pod = self.core.patch_namespaced_pod(self.s.pod_name, self.s.namespace, {}, _request_timeout=(5, 30))
            except Exception as e:  # noqa: BLE001 — ApiException or a connection error: heals, retry
                raise Transient(f"cannot read Pod {self.s.namespace}/{self.s.pod_name} for its volumes: {e}") from None
            spec = self.api.sanitize_for_serialization(pod)  # type: ignore[no-untyped-call]
            found = volume_limit(spec, self.s.model_dir.resolve())
            self._volume_limit = (found,)
            if found is not None:
                log.info("model volume '%s' has sizeLimit %s", found.volume, found.declared)
        return self._volume_limit[0]

    def make_room(self, d: Desired, need: int) -> None:
        """Refuse ``d`` before downloading it if it cannot fit under the volume's sizeLimit; drop spare copies if that helps."""
        limit = self.volume_limit()
        if limit is None:
            return
        with self._disk_lock:
            keep = {self.served.version} if self.served is not None else set()
            keep |= self.downloads.versions() - {d.version}
            on_disk = versions_on_disk(self.s.model_dir)
            droppable = [(v, disk_usage(self.s.model_dir / v)) for v in on_disk if v not in keep]
            decision = room_decision(
                d.version, need, limit, disk_usage(self.s.model_dir), droppable, sorted(keep & set(on_disk))
            )
            if not decision.fits:
                raise NoRoom(decision.message)
            for v in decision.drop:
                shutil.rmtree(self.s.model_dir / v, ignore_errors=True)
        if decision.drop:
            log.info("removed %s from the model volume to make room for %s", ", ".join(decision.drop), d.version)

    def _load_call(self, verb: str, d: Desired, path: Path) -> tuple[int, str, dict[str, Any] | None]:
        """POST ``/v1/<verb>`` (reload or shadow) for ``d`` at ``path`` over the control socket:
        (status, the answer's text for messages, the JSON answer when the status is 200)."""
        body = json.dumps({"version": d.version, "path": str(path)}).encode()
        try:
            status, raw = self.control.request("POST", f"/v1/{verb}", body, timeout=120)
        except OSError as e:
            raise Transient(f"the model server's control socket {self.s.control_socket} is unreachable: {e}") from None
        detail = raw[:8192].decode(errors="replace")
        if status != 200:
            return status, detail, None
        try:
            answer: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise Transient(f"the model server answered {verb} {d.version} with non-JSON: {detail}") from None
        return status, detail, answer

    def reload_server(self, d: Desired, path: Path) -> dict[str, Any]:
        status, detail, answer = self._load_call("reload", d, path)
        if answer is not None:
            return answer
        if status == 409:
            too_large = too_large_message(detail)
            if too_large is not None:
                raise TooLarge(f"the model server refused it before loading: {too_large}")
        if status == 422:
            raise Rejected(f"the model server refused {d.version}: {detail}")
        raise Transient(f"the model server answered HTTP {status} to reload {d.version}: {detail}")

    def annotate_pod(self, d: Desired) -> None:
        self._annotate({c.ANNOTATION_SERVING_VERSION: d.version, c.ANNOTATION_SERVING_DIGEST: d.digest})

    def _annotate(self, annotations: dict[str, str]) -> None:
        body = {"metadata": {"annotations": annotations}}
        try:
            pod = self.core.patch_namespaced_pod(self.s.pod_name, self.s.namespace, body, _request_timeout=(5, 30))
            self.pod_uid = pod.metadata.uid if pod.metadata else None
        except ApiException as e:
            raise Transient(
                f"cannot annotate Pod {self.s.namespace}/{self.s.pod_name}: HTTP {e.status} {e.reason}"
            ) from None
        except Exception as e:  # noqa: BLE001 — connection errors: the API server may be restarting
            raise Transient(f"cannot annotate Pod {self.s.namespace}/{self.s.pod_name}: {e}") from None

    def event(self, reason: str, message: str, warning: bool = True) -> None:
        """Post an Event; a repeat of the last one with the same reason and message bumps its count.

        A download that keeps failing (disk full, MinIO down) retries for as long as it takes; one
        Event with a growing count is what ``kubectl describe pod`` should show, not hundreds.
        """
        key = (reason, message[:1024])
        with self._events_lock:
            try:
                if key in self._last_event:
                    name, count = self._last_event[key]
                    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                    try:
                        self.core.patch_namespaced_event(
                            name, self.s.namespace, {"count": count + 1, "lastTimestamp": now},
                            _request_timeout=(5, 30),
                        )  # fmt: skip
                        self._last_event[key] = (name, count + 1)
                        return
                    except ApiException as e:
                        if e.status != 404:  # expired (the API server keeps Events for an hour): post anew
                            raise
                created: Any = self.core.create_namespaced_event(
                    self.s.namespace,
                    event_body(self.s, self.pod_uid, reason, message, warning),  # type: ignore[arg-type]
                    _request_timeout=(5, 30),
                )
                self._last_event = {k: v for k, v in self._last_event.items() if k[0] != reason}
                self._last_event[key] = (created.metadata.name, 1)
            except Exception as e:  # noqa: BLE001 — an Event is best effort; the log line is the record
                log.warning("could not post Event %s on Pod %s (%s)", reason, self.s.pod_name, e)

    def check_signature(self, d: Desired, path: Path) -> None:
        """Before loading: ``model.sig`` must verify with the policy's public key and sign exactly these bytes.

        The files on disk were checked against the manifest, and the manifest against the promoted
        digest, so the signed digests are compared with the manifest's (no re-hashing); the
        verification.json it binds is small and is fetched to check its digest. Not checked at
        prefetch: the candidate is signed only once it passes its gates.
        """
        key = self.s.signing_public_key
        if key is not None and not key.exists():
            key = None  # an optional ConfigMap that is not there: the policy alone decides whether to require one
        if key is None and not self.signature_required:
            return
        where = f"{d.artifact_uri}{SIGNATURE_FILE}"
        if key is None:
            raise RejectedForGood(
                "the policy requires a signature (spec.serving.signature) but this sidecar has no public key: "
                f"mount the key the policy names at {self.s.signing_public_key or 'a path'} and set "
                "MODELLOOP_SIGNING_PUBLIC_KEY on the sidecar to it"
            )
        bucket, _ = parse_artifact_uri(d.artifact_uri)
        store = self._store(bucket)
        fetched: dict[str, bytes] = {}
        for name in (SIGNATURE_FILE, VERIFICATION_FILE):
            try:
                fetched[name] = store.get_bytes(version_key(self.s.model, d.version, name))
            except NotFound:
                raise Rejected(
                    f"signature check failed: {d.artifact_uri}{name} is missing, so the signature cannot be checked "
                    "and the version is not loaded (the operator signs a version when it passes its gates: see the "
                    "ModelVersion's Signed condition)"
                ) from None
            except Exception as e:  # noqa: BLE001 — MinIO unreachable and the like: heals, retry
                raise Transient(f"cannot read {d.artifact_uri}{name}: {e}") from None
        try:
            manifest, digest = read_local_manifest(path)
            if digest != d.digest:
                raise SignatureMismatch(f"{path}/manifest.json has digest {digest}, not the promoted {d.digest}")
            signed = verify_digests(key, fetched[SIGNATURE_FILE])
            compare_signed(signed_digests(manifest, digest, digest_of(fetched[VERIFICATION_FILE])), signed, d.version)
        except ArtifactError as e:
            raise Rejected(f"signature check failed: {e}") from None
        except SigningKeyError as e:
            raise RejectedForGood(f"signature check failed: {e}") from None
        except (SignatureInvalid, SignatureMismatch) as e:
            raise RejectedForGood(f"signature check failed: {where}: {e}") from None

    def apply(self, d: Desired) -> None:
        prefetched = self.prefetched == d
        path = self.ensure_local(d)
        self.check_signature(d, path)
        answer = self.reload_server(d, path)
        self.annotate_pod(d)
        if answer.get("fromShadow") or self.shadowed == d:
            self.shadowed = None  # the server promoted the shadow model itself
            self._canary_applied = None  # and ended its split
        if self.served != d:
            if answer.get("fromShadow"):
                how = "promoted from the shadow: the prefetched copy, already loaded, no download and no second load"
            elif not answer.get("fromMemory"):
                how = "loaded and warmed up" + (" from the prefetched copy (no download)" if prefetched else "")
            elif answer.get("previous"):
                how = "from memory (instant rollback, no load)"
            else:
                how = "already loaded by the server at start-up"
            log.info("serving %s now, %s; Pod annotated", d, how)
            self.event(REASON_LOADED, f"serving {d.version} ({d.digest}), {how}", warning=False)
        self.served = d
        self.previous = str(answer.get("previous") or "") or None
        self.prefetch_wake.set()
        self.prune_disk()

    def prune_disk(self) -> None:
        """Keep the served, previous (instant rollback), desired and candidate versions; drop the oldest others."""
        with self._disk_lock:
            keep = {v.version for v in (self.served, self.pending, self.candidate) if v is not None}
            keep |= {v for v in (self.previous,) if v} | self.downloads.versions()
            removed = prune(self.s.model_dir, self.s.keep_versions, keep)
        if removed:
            log.info("removed old versions from disk: %s", ", ".join(removed))

    # --- prefetch ---------------------------------------------------------------------------

    def prefetch(self, d: Desired) -> None:
        """Download and verify the candidate, then say so on the Pod (what the rollout can wait on)."""
        self.ensure_local(d, PREFETCH)
        self._annotate({c.ANNOTATION_PREFETCHED_DIGEST: d.digest})
        self.prefetched = d
        log.info("prefetched candidate %s; promoting it will need no download", d)
        self.prune_disk()

    # --- shadow ---------------------------------------------------------------------------

    def sync_shadow(self) -> None:
        """Make the server's shadow model the prefetched candidate, or none when the candidate is withdrawn."""
        d = self.candidate
        if not self._server_shadow_known:
            self._learn_server_shadow()
        old = self.shadowed
        if old is not None and old != d and old not in (self.desired, self.pending, self.served):
            self.unload_shadow(old)
        if (
            d is None
            or self.downloads.busy(PROMOTION)
            or d != self.prefetched
            or d == self.shadowed
            or d == self._shadow_refused
            or d in (self.desired, self.pending, self.served)
            or time.monotonic() < self._shadow_retry_at
        ):
            return
        path = self.s.model_dir / d.version
        if not path.is_dir():
            return
        try:
            self.check_signature(d, path)
            answer = self.shadow_server(d, path)
        except (TooLarge, RejectedForGood) as e:
            self._shadow_refused = d
            msg = f"not scoring candidate {d.version} in the shadow: {e}; serving and its promotion are unaffected"
            log.error("%s", msg)
            self.event(REASON_SHADOW_SKIPPED, msg)
            return
        except (Rejected, Transient) as e:
            self._shadow_attempts += 1
            cap = min(SHADOW_RETRY_SECONDS, self.s.retry_max_seconds)
            delay = backoff(self._shadow_attempts, self.s.retry_base_seconds, cap)
            self._shadow_retry_at = time.monotonic() + delay
            log.info("candidate %s not loaded as the shadow yet (%s); retry in %.0fs", d, e, delay)
            return
        self.shadowed, self._shadow_attempts, self._shadow_retry_at = d, 0, 0.0
        how = "kept in memory" if answer.get("fromMemory") else "loaded"
        log.info("candidate %s %s as the shadow: it scores live inputs, answers nobody", d, how)
        self.event(
            REASON_SHADOW_LOADED,
            f"scoring candidate {d.version} ({d.digest}) in the shadow beside {answer.get('active')}; "
            "it answers no client",
            warning=False,
        )

    def sync_canary(self) -> None:
        """Tell the server the share of requests the shadow candidate answers, when it changed."""
        d, percent = self.shadowed, self.canary_percent
        want = (d, percent) if d is not None and d == self.candidate and percent > 0 else None
        if want is None and d is not None and d in (self.desired, self.pending):
            return  # being promoted: the reload makes it answer everything; ending the split first would flap keys
        if not self._server_canary_known and not self._learn_server_canary(want):
            return
        applied = self._canary_applied
        if want == applied or (want is None and applied is None):
            return
        target = want or applied
        assert target is not None
        body = json.dumps({"version": target[0].version, "percent": want[1] if want else 0}).encode()
        try:
            status, raw = self.control.request("POST", "/v1/canary", body, timeout=10)
        except OSError as e:
            log.warning("cannot set the canary split of %s yet (%s); retrying", target[0], e)
            return
        if status != 200:
            log.warning("the model server answered HTTP %d to the canary split of %s: %r", status, target[0], raw[:500])
            return
        self._canary_applied = want
        if want is None:
            log.info("candidate %s answers nobody any more (canary ended)", target[0])
            return
        log.info("candidate %s answers %d%% of requests (canary)", want[0], want[1])
        self.event(
            REASON_CANARY,
            f"candidate {want[0].version} ({want[0].digest}) answers {want[1]}% of requests (canary stage); "
            "its answers and receipts name it",
            warning=False,
        )

    def _learn_server_canary(self, want: tuple[Desired, int] | None) -> bool:
        """Ends a split the server holds that nobody wants any more; whether the server answered."""
        try:
            status, raw = self.control.request("GET", "/v1/canary", timeout=5)
            held = (json.loads(raw).get("canary") or None) if status == 200 else None
        except (OSError, ValueError, AttributeError):
            return False  # the server is not up yet: ask again on the next pass
        if status != 200:
            return False
        if held is not None and want is None:
            log.info(
                "the model server still splits %s%% of requests to %s; ending it", held["percent"], held["version"]
            )
            body = json.dumps({"version": held["version"], "percent": 0}).encode()
            try:
                if self.control.request("POST", "/v1/canary", body, timeout=10)[0] != 200:
                    return False
            except OSError:
                return False
        self._server_canary_known = True
        return True

    def _learn_server_shadow(self) -> None:
        """Unload a shadow the server still holds for a candidate withdrawn while this sidecar was down.

        One the candidate still names is left loaded: asking for it again costs no load.
        """
        try:
            status, raw = self.control.request("GET", "/v1/shadow", timeout=5)
            version = ((json.loads(raw).get("shadow") or {}).get("version") if status == 200 else None) or None
        except (OSError, ValueError, AttributeError):
            return  # the server is not up yet: ask again on the next pass
        self._server_shadow_known = True
        keep = {v.version for v in (self.candidate, self.desired, self.pending, self.served) if v is not None}
        if version is not None and version not in keep:
            log.info("the model server still shadows %s, which is no longer the candidate; unloading it", version)
            try:
                self.control.request("DELETE", "/v1/shadow", timeout=30)
            except OSError as e:
                self._server_shadow_known = False
                log.warning("cannot unload the stale shadow %s yet (%s); retrying", version, e)

    def shadow_server(self, d: Desired, path: Path) -> dict[str, Any]:
        status, detail, answer = self._load_call("shadow", d, path)
        if answer is not None:
            return answer
        if status == 409:
            raise TooLarge(f"the model server refused it before loading: {too_large_message(detail) or detail}")
        if status == 422:
            raise RejectedForGood(f"the model server refused {d.version}: {detail}")
        raise Transient(f"the model server answered HTTP {status} to shadow {d.version}: {detail}")

    def unload_shadow(self, d: Desired) -> None:
        try:
            status, raw = self.control.request("DELETE", "/v1/shadow", timeout=30)
        except OSError as e:
            log.warning("cannot unload shadow %s yet (%s); retrying", d, e)
            return
        if status != 200:
            log.warning("the model server answered HTTP %d to unloading shadow %s: %r", status, d, raw[:500])
            return
        self.shadowed = None
        self._canary_applied = None  # the server ends the split with the shadow
        log.info("stopped shadow scoring %s: it is no longer the candidate", d)

    def prefetch_loop(self) -> None:
        """Low priority: nothing before the desired version is served, nothing during a promotion download."""
        tried: Desired | None = None
        refused: Desired | None = None
        attempts = 0
        retry_at = 0.0
        while not self.stop.is_set():
            due = [t for t in (retry_at, self._shadow_retry_at) if t]
            self.prefetch_wake.wait(max(0.05, min(5.0, min(due) - time.monotonic())) if due else 5.0)
            self.prefetch_wake.clear()
            if self.stop.is_set():
                continue
            self.sync_shadow()
            self.sync_canary()
            d = self.candidate
            if d is None or d == refused:
                continue
            if d == self.prefetched and (self.s.model_dir / d.version).is_dir():
                continue
            if d != tried:
                tried, attempts, retry_at = d, 0, 0.0
            if time.monotonic() < retry_at or self.served is None or d in (self.pending, self.served):
                continue
            if self.downloads.busy(PROMOTION):
                continue  # woken again when it ends
            try:
                self.prefetch(d)
                attempts, retry_at = 0, 0.0
                self.sync_shadow()
                self.sync_canary()
            except Rejected as e:
                refused = d
                still = self.served.version if self.served else "nothing"
                msg = f"refused to prefetch candidate {d.version}: {e}; still serving {still}, nothing else changes"
                log.error("%s (not retried unless the candidate changes)", msg)
                self.event(REASON_PREFETCH_FAILED, msg)
            except Transient as e:
                attempts += 1
                delay = backoff(attempts, self.s.retry_base_seconds, self.s.retry_max_seconds)
                retry_at = time.monotonic() + delay
                log.warning("cannot prefetch candidate %s yet: %s; retry %d in %.1fs", d, e, attempts, delay)
                if attempts == 3:
                    self.event(REASON_PREFETCH_FAILED, f"{e}; serving is unaffected, retrying")

    def server_version(self) -> str | None:
        """What the server answers with now: a version, "" when it has no model, None when unreachable."""
        try:
            status, raw = self.control.request("GET", "/readyz", timeout=5)
            if status == 503:
                return ""
            return str(json.loads(raw).get("version") or "") if status == 200 else None
        except (OSError, ValueError, AttributeError):
            return None

    def run(self) -> None:
        clean_temp_dirs(self.s.model_dir)
        watcher = threading.Thread(target=self.watch_policy, name="watch", daemon=True)
        watcher.start()
        prefetcher = threading.Thread(target=self.prefetch_loop, name="prefetch", daemon=True)
        prefetcher.start()
        attempts = 0
        retry_at = 0.0
        rejected: Desired | None = None
        next_check = time.monotonic() + 10
        while not self.stop.is_set():
            now = time.monotonic()
            wait = (
                max(0.0, retry_at - now)
                if self.pending is not None and self.pending != self.served
                else max(0.0, next_check - now)
            )
            new = self.slot.take(min(wait, 60.0))  # retry_at is inf for a version refused for good
            if self.stop.is_set():
                break
            if new is not None and new != self.pending:
                self.pending, attempts, retry_at = new, 0, 0.0
            if self.pending is None:
                continue
            if self.pending == self.served and time.monotonic() >= next_check:
                next_check = time.monotonic() + 10
                if self.server_version() not in (self.pending.version, None):  # None: unreachable, ask again later
                    log.warning("the model server no longer serves %s (restarted?); loading it again", self.pending)
                    self.served = None
                    self.shadowed = None  # a restarted server holds no shadow either
                    self._canary_applied = None
                    self.prefetch_wake.set()
            if self.pending == self.served or time.monotonic() < retry_at:
                continue
            try:
                self.apply(self.pending)
                attempts, rejected = 0, None
            except Rejected as e:
                attempts += 1
                delay = rejected_retry_delay(e, attempts)
                retry_at = time.monotonic() + delay
                still = self.served.version if self.served else "nothing"
                msg = f"refused {self.pending.version}: {e}; still serving {still}"
                if math.isinf(delay):
                    msg += "; refused for good: not retried unless status.desired changes"
                    log.error("%s", msg)
                else:
                    log.error("%s (retry in %.0fs or when the desired version changes)", msg, delay)
                if rejected != self.pending:
                    reason = REASON_TOO_LARGE if isinstance(e, TooLarge) else REASON_REJECTED
                    self.event(REASON_NO_ROOM if isinstance(e, NoRoom) else reason, msg)
                rejected = self.pending
            except Transient as e:
                attempts += 1
                delay = backoff(attempts, self.s.retry_base_seconds, self.s.retry_max_seconds)
                retry_at = time.monotonic() + delay
                log.warning("cannot apply %s yet: %s; retry %d in %.1fs", self.pending, e, attempts, delay)
                if isinstance(e, StorageTLSFailed):
                    self.event(REASON_TLS_FAILED, f"{e}; still serving the previous model, retrying")
                elif attempts == 3 or "disk full" in str(e):
                    self.event(REASON_DOWNLOAD_FAILED, f"{e}; still serving the previous model, retrying")
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]


def load_kube_config() -> client.ApiClient:
    """In-cluster when running in a Pod; else ``KUBECONFIG`` (the development node provides one)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = SidecarSettings.from_env()
        store_config = StoreConfig.from_env()
        tls_context(store_config)  # an unreadable CA bundle is a configuration error, said at start
    except (SettingsError, RuntimeError, CABundleInvalid) as e:
        raise SystemExit(f"modelloop-sidecar: bad configuration: {e}") from None
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    sidecar = Sidecar(settings, load_kube_config(), store_config)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received signal %d; stopping", signum)
        sidecar.stop.set()
        sidecar.slot.wake()
        sidecar.prefetch_wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    static = StaticTokens.from_dir(settings.reviewer_tokens_dir)
    review_socket = settings.review_socket or settings.model_dir / REVIEW_AUTH_SOCKET_NAME
    authorizer = ReviewAuthorizer(sidecar.api, settings.namespace, settings.policy, static)
    reviews = serve_review_auth(review_socket, authorizer)
    log.info(
        "answering the server's review-auth requests on %s (TokenReview audience %s, create %s/%s on %s; "
        "%d static reviewer tokens)",
        review_socket, AUDIENCE, c.RETRAINPOLICY_PLURAL, SUBRESOURCE, settings.policy, len(static),
    )  # fmt: skip
    log.info(
        "watching RetrainPolicy %s/%s for model %s; server control socket %s; model dir %s",
        settings.namespace, settings.policy, settings.model, settings.control_socket, settings.model_dir,
    )  # fmt: skip
    try:
        sidecar.run()
    finally:
        reviews.shutdown()


if __name__ == "__main__":
    main()
