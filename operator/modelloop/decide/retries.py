"""Retrying a failed or rejected training: whether to, with which hyperparameters, and when to stop.

The source design asks for up to three attempts with adjusted hyperparameters, then a person.
Each attempt is its own ModelVersion (``spec.attempt``, ``spec.retryOf``), so the decision needs
only the newest version: when it ended Failed or Rejected on attempt n < maxAttempts, attempt
n+1 is due; on n == maxAttempts the retries are exhausted. The next trigger (feedback, schedule,
``retrain-now``) starts a new chain at attempt 1. Level-based: a lost status write or a restart
sees the same newest version and decides the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelloop.api.modelversion import TERMINAL_FAILURES, Phase
from modelloop.api.retrainpolicy import Hyperparameters, RetrySpec

from .triggers import TriggerDecision

MAX_LEARNING_RATE = 10.0
MAX_EPOCHS = 10_000


@dataclass(frozen=True)
class AttemptView:
    """What the decision needs of the newest ModelVersion."""

    version: str
    phase: Phase
    attempt: int | None
    """None for versions made before retries existed: never retried (an upgrade must not start trainings)."""
    message: str = ""
    """Why it failed or was rejected (its status.message)."""


@dataclass(frozen=True)
class RetryDecision:
    act: bool
    reason: str
    """Retry, RetriesExhausted, Suspended, or NotApplicable."""
    message: str
    attempt: int | None = None
    """The attempt to start (act) or the last one made (RetriesExhausted)."""
    retry_of: str | None = None
    hyperparameters: Hyperparameters | None = None

    @property
    def exhausted(self) -> bool:
        return self.reason == "RetriesExhausted"


def attempt_hyperparameters(base: Hyperparameters, retry: RetrySpec, attempt: int) -> Hyperparameters:
    """``base`` adjusted for ``attempt`` (1 = unchanged), kept within the bounds the trainer accepts."""
    steps = attempt - 1
    lr = min(base.learning_rate * retry.learning_rate_factor**steps, MAX_LEARNING_RATE)
    epochs = min(base.epochs + retry.extra_epochs * steps, MAX_EPOCHS)
    return base.model_copy(update={"learning_rate": lr, "epochs": epochs})


def decide_retry(
    retry: RetrySpec,
    base: Hyperparameters,
    newest: AttemptView | None,
    in_flight: str | None,
    suspended: bool,
) -> RetryDecision:
    """Whether the newest version's failure or rejection calls for another attempt."""
    if newest is None or newest.phase not in TERMINAL_FAILURES or in_flight is not None:
        return RetryDecision(False, "NotApplicable", "")
    if newest.attempt is None:
        return RetryDecision(
            False, "NotApplicable", f"{newest.version} was made before retries existed; it is not retried"
        )
    why = f"{newest.version} was {newest.phase.value}" + (f" ({newest.message})" if newest.message else "")
    if newest.attempt >= retry.max_attempts:
        return RetryDecision(
            False,
            "RetriesExhausted",
            f"{why} on attempt {newest.attempt} of {retry.max_attempts} (spec.retry.maxAttempts): no more retries;"
            " the active version keeps serving. Read that version's status and its Job's logs, fix the cause,"
            " then annotate modelloop.dev/retrain-now (or wait for the next trigger) to start again at attempt 1",
            attempt=newest.attempt,
            retry_of=newest.version,
        )
    attempt = newest.attempt + 1
    if suspended:
        return RetryDecision(
            False, "Suspended", f"{why}; attempt {attempt} waits: spec.suspend is true", attempt, newest.version
        )
    before = attempt_hyperparameters(base, retry, newest.attempt)
    after = attempt_hyperparameters(base, retry, attempt)
    return RetryDecision(
        True,
        "Retry",
        f"attempt {attempt}/{retry.max_attempts} after {why}: learningRate {before.learning_rate:g} ->"
        f" {after.learning_rate:g}, epochs {before.epochs} -> {after.epochs}",
        attempt=attempt,
        retry_of=newest.version,
        hyperparameters=after,
    )


@dataclass(frozen=True)
class TrainingStart:
    """The one training a pass starts: a new chain (attempt 1) or a retry."""

    reason: str
    message: str
    attempt: int
    retry_of: str | None = None
    hyperparameters: Hyperparameters | None = None
    """None: the spec's hyperparameters as they are."""


def decide_next_training(trigger: TriggerDecision, retry: RetryDecision) -> TrainingStart | None:
    """A person's ``retrain-now`` starts a new chain (they may have fixed the cause); otherwise a due
    retry comes before the other triggers, since the failed attempt's trigger is still unanswered."""
    if trigger.act and trigger.reason == "RetrainRequested":
        return TrainingStart(trigger.reason, trigger.message, 1)
    if retry.act:
        assert retry.attempt is not None
        return TrainingStart("Retry", retry.message, retry.attempt, retry.retry_of, retry.hyperparameters)
    if trigger.act:
        return TrainingStart(trigger.reason, trigger.message, 1)
    return None
