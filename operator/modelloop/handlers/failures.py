"""Exceptions met while reconciling a policy, reduced to the facts :mod:`modelloop.decide.errors` classifies.

Kept apart from the decision so that it stays pure: only this module knows the exception types
of the Kubernetes client, the S3 client, urllib3 and pydantic.
"""

from __future__ import annotations

import json
import socket
from datetime import datetime
from typing import Any

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException
from minio.error import S3Error
from pydantic import ValidationError

from modelloop.clients.objectstore import CABundleInvalid, tls_failure
from modelloop.decide.conditions import get_condition, set_condition
from modelloop.decide.errors import ErrorVerdict, Failure, InvalidSpec, Stage


def failure_of(
    exc: BaseException, stage: Stage | None = None, subject: str = "", storage_host: str = "", endpoint: str = ""
) -> Failure:
    """``stage`` when the caller knows it; otherwise inferred from the exception (``storage_host``
    tells an object-store connection error from one to the API server: both come from urllib3).
    ``endpoint``: the store's host:port, named when its TLS handshake fails."""
    error, detail = type(exc).__name__, _one_line(exc)
    if isinstance(exc, CABundleInvalid):
        return Failure(Stage.CREDENTIALS, "CABundleInvalid", detail, subject=subject)
    tls = tls_failure(exc)
    if tls is not None and (stage in (None, Stage.STORAGE)):
        return Failure(Stage.STORAGE, "TLSError", tls, subject=subject, endpoint=endpoint or storage_host)
    if isinstance(exc, ApiException):
        return Failure(stage or Stage.KUBERNETES, error, _api_detail(exc), http_status=exc.status, subject=subject)
    if isinstance(exc, S3Error):
        return Failure(stage or Stage.STORAGE, error, detail, s3_code=exc.code, subject=subject)
    if isinstance(exc, (InvalidSpec, ValidationError)):
        return Failure(stage or Stage.SPEC, error, detail, subject=subject)
    if stage is None:
        stage = _stage_of_connection_error(exc, storage_host)
    name_error = _name_resolution_error(exc)
    if name_error is not None:
        error = name_error
    return Failure(stage, error, detail, subject=subject)


def _stage_of_connection_error(exc: BaseException, storage_host: str) -> Stage:
    host = _host_of(exc)
    if host is not None:
        return Stage.STORAGE if storage_host and host == storage_host else Stage.KUBERNETES
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
        return Stage.KUBERNETES
    return Stage.INTERNAL


def _host_of(exc: BaseException) -> str | None:
    for e in _chain(exc):
        pool = getattr(e, "pool", None) or getattr(e, "conn", None)
        host = getattr(pool, "host", None)
        if isinstance(host, str):
            return host
    return None


def _name_resolution_error(exc: BaseException) -> str | None:
    for e in _chain(exc):
        if isinstance(e, (urllib3.exceptions.NameResolutionError, socket.gaierror)):
            return "NameResolutionError"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        reason = getattr(e, "reason", None)
        e = reason if isinstance(reason, BaseException) else (e.__cause__ or e.__context__)
    return seen


def _api_detail(exc: ApiException) -> str:
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"{exc.status} {exc.reason}: {message}" if message else f"{exc.status} {exc.reason}"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return " ".join(str(exc).split())


def report_failure(
    body: kopf.Body,
    conditions: list[dict[str, Any]],
    condition: str,
    verdict: ErrorVerdict,
    now: datetime,
    generation: int | None,
    logger: Any,
) -> list[dict[str, Any]]:
    """``condition`` set False with the verdict; a Warning Event and a log line when the reason is new.

    Events go out on transitions, not on every failed pass: the condition carries the latest retry.
    A permanent error's message has no retry in it, so a different one (the spec was edited and is
    still wrong, differently) is a transition too.
    """
    prev = get_condition(conditions, condition)
    if (
        prev is None
        or prev.get("status") != "False"
        or prev.get("reason") != verdict.reason
        or (verdict.permanent and prev.get("message") != verdict.message)
    ):
        kopf.warn(body, reason=verdict.reason, message=verdict.message)
        logger.warning("%s: %s", verdict.reason, verdict.message)
    return set_condition(conditions, condition, "False", verdict.reason, verdict.message, now, generation)
