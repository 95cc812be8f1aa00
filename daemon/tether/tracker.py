"""Applying what happened to a tracked response: the one place transitions are written.

Every change goes through a `Recorder`, inside one write transaction: the row is
updated and an event row appended together, and the matching log line is emitted
only once that transaction has committed. So the store, the event history and the
log always tell the same story.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from copy import copy
from functools import cache
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import insert
from sqlalchemy import inspect as sa_inspect
from sqlmodel import Session

from tether.accounting import price_unknown_recorded, settle_cost
from tether.config import Config, PolicyConfig
from tether.facts import fill_facts, known_status, valid_timestamp
from tether.logs import log
from tether.models import EVENTS, BudgetMark, CancelState, EventKind, Response
from tether.policies import next_deadline
from tether.pricing import Pricing
from tether.render import iso
from tether.statuses import TERMINAL, Status, is_active, is_allowed
from tether.store import Store

# (attribute, column name) of every column of a Response row.
RESPONSE_COLUMNS = [(a.key, c.name) for a in sa_inspect(Response).column_attrs for c in a.columns]
EMIT_YIELD_EVERY = 16  # log lines written between two yields of the interpreter (`Recorder.emit`)
LEVELS = {
    EventKind.TRACKED: "info",
    EventKind.STATUS: "info",
    EventKind.LIMIT_EXCEEDED: "warning",
    EventKind.CANCEL_REQUESTED: "warning",
    EventKind.CANCEL_FAILED: "warning",
    EventKind.WARNED: "warning",
    EventKind.LOST: "warning",
    EventKind.PRICE_UNKNOWN: "warning",
    EventKind.BUDGET_WARN: "warning",
    EventKind.BUDGET_EXCEEDED: "warning",
}


class Recorder:
    """Event rows of one transaction, and the log lines to emit after it commits."""

    def __init__(self, session: Session, origin: str, now: float, instance: str | None = None) -> None:
        self.session = session
        self.origin = origin
        self.now = now
        self.instance = instance
        self._lines: list[tuple[str, str | None, str | None, str | None, str | None, dict[str, Any]]] = []
        self._rows: list[dict[str, Any]] = []  # event rows, inserted together (`write`)

    def event(
        self,
        row: Response | None,
        kind: EventKind,
        *,
        from_: str | None = None,
        to: str | None = None,
        reason: str | None = None,
        detail: Mapping[str, Any] | None = None,
        budget: str | None = None,
    ) -> None:
        """Append an event about a response (or, with row None, about a budget)."""
        detail = {"budget": budget, **(detail or {})} if budget is not None else dict(detail or {})
        response_id = row.id if row is not None else None
        self._rows.append(
            {
                "at": self.now,
                "response_id": response_id,
                "budget": budget,
                "kind": kind.value,
                "from_status": from_,
                "to_status": to,
                "reason": reason,
                "detail": detail,
                "origin": self.origin,
                "instance": self.instance,
            }
        )
        self._lines.append((kind.value, response_id, from_, to, reason, detail))

    def recorded(self, response_id: str, kind: EventKind) -> bool:
        """Is such an event among this transaction's, not written yet?"""
        return any(r["response_id"] == response_id and r["kind"] == kind.value for r in self._rows)

    def write(self) -> None:
        """Insert the event rows, in order, in one statement (an ORM object per event costs
        more than the rest of a transition)."""
        if self._rows:
            self.session.execute(insert(EVENTS), self._rows)
            self._rows = []

    def emit(self) -> None:
        for index, line in enumerate(self._lines, 1):
            log_event(*line)
            if index % EMIT_YIELD_EVERY == 0:
                # Let another thread have the interpreter: the daemon's event loop, sending the
                # cancels this transaction decided, goes first, and the lines follow when it
                # waits for replies. Not after every line: a yield costs ~0.1 ms of the store
                # thread's time, a line 15 µs, and a burst writes 500 lines.
                time.sleep(0)
        self._lines.clear()


def log_event(
    kind: str,
    response_id: str | None,
    from_: str | None,
    to: str | None,
    reason: str | None,
    detail: Mapping[str, Any],
    **extra: Any,
) -> None:
    """The log line of an event: `response.<kind>` (or `budget.<what>`) with its fields."""
    name = f"budget.{kind.removeprefix('budget_')}" if kind.startswith("budget_") else f"response.{kind}"
    fields: dict[str, Any] = {"response_id": response_id} if response_id is not None else {}
    if kind in (EventKind.STATUS, EventKind.TRACKED, EventKind.LOST):
        fields["from"] = from_
        fields["to"] = to
    if reason is not None:
        fields["reason"] = reason
    fields.update(detail)
    fields.update(extra)
    getattr(log, LEVELS[EventKind(kind)])(name, **fields)


@contextmanager
def recording(store: Store, origin: str, now: float) -> Iterator[Recorder]:
    with store.writing() as session:
        recorder = Recorder(session, origin, now, store.instance)
        yield recorder
        recorder.write()
    store.after_commit(recorder.emit)  # log lines only for what is durable


