"""The daemon's named queries: every read and write of the store it makes, run on the store
thread (`writer.StoreWriter`), and the statements behind them."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Text, and_, bindparam, cast, func, insert, literal_column, or_, select, update
from sqlmodel import Session, col

from tether import cancelling, tracker
from tether.cancelling import Outcome
from tether.cluster import SHARD_SQL
from tether.daemon.records import PollMark
from tether.models import RESPONSES, CancelState, Event, Heartbeat, Response
from tether.policies import Act, decide
from tether.statuses import ACTIVE

if TYPE_CHECKING:
    from tether.daemon.state import State

LOAD_PAGE = 5000  # open responses read per step at start
PICKUP_PAGE = 1000  # events read per pass: a long backlog is taken in bounded steps


class Created(NamedTuple):
    """A response created through the daemon (the proxy, `submit`), to track."""

    response: dict[str, Any]
    account: str
    policy: str | None
    labels: dict[str, str]


class Observed(NamedTuple):
    """What a look (GET) saw of a response whose row it changes."""

    rid: str
    observed: dict[str, Any]
    reason: str
    mark: PollMark


class ScheduledRow(NamedTuple):
    """What Active.loaded reads of a response, the metadata as its JSON text (parsed there).
    Read by name as fast as by position: a SQLAlchemy row's attribute lookup made loading
    100,000 records take half as long again."""

    id: str
    account: str
    policy: str | None
    status: str | None
    deadline_at: float | None
    next_poll_at: float | None
    poll_interval: float | None
    cancel_state: str
    cancel_attempts: int
    confirm_until: float | None
    model: str | None
    created_at: float | None
    meta: str


SCHEDULING_COLUMNS = (
    *(RESPONSES.c[name] for name in ScheduledRow._fields if name != "meta"),
    cast(RESPONSES.c["metadata"], Text).label("meta"),
)
# What a deadline decision (`Queries.decide`) reads, and what it may change and writes back.
DECISION_READS = tuple(RESPONSES.c[name] for name in ("id", "status", "created_at", "confirm_until", "policy"))
DECIDED = (
    "deadline_at",
    "deadline_kind",
    "limits_hit",
    "cancel_state",
    "cancel_requested_at",
    "cancel_reason",
    "cancel_attempts",
)
DECISION_WRITES = tuple(RESPONSES.c[name] for name in DECIDED)
# A decision's row (`decision_rows`): a plain object with a `Response` row's attribute names,
# which the tracker's functions take as they take a row.
DecisionRow = Any
DECIDED_UPDATE = (
    update(RESPONSES)
    .where(RESPONSES.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}") for name in DECIDED})
)


class Queries:
    """The store functions of the daemon; each runs on the store thread, in a transaction of
    the writer's batch. They read the config in force from the daemon's shared state."""

    def __init__(self, state: State) -> None:
        self.state = state

    # ---- start-up and pickup ----------------------------------------------------

    def read_event_cursor(self) -> int:
        with self.state.store.reading() as session:
            beat = session.get(Heartbeat, "daemon")
            return beat.event_cursor if beat is not None else 0

    def read_open_rows(self, after: str, shards: list[int] | None = None) -> list[ScheduledRow]:
        """The next page of open responses; with `shards`, only theirs."""
        with self.state.store.reading() as session:
            return open_rows(session, after, shards)

    def read_last_event(self) -> int:
        with self.state.store.reading() as session:
            return session.execute(select(func.max(Event.id))).scalar() or 0

    def read_events_by_others(self, after: int) -> tuple[list[Event], int]:
        """The next page of events others wrote after `after` (the CLI, other daemons), and
        the id to resume from."""
        me = self.state.store.instance
        others = col(Event.origin) != "daemon"
        if me is not None:
            others = or_(others, and_(col(Event.instance).is_not(None), col(Event.instance) != me))
        with self.state.store.reading() as session:
            last = session.execute(select(func.max(Event.id))).scalar() or after
            events = list(
                session.execute(
                    select(Event)
                    .where(col(Event.id) > after, col(Event.id) <= last, others)
                    .order_by(col(Event.id))
                    .limit(PICKUP_PAGE)
                ).scalars()
            )
            if len(events) == PICKUP_PAGE:
                last = events[-1].id
            return events, last

    def reapply_policies(self, ids: list[str], cursor: int | None = None) -> list[Response]:
        """Resolve policies again with this daemon's config (and move the event cursor): for
        the responses this daemon works, others' are left to theirs."""
        with self._recording() as rec:
            rows = list(rows_by_id(rec.session, self._owned(ids)).values())
            for row in rows:
                tracker.refresh_policy(row, self.state.config)
            beat = rec.session.get(Heartbeat, "daemon")
            if cursor is not None and beat is not None and self.state.cluster is None:
                beat.event_cursor = cursor
            return rows

    def write_heartbeat(self, event_cursor: int) -> None:
        with self.state.store.writing() as session:
            session.merge(
                Heartbeat(
                    name="daemon",
                    pid=os.getpid(),
                    host=socket.gethostname(),
                    started_at=self.state.started_at,
                    beat_at=self.state.clock(),
                    event_cursor=event_cursor,
                )
            )

    def write_stopped(self) -> None:
        """Mark the heartbeat stopped: `tether check` then says so at once, not when it goes stale."""
        with self.state.store.writing() as session:
            session.execute(
                update(Heartbeat).where(col(Heartbeat.name) == "daemon").values(stopped_at=self.state.clock())
            )

    # ---- tracking ---------------------------------------------------------------

    def write_created(self, items: list[Created]) -> list[tuple[Response, bool]]:
        """Track responses just created (`StoreWriter.run_grouped`: the creates of a batch
        together); (row, newly tracked) each. The new rows are plain objects (`tracker.new_row`),
        inserted with one statement."""
        state = self.state
        with self._recording() as rec:
            known: dict[str, Response] = rows_by_id(rec.session, [item.response["id"] for item in items])
            tracked, new = [], []
            for item in items:
                rid = item.response["id"]
                if (row := known.get(rid)) is not None:
                    tracked.append((row, False))
                    continue
                known[rid] = row = tracker.new_row(
                    rec,
                    state.config,
                    state.pricing,
                    response_id=rid,
                    account=item.account,
                    observed=item.response,
                    policy_requested=item.policy,
                    labels=item.labels,
                    plain=True,
                )
                new.append(row)
                tracked.append((row, True))
            if new:
                rec.session.execute(insert(RESPONSES), [tracker.row_values(row) for row in new])
            return tracked

    # ---- polls ----------------------------------------------------------------

    def write_observations(self, items: list[Observed]) -> list[Response | None]:
        """Record what looks saw (`StoreWriter.run_grouped`: the looks of a batch together, their
        rows read with one query and written with one flush); each one's row, None if not stored
        or if its shard is no longer this daemon's."""
        state = self.state
        owned = [item for item in items if state.owns(item.rid)]
        with self._recording() as rec:
            rows = rows_by_id(rec.session, list({item.rid for item in owned}))
            for rid, observed, reason, mark in owned:
                if (row := rows.get(rid)) is not None:
                    tracker.observe(
                        rec, row, observed, state.config, state.pricing, reason=reason, asked_at=mark.last_polled_at
                    )
                    apply_mark(row, mark)
            return [rows.get(item.rid) for item in items]

    def write_not_found(self, rid: str, mark: PollMark) -> Response | None:
        if not self.state.owns(rid):
            return None
        with self._recording() as rec:
            row = rec.session.get(Response, rid)
            if row is None:
                return None
            apply_mark(row, mark)
            cancelling.record_not_found(rec, row, self.state.config.polling.lost_after)
            return row

    def write_marks(self, marks: dict[str, PollMark], confirmed: dict[str, float]) -> None:
        owns = self.state.owns
        marks = {rid: mark for rid, mark in marks.items() if owns(rid)}
        confirmed = {rid: until for rid, until in confirmed.items() if owns(rid)}
        table = RESPONSES
        statement = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values(
                polls=table.c.polls + bindparam("b_polls"),
                last_polled_at=bindparam("b_last"),
                next_poll_at=bindparam("b_next"),
                poll_interval=bindparam("b_interval"),
                not_found=0,
            )
        )
        params = [
            {
                "b_id": rid,
                "b_polls": m.polls,
                "b_last": m.last_polled_at,
                "b_next": m.next_poll_at,
                "b_interval": m.interval,
            }
            for rid, m in marks.items()
        ]
        with self.state.store.writing() as session:
            if params:
                session.connection().execute(statement, params)
            if confirmed:
                # A window confirmed is cleared, unless a newer one (a later cancel) replaced it.
                session.connection().execute(
                    update(table)
                    .where(table.c.id == bindparam("b_id"), table.c.confirm_until <= bindparam("b_until"))
                    .values(confirm_until=None),
                    [{"b_id": rid, "b_until": until} for rid, until in confirmed.items()],
                )

    # ---- deadlines and cancels --------------------------------------------------

    def write_decisions(self, items: list[tuple[str, bool]], at: float) -> list[tuple[DecisionRow | None, bool]]:
        """Record the limits exceeded at `at`; returns (row, whether to send a cancel) per item.

        Without a fresh look, max_queued is not acted on: `queued` may be stale, and a
        response that has started must not be cancelled for it. The deadline is checked
        again after the next poll. max_runtime holds for any status not terminal, and the
        cancel's own answer tells if the response ended meanwhile.

        The cancels of a burst (every deadline of one second) wait for this transaction, so
        the rows are read and written with two plain statements, not as ORM objects, which
        cost several times more; and it is written and committed ahead of the deadline
        (`state.DECISION_LEAD`), its events dated `at`, so that the cancels wait for nothing at `at`.
        """
        with tracker.recording(self.state.store, "daemon", max(at, self.state.clock())) as rec:
            rows = decision_rows(rec.session, self._owned([rid for rid, _ in items]))
            decided = [self.decide(rec, rows.get(rid), looked) for rid, looked in items]
            write_decided(rec.session, [row for row, _ in decided if row is not None])
        return decided

    def decide(self, rec: tracker.Recorder, row: DecisionRow | None, looked: bool) -> tuple[DecisionRow | None, bool]:
        if row is None:
            return None, False
        policy = self.state.config.policy_named(row.policy) if row.policy else None
        decision = decide(policy, row.status, row.created_at, rec.now, frozenset(row.limits_hit))
        if isinstance(decision, Act) and decision.limit == "max_queued" and not looked:
            return row, False
        if not isinstance(decision, Act):
            tracker.refresh_deadline(row, policy)
            return row, False
        tracker.mark_limit(rec, row, limit=decision.limit, action=decision.action, deadline=decision.deadline)
        cancel = decision.action == "cancel" and row.cancel_state == CancelState.NONE.value
        if cancel:
            tracker.request_cancel(rec, row, decision.limit)
        elif decision.action == "warn":
            tracker.warn(rec, row, limit=decision.limit)
        tracker.refresh_deadline(row, policy)
        return row, cancel

    def write_cancels_settled(self, items: list[tuple[str, Outcome]]) -> list[Response | None]:
        """Record the outcomes of cancels, answers and failures to retry: one transaction for a burst."""
        with self._recording() as rec:
            ids = [rid for rid, _ in items]
            rows = rows_by_id(rec.session, self._owned(ids))
            for rid, outcome in items:
                if (row := rows.get(rid)) is None:
                    continue
                if outcome.failed is None:
                    cancelling.settle(rec, row, outcome, self.state.config, self.state.pricing)
                else:
                    cancelling.record_failure(rec, row, outcome.failed, self.state.config)
            return [rows.get(rid) for rid in ids]

    def _owned(self, ids: list[str]) -> list[str]:
        """The ids of responses this daemon works: a shard given up since a job was queued is
        another daemon's by the time it runs (tether/cluster.py)."""
        return ids if self.state.cluster is None else [rid for rid in ids if self.state.owns(rid)]

    def _recording(self):
        return tracker.recording(self.state.store, "daemon", self.state.clock())


