"""The poll loop: each active response is looked at (GET) on the `[polling]` backoff (with
webhooks on, every `[webhooks] safety_poll` after the first polls); a look that changes
nothing is only counted, and the counts reach the store in batches (`flush`)."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tether.api import NO_RETRY, APIError, NotFound, ResponsesClient, TransientError
from tether.daemon.queries import Observed
from tether.daemon.records import Active, PollMark
from tether.daemon.state import State
from tether.daemon.writer import StoreFailure
from tether.facts import facts_after
from tether.logs import log
from tether.models import Response
from tether.schedule import jittered, next_interval
from tether.statuses import API_STATUSES

POLL_SLOTS = 256  # polls in flight at once, over all accounts
POLLS_HELD_MAX = 0.5  # polls wait at most this long for cancels being sent (`held`)


class Polling:
    def __init__(self, state: State) -> None:
        self.state = state
        self.marks: dict[str, PollMark] = {}
        self._slots = asyncio.Semaphore(POLL_SLOTS)
        self.free = asyncio.Event()  # cleared while cancels are out (`held`)
        self.free.set()
        self._sending = 0

    async def loop(self) -> None:
        state = self.state
        while True:
            await self.free.wait()
            if state.cluster is not None and state.cluster.lease_left() <= 0:
                # Frozen past its lease, or cut off from the database: it may have been replaced.
                await asyncio.sleep(state.cluster.timing.beat_every)
                continue
            state.poll_wake.clear()
            now = state.clock()
            while state.polls and state.polls[0][0] <= now and self.free.is_set():
                due, _, rid = heapq.heappop(state.polls)
                rec = state.active.get(rid)
                if rec is None or rec.queued_poll != due:
                    continue  # superseded by a later schedule
                rec.queued_poll = None
                if rec.polling or rec.enforcing:
                    # A deadline or cancel being acted on looks itself or gets the status in the
                    # cancel's answer; it schedules the next poll when it is done.
                    continue
                await self._slots.acquire()
                state.stats.poll(state.clock() - due)
                state.metrics.polls.inc()
                rec.polling = True
                state.spawn(self._poll(rec), f"poll:{rid}")
            await state.sleep(state.poll_wake, state.polls[0][0] - state.clock() if state.polls else None)

    @contextmanager
    def held(self) -> Iterator[None]:
        """No poll starts while cancels are out, for up to POLLS_HELD_MAX: a burst of cancels
        (every deadline of one second) then has the event loop to itself, and none waits
        behind a poll's reply. Polls are late by as long, a fraction of a second.

        Each burst's valve frees the polls POLLS_HELD_MAX after it began, whatever other
        bursts are still out (a hung cancel); it is dropped only when no burst is left."""
        self._sending += 1
        self.free.clear()
        valve = asyncio.get_running_loop().call_later(POLLS_HELD_MAX, self.free.set)
        try:
            yield
        finally:
            self._sending -= 1
            if not self._sending:
                valve.cancel()
                self.free.set()

    async def _poll(self, rec: Active) -> None:
        try:
            await self.look(rec, "poll")
        except StoreFailure:
            rec.next_poll_at = None
        except Exception as exc:  # one bad response must not wedge the loop
            log.error("daemon.error", response_id=rec.id, op="poll", error=repr(exc))
            rec.next_poll_at = self.state.clock() + self.state.config.polling.max_interval
        finally:
            rec.polling = False
            self._slots.release()
            self.state.schedule(rec)

    async def look(self, rec: Active, reason: str, timeout: float | None = None) -> bool:
        """GET the response once and apply what it says; False when the API did not answer
        or its answer had no status we know (a garbled answer says nothing about the status).

        A deadline look is urgent: it takes the client's priority lane and gives up after
        `timeout`, so that a slow API delays the cancel by at most that much.
        """
        state = self.state
        client = state.clients[rec.account]
        now = state.clock()
        try:
            observed = await asyncio.wait_for(client.get(rec.id, retry=NO_RETRY, priority=timeout is not None), timeout)
        except TimeoutError:
            state.api_error(rec, "get", TransientError(f"no answer within {timeout}s to the deadline look"))
            return False
        except NotFound as exc:
            state.api_error(rec, "get", exc)
            await self.record_not_found(rec, now)
            return True
        except APIError as exc:
            state.api_error(rec, "get", exc)
            self._reschedule_after_error(rec, client, now)
            return False
        status = observed.get("status")
        answered = isinstance(status, str) and status in API_STATUSES
        if answered:
            rec.answered_at = now
        if self._changes(rec, observed):
            state.metrics.saw_status(rec.status, observed, state.clock())
            mark = self._next_mark(rec, now)
            row = await state.writer.run_grouped(
                state.queries.write_observations, Observed(rec.id, observed, reason, mark)
            )
            self._after_look(rec, row, now)
        else:
            self.marks[rec.id] = self._next_mark(rec, now)
            rec.next_poll_at = self.marks[rec.id].next_poll_at
        return answered

    async def record_not_found(self, rec: Active, asked_at: float) -> None:
        """A 404 (to a look or a cancel) counts as a poll, toward `lost_after`."""
        state = self.state
        row = await state.writer.run(state.queries.write_not_found, rec.id, self._next_mark(rec, asked_at))
        self._after_look(rec, row, asked_at)

    async def flush(self) -> None:
        """Write the polls counted in memory, and clear the confirmation windows seen through."""
        state = self.state
        if not (self.marks or state.confirmed):
            return
        marks, self.marks = self.marks, {}
        confirmed, state.confirmed = state.confirmed, {}
        await state.writer.run(state.queries.write_marks, marks, confirmed)

    def _changes(self, rec: Active, observed: dict[str, Any]) -> bool:
        """Does this observation need a transaction now (not just a batched poll count)?

        A new status does, and so do facts the policy depends on that the store lacks
        (a server may omit metadata in one answer and send it in the next). A terminal
        status seen again does not: its outcome was recorded when it was first seen.
        """
        status = observed.get("status") if isinstance(observed.get("status"), str) else None
        return status != rec.status or facts_after(observed, rec.facts) != rec.facts

    def _next_mark(self, rec: Active, now: float) -> PollMark:
        previous = self.marks.pop(rec.id, None)
        polling = self.state.config.polling
        rec.interval = next_interval(rec.interval, polling, self._safety_poll(rec))
        return PollMark(
            polls=(previous.polls if previous else 0) + 1,
            last_polled_at=now,
            next_poll_at=now + jittered(rec.interval, polling.jitter, self.state.rng),
            interval=rec.interval,
        )

    def _after_look(self, rec: Active, row: Response | None, now: float) -> None:
        if row is None:  # removed from the store behind our back
            rec.status, rec.cancel_state, rec.confirm_until, rec.next_poll_at = "lost", "none", None, None
            return
        self.state.note_spend_change(rec, row)
        rec.refresh(row)
        rec.next_poll_at = row.next_poll_at if not rec.finished(now) else None

    def _reschedule_after_error(self, rec: Active, client: ResponsesClient, now: float) -> None:
        polling = self.state.config.polling
        rec.interval = next_interval(rec.interval, polling, self._safety_poll(rec))
        delay = max(jittered(rec.interval, polling.jitter, self.state.rng), client.pause_remaining())
        rec.next_poll_at = now + delay

    def _safety_poll(self, rec: Active) -> float | None:
        """`[webhooks] safety_poll` when webhooks are on; None (the plain backoff) when they
        are off, and in the confirmation window after a cancel, which no webhook shortens."""
        webhooks = self.state.config.webhooks
        return webhooks.safety_poll if webhooks is not None and rec.confirm_until is None else None