def track(
    rec: Recorder,
    config: Config,
    pricing: Pricing,
    *,
    response_id: str,
    account: str,
    observed: Mapping[str, Any] | None,
    policy_requested: str | None,
    labels: Mapping[str, str],
) -> tuple[Response, bool]:
    """Start tracking; returns (row, created). Tracking an id again changes nothing."""
    existing = rec.session.get(Response, response_id)
    if existing is not None:
        return existing, False
    row = new_row(
        rec,
        config,
        pricing,
        response_id=response_id,
        account=account,
        observed=observed,
        policy_requested=policy_requested,
        labels=labels,
    )
    rec.session.add(row)
    return row, True


def new_row(
    rec: Recorder,
    config: Config,
    pricing: Pricing,
    *,
    response_id: str,
    account: str,
    observed: Mapping[str, Any] | None,
    policy_requested: str | None,
    labels: Mapping[str, str],
    plain: bool = False,
) -> Response:
    """The row of a response not tracked yet, and its `tracked` event; the caller stores it:
    adds it to the session, or, `plain`, inserts it with others (`row_values`). A plain row is
    an object with a Response row's attribute names, not an ORM object, whose construction
    costs more than the rest of tracking a response (the daemon tracks its proxied creates so)."""
    given: dict[str, Any] = {
        "id": response_id,
        "account": account,
        "tracked_at": rec.now,
        "policy_requested": policy_requested,
        "labels": dict(labels),
    }
    if plain:
        row = cast("Response", SimpleNamespace(**{**blank_row(), **given}))
    else:
        row = Response(**given)
    status = None
    if observed is not None:
        fill_facts(row, observed)
        status = known_status(observed)
        row.status = status
        if status == Status.IN_PROGRESS.value:
            row.started_at = row.created_at
    refresh_policy(row, config)
    if observed is not None and status in TERMINAL:
        record_outcome(rec, row, observed, pricing, previous=None)
    if is_active(row.status):
        row.next_poll_at = rec.now + config.polling.first
    rec.event(
        row,
        EventKind.TRACKED,
        to=status,
        detail={"account": account, "policy": row.policy, "model": row.model, "labels": dict(labels)},
    )
    return row


def blank_row() -> dict[str, Any]:
    """A new Response row's attributes, by name, as its defaults set them."""
    return {name: copy(value) for name, value in _blank_row().items()}


@cache
def _blank_row() -> dict[str, Any]:
    blank = Response(id="", account="", tracked_at=0.0)
    return {attribute: getattr(blank, attribute) for attribute, _ in RESPONSE_COLUMNS}


def row_values(row: Response) -> dict[str, Any]:
    """A new row's values by column name, for a Core insert of many at once (an ORM object
    added to the session costs more than the rest of tracking it)."""
    return {column: getattr(row, attribute) for attribute, column in RESPONSE_COLUMNS}


def observe(
    rec: Recorder,
    row: Response,
    observed: Mapping[str, Any],
    config: Config,
    pricing: Pricing,
    *,
    reason: str,
    asked_at: float | None = None,
) -> bool:
    """Apply a response object from the API; returns True when the status changed.

    `asked_at` is when the request that brought it began. A terminal status recorded after
    that (from another request: the daemon's poll while the CLI's cancel was in flight, say)
    is fresher than this answer, which does not replace it.
    """
    fill_facts(row, observed)
    row.not_found = 0
    status = known_status(observed)
    previous = row.status
    changed = False
    if status is not None and status != row.status:
        stale = (
            asked_at is not None
            and row.status in TERMINAL
            and row.finished_at is not None
            and asked_at < row.finished_at
        )
        if is_allowed(row.status, status) and not stale:
            rec.event(row, EventKind.STATUS, from_=row.status, to=status, reason=reason)
            row.status = status
            changed = True
            if status == Status.IN_PROGRESS.value:
                row.started_at = rec.now
        else:
            log.warning(
                "api.error",
                kind="anomaly",
                response_id=row.id,
                error=f"ignored move {row.status} -> {status} (stale or out of order)",
            )
    refresh_policy(row, config)
    if changed and is_active(previous) and row.status in TERMINAL:
        record_unseen_overrun(rec, row, observed, config)
    if row.status in TERMINAL and (changed or row.finished_at is None):
        record_outcome(rec, row, observed, pricing, previous=previous)
    return changed


def record_unseen_overrun(rec: Recorder, row: Response, observed: Mapping[str, Any], config: Config) -> None:
    """A response first seen finished, having run past its max_runtime deadline while nobody
    looked (no daemon ran, say): the limit was exceeded all the same, and is recorded as such,
    though too late to act on (no cancel; a warn policy's `warned`).

    Only the finish time the API gives (`completed_at`) shows that it was still running at
    the deadline; without it, a response that ended in time and was seen late is not blamed."""
    policy = config.policy_named(row.policy) if row.policy else None
    finished = observed.get("completed_at")
    if policy is None or policy.max_runtime is None or row.created_at is None or not valid_timestamp(finished):
        return
    deadline = row.created_at + policy.max_runtime
    if "max_runtime" in row.limits_hit or finished <= deadline:
        return
    mark_limit(
        rec,
        row,
        limit="max_runtime",
        action=policy.action,
        deadline=deadline,
        finished_before_action=True,
        finished_at=iso(finished),
    )
    if policy.action == "warn":
        warn(rec, row, limit="max_runtime")


