"""Several daemons on one PostgreSQL store: membership, shards and the lease (docs/cluster.md).

Each daemon holds a *lock session*: a connection of its own on which it takes session advisory
locks, its membership lock and one per shard it works, and on which it runs every write (the
store thread is pinned to it, `Store.pin_writer`). A daemon whose session ends (SIGKILL, a lost
network, a `pg_terminate_backend` by another) has lost its locks, and none of its writes can
commit after that: PostgreSQL itself fences them.

The API cannot be fenced by the database, so cancels are fenced by a *lease*: a heartbeat
thread writes `daemons.heartbeat_at` (the server's clock) every `beat_every`, and each write
that lands extends the lease to `stale_after` (minus a margin) after the moment it was sent.
Another daemon ends a session only when that heartbeat is older than `stale_after` (checked
under the row's lock, so a heartbeat and its end never cross), so a daemon whose lease is
still running cannot have been replaced. No cancel leaves once the lease has run out
(`Cluster.fence`, checked just before each request is sent).
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from tether.logs import log
from tether.store import PG_LOCKS, Store

SHARDS = 64  # fixed: every daemon must map an id to the same shard
PG_SHARDS = 0x7E7F  # advisory lock class of the shards: (PG_SHARDS, shard)
PG_MEMBERS = 0x7E80  # (PG_MEMBERS, member): a daemon's membership, held by its lock session
PG_BUDGETS = 3  # (PG_LOCKS, PG_BUDGETS): budget enforcement, held by one daemon
DATABASE = "(SELECT oid FROM pg_database WHERE datname = current_database())"
NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"  # the server's clock: one clock for every daemon
STALE = 0.6  # a heartbeat older than this fraction of its daemon's takeover is a frozen daemon's
TERMINATE_WAIT_MS = 5000  # how long ending a frozen daemon's session waits for its backend to exit

# A response's shard, in SQL: the same number as `shard_of` (the first 32 bits of the id's md5).
SHARD_SQL = f"((('x' || substr(md5(id), 1, 8))::bit(32)::bigint) % {SHARDS})"


def shard_of(response_id: str) -> int:
    return int(hashlib.md5(response_id.encode()).hexdigest()[:8], 16) % SHARDS


def fair_share(live: int) -> int:
    return math.ceil(SHARDS / max(1, live))


class Fenced(Exception):
    """This daemon's lease ran out: it may have been replaced, so nothing is sent."""


@dataclass(frozen=True)
class Timing:
    """Every interval follows from `[cluster] takeover`: a daemon found gone or frozen has its
    shards taken over within it (docs/cluster.md, "Timing")."""

    takeover: float

    @property
    def beat_every(self) -> float:
        return self.takeover / 10

    @property
    def scan_every(self) -> float:
        return self.takeover / 10

    @property
    def stale_after(self) -> float:
        """A heartbeat this old is a frozen daemon's: the others end its session."""
        return self.takeover * STALE

    @property
    def lease(self) -> float:
        """How long after a heartbeat was sent its daemon may still act: a margin short of `stale_after`."""
        return self.stale_after * 0.9

    @property
    def forget_after(self) -> float:
        """A gone daemon's row is deleted this long after its last heartbeat (once its shards are taken)."""
        return self.takeover * 3


@dataclass(frozen=True)
class Member:
    """A row of `daemons` as a survey sees it."""

    instance: str
    host: str
    pid: int
    member: int
    shards: tuple[int, ...]
    budgets: bool
    started_at: float
    age: float  # seconds since its last heartbeat, on the server's clock
    alive: bool  # its lock session still holds its membership lock
    takeover: float  # its own [cluster] takeover: it is judged frozen by its own lease, not the judge's
    stopped_at: float | None  # a clean stop

    @property
    def frozen(self) -> bool:
        return self.alive and self.age > Timing(self.takeover).stale_after

    def describe(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "host": self.host,
            "pid": self.pid,
            "shards": len(self.shards),
            "budgets": self.budgets,
            "heartbeat_age": round(self.age, 2),
            "alive": self.alive,
            "stopped_at": self.stopped_at,
        }


@dataclass(frozen=True)
class Survey:
    members: list[Member]
    held: frozenset[int]  # shards whose lock some session holds
    budgets_held: bool


MEMBERS = f"""
SELECT d.instance, d.host, d.pid, d.member, d.shards, d.budgets, d.started_at, d.takeover, d.stopped_at,
       {NOW} - d.heartbeat_at AS age,
       EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {PG_MEMBERS}
               AND l.objid::bigint = d.member AND l.objsubid = 2 AND l.database = {DATABASE}) AS alive
FROM daemons d ORDER BY d.started_at
"""
HELD = f"""
SELECT l.classid::int, l.objid::int FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.database = {DATABASE}
  AND (l.classid = {PG_SHARDS} OR (l.classid = {PG_LOCKS} AND l.objid = {PG_BUDGETS}))
"""


