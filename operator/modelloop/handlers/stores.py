"""The operator's object-store clients, one per (endpoint, bucket, Secret and CA bundle resourceVersions).

Keyed by the Secret's resourceVersion so a rotated credential is picked up on the next pass
without a restart, and an unchanged one costs no new connection pool; likewise the CA bundle's
ConfigMap (spec.storage.tls.caBundle), so a renewed private CA is trusted on the next pass.
"""

from __future__ import annotations

import threading

from kubernetes.client.exceptions import ApiException

from modelloop.api.retrainpolicy import RetrainPolicySpec
from modelloop.clients import kube
from modelloop.clients.objectstore import CABundleInvalid, ObjectStore, StoreConfig

_lock = threading.Lock()
_cache: dict[tuple[str, str, str, str, str], ObjectStore] = {}


def _ca_bundle(namespace: str, spec: RetrainPolicySpec) -> tuple[str | None, str]:
    """(PEM text, resourceVersion) of the policy's CA bundle; (None, "") when it names none."""
    ref = spec.storage.ca_bundle
    if ref is None:
        return None, ""
    where = f"ConfigMap {namespace}/{ref.config_map}"
    try:
        return kube.read_configmap_key(namespace, ref.config_map, ref.key)
    except KeyError as e:
        raise CABundleInvalid(f"{e.args[0]}: fix spec.storage.tls.caBundle.key or the ConfigMap") from None
    except ApiException as e:
        if e.status == 404:
            raise CABundleInvalid(
                f"{where} (spec.storage.tls.caBundle) not found: create it in the policy's namespace"
            ) from None
        if e.status == 403:
            raise CABundleInvalid(
                f"the operator may not read {where} (spec.storage.tls.caBundle): grant it get on configmaps"
            ) from None
        raise


def store_for(namespace: str, spec: RetrainPolicySpec) -> ObjectStore:
    creds = spec.storage.trainer_credentials
    access, secret, rv = kube.read_secret_keys(
        namespace, creds.secret_name, (creds.access_key_key, creds.secret_key_key)
    )
    ca_data, ca_rv = _ca_bundle(namespace, spec)
    key = (
        spec.storage.endpoint,
        spec.storage.bucket,
        f"{namespace}/{creds.secret_name}",
        rv,
        f"{spec.storage.use_tls}/{ca_rv}",
    )
    with _lock:
        store = _cache.get(key)
        if store is None:
            cfg = StoreConfig(
                endpoint=spec.storage.endpoint,
                access_key=access,
                secret_key=secret,
                bucket=spec.storage.bucket,
                secure=spec.storage.use_tls,
                region=spec.storage.region,
                ca_data=ca_data,
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


def verifier_credentials_problem(namespace: str, spec: RetrainPolicySpec) -> str | None:
    """Why the verification Job could not start with the policy's verifier Secret, or None.

    Checked before the Job is created: a missing Secret or key would otherwise leave its Pod
    waiting (CreateContainerConfigError) with nothing on the version saying why.
    """
    ref = spec.storage.verifier_credentials
    if ref is None:
        return None
    where = f"Secret {namespace}/{ref.secret_name} (spec.storage.verifierCredentials)"
    try:
        kube.read_secret_keys(namespace, ref.secret_name, (ref.access_key_key, ref.secret_key_key))
    except KeyError as e:
        return f"{e.args[0]} (spec.storage.verifierCredentials); add the key or fix accessKeyKey/secretKeyKey"
    except ApiException as e:
        if e.status == 404:
            return f"{where} not found: create it with the verifier's S3 credentials (docs/install.md)"
        if e.status == 403:
            return f"the operator may not read {where}: grant it get on secrets in this namespace"
        raise
    return None
