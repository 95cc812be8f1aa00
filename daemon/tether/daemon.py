"""The daemon: polls tracked responses, enforces deadlines, cancels, picks up CLI work.

Two timer heaps drive the work, both rebuilt from the store at start (due times
live in the database, so a restart loses nothing):

- polls: each active response's next poll, on the `[polling]` backoff;
- timers: deadlines and cancel retries. They have their own loop and never wait
  behind polls, so a cancel leaves at its deadline however busy polling is. A deadline
  is taken up DECISION_LEAD early: its decision is written and committed ahead, its
  cancel leaves at the deadline, and polls are held back while the cancel is out.

APScheduler runs the periodic jobs: picking up what the CLI wrote, flushing poll
bookkeeping in batches, and the heartbeat. Store writes run on one worker thread so an
fsync never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import heapq
import itertools
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import Text, bindparam, cast, func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from tether import accounting, logs, tracker
from tether.api import (
    NO_RETRY,
    AccountError,
    AccountPaused,
    APIError,
    NotFound,
    RequestRejected,
    ResponsesClient,
    TransientError,
)
from tether.config import Config, ConfigError, load_config
from tether.logs import log
from tether.models import ACTIVE, API_STATUSES, TERMINAL, CancelState, Event, EventKind, Heartbeat, Response, is_active
from tether.notify import Notifier
from tether.render import iso
from tether.stats import Stats
from tether.budgets import cancel_plan, thresholds_crossed, window_at
from tether.policies import Act, decide
from tether.pricing import Pricing
from tether.schedule import cancel_retry_delay, jittered, next_interval
from tether.store import Store, WriterLock

PICKUP_EVERY = 0.5  # newly tracked responses are noticed within a second
LOAD_PAGE = 5000  # open responses read per step at start
PICKUP_PAGE = 1000  # events read per pass: a long backlog is taken in bounded steps
BUDGET_SETTLE = 0.05  # coalesce a burst of spend changes into one budget evaluation
FLUSH_EVERY = 1.0  # poll bookkeeping reaches the store at most this late
HEARTBEAT_EVERY = 5.0
SHUTDOWN_GRACE = 10.0  # in-flight requests may finish this long after SIGTERM
POLL_SLOTS = 256  # polls in flight at once, over all accounts
CONFIRM_POLLS_FROM = 8  # the first confirmation poll comes after confirm_window / this
DEADLINE_BATCH = 500  # deadlines due together are decided in transactions of up to this many
# Deadlines are taken up this long before they fall due: their decisions are written and
# committed ahead, so that at the deadline the cancels wait for nothing.
DECISION_LEAD = 0.1
POLLS_HELD_MAX = 0.5  # polls wait at most this long for cancels being sent (`_polls_held`)
LOOK_TIMEOUT = 0.5  # the look (GET) just before acting on a deadline; then act on what we know

T = TypeVar("T")
StoreJob = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]  # fn, args, its caller's future
# What Active.loaded reads, in its order; the metadata as its JSON text (parsed there).
SCHEDULING_COLUMNS = (
    Response.id, Response.account, Response.status, Response.deadline_at, Response.next_poll_at,
    Response.poll_interval, Response.cancel_state, Response.cancel_attempts, Response.confirm_until,
    Response.model, Response.created_at, cast(Response.meta, Text),
)


@dataclass(slots=True)
class Active:
    """What the scheduler needs to know of one response; the row stays the truth."""

    id: str
    account: str
    status: str | None
    deadline_at: float | None
    next_poll_at: float | None
    interval: float | None
    cancel_state: str
    cancel_attempts: int
    confirm_until: float | None
    facts: tracker.Facts
    next_cancel_at: float | None = None
    # When the latest look the API answered with a status began: a confirmation window is
    # over only once a look begun after its end was answered (see `finished`).
    answered_at: float | None = None
    # Deadline looks that failed in a row: the next is tried with the cancel's backoff.
    look_failures: int = 0
    polling: bool = False
    enforcing: bool = False
    # What the heaps hold for it, so re-scheduling pushes nothing twice.
    queued_poll: float | None = None
    queued_deadline: float | None = None
    queued_cancel: float | None = None

    @classmethod
    def from_row(cls, row: Response) -> Active:
        return cls.of(
            row.id, row.account, row.status, row.deadline_at, row.next_poll_at, row.poll_interval,
            row.cancel_state, row.cancel_attempts, row.confirm_until, tracker.facts(row),
        )

    @classmethod
    def loaded(cls, columns: Sequence[Any]) -> Active:
        """From a row of SCHEDULING_COLUMNS: positional, no ORM object (start-up reads 100,000)."""
        *scheduling, model, created_at, metadata = columns
        return cls.of(*scheduling, tracker.facts_of(model, created_at, json.loads(metadata)))

    @classmethod
    def of(
        cls, rid: str, account: str, status: str | None, deadline_at: float | None, next_poll_at: float | None,
        interval: float | None, cancel_state: str, cancel_attempts: int, confirm_until: float | None,
        facts: tracker.Facts,
    ) -> Active:
        # The few distinct strings are interned: one copy each for 100,000 records, not one per row.
        return cls(
            rid, sys.intern(account), tracker.interned(status), deadline_at, next_poll_at, interval,
            sys.intern(cancel_state), cancel_attempts, confirm_until, facts,
        )

    def refresh(self, row: Response) -> None:
        """Take what a write changed, keeping the scheduling state owned here."""
        self.refresh_state(row)
        self.facts = tracker.facts(row)

    def refresh_state(self, row: Response | SimpleNamespace) -> None:
        """`refresh` but for the facts (model, created_at, metadata): a deadline decision
        does not change them."""
        self.status = tracker.interned(row.status)
        self.deadline_at = row.deadline_at
        self.cancel_state = sys.intern(row.cancel_state)
        self.cancel_attempts = row.cancel_attempts
        self.confirm_until = row.confirm_until

    def finished(self, now: float) -> bool:
        """Terminal, no cancel left to send, and any confirmation window after a cancel over.

        The window counts in answers, not wall-clock time: it is over once a look *begun*
        after its end has been answered. A poll that was late (a backlog of polls, no free
        connection) or failed slowly (a read timeout longer than what was left of the
        window) must not close it unseen: the server may have moved to `completed` since.
        """
        return (
            not is_active(self.status)
            and self.cancel_state != CancelState.PENDING.value
            and (
                self.confirm_until is None
                or (now >= self.confirm_until and self.answered_at is not None and self.answered_at >= self.confirm_until)
            )
        )


@dataclass(slots=True)
class PollMark:
    """A poll that changed nothing: counted in memory, written in the next batch."""

    polls: int
    last_polled_at: float
    next_poll_at: float | None
    interval: float | None


class StoreFailure(Exception):
    """The store refused a write: the daemon stops rather than drop transitions."""


class Daemon:
    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        config_path: str | None = None,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        lock: WriterLock | None = None,
    ) -> None:
        self.config = config
        self.lock = lock  # the store's single-writer lock, held by the caller
        self.pricing = Pricing.from_config(config)
        self.notify = notifier or Notifier()
        self._reload_note = "config loaded at start"
        self.store = store
        self.config_path = config_path
        self.clock = clock
        self._rng = random.Random()
        self.clients: dict[str, ResponsesClient] = {}
        self.active: dict[str, Active] = {}
        self._polls: list[tuple[float, int, str]] = []
        self._timers: list[tuple[float, int, str, str, float]] = []  # (fires at, seq, id, kind, due)
        self._seq = itertools.count()
        self._poll_wake = asyncio.Event()
        self._timer_wake = asyncio.Event()
        self._budget_wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._poll_slots = asyncio.Semaphore(POLL_SLOTS)
        self._polls_free = asyncio.Event()  # cleared while cancels are out (`_polls_held`)
        self._polls_free.set()
        self._sending = 0
        self._db = ThreadPoolExecutor(1, thread_name_prefix="tether-store")
        self._jobs: list[StoreJob] = []
        self._urgent: list[StoreJob] = []  # run before `_jobs` (`_store`)
        self._jobs_lock = threading.Lock()
        self._draining = False
        self._marks: dict[str, PollMark] = {}
        self._confirmed: dict[str, float] = {}  # confirmation windows seen through, not yet cleared
        self._last_event_id = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failure: BaseException | None = None
        self._started_at = clock()
        self._reloading: asyncio.Lock = asyncio.Lock()
        self.stats = Stats()
        self._stats_since = time.monotonic()

    # ---- lifecycle -------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload(), "reload"))
        self.clients = self._build_clients(self.config)
        await self._load()
        # What start-up loaded lives as long as the daemon: the cycle collector need not go
        # over it again (a full collection of 10,000 records stalled the loop 0.1 to 0.3 s).
        gc.freeze()
        await self._heartbeat()  # `tether check` is healthy from READY on
        scheduler = self._scheduler()
        scheduler.start()
        log.info(
            "daemon.started",
            pid=os.getpid(),
            store=self.store.url,
            active=self._counts()[0],
            accounts=list(self.config.accounts),
            policies=[p.name for p in self.config.policies],
        )
        self.notify.ready(self._status())
        loops = [
            asyncio.create_task(self._poll_loop(), name="poll-loop"),
            asyncio.create_task(self._timer_loop(), name="timer-loop"),
            asyncio.create_task(self._budget_loop(), name="budget-loop"),
        ]
        stopped = asyncio.create_task(self._stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
        log.info("daemon.stopping", active=self._counts()[0], in_flight=len(self._tasks))
        self.notify.stopping()
        scheduler.shutdown(wait=False)
        for task in [stopped, *loops]:
            task.cancel()
        for task in loops:
            if task in done and not task.cancelled() and task.exception() is not None:
                self._failure = self._failure or task.exception()
        await self._drain()
        await self._finish()
        code = 0
        if self._failure is not None:
            log.error("daemon.failed", error=str(self._failure))
            code = 1
        log.info("daemon.stopped", exit_code=code)  # the last line: everything is written by now
        return code

    def _scheduler(self) -> AsyncIOScheduler:
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        scheduler = AsyncIOScheduler(timezone="UTC")
        jobs = [(self._pickup, PICKUP_EVERY), (self._flush, FLUSH_EVERY), (self._heartbeat, HEARTBEAT_EVERY)]
        if self.config.log.stats_interval > 0:
            jobs.append((self._log_stats, self.config.log.stats_interval))
        if self.notify.watchdog_interval:
            # Pinged from the event loop itself: a blocked loop stops the pings and
            # systemd's watchdog restarts the service.
            jobs.append((self._watchdog, self.notify.watchdog_interval))
        for job, every in jobs:
            scheduler.add_job(
                self._guarded(job),
                "interval",
                seconds=every,
                id=job.__name__,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        return scheduler

    def _guarded(self, job: Callable[[], Any]) -> Callable[[], Any]:
        async def run() -> None:
            try:
                await job()
            except StoreFailure:
                pass  # already logged; the daemon is stopping
            except asyncio.CancelledError:
                # The scheduler's shutdown cancels the jobs still running, and APScheduler would
                # log that as a failure with a traceback. What the job had handed to the store
                # thread still commits; `_finish` flushes what is left.
                pass
            except Exception as exc:  # a periodic job must not die silently
                log.error("daemon.error", job=job.__name__, error=repr(exc))

        run.__name__ = job.__name__
        return run

    async def _drain(self) -> None:
        """Let in-flight requests finish for a bounded time, then cancel the rest."""
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=SHUTDOWN_GRACE)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)

    async def _finish(self) -> None:
        try:
            await self._flush()
            if self._failure is None:  # a failed daemon says nothing more (its lock may be another's)
                await self._store(self._write_stopped)
        except StoreFailure:
            pass
        for client in self.clients.values():
            await client.aclose()
        # Off the event loop: the last batches settle their callers (periodic jobs among
        # them) through it, so they end here rather than being cancelled at exit.
        await asyncio.to_thread(self._db.shutdown, wait=True)
        self.notify.close()

    def stop(self) -> None:
        self._stop.set()

    def _build_clients(self, config: Config) -> dict[str, ResponsesClient]:
        return {
            name: ResponsesClient(account, account.read_api_key())
            for name, account in config.accounts.items()
        }

    # ---- store access ----------------------------------------------------------

    async def _store(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> T:
        """Run a store function on the store thread; a store error stops the daemon.

        Group commit: the functions queued while the store thread is busy run together in one
        transaction (one fsync), each in its own savepoint; each caller resumes once that
        transaction has committed, so what it wrote is durable before it goes on. Urgent ones
        (a deadline's decisions) go first, in a transaction of their own: a cancel waits for
        the transaction already running, not for everything queued behind it.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._jobs_lock:
            (self._urgent if urgent else self._jobs).append((fn, args, future))
            start, self._draining = not self._draining, True
        if start:
            self._db.submit(self._run_batches, loop)
        try:
            return await future
        except OperationalError as exc:  # disk full, read-only, I/O error: not one response's data
            if self._failure is None:
                self._failure = exc
                log.critical(
                    "daemon.store_failed",
                    error=str(exc.orig) if getattr(exc, "orig", None) else str(exc),
                    hint="the store cannot be written (disk full, read-only or removed? its database server down?); stopping",
                )
            self._stop.set()
            raise StoreFailure(str(exc)) from exc

    def _run_batches(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the store thread: run the queued store functions, a batch per transaction."""
        while True:
            with self._jobs_lock:
                if self._urgent:
                    jobs, self._urgent = self._urgent, []
                else:
                    jobs, self._jobs = self._jobs, []
                if not jobs:
                    self._draining = False
                    return
            outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            try:
                with self.store.batch():
                    # The first callback once the batch has committed: its callers (cancels
                    # waiting for their decision) go on before the batch's log lines are written.
                    self.store.after_commit(functools.partial(loop.call_soon_threadsafe, _settle, outcomes))
                    for fn, args, future in jobs:
                        try:
                            outcomes.append((future, fn(*args), None))
                        except Exception as exc:  # its savepoint is rolled back; the others go on
                            outcomes.append((future, None, exc))
            except Exception as exc:  # the commit failed: nothing of this batch is durable
                loop.call_soon_threadsafe(_settle, [(future, None, exc) for _, _, future in jobs])

    async def _load(self) -> None:
        """Schedule every open response in the store, a page at a time (bounded memory)."""
        self._last_event_id = await self._store(self._read_event_cursor)
        after = ""
        while True:
            rows = await self._store(self._read_open_rows, after)
            for row in rows:
                self._add(Active.loaded(row))
            if len(rows) < LOAD_PAGE:
                return
            after = rows[-1][0]

    def _read_event_cursor(self) -> int:
        with self.store.reading() as session:
            beat = session.get(Heartbeat, "daemon")
            return beat.event_cursor if beat is not None else 0

    def _read_open_rows(self, after: str) -> Sequence[Any]:
        with self.store.reading() as session:
            return open_rows(session, after)

    def _adopt(self, row: Response) -> None:
        """Start (or refresh) scheduling a response read from the store."""
        rec = self.active.get(row.id)
        if rec is None:
            self._add(Active.from_row(row))
        else:
            rec.refresh(row)
            self._resume(rec)

    def _add(self, rec: Active) -> None:
        self.active[rec.id] = rec
        self._resume(rec)

    def _resume(self, rec: Active) -> None:
        """Schedule what the store says is due: a pending cancel and a poll at once if none is set."""
        now = self.clock()
        if rec.cancel_state == CancelState.PENDING.value and rec.next_cancel_at is None:
            rec.next_cancel_at = now
        if rec.next_poll_at is None and not rec.finished(now):
            rec.next_poll_at = now
        self._schedule(rec)

    # ---- scheduling ------------------------------------------------------------

    def _schedule(self, rec: Active) -> None:
        now = self.clock()
        if rec.finished(now) and not (rec.polling or rec.enforcing):
            self.active.pop(rec.id, None)
            if rec.confirm_until is not None:
                self._confirmed[rec.id] = rec.confirm_until  # the store forgets it at the next flush
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
        if not self._polls or due < self._polls[0][0]:
            self._poll_wake.set()
        heapq.heappush(self._polls, (due, next(self._seq), rid))

    def _push_timer(self, due: float, rid: str, kind: str) -> None:
        fire_at = due - DECISION_LEAD if kind == "deadline" else due
        if not self._timers or fire_at < self._timers[0][0]:
            self._timer_wake.set()
        heapq.heappush(self._timers, (fire_at, next(self._seq), rid, kind, due))

    async def _poll_loop(self) -> None:
        while True:
            await self._polls_free.wait()
            self._poll_wake.clear()
            now = self.clock()
            while self._polls and self._polls[0][0] <= now and self._polls_free.is_set():
                due, _, rid = heapq.heappop(self._polls)
                rec = self.active.get(rid)
                if rec is None or rec.queued_poll != due:
                    continue  # superseded by a later schedule
                rec.queued_poll = None
                if rec.polling or rec.enforcing:
                    # A deadline or cancel being acted on looks itself or gets the status in the
                    # cancel's answer; it schedules the next poll when it is done (`_schedule`).
                    continue
                await self._poll_slots.acquire()
                self.stats.poll(self.clock() - due)
                rec.polling = True
                self._spawn(self._poll(rec), f"poll:{rid}")
            await self._sleep(self._poll_wake, self._polls[0][0] - self.clock() if self._polls else None)

    async def _timer_loop(self) -> None:
        while True:
            self._timer_wake.clear()
            now = self.clock()
            deadlines: dict[float, list[Active]] = {}  # by deadline: each one's decided together
            while self._timers and self._timers[0][0] <= now:
                _, _, rid, kind, due = heapq.heappop(self._timers)
                rec = self.active.get(rid)
                if rec is None:
                    continue
                if kind == "deadline" and rec.queued_deadline == due:
                    rec.queued_deadline = None
                    if not rec.enforcing and rec.deadline_at == due:
                        rec.enforcing = True
                        deadlines.setdefault(due, []).append(rec)
                elif kind == "cancel" and rec.queued_cancel == due:
                    rec.queued_cancel = None
                    if not rec.enforcing and rec.cancel_state == CancelState.PENDING.value:
                        rec.enforcing = True
                        self._spawn(self._retry_cancel(rec), f"cancel:{rid}")
            for due, recs in deadlines.items():
                for start in range(0, len(recs), DEADLINE_BATCH):
                    batch = recs[start : start + DEADLINE_BATCH]
                    self._spawn(self._enforce(batch, due), f"deadlines:{len(batch)}")
            await self._sleep(self._timer_wake, self._timers[0][0] - self.clock() if self._timers else None)

    @staticmethod
    async def _sleep(wake: asyncio.Event, delay: float | None) -> None:
        if delay is not None and delay <= 0:
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except TimeoutError:
            pass

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- polling ---------------------------------------------------------------

    async def _poll(self, rec: Active) -> None:
        try:
            await self._look(rec, "poll")
        except StoreFailure:
            rec.next_poll_at = None
        except Exception as exc:  # one bad response must not wedge the loop
            log.error("daemon.error", response_id=rec.id, op="poll", error=repr(exc))
            rec.next_poll_at = self.clock() + self.config.polling.max_interval
        finally:
            rec.polling = False
            self._poll_slots.release()
            self._schedule(rec)

    async def _look(self, rec: Active, reason: str, timeout: float | None = None) -> bool:
        """GET the response once and apply what it says; False when the API did not answer
        or its answer had no status we know (a garbled answer says nothing about the status).

        A deadline look is urgent: it takes the client's priority lane and gives up after
        `timeout`, so that a slow API delays the cancel by at most that much.
        """
        client = self.clients[rec.account]
        now = self.clock()
        try:
            observed = await asyncio.wait_for(client.get(rec.id, retry=NO_RETRY, priority=timeout is not None), timeout)
        except TimeoutError:
            self._api_error(rec, "get", TransientError(f"no answer within {timeout}s to the deadline look"))
            return False
        except NotFound as exc:
            self._api_error(rec, "get", exc)
            row = await self._store(self._write_not_found, rec.id, self._next_mark(rec, now))
            self._after_look(rec, row, now)
            return True
        except APIError as exc:
            self._api_error(rec, "get", exc)
            self._reschedule_after_error(rec, client, now)
            return False
        changes = self._changes(rec, observed)
        status = observed.get("status")
        answered = isinstance(status, str) and status in API_STATUSES
        if answered:
            rec.answered_at = now
        if changes:
            mark = self._next_mark(rec, now)
            row = await self._store(self._write_observation, rec.id, observed, reason, mark)
            self._after_look(rec, row, now)
        else:
            self._marks[rec.id] = self._next_mark(rec, now)
            rec.next_poll_at = self._marks[rec.id].next_poll_at
        return answered

    def _changes(self, rec: Active, observed: dict[str, Any]) -> bool:
        """Does this observation need a transaction now (not just a batched poll count)?

        A new status does, and so do facts the policy depends on that the store lacks
        (a server may omit metadata in one answer and send it in the next). A terminal
        status seen again does not: its outcome was recorded when it was first seen.
        """
        status = observed.get("status") if isinstance(observed.get("status"), str) else None
        return status != rec.status or tracker.facts_after(observed, rec.facts) != rec.facts

    def _next_mark(self, rec: Active, now: float) -> PollMark:
        previous = self._marks.pop(rec.id, None)
        rec.interval = next_interval(rec.interval, self.config.polling)
        return PollMark(
            polls=(previous.polls if previous else 0) + 1,
            last_polled_at=now,
            next_poll_at=now + jittered(rec.interval, self.config.polling.jitter, self._rng),
            interval=rec.interval,
        )

    def _after_look(self, rec: Active, row: Response | None, now: float) -> None:
        if row is None:  # removed from the store behind our back
            rec.status, rec.cancel_state, rec.confirm_until, rec.next_poll_at = "lost", "none", None, None
            return
        self._note_spend_change(rec, row)
        rec.refresh(row)
        rec.next_poll_at = row.next_poll_at if not rec.finished(now) else None

    def _reschedule_after_error(self, rec: Active, client: ResponsesClient, now: float) -> None:
        rec.interval = next_interval(rec.interval, self.config.polling)
        delay = max(jittered(rec.interval, self.config.polling.jitter, self._rng), client.pause_remaining())
        rec.next_poll_at = now + delay

    def _api_error(self, rec: Active, op: str, exc: APIError) -> None:
        if isinstance(exc, AccountPaused):
            return  # logged once, when the account was paused
        self.stats.api_errors += 1
        level = "error" if isinstance(exc, AccountError) else "warning"
        getattr(log, level)(
            "api.error",
            account=rec.account,
            op=op,
            response_id=rec.id,
            http_status=exc.status,
            code=exc.code,
            error=exc.message,
            **({"hint": "check the account's API key, permissions or quota"} if level == "error" else {}),
        )

    # ---- deadlines and cancels -------------------------------------------------

    async def _enforce(self, recs: list[Active], at: float) -> None:
        """Deadlines falling due at `at`, taken up DECISION_LEAD before: decide them in one
        transaction, committed ahead, then send their cancels at once at `at`, not before."""
        try:
            # Only what may have left the queue is looked at (`_deadline_look`), at the
            # deadline itself; a burst of in_progress deadlines goes straight to its decisions.
            # But a deadline that passed before this daemon started was not watched: an
            # in_progress seen then may have ended since, and is looked at too.
            to_look = [rec for rec in recs if rec.status != "in_progress" or at < self._started_at]
            if to_look:
                await self._until(at)
            answers = await asyncio.gather(*(self._deadline_look(rec) for rec in to_look))
            looked = {rec.id for rec, answered in zip(to_look, answers) if answered}
            for rec in to_look:
                rec.look_failures = 0 if rec.id in looked else rec.look_failures + 1
            due = [rec for rec in recs if rec.id in self.active and is_active(rec.status)]
            if not due:
                return
            decisions = await self._store(
                self._write_decisions, [(rec.id, rec.id in looked) for rec in due], at, urgent=True
            )
            await self._until(at)
            cancels = []
            for rec, (row, cancel) in zip(due, decisions):
                if row is not None:
                    rec.refresh_state(row)
                if cancel:
                    rec.next_cancel_at = None
                    self.stats.cancel_at_deadline(self.clock() - at)
                    cancels.append(rec)
            await self._send_cancels(cancels, "deadline")
        except StoreFailure:
            pass
        except Exception as exc:
            log.error("daemon.error", op="deadline", responses=len(recs), error=repr(exc))
        finally:
            for rec in recs:
                rec.enforcing = False
                if rec.deadline_at is not None and rec.deadline_at <= max(at, self.clock()):
                    # Not acted on: the look failed. A poll that sees the same status again
                    # writes nothing and would not bring the deadline back, so it is retried
                    # here (in memory; the stored deadline stays the real one).
                    rec.deadline_at = self._retry_at(rec, rec.look_failures)
                self._schedule(rec)

    def _retry_at(self, rec: Active, attempts: int, retry_after: float | None = None) -> float:
        """When to try a failed cancel, or a failed look before one, again: the cancel's
        backoff (1 s, 2 s, 4 s ... up to 60 s; `Retry-After` a floor), and not before the
        account's pause is over."""
        delay = cancel_retry_delay(attempts, retry_after, self._rng)
        return self.clock() + max(delay, self.clients[rec.account].pause_remaining())

    async def _until(self, at: float) -> None:
        while (left := at - self.clock()) > 0:
            await asyncio.sleep(left)

    async def _deadline_look(self, rec: Active) -> bool:
        """Look (GET) before acting, where a fresher status could spare the response: a queued
        one may have started (max_queued no longer applies). A max_runtime deadline holds
        whatever the active status, and the cancel's own answer says if it ended meanwhile,
        so an in_progress response is not looked at (`_enforce`). True when the look answered."""
        try:
            return await self._look(rec, "deadline", LOOK_TIMEOUT)
        except StoreFailure:
            return False
        except Exception as exc:
            log.error("daemon.error", response_id=rec.id, op="deadline", error=repr(exc))
            return False

    async def _retry_cancel(self, rec: Active) -> None:
        try:
            await self._send_cancels([rec], "cancel")
        finally:
            rec.enforcing = False
            self._schedule(rec)

    async def _send_cancels(self, recs: list[Active], op: str) -> None:
        """Send the cancels at once (polls held back meanwhile), then record their answers and
        their transient failures in one transaction."""
        with self._polls_held():
            replies = await asyncio.gather(*(self._cancel_one(rec) for rec in recs), return_exceptions=True)
        answered: list[tuple[Active, dict[str, Any] | None, str, float]] = []
        failed: list[tuple[Active, APIError]] = []
        for rec, reply in zip(recs, replies):
            if isinstance(reply, APIError):
                failed.append((rec, reply))
            elif isinstance(reply, BaseException):
                if not isinstance(reply, (StoreFailure, asyncio.CancelledError)):  # those stop the daemon
                    self._cancel_broke(rec, op, reply)
            elif reply is not None:
                answered.append((rec, *reply))
        if not (answered or failed):
            return
        try:
            rows, failed_rows = await self._store(
                self._write_cancels_settled,
                [(rec.id, *answer) for rec, *answer in answered],
                [(rec.id, exc) for rec, exc in failed],
            )
        except StoreFailure:
            return
        except Exception as exc:
            for rec in [rec for rec, *_ in answered] + [rec for rec, _ in failed]:
                self._cancel_broke(rec, op, exc)
            return
        for (rec, *_), row in zip(answered, rows):
            self._after_cancel(rec, row)
        for (rec, exc), row in zip(failed, failed_rows):
            if row is not None:
                rec.refresh(row)
            rec.next_cancel_at = self._retry_at(rec, rec.cancel_attempts, exc.retry_after)

    @contextmanager
    def _polls_held(self) -> Iterator[None]:
        """No poll starts while cancels are out, for up to POLLS_HELD_MAX: a burst of cancels
        (every deadline of one second) then has the event loop to itself, and none waits
        behind a poll's reply. Polls are late by as long, a fraction of a second.

        Each burst's valve frees the polls POLLS_HELD_MAX after it began, whatever other
        bursts are still out (a hung cancel); it is dropped only when no burst is left."""
        self._sending += 1
        self._polls_free.clear()
        valve = asyncio.get_running_loop().call_later(POLLS_HELD_MAX, self._polls_free.set)
        try:
            yield
        finally:
            self._sending -= 1
            if not self._sending:
                valve.cancel()
                self._polls_free.set()

    def _cancel_broke(self, rec: Active, op: str, exc: BaseException) -> None:
        log.error("daemon.error", response_id=rec.id, op=op, error=repr(exc))
        rec.next_cancel_at = self.clock() + self.config.polling.max_interval

    async def _cancel_one(self, rec: Active) -> tuple[dict[str, Any] | None, str, float] | APIError | None:
        """Call cancel; returns (what was seen, reason, when it was asked) to record as the
        answer, a transient failure to record (and retry), or None when there is nothing to
        record (a 404, recorded here)."""
        client = self.clients[rec.account]
        now = self.clock()
        if rec.status in TERMINAL:  # it ended on its own while the cancel was pending
            return None, "cancel", now
        try:
            return await client.cancel(rec.id, retry=NO_RETRY), "cancel", now  # retried durably, each failure logged
        except NotFound as exc:
            self._api_error(rec, "cancel", exc)
            row = await self._store(self._write_not_found, rec.id, self._next_mark(rec, now))
            self._after_look(rec, row, now)
        except RequestRejected as exc:  # not cancellable now: see what it is instead
            self._api_error(rec, "cancel", exc)
            await self._store(self._write_cancel_failed, rec.id, exc, False)
            return await self._look_after_refusal(rec, client), "poll", now
        except APIError as exc:
            self._api_error(rec, "cancel", exc)
            return exc  # recorded with the burst's answers (`_send_cancels`)
        return None

    async def _look_after_refusal(self, rec: Active, client: ResponsesClient) -> dict[str, Any] | None:
        try:
            return await client.get(rec.id, retry=NO_RETRY, priority=True)
        except APIError as exc:
            self._api_error(rec, "get", exc)
            return None  # the confirmation polls will find out

    def _after_cancel(self, rec: Active, row: Response | None) -> None:
        rec.next_cancel_at = None
        if row is None:
            return
        self._note_spend_change(rec, row)
        rec.refresh(row)
        rec.interval = row.poll_interval
        rec.next_poll_at = row.next_poll_at

    # ---- store writes (run on the store thread) --------------------------------

    def _write_observation(self, rid: str, observed: dict[str, Any], reason: str, mark: PollMark) -> Response | None:
        with tracker.recording(self.store, "daemon", self.clock()) as rec:
            row = rec.session.get(Response, rid)
            if row is None:
                return None
            tracker.observe(rec, row, observed, self.config, self.pricing, reason=reason, asked_at=mark.last_polled_at)
            apply_mark(row, mark)
            return row

    def _write_not_found(self, rid: str, mark: PollMark) -> Response | None:
        with tracker.recording(self.store, "daemon", self.clock()) as rec:
            row = rec.session.get(Response, rid)
            if row is None:
                return None
            apply_mark(row, mark)
            if row.status in TERMINAL:  # the server forgot a finished response: nothing to chase
                row.confirm_until = None
                if row.cancel_state == CancelState.PENDING.value:
                    row.cancel_state = CancelState.SETTLED.value
            elif tracker.not_found(rec, row, self.config.polling.lost_after):
                if row.cancel_state == CancelState.PENDING.value:
                    row.cancel_state = CancelState.SETTLED.value
            return row

    def _write_decisions(
        self, items: list[tuple[str, bool]], at: float
    ) -> list[tuple[SimpleNamespace | None, bool]]:
        """Record the limits exceeded at `at`; returns (row, whether to send a cancel) per item.

        Without a fresh look, max_queued is not acted on: `queued` may be stale, and a
        response that has started must not be cancelled for it. The deadline is checked
        again after the next poll. max_runtime holds for any status not terminal, and the
        cancel's own answer tells if the response ended meanwhile.

        The cancels of a burst (every deadline of one second) wait for this transaction, so
        the rows are read and written with two plain statements, not as ORM objects, which
        cost several times more; and it is written and committed ahead of the deadline
        (`DECISION_LEAD`), its events dated `at`, so that the cancels wait for nothing at `at`.
        """
        with tracker.recording(self.store, "daemon", max(at, self.clock())) as rec:
            rows = decision_rows(rec.session, [rid for rid, _ in items])
            decided = [self._decide(rec, rows.get(rid), looked) for rid, looked in items]
            write_decided(rec.session, [row for row, _ in decided if row is not None])
        return decided

    def _decide(
        self, rec: tracker.Recorder, row: SimpleNamespace | None, looked: bool
    ) -> tuple[SimpleNamespace | None, bool]:
        if row is None:
            return None, False
        policy = self.config.policy_named(row.policy) if row.policy else None
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

    def _write_cancel_failed(self, rid: str, exc: APIError, retry: bool) -> Response | None:
        with tracker.recording(self.store, "daemon", self.clock()) as rec:
            row = rec.session.get(Response, rid)
            if row is None:
                return None
            tracker.cancel_failed(rec, row, http_status=exc.status, error=exc.message, retry=retry)
            return row

    def _write_cancels_settled(
        self, items: list[tuple[str, dict[str, Any] | None, str, float]], failed: list[tuple[str, APIError]]
    ) -> tuple[list[Response | None], list[Response | None]]:
        """Record the answers to cancels, (id, what was seen, reason, when it was asked) each,
        and the cancels that failed and will be retried, (id, error) each; returns their rows."""
        with tracker.recording(self.store, "daemon", self.clock()) as rec:
            ids = [rid for rid, *_ in items]
            failed_ids = [rid for rid, _ in failed]
            rows = rows_by_id(rec.session, ids + failed_ids)
            for rid, exc in failed:
                if (row := rows.get(rid)) is not None:
                    tracker.cancel_failed(rec, row, http_status=exc.status, error=exc.message, retry=True)
            for rid, observed, reason, asked_at in items:
                row = rows.get(rid)
                if row is None:
                    continue
                if observed is not None:
                    tracker.observe(
                        rec, row, observed, self.config, self.pricing, reason=reason, asked_at=asked_at
                    )
                tracker.cancel_answered(row, self.config.polling.confirm_window, rec.now)
                # The answer just recorded is the first look: confirmation polls (for a late
                # `completed`) start at an eighth of the window and back off, ~4 in all.
                row.poll_interval = self.config.polling.confirm_window / CONFIRM_POLLS_FROM
                row.next_poll_at = rec.now + row.poll_interval
            return [rows.get(rid) for rid in ids], [rows.get(rid) for rid in failed_ids]

    def _write_marks(self, marks: dict[str, PollMark], confirmed: dict[str, float]) -> None:
        table = Response.__table__
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
            {"b_id": rid, "b_polls": m.polls, "b_last": m.last_polled_at, "b_next": m.next_poll_at, "b_interval": m.interval}
            for rid, m in marks.items()
        ]
        with self.store.writing() as session:
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

    def _write_heartbeat(self) -> None:
        with self.store.writing() as session:
            session.merge(
                Heartbeat(
                    name="daemon",
                    pid=os.getpid(),
                    host=socket.gethostname(),
                    started_at=self._started_at,
                    beat_at=self.clock(),
                    event_cursor=self._last_event_id,
                )
            )

    def _write_stopped(self) -> None:
        """Mark the heartbeat stopped: `tether check` then says so at once, not when it goes stale."""
        with self.store.writing() as session:
            session.execute(update(Heartbeat).where(Heartbeat.name == "daemon").values(stopped_at=self.clock()))

    def _read_events_by_others(self, after: int) -> tuple[list[Event], int]:
        """The next page of events others wrote after `after`, and the id to resume from."""
        with self.store.reading() as session:
            last = session.execute(select(func.max(Event.id))).scalar() or after
            events = list(
                session.execute(
                    select(Event)
                    .where(Event.id > after, Event.id <= last, Event.origin != "daemon")
                    .order_by(Event.id)
                    .limit(PICKUP_PAGE)
                ).scalars()
            )
            if len(events) == PICKUP_PAGE:
                last = events[-1].id
            return events, last

    def _reapply_policies(self, ids: list[str], cursor: int | None = None) -> list[Response]:
        """Resolve policies again with this daemon's config (and move the event cursor)."""
        with tracker.recording(self.store, "daemon", self.clock()) as rec:
            rows = list(rows_by_id(rec.session, ids).values())
            for row in rows:
                tracker.refresh_policy(row, self.config)
            beat = rec.session.get(Heartbeat, "daemon")
            if cursor is not None and beat is not None:
                beat.event_cursor = cursor
            return rows

    # ---- budgets ---------------------------------------------------------------

    def _note_spend_change(self, rec: Active, row: Response) -> None:
        """A response that ends (or changes its final status) moves spend: re-check budgets."""
        if row.status != rec.status and not is_active(row.status):
            self._budget_wake.set()

    async def _budget_loop(self) -> None:
        """Evaluate budgets whenever spend or commitments change, and at window rollovers."""
        self._budget_wake.set()
        while True:
            rollover = self._next_rollover()
            await self._sleep(self._budget_wake, None if rollover is None else rollover - self.clock())
            if not self.config.budgets:
                self._budget_wake.clear()
                continue
            await asyncio.sleep(BUDGET_SETTLE)
            self._budget_wake.clear()
            try:
                rows = await self._store(self._write_budgets)
            except StoreFailure:
                return
            for row in rows:  # newly cancelled by a budget: send at once
                self._adopt(row)

    def _next_rollover(self) -> float | None:
        now = self.clock()
        ends = [window_at(b, now).end for b in self.config.budgets if b.period is not None]
        return min(ends) if ends else None

    def _write_budgets(self) -> list[Response]:
        """Record thresholds crossed and cancel what a budget with on_exceed=cancel cannot fit."""
        cancelled: list[Response] = []
        with tracker.recording(self.store, "daemon", self.clock()) as rec:
            for measured in accounting.measure(rec.session, self.config, self.pricing, rec.now):
                cancelled += self._enforce_budget(rec, measured)
        return cancelled

    def _enforce_budget(self, rec: tracker.Recorder, measured: accounting.Measured) -> list[Response]:
        budget, state = measured.budget, measured.state
        # Marks are kept per window; a rolling window is bucketed by its own length.
        mark_start = state.window.start if budget.period else rec.now - rec.now % (budget.window or 1)
        figures = {
            "limit_usd": budget.limit_usd,
            "spent_usd": round(state.spent_usd, 6),
            "committed_usd": round(state.committed_usd, 6),
            "window_start": iso(state.window.start),
        }
        for fraction in thresholds_crossed(budget, state.spent_usd, state.committed_usd):
            if tracker.first_mark(rec, budget.name, mark_start, f"warn:{fraction:g}"):
                rec.event(None, EventKind.BUDGET_WARN, reason=f"{fraction:g}", budget=budget.name, detail=figures)
        if state.state != "exceeded":
            return []
        if budget.on_exceed == "warn":
            if tracker.first_mark(rec, budget.name, mark_start, "exceeded"):
                rec.event(None, EventKind.BUDGET_EXCEEDED, reason="warn", budget=budget.name, detail=figures)
            return []
        candidates = accounting.cancellable(rec.session, measured.commitments)
        pending = state.committed_usd - sum(c.amount for c in candidates)  # already being cancelled
        plan = cancel_plan(budget.limit_usd, state.spent_usd + pending, candidates)
        if not plan:
            return []
        detail = {**figures, "cancelling": plan}
        rec.event(None, EventKind.BUDGET_EXCEEDED, reason="cancel", budget=budget.name, detail=detail)
        rows = [rec.session.get(Response, rid) for rid in plan]
        for row in rows:
            tracker.request_cancel(rec, row, f"budget:{budget.name}")
        return rows

    # ---- periodic jobs ---------------------------------------------------------

    async def _pickup(self) -> None:
        """Adopt responses that the CLI tracked or changed (a manual cancel, say).

        Their events are logged here too, so the daemon's log (the journal) holds
        every event of the store, whoever wrote it.
        """
        while True:
            events, last = await self._store(self._read_events_by_others, self._last_event_id)
            if not events:
                self._last_event_id = last
                return
            # The daemon's config decides the policy, whatever config the CLI ran with.
            ids = list({ev.response_id for ev in events if ev.response_id})
            rows = await self._store(self._reapply_policies, ids, last)
            self._last_event_id = last
            for ev in events:
                tracker.log_event(ev.kind, ev.response_id, ev.from_status, ev.to_status, ev.reason, ev.detail, origin=ev.origin)
            self._budget_wake.set()
            for row in rows:
                self._adopt(row)
            if len(events) < PICKUP_PAGE:
                return

    async def _flush(self) -> None:
        if not (self._marks or self._confirmed):
            return
        marks, self._marks = self._marks, {}
        confirmed, self._confirmed = self._confirmed, {}
        await self._store(self._write_marks, marks, confirmed)

    async def _heartbeat(self) -> None:
        if self.lock is not None and not await asyncio.to_thread(self.lock.held):
            self._failure = self._failure or StoreFailure("the single-writer lock was lost")
            log.critical(
                "daemon.lock_lost",
                hint="the store's database server ended this daemon's session and its lock (a restart?); "
                "stopping, so that two daemons never run on one store",
            )
            self._stop.set()
            return
        await self._store(self._write_heartbeat)
        if self.notify.enabled:  # the status line counts every record: only for systemd
            self.notify.status(self._status())

    async def _log_stats(self) -> None:
        now = time.monotonic()
        log.info("daemon.stats", **self.stats.take(now - self._stats_since, *self._counts()))
        self._stats_since = now

    def _counts(self) -> tuple[int, int]:
        """(active, confirming): what `tether ls --active` shows (queued, in_progress or not seen
        yet), and the finished ones still watched: a confirmation window after a cancel, or a
        cancel not yet answered."""
        active = sum(1 for rec in self.active.values() if is_active(rec.status))
        return active, len(self.active) - active

    async def _watchdog(self) -> None:
        self.notify.watchdog()

    def _status(self) -> str:
        active, confirming = self._counts()
        watched = f" ({confirming} finished, confirming)" if confirming else ""
        return f"tracking {active} active responses{watched}; {self._reload_note}"

    # ---- reload ----------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP: re-read the config; an invalid one is logged and the old one stays."""
        async with self._reloading:
            self.notify.reloading()
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
                changed = {
                    name: ResponsesClient(account, account.read_api_key())
                    for name, account in config.accounts.items()
                    if self.config.accounts.get(name) != account
                }
            except ConfigError as exc:
                log.error("daemon.reload_failed", error=str(exc), hint="the previous config stays in force")
                self._reload_note = f"reload FAILED at {time.strftime('%H:%M:%S')}: {exc}; previous config in force"
                self.notify.ready(self._status())
                return
            retired = [c for name, c in self.clients.items() if name in changed or name not in config.accounts]
            self.clients = {name: changed.get(name) or self.clients[name] for name in config.accounts}
            self.config = config
            self.pricing = Pricing.from_config(config)
            logs.configure(config.log.format, config.log.level)
            rows = await self._store(self._reapply_policies, list(self.active))
            for row in rows:
                if row.id in self.active:
                    self.active[row.id].refresh(row)
                    self._schedule(self.active[row.id])
            self._spawn(self._close_later(retired), "close-retired-clients")
            log.info(
                "daemon.reloaded",
                config=str(config.path) if config.path else None,
                accounts=list(config.accounts),
                policies=[p.name for p in config.policies],
                active=self._counts()[0],
            )
            self._budget_wake.set()
            self._reload_note = f"config reloaded at {time.strftime('%H:%M:%S')}"
            self.notify.ready(self._status())

    async def _close_later(self, clients: list[ResponsesClient]) -> None:
        if not clients:
            return
        await asyncio.sleep(max(c.account.request_timeout for c in clients))
        for client in clients:
            await client.aclose()


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """Resolve the futures of a batch's jobs: (future, result, error) each."""
    for future, result, error in outcomes:
        if future.done():  # its caller was cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def rows_by_id(session: Session, ids: list[str]) -> dict[str, Response]:
    """The rows of these responses (one query), by id; ids not in the store are absent."""
    return {row.id: row for row in session.execute(select(Response).where(Response.id.in_(ids))).scalars()}


# What a deadline decision (`_decide`) reads, and what it may change and writes back.
DECISION_READS = (Response.id, Response.status, Response.created_at, Response.confirm_until, Response.policy)
DECISION_WRITES = (
    Response.deadline_at, Response.deadline_kind, Response.limits_hit,
    Response.cancel_state, Response.cancel_requested_at, Response.cancel_reason, Response.cancel_attempts,
)
DECIDED = tuple(column.key for column in DECISION_WRITES)
DECIDED_UPDATE = (
    update(Response.__table__)
    .where(Response.__table__.c.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}") for name in DECIDED})
)


def open_rows(session: Session, after: str) -> Sequence[Any]:
    """The next page of open responses (by id, after `after`), as rows of SCHEDULING_COLUMNS:
    only what scheduling needs, as plain rows, not ORM objects, so 100,000 load in a
    fraction of the time and memory."""
    return (
        session.connection()
        .execute(
            select(*SCHEDULING_COLUMNS)
            .where(
                Response.id > after,
                or_(
                    Response.status.is_(None),
                    Response.status.in_(ACTIVE),
                    Response.cancel_state == CancelState.PENDING.value,
                    Response.confirm_until.is_not(None),  # a window not confirmed yet, even if over
                ),
            )
            .order_by(Response.id)
            .limit(LOAD_PAGE)
        )
        .all()
    )


def decision_rows(session: Session, ids: list[str]) -> dict[str, SimpleNamespace]:
    """What a deadline decision needs of these rows, as plain objects with the rows'
    attribute names (the tracker's functions take them like rows); by id."""
    query = select(*DECISION_READS, *DECISION_WRITES).where(Response.id.in_(ids))
    return {row.id: SimpleNamespace(**row._mapping) for row in session.execute(query)}


def write_decided(session: Session, rows: list[SimpleNamespace]) -> None:
    """Write back what `decision_rows` read and a decision may have changed, in one statement."""
    if rows:
        params = [{"b_id": row.id, **{f"b_{name}": getattr(row, name) for name in DECIDED}} for row in rows]
        session.execute(DECIDED_UPDATE, params)


def apply_mark(row: Response, mark: PollMark) -> None:
    row.polls += mark.polls
    row.last_polled_at = mark.last_polled_at
    row.next_poll_at = mark.next_poll_at
    row.poll_interval = mark.interval