def survey(session: Session) -> Survey:
    """Every daemon of the store, and which shards are held, as the server sees them now."""
    conn = session.connection()
    members = [
        Member(
            instance=row.instance,
            host=row.host,
            pid=row.pid,
            member=row.member,
            shards=tuple(sorted(row.shards or ())),
            budgets=bool(row.budgets),
            started_at=row.started_at,
            age=max(0.0, row.age),
            alive=bool(row.alive),
            takeover=row.takeover,
            stopped_at=row.stopped_at,
        )
        for row in conn.execute(text(MEMBERS))
    ]
    locks = conn.execute(text(HELD)).all()
    held = frozenset(objid for classid, objid in locks if classid == PG_SHARDS)
    return Survey(members, held, any(classid == PG_LOCKS for classid, _ in locks))


class Cluster:
    """This daemon's membership: its lock session, its shards, its lease and its heartbeat thread."""

    def __init__(
        self, store: Store, lock_conn: Connection, takeover: float, clock: Callable[[], float] = time.monotonic
    ):
        self.store = store
        self.conn = lock_conn
        self.timing = Timing(takeover)
        self.clock = clock
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.instance = f"{self.host}-{self.pid}-{secrets.token_hex(3)}"
        self.member = 0
        self.owned: frozenset[int] = frozenset()  # replaced whole on the event loop; read by the store thread
        self.budgets = False
        self.lease_until = 0.0
        self.lost = False
        self.on_lost: Callable[[], object] = lambda: None  # called from the heartbeat thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beating = threading.Lock()
        self._unreachable = False

    # ---- joining and leaving (the lock session, before the store thread is pinned to it) ----

    def join(self) -> None:
        """Take a membership lock and register this daemon's row; its lease starts now."""
        conn = self.conn
        while True:
            self.member = secrets.randbelow(2**31 - 1) + 1
            if conn.execute(text(f"SELECT pg_try_advisory_lock({PG_MEMBERS}, :m)"), {"m": self.member}).scalar():
                break
        sent = self.clock()
        conn.execute(
            text(
                "INSERT INTO daemons (instance, host, pid, member, lock_pid, started_at, heartbeat_at, takeover, shards, "
                f"budgets) VALUES (:instance, :host, :pid, :member, pg_backend_pid(), {NOW}, {NOW}, :takeover, '[]', false)"
            ),
            {
                "instance": self.instance,
                "host": self.host,
                "pid": self.pid,
                "member": self.member,
                "takeover": self.timing.takeover,
            },
        )
        conn.commit()
        self.lease_until = sent + self.timing.lease
        # Beating from now on, not from the daemon's start: a slow start must not look frozen.
        self._thread = threading.Thread(target=self._beat_forever, name="tether-heartbeat", daemon=True)
        self._thread.start()

    def start(self, on_lost: Callable[[], object]) -> None:
        """`on_lost` is called (from the heartbeat thread) once this daemon finds it was replaced."""
        with self._beating:
            self.on_lost = on_lost
            if self.lost:
                on_lost()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def leave(self) -> None:
        """On the store thread, at a clean stop: this daemon's row says so (its locks go with its
        session); it is deleted `forget_after` later."""
        with self.store.writing() as session:
            session.execute(
                text(
                    f"UPDATE daemons SET stopped_at = {NOW}, lock_pid = 0, shards = '[]', budgets = false "
                    "WHERE instance = :i"
                ),
                {"i": self.instance},
            )

    # ---- the lease --------------------------------------------------------------------

    def lease_left(self) -> float:
        return self.lease_until - self.clock()

    def fence(self) -> None:
        """Just before a cancel is sent: raise Fenced unless the lease runs."""
        if self.lost or self.lease_left() <= 0:
            raise Fenced(f"daemon {self.instance}: its lease ran out; it may have been replaced")

    def beat(self) -> bool:
        """One heartbeat, on a connection of its own (never queued behind the store thread's
        writes): True when it landed and the lease is extended. A heartbeat that finds its
        row gone or its membership lock free means this daemon was replaced: `lost`."""
        with self._beating:
            if self.lost:
                return False
            sent = self.clock()
            try:
                with self.store.engine.connect() as conn:
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                    landed = conn.execute(
                        text(
                            f"UPDATE daemons SET heartbeat_at = {NOW}, shards = CAST(:shards AS json), budgets = :b "
                            "WHERE instance = :i AND lock_pid <> 0 AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' "
                            f"AND l.granted AND l.classid = {PG_MEMBERS} AND l.objid::bigint = :m AND l.objsubid = 2 "
                            f"AND l.database = {DATABASE} AND l.pid = daemons.lock_pid) RETURNING 1"
                        ),
                        {"shards": json_list(self.owned), "b": self.budgets, "i": self.instance, "m": self.member},
                    ).scalar()
            except OperationalError as exc:
                if not self._unreachable:  # once: it is tried again every beat
                    self._unreachable = True
                    log.warning(
                        "daemon.heartbeat_failed",
                        error=" ".join(str(getattr(exc, "orig", None) or exc).split()),
                        hint="the database does not answer; no cancel leaves once the lease is over",
                    )
                return False
            self._unreachable = False
            if landed:
                self.lease_until = sent + self.timing.lease
                return True
            self.lost = True
            self.lease_until = 0.0
            self.on_lost()
            return False

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.timing.beat_every):
            self.beat()

    # ---- the others (on pooled connections, off the event loop) -----------------------------

    def survey(self) -> Survey:
        with self.store.reading() as session:
            return survey(session)

    def end_session(self, member: Member) -> bool:
        """End a frozen daemon's lock session, if its heartbeat is still stale under its row's
        lock; True once its backend has exited. Its row is marked ended (lock_pid 0) in the same
        transaction: a heartbeat of its waiting on that lock then finds the row changed, and
        fails, rather than extend the lease of a daemon whose session is gone."""
        with self.store.engine.connect() as conn:
            with conn.begin():
                stale = conn.execute(
                    text(
                        "SELECT member FROM daemons WHERE instance = :i AND lock_pid <> 0 "
                        f"AND heartbeat_at < {NOW} - takeover * :stale FOR UPDATE"
                    ),
                    {"i": member.instance, "stale": STALE},
                ).scalar()
                if stale is None:
                    return False
                ended = conn.execute(
                    text(
                        f"SELECT bool_and(pg_terminate_backend(l.pid, {TERMINATE_WAIT_MS})) FROM pg_locks l "
                        f"WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {PG_MEMBERS} "
                        f"AND l.objid::bigint = :m AND l.objsubid = 2 AND l.database = {DATABASE}"
                    ),
                    {"m": stale},
                ).scalar()
                conn.execute(text("UPDATE daemons SET lock_pid = 0 WHERE instance = :i"), {"i": member.instance})
                return bool(ended)

    def disown(self, member: Member, shards: list[int]) -> None:
        """Strike shards taken over from a gone or frozen daemon's row: each is reported once."""
        with self.store.engine.connect() as conn:
            with conn.begin():
                conn.execute(
                    text(
                        "UPDATE daemons SET shards = (SELECT coalesce(json_agg(x.value::int), '[]'::json) "
                        "FROM json_array_elements_text(daemons.shards) AS x WHERE x.value::int <> ALL(CAST(:s AS int[]))) "
                        "WHERE instance = :i"
                    ),
                    {"i": member.instance, "s": shards},
                )

    def forget(self, member: Member) -> None:
        """Delete the row of a daemon whose session is gone."""
        with self.store.engine.connect() as conn:
            with conn.begin():
                conn.execute(
                    text(
                        "DELETE FROM daemons WHERE instance = :i AND NOT EXISTS (SELECT 1 FROM pg_locks l "
                        f"WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {PG_MEMBERS} "
                        f"AND l.objid::bigint = daemons.member AND l.objsubid = 2 AND l.database = {DATABASE})"
                    ),
                    {"i": member.instance},
                )

    # ---- shards (store functions: on the store thread, in its transaction, on the lock session) ----

    def take(self, shards: list[int]) -> list[int]:
        """Try each shard's lock; the ones taken. A writer's transaction: it starts after every
        earlier writer committed, so what a daemon that let a shard go wrote is visible."""
        if not shards:
            return []
        with self.store.writing() as session:
            return list(
                session.execute(
                    text(f"SELECT s FROM unnest(CAST(:s AS int[])) AS s WHERE pg_try_advisory_lock({PG_SHARDS}, s)"),
                    {"s": shards},
                ).scalars()
            )

    def give_back(self, shards: list[int]) -> None:
        with self.store.writing() as session:
            session.execute(
                text(f"SELECT pg_advisory_unlock({PG_SHARDS}, s) FROM unnest(CAST(:s AS int[])) AS s"), {"s": shards}
            )

    def take_budgets(self) -> bool:
        with self.store.writing() as session:
            return bool(session.execute(text(f"SELECT pg_try_advisory_lock({PG_LOCKS}, {PG_BUDGETS})")).scalar())


def json_list(shards: frozenset[int]) -> str:
    return "[" + ",".join(str(s) for s in sorted(shards)) + "]"
