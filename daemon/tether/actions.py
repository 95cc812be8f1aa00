"""The control operations on a store, shared by every door: the CLI (on the store it opens
itself) and the daemon's `Front` (tether/server/front.py) run the same code, so a command
answers the same whichever way it went.

A refused operation raises `Refused` with an HTTP status (the CLI maps it to its exit code,
the control API answers with it) and the message both show as is.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

from tether import render
from tether.config import Config
from tether.ids import valid_id
from tether.statuses import FINAL, Status

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Table

    from tether.api import ResponsesClient
    from tether.models import Response
    from tether.pricing import Pricing
    from tether.store import Store

T = TypeVar("T")
StoreRunner = Callable[..., Awaitable[Any]]  # runs a store function: in the CLI's thread, or the daemon's store thread

STATUSES = tuple(sorted(s.value for s in Status))  # as --status takes them
HEARTBEAT_STALE = 30.0  # seconds without a heartbeat before `tether check` fails


class Refused(Exception):
    """An operation refused: `status` 400 (bad input), 404 (not found), 409 (nothing to do),
    502 (the API failed) or 503 (the daemon cannot); `code` names the case for scripts."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def checked_id(rid: str) -> str:
    if not valid_id(rid):
        raise Refused(400, f"invalid response id {rid!r}: ids are letters, digits, '_' and '-'", "invalid_id")
    return rid


def check_policy(config: Config, policy: str, stored: frozenset[str] | set[str] = frozenset()) -> None:
    """A policy named on the command line must be configured, or (to select responses) at
    least be the policy of some stored response: one removed from the config since."""
    if config.policy_named(policy) is not None or policy in stored:
        return
    known = ", ".join(p.name for p in config.policies) or "none configured"
    former = sorted(stored - {p.name for p in config.policies})
    if former:
        known += f"; no longer configured but in the store: {', '.join(former)}"
    raise Refused(400, f"--policy {policy!r}: no such policy (known: {known})", "unknown_policy")


def check_names(config: Config, policy: str | None, account: str | None) -> str:
    """The account to use (the default when none is named)."""
    if policy is not None:
        check_policy(config, policy)
    if account is not None and account not in config.accounts:
        raise Refused(
            400, f"--account {account!r}: no such account (known: {', '.join(config.accounts)})", "unknown_account"
        )
    return account or config.default_account


def check_statuses(statuses: list[str]) -> None:
    for s in statuses:
        if s not in STATUSES:
            raise Refused(400, f"--status {s!r}: expected one of {', '.join(STATUSES)}", "invalid_status")


# ---- reading ------------------------------------------------------------------------


def list_records(
    store: Store,
    config: Config,
    *,
    statuses: list[str],
    active: bool,
    policy: str | None,
    labels: dict[str, str],
    limit: int,
) -> list[dict[str, Any]]:
    """Tracked responses, newest first (`tether ls`). Read as plain rows of the columns a
    record shows, not as ORM objects, which cost several times more (the daemon answers
    `ls` while it tracks and polls)."""
    from sqlalchemy import or_, select

    check_statuses(statuses)
    if limit < 1:
        raise Refused(400, f"limit {limit}: expected at least 1", "invalid_limit")
    responses = store.table("responses")
    query = select(*record_columns(responses)).order_by(responses.c.tracked_at.desc(), responses.c.id)
    if statuses:
        query = query.where(responses.c.status.in_(statuses))
    if active:
        query = query.where(or_(responses.c.status.is_(None), responses.c.status.not_in(FINAL)))
    if policy:
        query = query.where(responses.c.policy == policy)
    with store.engine.connect() as conn:
        if policy and config.policy_named(policy) is None:
            stored = conn.execute(select(responses.c.policy).distinct().where(responses.c.policy.is_not(None)))
            check_policy(config, policy, set(stored.scalars()))
        if not labels:
            query = query.limit(limit)
        rows = conn.execute(query)
        matching = (r for r in rows if all(r.labels.get(k) == v for k, v in labels.items()))
        return [render.record(r) for r in islice(matching, limit)]


def show_record(store: Store, rid: str) -> dict[str, Any]:
    """One response's record with its whole event history (`tether show`)."""
    from sqlalchemy import select

    checked_id(rid)
    responses, events = store.table("responses"), store.table("events")
    with store.engine.connect() as conn:
        row = conn.execute(select(*record_columns(responses)).where(responses.c.id == rid)).first()
        if row is None:
            raise Refused(404, f"{rid} is not tracked (see `tether ls`, or `tether track {rid}`)", "not_tracked")
        query = select(events).where(events.c.response_id == rid).order_by(events.c.at, events.c.id)
        history = [render.event(e) for e in conn.execute(query)]
    return {**render.record(row), "events": history}


