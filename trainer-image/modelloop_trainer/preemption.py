"""SIGTERM as a request to stop at the next epoch boundary, checkpointed, rather than mid-step.

Kubernetes sends SIGTERM when Kueue preempts the training Job (it suspends the Job and the Job
controller deletes its pods), when a node drains, or when a spot instance is reclaimed; SIGKILL
follows after the pod's grace period. Python's default would die at once and lose every epoch
since the last checkpoint; with this handler the epoch in progress finishes, is checkpointed
whatever checkpointInterval says, and the process exits 143 (128 + SIGTERM) so the next pod resumes
from it. An epoch longer than the grace period is lost to SIGKILL and the previous checkpoint is
where the next pod starts: never worse than without the handler.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

EXIT_CODE = 128 + signal.SIGTERM


class Stopped(Exception):
    """Training stopped on SIGTERM after its last completed epoch was checkpointed."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"stopped on SIGTERM after checkpointing epoch {epoch}; the next pod resumes from it")
        self.epoch = epoch


class StopRequest:
    """Set by SIGTERM; read by the training loop once per epoch."""

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self) -> None:
        self._event.set()


@contextmanager
def stop_on_sigterm() -> Iterator[StopRequest]:
    """Routes SIGTERM into a :class:`StopRequest` for the duration; the previous handler is restored after.

    Signal handlers can only be installed from the main thread; elsewhere (a test calling train()
    in a thread) the request simply never fires.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if not stop.requested:
            log.warning("SIGTERM: finishing the current epoch, checkpointing it and exiting")
        stop.request()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)
