"""What the dashboard's pages show, read from the store (plain functions: run them off the loop).

Every list is paged or bounded in SQL, so a page costs the same with ten or ten thousand
responses active. Times stay unix seconds here; the templates format them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlmodel import col

from tether import accounting, actions
from tether.budgets import window_at
from tether.config import Config
from tether.models import Event, EventKind, Response
from tether.pricing import Pricing
from tether.statuses import FINAL
from tether.store import Store

PAGE_SIZE = 50
TAIL = 100  # events on a freshly opened events page; later ones are added as they come
ACTIVE = "active"  # the status filter for every response not finished (unseen included)
UNSEEN = "unseen"  # tracked, not looked at yet (no status)


@dataclass(frozen=True)
class Filters:
    """The responses table's filters, as given in the query string ("" = any)."""

    status: str = ""
    policy: str = ""
    account: str = ""
    label: str = ""  # KEY=VALUE
    model: str = ""
    q: str = ""  # part of the id

    @classmethod
    def of(cls, query: Any) -> Filters:
        return cls(**{name: query.get(name, "").strip()[:200] for name in cls.__dataclass_fields__})

    def check(self) -> None:
        if self.status not in ("", ACTIVE, UNSEEN, *actions.STATUSES):
            raise actions.Refused(400, f"status {self.status!r}: no such status", "invalid_status")
        if self.label and "=" not in self.label:
            raise actions.Refused(400, f"label {self.label!r}: expected KEY=VALUE", "invalid_label")


@dataclass
class Page:
    rows: list[dict[str, Any]]
    total: int
    number: int
    pages: int


def overview(store: Store, now: float) -> dict[str, Any]:
    """Active responses by status, and cancels of the last hour and day by reason."""
    with store.reading() as session:
        by_status = session.execute(
            select(col(Response.status), func.count())
            .where(or_(col(Response.status).is_(None), col(Response.status).not_in(FINAL)))
            .group_by(col(Response.status))
        ).all()
        cancels = session.execute(
            select(
                col(Event.reason),
                func.sum(case((col(Event.at) >= now - 3600, 1), else_=0)),
                func.count(),
            )
            .where(col(Event.kind) == EventKind.CANCEL_REQUESTED.value, col(Event.at) >= now - 86400)
            .group_by(col(Event.reason))
        ).all()
    return {
        "active": sorted(((status or UNSEEN, n) for status, n in by_status), key=lambda item: item[0]),
        "active_total": sum(n for _, n in by_status),
        "cancels": sorted(((reason or "-", int(hour or 0), day) for reason, hour, day in cancels), key=str),
    }


def responses(store: Store, config: Config, pricing: Pricing, filters: Filters, number: int) -> Page:
    """One page of the responses table, newest first."""
    filters.check()
    query = select(Response)
    if filters.status == ACTIVE:
        query = query.where(or_(col(Response.status).is_(None), col(Response.status).not_in(FINAL)))
    elif filters.status == UNSEEN:
        query = query.where(col(Response.status).is_(None))
    elif filters.status:
        query = query.where(col(Response.status) == filters.status)
    for name in ("policy", "account", "model"):
        if getattr(filters, name):
            query = query.where(getattr(Response, name) == getattr(filters, name))
    if filters.label:
        key, _, value = filters.label.partition("=")
        query = query.where(col(Response.labels)[key.strip()].as_string() == value)
    if filters.q:
        query = query.where(col(Response.id).contains(filters.q, autoescape=True))
    with store.reading() as session:
        total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
        pages = max(1, -(-total // PAGE_SIZE))
        number = min(max(1, number), pages)
        rows = session.execute(
            query.order_by(col(Response.tracked_at).desc(), col(Response.id))
            .offset((number - 1) * PAGE_SIZE)
            .limit(PAGE_SIZE)
        ).scalars()
        return Page([row_of(r, config, pricing) for r in rows], total, number, pages)


def row_of(row: Response, config: Config, pricing: Pricing) -> dict[str, Any]:
    active = row.status not in FINAL
    return {
        "id": row.id,
        "account": row.account,
        "status": row.status or UNSEEN,
        "active": active,
        "model": row.model,
        "policy": row.policy,
        "labels": row.labels,
        "since": row.created_at or row.tracked_at,
        "deadline_at": row.deadline_at if active else None,
        "deadline_kind": row.deadline_kind,
        "cost_usd": row.cost_usd,
        "cost_estimated": row.cost_estimated,
        "reserved_usd": accounting.reservation(row, config, pricing) if active else None,
        "cancelling": row.cancel_state != "none" and active,
    }


def response(store: Store, config: Config, pricing: Pricing, rid: str) -> dict[str, Any]:
    """One response: its record (tether show's), the table's figures, its events with their ids."""
    record = actions.show_record(store, rid)
    with store.reading() as session:
        row = session.get(Response, rid)
        if row is None:  # forgotten between the two reads
            raise actions.Refused(404, f"{rid} is not tracked", "not_tracked")
        figures = row_of(row, config, pricing)
    return {
        "record": {k: v for k, v in record.items() if k != "events"},
        "row": figures,
        "events": events(store, response_id=rid, kind="", after=0, limit=1000),
    }


def events(store: Store, *, response_id: str, kind: str, after: int, limit: int = TAIL) -> list[dict[str, Any]]:
    """Events after id `after`, newest first: the last `limit` of them."""
    if kind and kind not in {k.value for k in EventKind}:
        raise actions.Refused(400, f"kind {kind!r}: no such event kind", "invalid_kind")
    if response_id:
        actions.checked_id(response_id)
    # Columns, not ORM objects: a live tail asks every second.
    columns = (Event.id, Event.at, Event.response_id, Event.budget, Event.kind)
    changes = (Event.from_status, Event.to_status, Event.reason, Event.detail)
    query = select(*(col(c) for c in (*columns, *changes))).where(col(Event.id) > after)
    if kind:
        query = query.where(col(Event.kind) == kind)
    if response_id:
        query = query.where(col(Event.response_id) == response_id)
    with store.reading() as session:
        found = session.execute(query.order_by(col(Event.id).desc()).limit(limit)).all()
    return [
        {"id": i, "at": at, "response_id": r, "budget": b, "kind": k, "from": f, "to": t, "reason": why, "detail": d}
        for i, at, r, b, k, f, t, why, d in found
    ]


def budgets(store: Store, config: Config, pricing: Pricing, now: float) -> list[dict[str, Any]]:
    """Each budget as `tether budget` has it, with its spend over the window so far: the
    cumulative cost of the responses in scope that finished in it, as (time, total) points."""
    standing = {b["name"]: b for b in actions.budget_records(store, config, pricing)}
    shown = []
    with store.reading() as session:
        for budget in config.budgets:
            window = window_at(budget, now)
            finished = accounting.finished_between(session, window.start, min(now, window.end))
            points, total = [(window.start, 0.0)], 0.0
            for row in sorted(finished, key=lambda r: r.finished_at or 0.0):
                if row.cost_usd and accounting.in_scope(budget, row):
                    total += row.cost_usd
                    points.append((row.finished_at or 0.0, total))
            points.append((min(now, window.end), total))
            shown.append(
                {**standing[budget.name], "start": window.start, "end": window.end, "now": now, "points": points}
            )
    return shown


def latest_event_id(store: Store) -> int:
    """Where a live tail starts: it adds the events after this one."""
    with store.reading() as session:
        return session.execute(select(func.max(col(Event.id)))).scalar_one() or 0