def read_events(store: Store, *, rid: str | None, since: float | None, after_id: int) -> list[dict[str, Any]]:
    """Events after the one with id `after_id`, oldest first, each with its "id" (`tether log`)."""
    from sqlalchemy import select

    if rid is not None:
        checked_id(rid)
    events = store.table("events")
    # Time order: an event is written after the moment it records, so the ids of
    # events from the daemon and the CLI do not always follow their times.
    query = select(events).where(events.c.id > after_id).order_by(events.c.at, events.c.id)
    if rid:
        query = query.where(events.c.response_id == rid)
    if since is not None:
        query = query.where(events.c.at >= since)
    with store.engine.connect() as conn:
        return [{"id": ev.id, **render.event(ev)} for ev in conn.execute(query)]


def record_columns(responses: Table) -> list[ColumnElement[Any]]:
    """The columns a record shows (render.record), of the store's table as Store.table reads it."""
    return [*(responses.c[name] for name in render.RECORD_COLUMNS), responses.c["metadata"].label("meta")]


def budget_records(store: Store, config: Config, pricing: Pricing) -> list[dict[str, Any]]:
    """Every budget's window as it stands now (`tether budget`)."""
    from tether import accounting

    with store.reading() as session:
        measured = accounting.measure(session, config, pricing, time.time())
    return [render.budget(m.state) for m in measured]


def daemons(store: Store) -> list[dict[str, Any]] | None:
    """Every daemon on a PostgreSQL store (host, pid, shards, heartbeat age); None on SQLite."""
    if store.sqlite_path is not None:
        return None
    from tether.cluster import survey

    with store.reading() as session:
        return [member.describe() for member in survey(session).members]


def health(store: Store, running: bool | None, now: float) -> tuple[bool, str]:
    """(healthy, what `tether check` says): a daemon runs on the store (`running`: its lock is
    held; None: unknown) and its heartbeat is fresh. On PostgreSQL: at least one daemon does,
    and each is listed."""
    from tether.models import Heartbeat

    if store.sqlite_path is None:
        return cluster_health(store)
    with store.reading() as session:
        beat = session.get(Heartbeat, "daemon")
    if beat is None:
        return False, "unhealthy: no daemon has ever run on this store"
    daemon = f"pid {beat.pid} on {beat.host}"
    if beat.stopped_at is not None:
        return False, f"unhealthy: the daemon ({daemon}) stopped at {render.iso(beat.stopped_at)}; none is running"
    if running is False:
        return False, (
            f"unhealthy: the daemon is not running: its lock on the store is free ({daemon} did not stop "
            f"cleanly; its last heartbeat was {now - beat.beat_at:.0f}s ago)"
        )
    age = now - beat.beat_at
    if age > HEARTBEAT_STALE:
        return False, f"unhealthy: the daemon's last heartbeat was {age:.0f}s ago ({daemon})"
    return True, f"healthy: daemon {daemon}, heartbeat {age:.1f}s ago"


def cluster_health(store: Store) -> tuple[bool, str]:
    from tether.cluster import SHARDS, survey

    with store.reading() as session:
        seen = survey(session)
    running = [m for m in seen.members if m.alive and not m.frozen]
    lines = []
    for m in seen.members:
        if m.stopped_at is not None:
            state = f"stopped at {render.iso(m.stopped_at)}"
        elif not m.alive:
            state = "not running: its session ended without a clean stop"
        else:
            state = "frozen?" if m.frozen else "running"
        budgets = ", budgets" if m.budgets else ""
        lines.append(
            f"  {m.instance}: pid {m.pid} on {m.host}, {state}, {len(m.shards)} shards{budgets}, "
            f"heartbeat {m.age:.1f}s ago"
        )
    if not running:
        return False, "\n".join(["unhealthy: no daemon is running on this store", *lines])
    head = (
        f"healthy: {len(running)} daemon{'s' if len(running) > 1 else ''} running on this store, "
        f"{len(seen.held)} of {SHARDS} shards held"
    )
    return True, "\n".join([head, *lines])


# ---- acting ---------------------------------------------------------------------------


def track_rows(
    config: Config,
    store: Store,
    items: list[tuple[str, dict[str, Any] | None]],
    *,
    account: str,
    policy: str | None,
    labels: dict[str, str],
    origin: str,
) -> list[tuple[Response, bool]]:
    """Store responses as tracked, in one transaction: (row, newly tracked) each."""
    from tether import tracker
    from tether.pricing import Pricing

    pricing = Pricing.from_config(config)
    with tracker.recording(store, origin, time.time()) as rec:
        return [
            tracker.track(
                rec,
                config,
                pricing,
                response_id=rid,
                account=account,
                observed=observed,
                policy_requested=policy,
                labels=labels,
            )
            for rid, observed in items
        ]


