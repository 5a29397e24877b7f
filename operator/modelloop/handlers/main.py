"""``modelloop-operator``: runs the kopf handlers behind leader election, with liveness and metrics.

Namespaces come from ``--namespace`` (repeatable) or ``MODELLOOP_NAMESPACES`` (comma
separated); ``--all-namespaces`` watches the cluster. Leader election is on by default: every
replica starts as a standby and only the holder of the Lease ``--lease-name`` (in the pod's
namespace) runs the handlers (see ``modelloop.handlers.leadership``). ``--standalone`` runs the
handlers at once, without a Lease: tests and single-process development.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Collection
from typing import Any, NoReturn

import aiohttp.web
import kopf
from kopf._core.engines.peering import Identity
from kubernetes import config as kube_config
from prometheus_client import start_http_server

from modelloop import metrics

from . import modelversion, policydaemon
from .leadership import LOST_LEASE_EXIT_CODE, ElectionConfig, ElectionConfigError, Elector, Lost, config_from_env

_HANDLER_MODULES = (modelversion, policydaemon)  # imported for their registrations
log = logging.getLogger("modelloop.operator")
HANDLER_THREADS_GRACE = 15.0
"""Seconds a stopping leader waits for handler threads before it exits without releasing its lease."""


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
    p.add_argument(
        "--standalone", action="store_true", help="no leader election: handle events at once (one replica, tests)"
    )
    p.add_argument(
        "--lease-name",
        default=os.environ.get("MODELLOOP_LEASE_NAME", "modelloop"),
        help="leader-election Lease, in POD_NAMESPACE (default: $MODELLOOP_LEASE_NAME or modelloop)",
    )
    p.add_argument("--liveness", default=os.environ.get("MODELLOOP_LIVENESS", "http://0.0.0.0:8081/healthz"))
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("MODELLOOP_METRICS_PORT", "8080")))
    p.add_argument("--verbose", "-v", action="store_true")
    args = p.parse_args(argv)
    namespaces = args.namespace or [n for n in os.environ.get("MODELLOOP_NAMESPACES", "").split(",") if n]
    if not args.all_namespaces and not namespaces:
        p.error("give --namespace NS (repeatable), MODELLOOP_NAMESPACES, or --all-namespaces")
    election: ElectionConfig | None = None
    if not args.standalone:
        try:
            election = config_from_env(args.lease_name)
        except ElectionConfigError as e:
            p.error(str(e))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    _load_kube_config()
    if args.metrics_port:
        start_http_server(args.metrics_port)
    watch: dict[str, Any] = {
        "clusterwide": args.all_namespaces,
        "namespaces": [] if args.all_namespaces else namespaces,
    }
    if election is None:
        metrics.set_leader(True)
        # kopf's default identity comes from getpass.getuser(), which fails for a uid without a
        # passwd entry (the images run as 65532): name the process ourselves.
        identity = os.environ.get("POD_NAME") or socket.gethostname()
        kopf.run(standalone=True, liveness_endpoint=args.liveness or None, identity=Identity(identity), **watch)
        return
    sys.exit(asyncio.run(_run_elected(election, args.liveness or None, watch)))


async def _run_elected(cfg: ElectionConfig, liveness: str | None, watch: dict[str, Any]) -> int:
    """Standby until this replica holds the lease, then the kopf handlers until a signal; the exit status.

    A leader that loses its lease does not return: it exits with ``LOST_LEASE_EXIT_CODE`` at once.
    """
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()  # done on SIGTERM/SIGINT
    handlers_stop = asyncio.Event()  # kopf's stop flag
    elector = Elector(cfg)
    role = "standby"

    def on_signal(sig: signal.Signals) -> None:
        if stop.done():
            log.info("received %s again; still stopping", sig.name)
            return
        stop.set_result(None)
        handlers_stop.set()
        if elector.leading:
            log.info("received %s: stopping the handlers, then releasing lease %s", sig.name, cfg.lease)
        else:
            log.info("received %s: stopping (a standby, not holding lease %s)", sig.name, cfg.lease)

    def catch_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)

    catch_signals()
    probe = await _serve_liveness(liveness, lambda: {"role": role, "identity": cfg.identity, "lease": cfg.lease})
    try:
        if not await elector.acquire(stop):
            log.info("stopped as a standby; lease %s was never held by this replica", cfg.lease)
            return 0
        role = "leader"
        renewals_done: asyncio.Future[None] = loop.create_future()
        renewer = asyncio.create_task(elector.hold(renewals_done), name="lease renewer")
        status = 0
        if not stop.done():
            status = await _run_handlers(cfg, renewer, handlers_stop, watch, catch_signals)
        renewals_done.set_result(None)
        lost = await _lost(renewer)
        if lost is not None:
            _exit_lost(cfg, lost)
        await elector.release()
        return status
    finally:
        elector.close()
        if probe is not None:
            await probe.cleanup()


async def _run_handlers(
    cfg: ElectionConfig,
    renewer: asyncio.Task[Lost | None],
    handlers_stop: asyncio.Event,
    watch: dict[str, Any],
    catch_signals: Callable[[], None],
) -> int:
    """The kopf operator in this event loop, while the renewer holds the lease; 0 after a graceful stop.

    kopf (``standalone``: the Lease replaces its peering) cancels the tasks it finds when it stops,
    except those that existed before it started: the renewer among them, so renewals go on until
    the handlers have stopped. kopf sets its own signal handlers; ours are put back so that a
    signal stops the handlers through the stop flag, and then releases the lease.
    """
    existing: Collection[asyncio.Task[Any]] = asyncio.all_tasks()
    settings = kopf.OperatorSettings()  # the startup handler `configure` fills it in
    tasks = await kopf.spawn_tasks(
        settings=settings,
        standalone=True,
        stop_flag=handlers_stop,
        liveness_endpoint=None,
        identity=Identity(cfg.identity),  # not getpass.getuser(): no passwd entry for the image's uid
        **watch,
    )
    catch_signals()
    handlers = asyncio.create_task(kopf.run_tasks(tasks, ignored=existing), name="kopf")
    await asyncio.wait({handlers, renewer}, return_when=asyncio.FIRST_COMPLETED)
    if renewer.done():
        lost = await _lost(renewer)
        _exit_lost(cfg, lost or Lost("the renewer stopped"))
    error = handlers.exception()
    status = 0
    if error is not None or not handlers_stop.is_set():
        log.error("the handlers stopped unexpectedly (%r); releasing lease %s and exiting", error, cfg.lease)
        status = 1
    # kopf stops waiting for a sync handler after a while and leaves its thread running ("orphaned"),
    # and a cancelled daemon's asyncio.to_thread step goes on too: the lease is released only once
    # they have finished (still renewing meanwhile), or else the process exits without releasing.
    drained = asyncio.create_task(_threads_finished(settings.execution.executor, HANDLER_THREADS_GRACE))
    await asyncio.wait({drained, renewer}, return_when=asyncio.FIRST_COMPLETED)
    if not drained.done():
        _exit_lost(cfg, await _lost(renewer) or Lost("the renewer stopped"))
    if not drained.result():
        log.warning(
            "handler threads still running %g s after the handlers stopped; exiting without releasing lease %s "
            "(a standby takes over when it expires, within %d s)",
            HANDLER_THREADS_GRACE, cfg.lease, cfg.lease_duration,
        )  # fmt: skip
        _flush_and_exit(1)
    return status


async def _threads_finished(executor: concurrent.futures.Executor, timeout: float) -> bool:
    """Whether kopf's handler threads and the loop's default threads all finished within ``timeout``."""
    loop = asyncio.get_running_loop()
    kopf_threads: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not kopf_threads.done():
            kopf_threads.set_result(None)

    def wait() -> None:
        executor.shutdown(wait=True)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=wait, name="handler threads", daemon=True).start()

    async def both() -> None:
        await kopf_threads
        await loop.shutdown_default_executor()

    try:
        await asyncio.wait_for(both(), timeout)
    except TimeoutError:
        return False
    return True


async def _lost(renewer: asyncio.Task[Lost | None]) -> Lost | None:
    try:
        return await renewer
    except Exception as e:  # noqa: BLE001 - a renewer that failed cannot vouch for the lease any more
        return Lost(f"the renewer failed: {type(e).__name__}: {e}")


def _exit_lost(cfg: ElectionConfig, lost: Lost) -> NoReturn:
    """Stops everything at once: a standby may take the lease soon, and two replicas must never act together.

    No graceful stop (kopf's could take as long as a daemon's cancellation timeout): the process
    exits, in-flight handler passes die with it, and the kubelet restarts it as a standby. The
    handlers are level-based and idempotent, so the next leader simply continues.
    """
    metrics.set_leader(False)
    log.error("lost lease %s: %s; exiting so that only one replica acts", cfg.lease, lost.why)
    _flush_and_exit(LOST_LEASE_EXIT_CODE)


def _flush_and_exit(status: int) -> NoReturn:
    """Exits now, killing every thread (a normal exit would wait for handler threads to finish)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


async def _serve_liveness(url: str | None, state: Callable[[], dict[str, str]]) -> aiohttp.web.AppRunner | None:
    """The liveness endpoint, up from the start: a standby is alive too (kopf's own starts only with the handlers)."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise SystemExit(f"--liveness {url}: only http:// is supported")

    async def health(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response(state())

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get(parts.path or "/", health)])
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port or 80).start()
    return runner
