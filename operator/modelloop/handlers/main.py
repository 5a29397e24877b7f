"""``modelloop-operator``: runs the kopf handlers with peering, liveness and metrics.

Namespaces come from ``--namespace`` (repeatable) or ``MODELLOOP_NAMESPACES`` (comma
separated); ``--all-namespaces`` watches the cluster. Peering is on by default (one active
replica, hot standbys; the KopfPeering CRDs are in crds/kopf-peering.yaml); ``--standalone``
turns it off for tests and single-replica development.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import kopf
from kubernetes import config as kube_config
from prometheus_client import start_http_server

from . import modelversion, policydaemon

_HANDLER_MODULES = (modelversion, policydaemon)  # imported for their registrations


_ROUTINE = tuple(
    f"{kind} {name!r} succeeded."
    for kind, name in (
        ("Handler", "modelversion_changed"),
        ("Handler", "retrainpolicy_changed"),
    )
)


class _QuietWakeHandlers(logging.Filter):
    """Keeps kopf's "<handler> succeeded." for the watch-event wake-ups out of Events and INFO logs.

    They run on every event of every object (thousands at a start); posted as Kubernetes Events
    they would cost more API requests than everything else the operator does.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.getMessage().endswith(_ROUTINE):
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG) and _skip_event(record)
        return True


def _skip_event(record: logging.LogRecord) -> bool:
    record.k8s_skip = True  # kopf's event poster honours this
    return True


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and diff-base in status: the operator never writes an annotation, so GitOps
    # tools see no drift on the user's objects.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.posting.level = getattr(logging, os.environ.get("MODELLOOP_EVENT_LEVEL", "INFO").upper(), logging.INFO)
    settings.peering.name = os.environ.get("MODELLOOP_PEERING", "modelloop")
    settings.watching.server_timeout = 120
    logging.getLogger("kopf.objects").addFilter(_QuietWakeHandlers())
    settings.execution.max_workers = int(os.environ.get("MODELLOOP_WORKERS", "8"))


def _load_kube_config() -> None:
    try:
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        kube_config.load_kube_config()  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="modelloop-operator", description=__doc__)
    p.add_argument("--namespace", "-n", action="append", default=[], help="namespace to watch (repeatable)")
    p.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    p.add_argument("--standalone", action="store_true", help="no peering (a single replica, tests)")
    p.add_argument("--liveness", default=os.environ.get("MODELLOOP_LIVENESS", "http://0.0.0.0:8081/healthz"))
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("MODELLOOP_METRICS_PORT", "8080")))
    p.add_argument("--verbose", "-v", action="store_true")
    args = p.parse_args(argv)
    namespaces = args.namespace or [n for n in os.environ.get("MODELLOOP_NAMESPACES", "").split(",") if n]
    if not args.all_namespaces and not namespaces:
        p.error("give --namespace NS (repeatable), MODELLOOP_NAMESPACES, or --all-namespaces")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    _load_kube_config()
    if args.metrics_port:
        start_http_server(args.metrics_port)
    kopf.run(
        standalone=args.standalone,
        clusterwide=args.all_namespaces,
        namespaces=[] if args.all_namespaces else namespaces,
        liveness_endpoint=args.liveness or None,
    )
