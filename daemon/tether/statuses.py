"""The status vocabulary: a response's statuses and the moves allowed between them.

Apart from the tables (tether/models.py), so that a command that only reads the store can
use it without importing SQLModel (docs/benchmarks.md, CLI start-up).
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"
    LOST = "lost"  # local: the API answered 404 repeatedly


API_STATUSES = frozenset(s.value for s in Status) - {Status.LOST.value}
ACTIVE = frozenset({Status.QUEUED.value, Status.IN_PROGRESS.value})
TERMINAL = frozenset({Status.COMPLETED.value, Status.FAILED.value, Status.CANCELLED.value, Status.INCOMPLETE.value})
FINAL = TERMINAL | {Status.LOST.value}

# Allowed moves, keyed by the current status (None: tracked without a look yet).
# A terminal status may still change: a cancel reported `cancelled` has been seen
# to end `completed`, so terminal -> terminal is allowed (during confirmation).
# A lost response that reappears is taken back.
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset(API_STATUSES) | {Status.LOST.value},
    Status.QUEUED.value: frozenset(API_STATUSES - {Status.QUEUED.value}) | {Status.LOST.value},
    Status.IN_PROGRESS.value: TERMINAL | {Status.LOST.value},
    **{t: TERMINAL - {t} for t in TERMINAL},
    Status.LOST.value: frozenset(API_STATUSES),
}


def is_allowed(current: str | None, new: str) -> bool:
    return new in TRANSITIONS.get(current, frozenset())


def is_active(status: str | None) -> bool:
    """Not yet terminal: polled and subject to deadlines (None = not looked at yet)."""
    return status not in FINAL
