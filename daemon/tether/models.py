"""The store's tables and the vocabularies of their columns (statuses: tether/statuses.py).

Times are stored as unix seconds (float, UTC) and rendered as ISO 8601 at the edges.
`responses` holds one row per tracked response: what the API last said plus the
daemon's scheduling state; `events` is append-only, one row per transition.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel


class EventKind(StrEnum):
    TRACKED = "tracked"
    STATUS = "status"
    LIMIT_EXCEEDED = "limit_exceeded"
    CANCEL_REQUESTED = "cancel_requested"
    CANCEL_FAILED = "cancel_failed"
    WARNED = "warned"
    LOST = "lost"
    PRICE_UNKNOWN = "price_unknown"  # finished, but its model has no price: cost unknown
    BUDGET_WARN = "budget_warn"  # a budget crossed a warn_at threshold (no response_id)
    BUDGET_EXCEEDED = "budget_exceeded"  # spent + committed passed a budget's limit


class CancelState(StrEnum):
    NONE = "none"
    PENDING = "pending"  # decided and recorded; the API has not acknowledged it yet
    SETTLED = "settled"  # nothing more to send: the API answered, or the response ended


class Response(SQLModel, table=True):
    __tablename__ = "responses"

    id: str = Field(primary_key=True)
    account: str
    status: str | None = Field(default=None, index=True)
    model: str | None = None
    background: bool | None = None
    policy: str | None = None  # the policy that applies now
    policy_requested: str | None = None  # named at track time (--policy)
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # `metadata` is reserved by SQLAlchemy's declarative base.
    meta: dict[str, str] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    created_at: float | None = None  # server clock
    tracked_at: float = Field(index=True)  # `tether ls` reads newest first
    started_at: float | None = None  # when tether first saw it in_progress (for cost estimates)
    deadline_at: float | None = None
    deadline_kind: str | None = None  # max_queued | max_runtime
    limits_hit: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    last_polled_at: float | None = None
    polls: int = 0
    not_found: int = 0  # consecutive 404s
    next_poll_at: float | None = Field(default=None, index=True)
    poll_interval: float | None = None
    cancel_state: str = CancelState.NONE.value
    cancel_requested_at: float | None = None
    cancel_reason: str | None = None
    cancel_attempts: int = 0
    confirm_until: float | None = None
    finished_at: float | None = Field(default=None, index=True)
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    incomplete_reason: str | None = None
    usage: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    max_output_tokens: int | None = None
    service_tier: str | None = None
    cost_usd: float | None = None
    cost_estimated: bool = False


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_response_id_id", "response_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    response_id: str | None = None  # None for budget events
    budget: str | None = None
    kind: str
    from_status: str | None = None
    to_status: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    origin: str = "cli"  # daemon | cli: the daemon picks up what others wrote
    instance: str | None = None  # the daemon that wrote it (on a PostgreSQL store; docs/cluster.md)


class BudgetMark(SQLModel, table=True):
    """A threshold already reported in one budget window: each is logged once per window."""

    __tablename__ = "budget_marks"

    budget: str = Field(primary_key=True)
    window_start: float = Field(primary_key=True)
    mark: str = Field(primary_key=True)  # "warn:0.8" | "exceeded"
    at: float


class Heartbeat(SQLModel, table=True):
    __tablename__ = "heartbeat"

    name: str = Field(primary_key=True)  # "daemon"
    pid: int
    host: str
    started_at: float
    beat_at: float
    # The last event id whose log line the daemon has emitted: events the CLI wrote while
    # no daemon ran are logged at the next start, and none twice.
    event_cursor: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Set by a clean stop, once everything is written; a running daemon's heartbeat clears it.
    stopped_at: float | None = None


class Daemon(SQLModel, table=True):
    """A daemon on a PostgreSQL store (docs/cluster.md): a row while it runs, and a while after."""

    __tablename__ = "daemons"

    instance: str = Field(primary_key=True)  # host-pid-random: unique among every daemon ever started
    host: str
    pid: int
    member: int  # its membership lock's key: held while its lock session lives
    lock_pid: int  # pg_backend_pid() of its lock session, which others may end when it freezes
    started_at: float
    heartbeat_at: float  # the database server's clock: every daemon compares it to the same clock
    takeover: float  # its [cluster] takeover: its lease, so when the others may judge it frozen
    shards: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    budgets: bool = False  # holds budget enforcement
    stopped_at: float | None = None  # a clean stop; the row is deleted a while later


# The tables as SQLAlchemy Core sees them, for bulk statements (SQLModel leaves `__table__` untyped).
RESPONSES = SQLModel.metadata.tables[Response.__tablename__]
EVENTS = SQLModel.metadata.tables[Event.__tablename__]
