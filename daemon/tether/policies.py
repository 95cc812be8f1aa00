"""Pure policy logic: (response facts, policy, now) -> deadline and decision.

Deadlines are absolute instants on the server's clock, from `created_at`:
`created_at + max_queued` applies only while queued, `created_at + max_runtime`
while not terminal. A limit that has been acted on (cancelled or warned) is not
acted on again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tether.config import PolicyConfig
from tether.statuses import Status, is_active

Limit = Literal["max_queued", "max_runtime"]


@dataclass(frozen=True)
class Deadline:
    at: float
    limit: Limit


@dataclass(frozen=True)
class Keep:
    """Nothing to do now."""


@dataclass(frozen=True)
class Act:
    """A limit is exceeded: `action` is the policy's (cancel | warn)."""

    limit: Limit
    action: Literal["cancel", "warn"]
    deadline: float


Decision = Keep | Act


def pending_deadlines(
    policy: PolicyConfig | None,
    status: str | None,
    created_at: float | None,
    limits_hit: frozenset[str] | set[str] | list[str] = frozenset(),
) -> list[Deadline]:
    """The deadlines still to be enforced, earliest first."""
    if policy is None or created_at is None or not is_active(status):
        return []
    found = []
    # An unseen status (None) may still be queued: max_queued stays pending until we know.
    if policy.max_queued is not None and status in (None, Status.QUEUED.value):
        found.append(Deadline(created_at + policy.max_queued, "max_queued"))
    if policy.max_runtime is not None:
        found.append(Deadline(created_at + policy.max_runtime, "max_runtime"))
    return sorted((d for d in found if d.limit not in limits_hit), key=lambda d: d.at)


def next_deadline(
    policy: PolicyConfig | None,
    status: str | None,
    created_at: float | None,
    limits_hit: frozenset[str] | set[str] | list[str] = frozenset(),
) -> Deadline | None:
    pending = pending_deadlines(policy, status, created_at, limits_hit)
    return pending[0] if pending else None


def decide(
    policy: PolicyConfig | None,
    status: str | None,
    created_at: float | None,
    now: float,
    limits_hit: frozenset[str] | set[str] | list[str] = frozenset(),
) -> Decision:
    """Act on the earliest pending deadline that has passed, if any.

    A status not yet seen (None) is never acted on: the caller looks first.
    """
    if status is None:
        return Keep()
    deadline = next_deadline(policy, status, created_at, limits_hit)
    if deadline is None or now < deadline.at:
        return Keep()
    assert policy is not None
    return Act(limit=deadline.limit, action=policy.action, deadline=deadline.at)