async def look_up(client: ResponsesClient, ids: list[str], account: str) -> list[dict[str, Any]]:
    """Each response as the API has it, before tracking it; nothing is tracked unless all are found."""
    import asyncio

    from tether.api import NotFound
    from tether.facts import known_status

    results = await asyncio.gather(*(client.get(i) for i in ids), return_exceptions=True)
    if any(isinstance(r, BaseException) for r in results):
        for reply in results:  # refused below: still, a reply with an odd status is logged as one
            if isinstance(reply, dict):
                known_status(reply)
    missing = [i for i, r in zip(ids, results, strict=True) if isinstance(r, NotFound)]
    if missing:
        raise Refused(404, f"no response {', '.join(missing)} on account {account!r}; nothing was tracked", "not_found")
    failed = [(i, r) for i, r in zip(ids, results, strict=True) if isinstance(r, BaseException)]
    if failed:
        rid, exc = failed[0]
        raise Refused(
            502, f"could not look up {rid}: {exc}; nothing was tracked (retry, or use --no-verify)", "api_failed"
        )
    return list(results)  # type: ignore[arg-type]


def checked_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise Refused(400, 'the request body must be a JSON object with a "model"', "invalid_body")
    return {**body, "background": True}


async def create(client: ResponsesClient, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/responses (sent once, never retried); the created Response object."""
    from tether.api import APIError, TransientError

    try:
        created = await client.create(body)
    except TransientError as exc:
        if not exc.delivered:
            raise Refused(
                502,
                f"the API did not take the request ({exc}): nothing was created; submit it again later",
                "api_failed",
            ) from None
        raise Refused(
            502,
            f"the request failed after it was sent ({exc}): it may have created a response "
            "whose id tether did not get; make sure it did not before you submit again "
            "(tether never sends a create twice)",
            "api_failed_after_sending",
        ) from None
    except APIError as exc:
        status = 400 if exc.status in (400, 422) else 502
        raise Refused(status, f"the API refused the request: {exc}", "api_refused") from None
    rid = created.get("id")
    if not isinstance(rid, str) or not valid_id(rid):
        raise Refused(502, f"the API answered without a usable response id: {str(rid)[:80]!r}", "api_failed")
    return created


async def cancel(
    store: Store,
    config: Config,
    pricing: Pricing,
    client_for: Callable[[str], ResponsesClient],
    rid: str,
    reason: str | None,
    *,
    run: StoreRunner,
    origin: str,
) -> tuple[Response, Refused | None]:
    """A manual cancel: the intent recorded, the API called, its answer recorded (one cancel
    path: tether.cancelling). Returns the row after it, and what failed (None: answered)."""
    from tether import cancelling, tracker
    from tether.models import CancelState, Response

    checked_id(rid)

    def request() -> Response:
        with tracker.recording(store, origin, time.time()) as rec:
            row = rec.session.get(Response, rid)
            if row is None:
                raise Refused(404, f"{rid} is not tracked (see `tether ls`, or `tether track {rid}`)", "not_tracked")
            if row.status in FINAL:
                raise Refused(409, f"{row.id} is already {row.status}; nothing to cancel", "already_finished")
            tracker.request_cancel(rec, row, "manual", note=reason)
            return row

    row = await run(request)
    outcome = await cancelling.send(client_for(row.account), rid, row.status, time.time(), retry=None)

    def record() -> Response:
        with tracker.recording(store, origin, time.time()) as rec:
            row = rec.session.get(Response, rid)
            if row is None:  # forgotten meanwhile: nothing to record it on
                raise Refused(404, f"{rid} is not tracked (see `tether ls`, or `tether track {rid}`)", "not_tracked")
            if outcome.failed is None:
                cancelling.settle(rec, row, outcome, config, pricing)
            else:
                cancelling.record_failure(rec, row, outcome.failed, config)
            return row

    row = await run(record)
    if outcome.answered:
        return row, None
    if row.cancel_state == CancelState.PENDING.value:
        message = f"cancel of {rid} failed: {outcome.failed}; it is recorded and a running daemon retries it"
    else:
        message = f"cancel of {rid} failed: {outcome.failed}; it is now {row.status}: nothing left to cancel"
    return row, Refused(502, message, "cancel_failed")