def record_outcome(
    rec: Recorder, row: Response, observed: Mapping[str, Any], pricing: Pricing, *, previous: str | None
) -> None:
    """A terminal response's final object, kept at once (the server may drop it soon), and its cost."""
    row.finished_at = rec.now
    usage = observed.get("usage")
    row.usage = usage if isinstance(usage, dict) else None
    error = observed.get("error")
    row.error = (
        {"code": text_or_none(error.get("code")), "message": text_or_none(error.get("message"))}
        if isinstance(error, dict)
        else None
    )
    details = observed.get("incomplete_details")
    row.incomplete_reason = text_or_none(details.get("reason")) if isinstance(details, dict) else None
    if (
        settle_cost(rec.session, row, pricing, previous)
        and not rec.recorded(row.id, EventKind.PRICE_UNKNOWN)
        and not price_unknown_recorded(rec.session, row.id)
    ):
        rec.event(row, EventKind.PRICE_UNKNOWN, detail={"model": row.model})


def text_or_none(value: Any) -> str | None:
    """API text fields as text: a hostile server's objects are kept as their JSON."""
    if value is None or isinstance(value, str):
        return value
    try:
        return json.dumps(value)[:1000]
    except (TypeError, ValueError):
        return str(value)[:1000]


def refresh_policy(row: Response, config: Config) -> None:
    """Resolve the policy that applies now and the next deadline it sets."""
    policy = config.select_policy(
        named=row.policy_requested,
        model=row.model,
        metadata=row.meta,
        account=row.account,
        labels=row.labels,
    )
    row.policy = policy.name if policy else None
    refresh_deadline(row, policy)


def refresh_deadline(row: Response, policy: PolicyConfig | None) -> None:
    """The next deadline `policy` sets, from the row's status and the limits already hit."""
    deadline = next_deadline(policy, row.status, row.created_at, frozenset(row.limits_hit))
    row.deadline_at = deadline.at if deadline else None
    row.deadline_kind = deadline.limit if deadline else None


def mark_limit(rec: Recorder, row: Response, *, limit: str, action: str, deadline: float, **detail: Any) -> None:
    rec.event(
        row,
        EventKind.LIMIT_EXCEEDED,
        reason=limit,
        detail={"limit": limit, "policy": row.policy, "action": action, "deadline_at": iso(deadline), **detail},
    )
    row.limits_hit = [*row.limits_hit, limit]


def request_cancel(rec: Recorder, row: Response, reason: str, note: str | None = None) -> None:
    """Record the decision to cancel: durable before any API call is made."""
    detail = {"policy": row.policy, **({"note": note} if note else {})}
    rec.event(row, EventKind.CANCEL_REQUESTED, reason=reason, detail=detail)
    row.cancel_state = CancelState.PENDING.value
    row.cancel_requested_at = rec.now
    row.cancel_reason = reason
    row.cancel_attempts = 0


def warn(rec: Recorder, row: Response, *, limit: str) -> None:
    rec.event(row, EventKind.WARNED, reason=limit, detail={"policy": row.policy})


def cancel_failed(rec: Recorder, row: Response, *, http_status: int | None, error: str, retry: bool) -> None:
    row.cancel_attempts += 1
    rec.event(
        row,
        EventKind.CANCEL_FAILED,
        reason=row.cancel_reason,
        detail={"http_status": http_status, "error": error, "attempt": row.cancel_attempts, "will_retry": retry},
    )


def cancel_answered(row: Response, confirm_window: float, now: float) -> None:
    """The API answered the cancel: keep polling a while to confirm the final status."""
    row.cancel_state = CancelState.SETTLED.value
    row.confirm_until = now + confirm_window


def not_found(rec: Recorder, row: Response, lost_after: int) -> bool:
    """Count a 404; returns True when the response has just been declared lost."""
    row.not_found += 1
    if row.not_found < lost_after or row.status in TERMINAL:
        return False
    rec.event(row, EventKind.LOST, from_=row.status, to=Status.LOST.value, detail={"not_found": row.not_found})
    row.status = Status.LOST.value
    row.finished_at = rec.now
    row.deadline_at = None
    row.deadline_kind = None
    return True


def first_mark(rec: Recorder, budget: str, window_start: float, mark: str) -> bool:
    """Record that `mark` was reached in this budget window; False if it already was."""
    if rec.session.get(BudgetMark, (budget, window_start, mark)) is not None:
        return False
    rec.session.add(BudgetMark(budget=budget, window_start=window_start, mark=mark, at=rec.now))
    return True
