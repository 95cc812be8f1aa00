"""What the daemon's parts share: the config in force, the API clients, the store thread, the
active records and the two heaps that schedule them."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import OperationalError

from tether.api import AccountError, AccountPaused, APIError, ResponsesClient
from tether.cluster import Cluster, shard_of
from tether.config import Config
from tether.daemon.queries import Queries
from tether.daemon.records import Active
from tether.daemon.writer import StoreWriter
from tether.logs import log
from tether.metrics import Metrics
from tether.models import CancelState, Response
from tether.pricing import Pricing
from tether.stats import Stats
from tether.statuses import is_active
from tether.store import Store

# Deadlines are taken up this long before they fall due: their decisions are written and
# committed ahead, so that at the deadline the cancels wait for nothing.
DECISION_LEAD = 0.1


class State:
    """Shared by reference: a reload replaces `config`, `pricing` and `clients` here, and
    every part sees the new ones.

    The heaps: `polls` holds (due, seq, id); `timers` holds deadlines and cancel retries as
    (fires at, seq, id, kind, due). A record is pushed again only when its due time changed
    (`schedule`); an entry whose record moved on is skipped when it comes up.
    """

    def __init__(
        self, config: Config, store: Store, clock: Callable[[], float], cluster: Cluster | None = None
    ) -> None:
        self.config = config
        self.cluster = cluster  # None: a SQLite store, worked by this daemon alone
        self.pricing = Pricing.from_config(config)
        self.clients: dict[str, ResponsesClient] = {}
        self.store = store
        self.clock = clock
        self.started_at = clock()
        self.rng = random.Random()
        self.stats = Stats()
        self.active: dict[str, Active] = {}
        self.metrics = Metrics(lambda: self.active.values(), cluster.instance if cluster is not None else None)
        self.writer = StoreWriter(store, self._store_failed, self.metrics.store_transactions.inc)
        self.queries = Queries(self)
        self.polls: list[tuple[float, int, str]] = []
        self.timers: list[tuple[float, int, str, str, float]] = []
        self._seq = itertools.count()
        self.poll_wake = asyncio.Event()
        self.timer_wake = asyncio.Event()
        self.budget_wake = asyncio.Event()
        self.confirmed: dict[str, float] = {}  # confirmation windows seen through, not yet cleared
        # Pending cancels taken over from another daemon, which may have sent them: looked at first.
        self.look_first: set[str] = set()
        self.stop = asyncio.Event()
        self.failure: BaseException | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    # ---- scheduling -------------------------------------------------------------

    def owns(self, response_id: str) -> bool:
        """Is this response this daemon's to work (its shard is held here)?"""
        return self.cluster is None or shard_of(response_id) in self.cluster.owned

    def adopt(self, row: Response) -> None:
        """Start (or refresh) scheduling a response read from the store, if it is this daemon's."""
        if not self.owns(row.id):
            return
        rec = self.active.get(row.id)
        if rec is None:
            self.add(Active.from_row(row))
        else:
            rec.refresh(row)
            self.resume(rec)

    def add(self, rec: Active) -> None:
        self.active[rec.id] = rec
        self.resume(rec)

    def resume(self, rec: Active) -> None:
        """Schedule what the store says is due: a pending cancel and a poll at once if none is set."""
        now = self.clock()
        if rec.cancel_state == CancelState.PENDING.value and rec.next_cancel_at is None:
            rec.next_cancel_at = now
        if rec.next_poll_at is None and not rec.finished(now):
            rec.next_poll_at = now
        self.schedule(rec)

    def schedule(self, rec: Active) -> None:
        now = self.clock()
        if rec.finished(now) and not (rec.polling or rec.enforcing):
            self.active.pop(rec.id, None)
            if rec.confirm_until is not None:
                self.confirmed[rec.id] = rec.confirm_until  # the store forgets it at the next flush
            return
        if rec.next_poll_at is not None and rec.queued_poll != rec.next_poll_at:
            rec.queued_poll = rec.next_poll_at
            self._push_poll(rec.next_poll_at, rec.id)
        if rec.deadline_at is not None and rec.queued_deadline != rec.deadline_at:
            rec.queued_deadline = rec.deadline_at
            self._push_timer(rec.deadline_at, rec.id, "deadline")
        pending = rec.cancel_state == CancelState.PENDING.value
        if pending and rec.next_cancel_at is not None and rec.queued_cancel != rec.next_cancel_at:
            rec.queued_cancel = rec.next_cancel_at
            self._push_timer(rec.next_cancel_at, rec.id, "cancel")

    def _push_poll(self, due: float, rid: str) -> None:
        if not self.polls or due < self.polls[0][0]:
            self.poll_wake.set()
        heapq.heappush(self.polls, (due, next(self._seq), rid))

    def _push_timer(self, due: float, rid: str, kind: str) -> None:
        fire_at = due - DECISION_LEAD if kind == "deadline" else due
        if not self.timers or fire_at < self.timers[0][0]:
            self.timer_wake.set()
        heapq.heappush(self.timers, (fire_at, next(self._seq), rid, kind, due))

    async def sleep(self, wake: asyncio.Event, delay: float | None) -> None:
        """Until `wake` is set or `delay` seconds have passed (None: no time limit)."""
        if delay is not None and delay <= 0:
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except TimeoutError:
            pass

    async def until(self, at: float) -> None:
        while (left := at - self.clock()) > 0:
            await asyncio.sleep(left)

    async def lease(self) -> bool:
        """May this daemon act on its shards now? Always alone on its store; with others, while
        its lease runs, renewed here by a heartbeat when it is about to run out."""
        cluster = self.cluster
        if cluster is None:
            return True
        if cluster.lease_left() > cluster.timing.beat_every:
            return True
        return await asyncio.to_thread(cluster.beat)

    # ---- what the parts report ----------------------------------------------------

    def spawn(self, coro: Any, name: str) -> None:
        """Run `coro` as a task that shutdown waits for (`Daemon._drain`)."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def note_spend_change(self, rec: Active, row: Response) -> None:
        """A response that ends (or changes its final status) moves spend: re-check budgets."""
        if row.status != rec.status and not is_active(row.status):
            self.budget_wake.set()

    def api_error(self, rec: Active, op: str, exc: APIError) -> None:
        self.log_api_error(rec.account, rec.id, op, exc)

    def log_api_error(self, account: str, response_id: str | None, op: str, exc: APIError) -> None:
        if isinstance(exc, AccountPaused):
            return  # logged once, when the account was paused
        self.stats.api_errors += 1
        self.metrics.api_error(op, exc)
        level = "error" if isinstance(exc, AccountError) else "warning"
        getattr(log, level)(
            "api.error",
            account=account,
            op=op,
            response_id=response_id,
            http_status=exc.status,
            code=exc.code,
            error=exc.message,
            **({"hint": "check the account's API key, permissions or quota"} if level == "error" else {}),
        )

    def _store_failed(self, exc: OperationalError) -> None:
        if self.failure is None:
            self.failure = exc
            log.critical(
                "daemon.store_failed",
                error=str(exc.orig) if getattr(exc, "orig", None) else str(exc),
                hint="the store cannot be written (disk full, read-only or removed? its database server down?); stopping",
            )
        self.stop.set()
