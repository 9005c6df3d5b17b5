"""The status of a sweep trial: one enum, whose values are the strings stored in Optuna's
user attributes and written to results.csv / results.jsonl."""

from __future__ import annotations

import enum


class TrialStatus(enum.StrEnum):
    """What became of a trial (the `status` column of a result row)."""

    OK = "ok"  # trained to the end
    INVALID = "invalid"  # its config fails the static checks; never trained
    FAILED = "failed"  # raised, hit NaN, or its worker died with no retry left
    PRUNED = "pruned"  # stopped early by the pruner
    RUNNING = "running"
    PENDING = "pending"  # waiting in the queue
    # A second copy of a trial already finished (enqueued twice by racing workers); it is
    # settled at once and never shown as a row.
    DUPLICATE = "duplicate"


# The statuses a result row can have, in the order the sweep summary counts them.
ROW_STATUSES = (
    TrialStatus.OK,
    TrialStatus.INVALID,
    TrialStatus.FAILED,
    TrialStatus.PRUNED,
    TrialStatus.RUNNING,
    TrialStatus.PENDING,
)
