"""The shadow stage: reviews that label both models, and whether they hold a promotion back.

While a version is ``status.candidate`` the serving pods score it in the shadow beside the active
version; a review joined on the replica that scored that request carries the candidate's answer
too (``FeedbackRecord.shadowVersion``/``shadowPredicted``). Those reviews fill the paired tally in
``status.shadow`` (both right, only the active right, only the candidate right, both wrong), which
:func:`modelloop.decide.paired.decide_paired` turns into promote, reject or keep collecting when
``spec.rollout.shadow.enabled`` makes the stage gate promotion. Reviews joined on another replica
carry no pair and are not tallied: the sample thins, it is not biased.
"""

from __future__ import annotations

from datetime import datetime

from modelloop.api.retrainpolicy import ShadowRolloutSpec, ShadowStatus

from .paired import PairedDecision, PairedTally, decide_paired, paired_settings


def tally_for(
    current: ShadowStatus | None, candidate: str | None, active: str | None, now: datetime
) -> ShadowStatus | None:
    """The tally reviews count into: kept while the (candidate, active) pair stays, a new one when a new
    candidate is scored. The last tally stays in status once its candidate is promoted or rejected: it is
    the evidence for that decision."""
    if candidate is None or active is None:
        return current
    if current is not None and current.version == candidate and current.active_version == active:
        return current
    return ShadowStatus(version=candidate, active_version=active, since=now)


def count_review(
    tally: ShadowStatus,
    version: str,
    predicted: int,
    label: int,
    shadow_version: str | None,
    shadow_predicted: int | None,
    sign: int = 1,
) -> bool:
    """Adds a review to ``tally`` when it labels this pair of versions (``sign=-1`` takes back one that a
    later review of the same id replaced; never below zero); whether it did."""
    if shadow_predicted is None or shadow_version != tally.version or version != tally.active_version:
        return False
    active_right, candidate_right = predicted == label, shadow_predicted == label
    if active_right and candidate_right:
        tally.both_right = max(0, tally.both_right + sign)
    elif active_right:
        tally.only_active = max(0, tally.only_active + sign)
    elif candidate_right:
        tally.only_candidate = max(0, tally.only_candidate + sign)
    else:
        tally.both_wrong = max(0, tally.both_wrong + sign)
    return True


def shadow_gate(
    spec: ShadowRolloutSpec, tally: ShadowStatus | None, candidate: str, active: str | None, now: datetime
) -> tuple[PairedDecision, ShadowStatus] | None:
    """Whether the shadow stage holds ``candidate``'s promotion: None when it does not apply (the stage is
    off, or there is no active version to compare with); else the paired decision and the tally it used."""
    if not spec.enabled or active is None:
        return None
    t = tally_for(tally, candidate, active, now)
    assert t is not None
    decision = decide_paired(
        PairedTally(t.both_right, t.only_active, t.only_candidate, t.both_wrong),
        paired_settings(spec),
        t.since or now,
        now,
    )
    return decision, t