def rows_by_id(session: Session, ids: list[str]) -> dict[str, Response]:
    """The rows of these responses (one query), by id; ids not in the store are absent."""
    return {row.id: row for row in session.execute(select(Response).where(col(Response.id).in_(ids))).scalars()}


def open_rows(session: Session, after: str, shards: list[int] | None = None) -> list[ScheduledRow]:
    """The next page of open responses (by id, after `after`; with `shards`, only theirs),
    as rows of SCHEDULING_COLUMNS: only what scheduling needs, as plain rows, not ORM
    objects, so 100,000 load in a fraction of the time and memory."""
    conditions = [
        col(Response.id) > after,
        or_(
            col(Response.status).is_(None),
            col(Response.status).in_(ACTIVE),
            col(Response.cancel_state) == CancelState.PENDING.value,
            col(Response.confirm_until).is_not(None),  # a window not confirmed yet, even if over
        ),
    ]
    if shards is not None:
        conditions.append(literal_column(SHARD_SQL).in_(shards))
    query = select(*SCHEDULING_COLUMNS).where(*conditions).order_by(col(Response.id)).limit(LOAD_PAGE)
    rows = session.connection().execute(query).all()
    return [ScheduledRow._make(row) for row in rows]


def decision_rows(session: Session, ids: list[str]) -> dict[str, DecisionRow]:
    """What a deadline decision needs of these rows, as plain objects with the rows'
    attribute names (the tracker's functions take them like rows); by id."""
    query = select(*DECISION_READS, *DECISION_WRITES).where(col(Response.id).in_(ids))
    return {row.id: SimpleNamespace(**row._mapping) for row in session.execute(query)}


def write_decided(session: Session, rows: list[DecisionRow]) -> None:
    """Write back what `decision_rows` read and a decision may have changed, in one statement."""
    if rows:
        params = [{"b_id": row.id, **{f"b_{name}": getattr(row, name) for name in DECIDED}} for row in rows]
        session.execute(DECIDED_UPDATE, params)


def apply_mark(row: Response, mark: PollMark) -> None:
    row.polls += mark.polls
    row.last_polled_at = mark.last_polled_at
    row.next_poll_at = mark.next_poll_at
    row.poll_interval = mark.interval
