"""``modelloop-trainer``: the entrypoint of the trainer image (console script and ``python -m``).

Verbs: ``train`` and ``verify`` (run by the operator's Jobs, configured only by environment, see
docs/contracts.md) and ``seed-dataset`` (set-up). On failure the last stderr line is the reason,
repeated in ``/dev/termination-log`` where Kubernetes provides one, so ``kubectl describe`` and
the ModelVersion's status show it without anyone reading logs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from modelloop.api import constants as c
from modelloop.api.artifacts import ArtifactError
from modelloop.clients.objectstore import CABundleInvalid, ObjectStore, tls_failure

from .config import ConfigError, from_env
from .plugin import DatasetError, InputError, load_plugin
from .preemption import EXIT_CODE as STOPPED_EXIT_CODE
from .preemption import Stopped

log = logging.getLogger("modelloop_trainer")

TERMINATION_LOG = Path("/dev/termination-log")
ENV_TERMINATION_LOG = "MODELLOOP_TERMINATION_LOG"  # docs/contracts.md: the development node's stand-in
# Failures whose message is the whole story; anything else also gets a traceback on stderr.
EXPECTED = (Stopped, ArtifactError, ConfigError, DatasetError, InputError, FloatingPointError, CABundleInvalid)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelloop-trainer", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("train", help="train MODELLOOP_VERSION (resuming from its checkpoints) and publish it")
    sub.add_parser("verify", help="measure MODELLOOP_VERSION against MODELLOOP_ACTIVE_VERSION; write verification.json")
    seed = sub.add_parser("seed-dataset", help="upload the plug-in's base dataset to the bucket once")
    seed.add_argument("--dataset", required=True, help="prefix in the bucket, e.g. datasets/digits")
    seed.add_argument("--plugin", default=None, help=f"module:Class (default ${c.ENV_PLUGIN} or {c.DEFAULT_PLUGIN})")
    seed.add_argument("--force", action="store_true", help="replace an existing dataset (changes the holdout!)")
    return p


def _report_failure(verb: str, err: BaseException, environ: dict[str, str] | None = None) -> None:
    why = tls_failure(err)
    if not isinstance(err, EXPECTED) and why is None:
        traceback.print_exception(err, file=sys.stderr)
    reason = f"{verb} failed: {type(err).__name__}: {' '.join(str(err).split())}"
    if why is not None:
        e = environ or {}
        trusted = e.get(c.ENV_S3_CA_FILE) or "the system CAs"
        reason = (
            f"{verb} failed: TLS verification failed for {e.get(c.ENV_S3_ENDPOINT, 'the object store')}: {why};"
            f" trusted: {trusted}; set spec.storage.tls.caBundle to the CA that signed it"
        )
    sys.stderr.write(reason + "\n")
    sys.stderr.flush()
    # The development node names its stand-in; otherwise only where Kubernetes created the file,
    # never littering a developer's /dev.
    override = os.environ.get(ENV_TERMINATION_LOG)
    path = Path(override) if override else TERMINATION_LOG
    if override or (path.is_file() and os.access(path, os.W_OK)):
        with contextlib.suppress(OSError):
            path.write_text(reason[:4096])


def run(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environ = dict(os.environ if env is None else env)
    try:
        store = ObjectStore.from_env(environ)
        if args.verb == "seed-dataset":
            from .dataset import seed_dataset

            store.ensure_bucket()  # a fresh object store (examples/minio.yaml) has none yet
            seed_dataset(
                store,
                load_plugin(args.plugin or environ.get(c.ENV_PLUGIN) or c.DEFAULT_PLUGIN),
                args.dataset,
                args.force,
            )
            return 0
        cfg = from_env(environ, args.verb)
        plugin = load_plugin(cfg.plugin)
        plugin.configure(cfg.hyperparameters)
        if args.verb == "train":
            from .train import train

            train(cfg, store, plugin, environ)
        else:
            from .verify import verify

            verify(cfg, store, plugin)
        return 0
    except Stopped as e:
        log.warning("%s", e)
        _report_failure(args.verb, e, environ)
        return STOPPED_EXIT_CODE
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the process's last word, reported below
        _report_failure(args.verb, e, environ)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    rank = os.environ.get("RANK", "0")
    # Every rank trains the same epochs; only rank 0's per-epoch lines are worth reading.
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    return run(argv)
