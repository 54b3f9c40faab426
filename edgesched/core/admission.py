"""Admission control: may a node take one more task now? Shared by executor and simulator."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from edgesched.core.candidates import queue_wait


class AdmissionReject(StrEnum):
    QUEUE_FULL = "queue_full"
    DEADLINE = "deadline"


@dataclass(kw_only=True, slots=True)
class Admission:
    """The verdict, with the wait the node predicted for the task."""

    accepted: bool
    reason: AdmissionReject | None = None
    predicted_wait_s: float = 0.0
    detail: str = ""


def admit(
    *,
    slots: int,
    running: int,
    queued: int,
    queue_limit: int,
    exec_s: float,
    wait_s: float | None = None,
    remaining_s: float | None = None,
) -> Admission:
    """Accept a task unless the queue is full or it cannot finish before its deadline.

    - `queue_full`: every slot is busy and `queued >= queue_limit` (a free slot always admits).
    - `deadline`: predicted wait + execution (means: the sender already judged a high quantile;
      judging it twice would refuse work that usually makes it) exceeds `remaining_s`.
    `wait_s` defaults to the shared queue model (`candidates.queue_wait`).
    """
    if slots < 1 or running < 0 or queued < 0 or queue_limit < 0:
        raise ValueError("slots must be >= 1 and running, queued, queue_limit >= 0")
    free_slot = running + queued < slots
    if not free_slot and queued >= queue_limit:
        return Admission(
            accepted=False,
            reason=AdmissionReject.QUEUE_FULL,
            detail=f"{running} running and {queued} queued of limit {queue_limit}",
        )
    if wait_s is None:
        wait_s, _ = queue_wait(slots, running, queued, exec_s)
    if remaining_s is not None and (
        not math.isfinite(wait_s + exec_s) or wait_s + exec_s > remaining_s
    ):
        return Admission(
            accepted=False,
            reason=AdmissionReject.DEADLINE,
            predicted_wait_s=wait_s,
            detail=f"predicted {wait_s + exec_s:.3f}s > {max(0.0, remaining_s):.3f}s left",
        )
    return Admission(accepted=True, predicted_wait_s=wait_s)
