"""The daemon's in-memory record of one active response, and of a poll that changed nothing."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from tether.facts import Facts, facts_of, interned, row_facts
from tether.models import CancelState, Response
from tether.statuses import is_active


@dataclass(slots=True)
class Active:
    """What the scheduler needs to know of one response; the row stays the truth."""

    id: str
    account: str
    policy: str | None
    status: str | None
    deadline_at: float | None
    next_poll_at: float | None
    interval: float | None
    cancel_state: str
    cancel_attempts: int
    confirm_until: float | None
    facts: Facts
    next_cancel_at: float | None = None
    # When the latest look the API answered with a status began: a confirmation window is
    # over only once a look begun after its end was answered (see `finished`).
    answered_at: float | None = None
    # Deadline looks that failed in a row: the next is tried with the cancel's backoff.
    look_failures: int = 0
    polling: bool = False
    enforcing: bool = False
    # What the heaps hold for it, so re-scheduling pushes nothing twice.
    queued_poll: float | None = None
    queued_deadline: float | None = None
    queued_cancel: float | None = None

    @classmethod
    def from_row(cls, row: Response) -> Active:
        return cls.of(row, row_facts(row))

    @classmethod
    def loaded(cls, row: Any) -> Active:
        """From a `queries.ScheduledRow`: a plain row, no ORM object (start-up reads 100,000),
        with the metadata as its JSON text."""
        return cls.of(row, facts_of(row.model, row.created_at, json.loads(row.meta)))

    @classmethod
    def of(cls, row: Any, facts: Facts) -> Active:
        """The one place a record is made, from anything with the row's attribute names."""
        # The few distinct strings are interned: one copy each for 100,000 records, not one per row.
        return cls(
            id=row.id,
            account=sys.intern(row.account),
            policy=interned(row.policy),
            status=interned(row.status),
            deadline_at=row.deadline_at,
            next_poll_at=row.next_poll_at,
            interval=row.poll_interval,
            cancel_state=sys.intern(row.cancel_state),
            cancel_attempts=row.cancel_attempts,
            confirm_until=row.confirm_until,
            facts=facts,
        )

    def refresh(self, row: Response) -> None:
        """Take what a write changed, keeping the scheduling state owned here."""
        self.refresh_state(row)
        self.facts = row_facts(row)

    def refresh_state(self, row: Response | SimpleNamespace) -> None:
        """`refresh` but for the facts (model, created_at, metadata): a deadline decision
        does not change them."""
        self.status = interned(row.status)
        self.policy = interned(row.policy)
        self.deadline_at = row.deadline_at
        self.cancel_state = sys.intern(row.cancel_state)
        self.cancel_attempts = row.cancel_attempts
        self.confirm_until = row.confirm_until

    def finished(self, now: float) -> bool:
        """Terminal, no cancel left to send, and any confirmation window after a cancel over.

        The window counts in answers, not wall-clock time: it is over once a look *begun*
        after its end has been answered. A poll that was late (a backlog of polls, no free
        connection) or failed slowly (a read timeout longer than what was left of the
        window) must not close it unseen: the server may have moved to `completed` since.
        """
        return (
            not is_active(self.status)
            and self.cancel_state != CancelState.PENDING.value
            and (
                self.confirm_until is None
                or (
                    now >= self.confirm_until
                    and self.answered_at is not None
                    and self.answered_at >= self.confirm_until
                )
            )
        )


@dataclass(slots=True)
class PollMark:
    """A poll that changed nothing: counted in memory, written in the next batch."""

    polls: int
    last_polled_at: float
    next_poll_at: float | None
    interval: float | None
