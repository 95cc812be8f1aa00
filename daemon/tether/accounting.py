"""Budgets against the store: what each response costs, what active ones reserve, and
where each budget's window stands.

Spend is derived, never accumulated: a budget's spent figure is the sum of the costs of
the responses in its scope that finished inside its window. A response has one cost and
one finish time, so however often it is polled, however often the daemon restarts or
the config is reloaded, it counts once, in the window it finished in; a window rollover
starts from what the store says, so it can neither erase nor double-count anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import Session, col

from tether.budgets import BudgetState, Commitment, assess, window_at
from tether.config import BudgetConfig, Config
from tether.models import CancelState, Event, EventKind, Response
from tether.pricing import Pricing
from tether.statuses import ACTIVE, Status


@dataclass(frozen=True)
class Measured:
    budget: BudgetConfig
    state: BudgetState
    commitments: tuple[Commitment, ...]  # every active response in scope, with its reservation


def in_scope(budget: BudgetConfig, row: Response) -> bool:
    return budget.match.fits(model=row.model, metadata=row.meta, account=row.account, labels=row.labels)


def reservation(row: Response, config: Config, pricing: Pricing) -> float:
    """docs/configuration.md, "Budgets": max_output_tokens × output price when stated, else the policy's reserve_usd."""
    policy = config.policy_named(row.policy) if row.policy else None
    amount = pricing.reservation(
        row.model, row.max_output_tokens, policy.reserve_usd if policy else None, row.service_tier
    )
    return amount or 0.0


def active_rows(session: Session) -> list[Response]:
    query = select(Response).where(col(Response.status).is_(None) | col(Response.status).in_(ACTIVE))
    return list(session.execute(query).scalars())


def finished_between(session: Session, start: float, end: float) -> list[Response]:
    query = select(Response).where(col(Response.finished_at) >= start, col(Response.finished_at) < end)
    return list(session.execute(query).scalars())


def measure(session: Session, config: Config, pricing: Pricing, now: float) -> list[Measured]:
    """Every budget's state now. Reads only."""
    if not config.budgets:
        return []
    active = active_rows(session)
    measured = []
    for budget in config.budgets:
        window = window_at(budget, now)
        spent = sum(
            r.cost_usd or 0.0 for r in finished_between(session, window.start, window.end) if in_scope(budget, r)
        )
        commitments = tuple(
            Commitment(r.id, r.created_at or r.tracked_at, reservation(r, config, pricing))
            for r in active
            if in_scope(budget, r)
        )
        measured.append(Measured(budget, assess(budget, window, spent, commitments), commitments))
    return measured


def cancellable(session: Session, commitments: Iterable[Commitment]) -> list[Commitment]:
    """Those not already being cancelled: a budget must not cancel the same response twice."""
    ids = [c.response_id for c in commitments]
    if not ids:
        return []
    pending = set(
        session.execute(
            select(col(Response.id)).where(
                col(Response.id).in_(ids), col(Response.cancel_state) != CancelState.NONE.value
            )
        ).scalars()
    )
    return [c for c in commitments if c.response_id not in pending]


def settle_cost(session: Session, row: Response, pricing: Pricing, previous_status: str | None) -> str | None:
    """Cost a finished response. Returns "price_unknown" when its model has no price.

    With usage: usage × price. Without (typical after a cancel): an estimate, flagged,
    from the time it was seen running (see Pricing.estimate); a response cancelled while
    still queued never ran, so its estimate is 0.
    """
    cost = pricing.cost(row.model, row.usage, row.service_tier)
    if cost is not None:
        row.cost_usd, row.cost_estimated = cost, False
        return None
    if pricing.price(row.model) is None:
        row.cost_usd, row.cost_estimated = None, False
        return EventKind.PRICE_UNKNOWN.value
    never_ran = previous_status == Status.QUEUED.value and row.started_at is None
    started = row.started_at or row.created_at or row.tracked_at
    ran = 0.0 if never_ran else max(0.0, (row.finished_at or started) - started)
    row.cost_usd = pricing.estimate(row.model, row.service_tier, ran, row.max_output_tokens)
    row.cost_estimated = True
    return None


def price_unknown_recorded(session: Session, response_id: str) -> bool:
    query = select(col(Event.id)).where(
        col(Event.response_id) == response_id, col(Event.kind) == EventKind.PRICE_UNKNOWN.value
    )
    return session.execute(query.limit(1)).first() is not None
