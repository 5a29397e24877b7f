"""The operator's object-store clients, one per (endpoint, bucket, Secret resourceVersion).

Keyed by the Secret's resourceVersion so a rotated credential is picked up on the next pass
without a restart, and an unchanged one costs no new connection pool.
"""

from __future__ import annotations

import threading

from modelloop.api.retrainpolicy import RetrainPolicySpec
from modelloop.clients import kube
from modelloop.clients.objectstore import ObjectStore, StoreConfig

_lock = threading.Lock()
_cache: dict[tuple[str, str, str, str], ObjectStore] = {}


def store_for(namespace: str, spec: RetrainPolicySpec) -> ObjectStore:
    creds = spec.storage.trainer_credentials
    access, secret, rv = kube.read_secret_keys(
        namespace, creds.secret_name, (creds.access_key_key, creds.secret_key_key)
    )
    key = (spec.storage.endpoint, spec.storage.bucket, f"{namespace}/{creds.secret_name}", rv)
    with _lock:
        store = _cache.get(key)
        if store is None:
            cfg = StoreConfig(
                endpoint=spec.storage.endpoint,
                access_key=access,
                secret_key=secret,
                bucket=spec.storage.bucket,
                secure=spec.storage.secure,
                region=spec.storage.region,
            )
            # Few, short retries: a reconcile pass must not stall for long on a dead MinIO,
            # the next timer tick is the real retry.
            store = ObjectStore(cfg, attempts=2, base_delay=0.2, max_delay=1.0)
            _cache[key] = store
        return store


def cached_store_for(namespace: str, spec: RetrainPolicySpec) -> ObjectStore | None:
    """The client the last :func:`store_for` built for this bucket and Secret, without reading the Secret.

    For cheap checks between full passes (an idle policy's feedback peek); if the credentials
    were rotated the check fails and the full pass it triggers reads the Secret again.
    """
    where = (spec.storage.endpoint, spec.storage.bucket, f"{namespace}/{spec.storage.trainer_credentials.secret_name}")
    with _lock:
        found = [store for key, store in _cache.items() if key[:3] == where]
    return found[-1] if found else None
