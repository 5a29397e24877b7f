"""Retrying a failed or rejected training: the decision, the hyperparameter schedule, and precedence."""

from __future__ import annotations

import pytest

from modelloop.api.modelversion import Phase
from modelloop.api.retrainpolicy import Hyperparameters, RetrySpec
from modelloop.decide.retries import (
    AttemptView,
    RetryDecision,
    attempt_hyperparameters,
    decide_next_training,
    decide_retry,
)
from modelloop.decide.triggers import TriggerDecision

BASE = Hyperparameters(learning_rate=1e-3, epochs=20)
RETRY = RetrySpec()  # maxAttempts 3, learningRateFactor 0.5, extraEpochs 10

CASES = [
    # name, newest, in_flight, suspended, retry spec, act, reason, attempt
    ("no version yet", None, None, False, RETRY, False, "NotApplicable", None),
    ("newest verified", AttemptView("v2", Phase.VERIFIED, 1), None, False, RETRY, False, "NotApplicable", None),
    ("newest active", AttemptView("v2", Phase.ACTIVE, 2), None, False, RETRY, False, "NotApplicable", None),
    ("newest training", AttemptView("v2", Phase.TRAINING, 1), "v2", False, RETRY, False, "NotApplicable", None),
    ("rejected attempt 1", AttemptView("v2", Phase.REJECTED, 1, "rejected: beatsActive"), None, False, RETRY, True,
     "Retry", 2),
    ("failed attempt 1", AttemptView("v1", Phase.FAILED, 1, "BackoffLimitExceeded"), None, False, RETRY, True,
     "Retry", 2),
    ("rejected attempt 2", AttemptView("v3", Phase.REJECTED, 2), None, False, RETRY, True, "Retry", 3),
    ("rejected on the last attempt", AttemptView("v4", Phase.REJECTED, 3), None, False, RETRY, False,
     "RetriesExhausted", 3),
    ("failed past a lowered maxAttempts", AttemptView("v4", Phase.FAILED, 3), None, False, RetrySpec(max_attempts=2),
     False, "RetriesExhausted", 3),
    ("retries off", AttemptView("v2", Phase.REJECTED, 1), None, False, RetrySpec(max_attempts=1), False,
     "RetriesExhausted", 1),
    ("suspended waits, not exhausted", AttemptView("v2", Phase.REJECTED, 1), None, True, RETRY, False, "Suspended", 2),
    ("made before retries existed", AttemptView("v2", Phase.REJECTED, None), None, False, RETRY, False,
     "NotApplicable", None),
    ("something else in flight", AttemptView("v3", Phase.FAILED, 1), "v2", False, RETRY, False, "NotApplicable",
     None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("newest", "flying", "suspended", "retry", "act", "reason", "attempt"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide_retry(
    newest: AttemptView | None,
    flying: str | None,
    suspended: bool,
    retry: RetrySpec,
    act: bool,
    reason: str,
    attempt: int | None,
) -> None:
    d = decide_retry(retry, BASE, newest, flying, suspended)
    assert (d.act, d.reason, d.attempt) == (act, reason, attempt), d.message
    assert d.exhausted == (reason == "RetriesExhausted")
    if act:
        assert newest is not None
        assert d.retry_of == newest.version
        assert d.hyperparameters == attempt_hyperparameters(BASE, retry, d.attempt or 0)
        assert f"attempt {attempt}/{retry.max_attempts} after {newest.version} was {newest.phase.value}" in d.message
        if newest.message:
            assert newest.message in d.message, "the reason for the retry is in its message"
    if reason == "RetriesExhausted":
        assert "retrain-now" in d.message, "the on-call is told how to start again"


def test_retry_message_states_the_adjustment() -> None:
    d = decide_retry(RETRY, BASE, AttemptView("v2", Phase.REJECTED, 1), None, False)
    assert "learningRate 0.001 -> 0.0005, epochs 20 -> 30" in d.message


SCHEDULE = [
    # attempt, factor, extra epochs, base lr, base epochs, expected lr, expected epochs
    (1, 0.5, 10, 1e-3, 20, 1e-3, 20),
    (2, 0.5, 10, 1e-3, 20, 5e-4, 30),
    (3, 0.5, 10, 1e-3, 20, 2.5e-4, 40),
    (3, 2.0, 0, 1e-3, 20, 4e-3, 20),
    (10, 10.0, 0, 1e-3, 20, 10.0, 20),  # capped at the trainer's bound, not 1e6
    (10, 1.0, 1000, 1e-3, 9_990, 1e-3, 10_000),  # capped
]


@pytest.mark.parametrize(("attempt", "factor", "extra", "lr", "epochs", "want_lr", "want_epochs"), SCHEDULE)
def test_attempt_hyperparameters(
    attempt: int, factor: float, extra: int, lr: float, epochs: int, want_lr: float, want_epochs: int
) -> None:
    base = Hyperparameters(learning_rate=lr, epochs=epochs, seed=7, batch_size=32)
    got = attempt_hyperparameters(base, RetrySpec(learning_rate_factor=factor, extra_epochs=extra), attempt)
    assert got.learning_rate == pytest.approx(want_lr)
    assert got.epochs == want_epochs
    assert (got.seed, got.batch_size) == (7, 32), "only the scheduled hyperparameters change"
    Hyperparameters.model_validate(got.model_dump(by_alias=True))  # still within the bounds the trainer checks


RETRY_DUE = RetryDecision(True, "Retry", "attempt 2/3 ...", 2, "v2", BASE)
NO_RETRY = RetryDecision(False, "NotApplicable", "")
EXHAUSTED = RetryDecision(False, "RetriesExhausted", "...", 3, "v4")

PRECEDENCE = [
    ("nothing due", TriggerDecision(False, "BelowThreshold", ""), NO_RETRY, None, None),
    ("a trigger alone", TriggerDecision(True, "FeedbackThreshold", "m"), NO_RETRY, "FeedbackThreshold", 1),
    ("a retry alone", TriggerDecision(False, "BelowThreshold", ""), RETRY_DUE, "Retry", 2),
    ("retry before feedback", TriggerDecision(True, "FeedbackThreshold", "m"), RETRY_DUE, "Retry", 2),
    ("retry before schedule", TriggerDecision(True, "Schedule", "m"), RETRY_DUE, "Retry", 2),
    ("retrain-now starts a new chain", TriggerDecision(True, "RetrainRequested", "m"), RETRY_DUE, "RetrainRequested", 1),
    ("after exhaustion a trigger starts attempt 1", TriggerDecision(True, "FeedbackThreshold", "m"), EXHAUSTED,
     "FeedbackThreshold", 1),
    ("exhausted and no trigger", TriggerDecision(False, "BelowThreshold", ""), EXHAUSTED, None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("trigger", "retry", "reason", "attempt"), [c[1:] for c in PRECEDENCE], ids=[c[0] for c in PRECEDENCE]
)
def test_next_training(trigger: TriggerDecision, retry: RetryDecision, reason: str | None, attempt: int | None) -> None:
    start = decide_next_training(trigger, retry)
    assert (start.reason if start else None, start.attempt if start else None) == (reason, attempt)
    if start is not None and reason == "Retry":
        assert (start.retry_of, start.hyperparameters) == ("v2", BASE)
    elif start is not None:
        assert (start.retry_of, start.hyperparameters) == (None, None), "a new chain trains with the spec as it is"
