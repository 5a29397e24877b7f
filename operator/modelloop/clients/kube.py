"""Kubernetes I/O for the handlers: thin wrappers with 409/404 meaning what the loop needs.

A create that answers 409 means an earlier pass (or a replica before a restart) already did
it; that is success, and the existing object is returned so the caller continues from it.
"""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelloop.api import constants as c

_clients_lock = threading.Lock()
_clients: dict[int, tuple[object, client.ApiClient]] = {}  # the config is kept so its id stays unique


def _api() -> client.ApiClient:
    """One client per loaded configuration: a client per call would cost a TLS handshake per request."""
    default = getattr(client.Configuration, "_default", None)
    with _clients_lock:
        found = _clients.get(id(default))
        if found is None:
            cfg = client.Configuration.get_default_copy()
            cfg.connection_pool_maxsize = 16  # the operator's worker threads share it
            found = _clients[id(default)] = (default, client.ApiClient(cfg))
        return found[1]


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(_api())


def batch() -> client.BatchV1Api:
    return client.BatchV1Api(_api())


def core() -> client.CoreV1Api:
    return client.CoreV1Api(_api())


def apps() -> client.AppsV1Api:
    return client.AppsV1Api(_api())


def list_modelversions(namespace: str, policy: str) -> list[dict[str, Any]]:
    res: dict[str, Any] = custom().list_namespaced_custom_object(  # type: ignore[assignment]
        c.GROUP, c.VERSION, namespace, c.MODELVERSION_PLURAL, label_selector=f"{c.LABEL_POLICY}={policy}"
    )
    items: list[dict[str, Any]] = res.get("items", [])
    return items


def get_policy(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = custom().get_namespaced_custom_object(  # type: ignore[assignment]
            c.GROUP, c.VERSION, namespace, c.RETRAINPOLICY_PLURAL, name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return obj


def create_modelversion(namespace: str, body: dict[str, Any]) -> bool:
    """True if created now, False if it already existed."""
    try:
        custom().create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.MODELVERSION_PLURAL, body)
    except ApiException as e:
        if e.status == 409:
            return False
        raise
    return True


def patch_modelversion_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """For the ModelVersion handler only: it is the status's one writer."""
    custom().patch_namespaced_custom_object_status(
        c.GROUP, c.VERSION, namespace, c.MODELVERSION_PLURAL, name, {"status": status}
    )


def annotate_modelversion(namespace: str, name: str, annotations: dict[str, str]) -> None:
    """Merge ``annotations`` into a ModelVersion's metadata (the policy pass's decisions about it)."""
    custom().patch_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.MODELVERSION_PLURAL, name, {"metadata": {"annotations": annotations}}
    )


def delete_modelversion(namespace: str, name: str) -> None:
    try:
        custom().delete_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.MODELVERSION_PLURAL, name, propagation_policy="Background"
        )
    except ApiException as e:
        if e.status != 404:
            raise


def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        job = batch().read_namespaced_job(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    out: dict[str, Any] = _api().sanitize_for_serialization(job)  # type: ignore[no-untyped-call]
    return out


def job_workloads(namespace: str, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The Kueue Workloads made for ``job`` (by its UID label); empty when Kueue is not installed."""
    uid = (job.get("metadata") or {}).get("uid") or ""
    try:
        found: dict[str, Any] = custom().list_namespaced_custom_object(  # type: ignore[assignment]
            c.KUEUE_GROUP,
            c.KUEUE_VERSION,
            namespace,
            c.KUEUE_WORKLOAD_PLURAL,
            label_selector=f"{c.KUEUE_LABEL_JOB_UID}={uid}",
        )
    except ApiException as e:
        if e.status == 404:  # Kueue's CRDs absent: no Workload will ever appear
            return []
        raise
    items: list[dict[str, Any]] = found.get("items") or []
    return items


def create_job(namespace: str, body: dict[str, Any]) -> bool:
    try:
        batch().create_namespaced_job(namespace, body)  # type: ignore[arg-type]
    except ApiException as e:
        if e.status == 409:
            return False
        raise
    return True


def create_service(namespace: str, body: dict[str, Any]) -> bool:
    try:
        core().create_namespaced_service(namespace, body)  # type: ignore[arg-type]
    except ApiException as e:
        if e.status == 409:
            return False
        raise
    return True


def job_termination_message(namespace: str, job_name: str) -> str:
    """The last failed pod's termination message: what the trainer said when it gave up."""
    pods = core().list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
    pods.sort(key=lambda p: str(p.metadata.creation_timestamp if p.metadata else ""))
    for pod in reversed(pods):
        for st in (pod.status and pod.status.container_statuses) or []:
            term = st.state and st.state.terminated
            if term and term.exit_code != 0 and term.message:
                msg: str = term.message.strip().splitlines()[-1]
                return msg
    return ""


def read_secret_keys(namespace: str, name: str, keys: tuple[str, str]) -> tuple[str, str, str]:
    """(value of keys[0], value of keys[1], resourceVersion) of a Secret."""
    import base64

    secret = core().read_namespaced_secret(name, namespace)
    data = secret.data or {}
    missing = [k for k in keys if k not in data]
    if missing:
        raise KeyError(f"Secret {namespace}/{name} has no key(s) {', '.join(missing)}")
    a, b = (base64.b64decode(data[k]).decode() for k in keys)
    return a, b, str(secret.metadata.resource_version if secret.metadata else "")


def read_configmap_key(namespace: str, name: str, key: str) -> tuple[str, str]:
    """(value of ``key``, resourceVersion) of a ConfigMap; KeyError naming both when the key is missing."""
    cm = core().read_namespaced_config_map(name, namespace)
    data = cm.data or {}
    if key not in data:
        raise KeyError(f"ConfigMap {namespace}/{name} has no key {key}")
    return str(data[key]), str(cm.metadata.resource_version if cm.metadata else "")


def deployment_serving(namespace: str, name: str) -> tuple[int, list[tuple[str, str | None, bool]]] | None:
    """(spec.replicas, [(pod, serving digest, terminating)]) or None if the Deployment is missing."""
    try:
        dep = apps().read_namespaced_deployment(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    match = (dep.spec.selector.match_labels or {}) if dep.spec.selector else {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
    pods = core().list_namespaced_pod(namespace, label_selector=selector).items
    out: list[tuple[str, str | None, bool]] = []
    for p in pods:
        m = p.metadata
        if m is None:
            continue
        out.append(
            (str(m.name), (m.annotations or {}).get(c.ANNOTATION_SERVING_DIGEST), m.deletion_timestamp is not None)
        )
    replicas = dep.spec.replicas if dep.spec.replicas is not None else 1
    return int(replicas), out
