"""Pure budget logic: (budget, now, spend, commitments) -> window, state and what to cancel.

No clock, no store: every function takes `now` or the figures it needs. Windows are
half-open `[start, end)` in unix seconds, so consecutive calendar windows tile time: the
window after one ends starts exactly at its `end`, and an instant on a boundary (midnight
itself) belongs to the window it starts.

Calendar periods follow the wall clock of the budget's time zone: a day runs from local
midnight to the next local midnight (23 or 25 hours across a DST change), a week from Monday
00:00, a month from the 1st 00:00. A local midnight that occurs twice counts from the first;
one skipped by a DST jump counts from the moment the clock jumps. An hour is a real hour
aligned to the local hour marks (at :30 UTC in Asia/Kolkata), so the repeated hour of an
autumn DST change is two windows, not one window of two hours.

Money comparisons allow a tolerance of 1e-9 USD so that float sums such as 0.1 + 0.2 do not
exceed a limit of 0.3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Literal

from tether.config import BudgetConfig, timezone_named

EPSILON_USD = 1e-9


@dataclass(frozen=True)
class Window:
    """`[start, end)`, unix seconds."""

    start: float
    end: float

    def __contains__(self, instant: float) -> bool:
        return self.start <= instant < self.end


@dataclass(frozen=True)
class Commitment:
    """An active response in a budget's scope and what it reserves (0.0 when nothing can be
    reserved: it still counts as active and may still be cancelled)."""

    response_id: str
    created_at: float
    amount: float


@dataclass(frozen=True)
class BudgetState:
    name: str
    window: Window
    limit_usd: float
    spent_usd: float
    committed_usd: float
    remaining_usd: float  # limit - spent - committed; negative when over
    state: Literal["ok", "warn", "exceeded"]
    active: int


# --- windows ----------------------------------------------------------------------------------


def window_at(budget: BudgetConfig, now: float) -> Window:
    """The budget's window containing `now`: the calendar period in its time zone, or for a
    rolling window `[now - window, now)`."""
    if budget.window is not None:
        return Window(now - budget.window, now)
    if budget.period is None:
        raise ValueError(f"budget {budget.name!r} has neither a period nor a window")
    zone = _zone(budget.timezone)
    if budget.period == "hour":
        return _hour_at(zone, now)
    local = datetime.fromtimestamp(now, zone).replace(tzinfo=None, fold=0)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if budget.period == "day":
        start, end = midnight, midnight + timedelta(days=1)
    elif budget.period == "week":
        start = midnight - timedelta(days=midnight.weekday())  # Monday is 0
        end = start + timedelta(days=7)
    elif budget.period == "month":
        start = midnight.replace(day=1)
        end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    else:
        raise ValueError(f"budget {budget.name!r}: unknown period {budget.period!r}")
    return Window(_instant(start, zone), _instant(end, zone))


@lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo:
    return timezone_named(name)


def _instant(wall: datetime, zone: tzinfo) -> float:
    """A local wall-clock time as unix seconds. An ambiguous time (a DST fold) is its first
    occurrence; a skipped one (a DST gap) starting a period is the moment the clock jumps."""
    return wall.replace(tzinfo=zone, fold=0).timestamp()


def _offset(zone: tzinfo, instant: float) -> float:
    offset = datetime.fromtimestamp(instant, zone).utcoffset()
    return offset.total_seconds() if offset else 0.0


def _hour_at(zone: tzinfo, now: float) -> Window:
    offset = _offset(zone, now)
    second = math.floor(now)  # integer arithmetic: hour marks are whole seconds
    start = float(second - (second + int(offset)) % 3600)
    end = start + 3600
    # Zones whose offset changes by a fraction of an hour (Australia/Lord_Howe) move the hour
    # marks; clip at the change so that hours still tile time.
    if _offset(zone, start) != offset:
        start = _change_between(zone, start, now)
    if _offset(zone, end - 1) != offset:
        end = _change_between(zone, now, end - 1)
    return Window(start, end)


def _change_between(zone: tzinfo, before: float, after: float) -> float:
    """The first whole second in (before, after] with after's offset; the offset differs at
    `before` (offsets change on whole seconds)."""
    low, high, wanted = int(before), int(after), _offset(zone, after)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(zone, middle) == wanted:
            high = middle
        else:
            low = middle
    return float(high)


# --- state --------------------------------------------------------------------------------------


def assess(budget: BudgetConfig, window: Window, spent: float, commitments: Sequence[Commitment]) -> BudgetState:
    """Where the budget stands: exceeded when spent + committed is over the limit, warn when it
    has reached the lowest warn_at fraction of it, else ok."""
    committed = sum(c.amount for c in commitments)
    total = spent + committed
    if total > budget.limit_usd + EPSILON_USD:
        state: Literal["ok", "warn", "exceeded"] = "exceeded"
    elif thresholds_crossed(budget, spent, committed):
        state = "warn"
    else:
        state = "ok"
    return BudgetState(
        name=budget.name,
        window=window,
        limit_usd=budget.limit_usd,
        spent_usd=spent,
        committed_usd=committed,
        remaining_usd=budget.limit_usd - total,
        state=state,
        active=len(commitments),
    )


def thresholds_crossed(budget: BudgetConfig, spent: float, committed: float) -> list[float]:
    """The warn_at fractions that spent + committed has reached, lowest first. The caller
    warns once per threshold per window."""
    total = spent + committed
    return [fraction for fraction in budget.warn_at if total >= fraction * budget.limit_usd - EPSILON_USD]


def cancel_plan(limit_usd: float, spent: float, commitments: Sequence[Commitment]) -> list[str]:
    """The responses to cancel so that spent + the remaining commitments fit the limit: newest
    first (created_at descending, ties by response id descending), stopping as soon as it
    fits. [] when it fits already; every one of them when spent alone is over the limit."""
    remaining = sum(c.amount for c in commitments)
    plan: list[str] = []
    for commitment in sorted(commitments, key=lambda c: (c.created_at, c.response_id), reverse=True):
        if spent + remaining <= limit_usd + EPSILON_USD:
            break
        plan.append(commitment.response_id)
        remaining -= commitment.amount
    return plan
