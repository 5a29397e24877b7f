"""The leader-election Lease (``coordination.k8s.io/v1``): read, create, replace with optimistic concurrency.

Called by ``modelloop.handlers.leadership`` from a worker thread. Every write carries the
``resourceVersion`` that was read, so two replicas that both decided to take the lease cannot
both succeed: the API server answers the slower one 409 Conflict, which these functions return
as ``None`` ("someone else wrote first: read again"). Every call has a timeout, because a leader
whose renewal hangs must notice before its renew deadline.

The Lease has its own API client (and connection pool): renewals never queue behind the
handlers' requests.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelloop.decide.leadership import LeaseRecord

_lock = threading.Lock()
_client: tuple[object, client.ApiClient] | None = None


def _api() -> client.CoordinationV1Api:
    global _client
    default = getattr(client.Configuration, "_default", None)
    with _lock:
        if _client is None or _client[0] is not default:
            _client = (default, client.ApiClient(client.Configuration.get_default_copy()))
        return client.CoordinationV1Api(_client[1])


@dataclass(frozen=True)
class LeaseSnapshot:
    record: LeaseRecord
    resource_version: str


def read_lease(namespace: str, name: str, timeout: float) -> LeaseSnapshot | None:
    """The Lease as the API server holds it now, or None when it does not exist."""
    try:
        lease = _api().read_namespaced_lease(name, namespace, _request_timeout=timeout)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return _snapshot(lease)


def create_lease(namespace: str, name: str, record: LeaseRecord, timeout: float) -> LeaseSnapshot | None:
    """Creates the Lease; None when another replica created it first (409)."""
    try:
        body = _body(namespace, name, record, None)
        lease = _api().create_namespaced_lease(namespace, body, _request_timeout=timeout)  # type: ignore[arg-type]
    except ApiException as e:
        if e.status == 409:
            return None
        raise
    return _snapshot(lease)


def replace_lease(
    namespace: str, name: str, record: LeaseRecord, resource_version: str, timeout: float
) -> LeaseSnapshot | None:
    """Writes ``record`` if the Lease is still at ``resource_version``; None when it changed (409) or vanished (404)."""
    body = _body(namespace, name, record, resource_version)
    try:
        lease = _api().replace_namespaced_lease(name, namespace, body, _request_timeout=timeout)  # type: ignore[arg-type]
    except ApiException as e:
        if e.status in (404, 409):
            return None
        raise
    return _snapshot(lease)


def _micro_time(t: datetime | None) -> str | None:
    """MicroTime as the API server writes it (RFC 3339, microseconds, UTC)."""
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _body(namespace: str, name: str, rec: LeaseRecord, resource_version: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    spec: dict[str, Any] = {
        "holderIdentity": rec.holder,
        "leaseDurationSeconds": rec.duration_seconds,
        "leaseTransitions": rec.transitions,
    }
    if rec.acquire_time is not None:
        spec["acquireTime"] = _micro_time(rec.acquire_time)
    if rec.renew_time is not None:
        spec["renewTime"] = _micro_time(rec.renew_time)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


def _snapshot(lease: client.V1Lease) -> LeaseSnapshot:
    spec = lease.spec or client.V1LeaseSpec()
    record = LeaseRecord(
        holder=spec.holder_identity or "",
        duration_seconds=int(spec.lease_duration_seconds or 0),
        acquire_time=spec.acquire_time,
        renew_time=spec.renew_time,
        transitions=int(spec.lease_transitions or 0),
    )
    return LeaseSnapshot(record, str(lease.metadata.resource_version if lease.metadata else ""))
