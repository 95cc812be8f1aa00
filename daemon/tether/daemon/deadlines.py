"""The deadline and cancel loop: deadlines and cancel retries have a timer heap and a loop of
their own, so a cancel leaves at its deadline however busy polling is. A deadline is taken up
`state.DECISION_LEAD` early: its decision is written and committed ahead, its cancel leaves at
the deadline, and polls are held back while the cancel is out."""

from __future__ import annotations

import asyncio
import functools
import heapq

from tether import cancelling
from tether.api import NotFound
from tether.cancelling import Outcome
from tether.cluster import Fenced
from tether.daemon.polling import Polling
from tether.daemon.records import Active
from tether.daemon.state import State
from tether.daemon.writer import StoreFailure
from tether.logs import log
from tether.models import CancelState, Response
from tether.schedule import cancel_retry_delay
from tether.statuses import is_active

DEADLINE_BATCH = 500  # deadlines due together are decided in transactions of up to this many
LOOK_TIMEOUT = 0.5  # the look (GET) just before acting on a deadline; then act on what we know


class Deadlines:
    def __init__(self, state: State, polling: Polling) -> None:
        self.state = state
        self.polling = polling  # its looks, and its valve that holds polls back while cancels are out

    async def loop(self) -> None:
        state = self.state
        while True:
            state.timer_wake.clear()
            now = state.clock()
            deadlines: dict[float, list[Active]] = {}  # by deadline: each one's decided together
            while state.timers and state.timers[0][0] <= now:
                _, _, rid, kind, due = heapq.heappop(state.timers)
                rec = state.active.get(rid)
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
                        state.spawn(self._retry_cancel(rec), f"cancel:{rid}")
            for due, recs in deadlines.items():
                for start in range(0, len(recs), DEADLINE_BATCH):
                    batch = recs[start : start + DEADLINE_BATCH]
                    state.spawn(self._enforce(batch, due), f"deadlines:{len(batch)}")
            await state.sleep(state.timer_wake, state.timers[0][0] - state.clock() if state.timers else None)

    async def _enforce(self, recs: list[Active], at: float) -> None:
        """Deadlines falling due at `at`, taken up DECISION_LEAD before: decide them in one
        transaction, committed ahead, then send their cancels at once at `at`, not before."""
        state = self.state
        try:
            # Only what may have left the queue is looked at (`_deadline_look`), at the
            # deadline itself; a burst of in_progress deadlines goes straight to its decisions.
            # But a deadline that passed before this daemon started was not watched: an
            # in_progress seen then may have ended since, and is looked at too.
            to_look = [rec for rec in recs if rec.status != "in_progress" or at < state.started_at]
            if to_look:
                await state.until(at)
            answers = await asyncio.gather(*(self._deadline_look(rec) for rec in to_look))
            looked = {rec.id for rec, answered in zip(to_look, answers, strict=True) if answered}
            for rec in to_look:
                rec.look_failures = 0 if rec.id in looked else rec.look_failures + 1
            due = [rec for rec in recs if rec.id in state.active and is_active(rec.status)]
            if not due:
                return
            decisions = await state.writer.run(
                state.queries.write_decisions, [(rec.id, rec.id in looked) for rec in due], at, urgent=True
            )
            await state.until(at)
            cancels = []
            for rec, (row, cancel) in zip(due, decisions, strict=True):
                if row is None:  # forgotten meanwhile: nothing decided
                    continue
                rec.refresh_state(row)
                if cancel:
                    rec.next_cancel_at = None
                    overrun = state.clock() - at
                    state.stats.cancel_at_deadline(overrun)
                    state.metrics.deadline_overrun.observe(overrun)
                    state.metrics.cancel_requested(row.cancel_reason)
                    cancels.append(rec)
            await self._send_cancels(cancels, "deadline")
        except StoreFailure:
            pass
        except Exception as exc:
            log.error("daemon.error", op="deadline", responses=len(recs), error=repr(exc))
        finally:
            for rec in recs:
                rec.enforcing = False
                if rec.deadline_at is not None and rec.deadline_at <= max(at, state.clock()):
                    # Not acted on: the look failed. A poll that sees the same status again
                    # writes nothing and would not bring the deadline back, so it is retried
                    # here (in memory; the stored deadline stays the real one).
                    rec.deadline_at = self._retry_at(rec, rec.look_failures)
                state.schedule(rec)

    def _retry_at(self, rec: Active, attempts: int, retry_after: float | None = None) -> float:
        """When to try a failed cancel, or a failed look before one, again: the cancel's
        backoff (1 s, 2 s, 4 s ... up to 60 s; `Retry-After` a floor), and not before the
        account's pause is over."""
        delay = cancel_retry_delay(attempts, retry_after, self.state.rng)
        return self.state.clock() + max(delay, self.state.clients[rec.account].pause_remaining())

    async def _deadline_look(self, rec: Active) -> bool:
        """Look (GET) before acting, where a fresher status could spare the response: a queued
        one may have started (max_queued no longer applies). A max_runtime deadline holds
        whatever the active status, and the cancel's own answer says if it ended meanwhile,
        so an in_progress response is not looked at (`_enforce`). True when the look answered."""
        try:
            return await self.polling.look(rec, "deadline", LOOK_TIMEOUT)
        except StoreFailure:
            return False
        except Exception as exc:
            log.error("daemon.error", response_id=rec.id, op="deadline", error=repr(exc))
            return False

    async def _retry_cancel(self, rec: Active) -> None:
        try:
            if rec.id in self.state.look_first:
                # Taken over from a daemon that may have sent it: what the response is now says.
                if not await self._deadline_look(rec):
                    rec.next_cancel_at = self._retry_at(rec, rec.cancel_attempts)
                    return
                self.state.look_first.discard(rec.id)
            await self._send_cancels([rec], "cancel")
        finally:
            rec.enforcing = False
            self.state.schedule(rec)

    async def _send_cancels(self, recs: list[Active], op: str) -> None:
        """Send the cancels at once (polls held back meanwhile), then record their answers and
        their failures to retry in one transaction. None leaves unless this daemon's lease
        runs (tether/cluster.py): checked before the burst, and before each cancel."""
        state = self.state
        if recs and not await state.lease():
            self._fenced(recs)
            return
        with self.polling.held():
            replies = await asyncio.gather(*(self._cancel_one(rec) for rec in recs), return_exceptions=True)
        outcomes: list[tuple[Active, Outcome]] = []
        self._fenced([rec for rec, reply in zip(recs, replies, strict=True) if isinstance(reply, Fenced)])
        for rec, reply in zip(recs, replies, strict=True):
            if isinstance(reply, Fenced):
                continue
            if isinstance(reply, BaseException):
                if not isinstance(reply, (StoreFailure, asyncio.CancelledError)):  # those stop the daemon
                    self._cancel_broke(rec, op, reply)
            elif reply is not None:
                outcomes.append((rec, reply))
        if not outcomes:
            return
        try:
            rows = await state.writer.run(
                state.queries.write_cancels_settled, [(rec.id, outcome) for rec, outcome in outcomes]
            )
        except StoreFailure:
            return
        except Exception as exc:
            for rec, _ in outcomes:
                self._cancel_broke(rec, op, exc)
            return
        for (rec, outcome), row in zip(outcomes, rows, strict=True):
            if outcome.failed is None:
                self._after_cancel(rec, row)
            else:
                if row is not None:
                    rec.refresh(row)
                rec.next_cancel_at = self._retry_at(rec, rec.cancel_attempts, outcome.failed.retry_after)

    def _fenced(self, recs: list[Active]) -> None:
        """Cancels held back: tried again once a heartbeat has renewed the lease (if one can)."""
        if not recs:
            return
        log.warning(
            "daemon.fenced",
            cancels=len(recs),
            response_ids=[rec.id for rec in recs[:10]],
            hint="this daemon's lease ran out (frozen, or cut off from the database): the cancels were not sent",
        )
        cluster = self.state.cluster
        retry_at = self.state.clock() + (cluster.timing.beat_every if cluster is not None else 1.0)
        for rec in recs:
            rec.next_cancel_at = retry_at

    def _cancel_broke(self, rec: Active, op: str, exc: BaseException) -> None:
        log.error("daemon.error", response_id=rec.id, op=op, error=repr(exc))
        rec.next_cancel_at = self.state.clock() + self.state.config.polling.max_interval

    async def _cancel_one(self, rec: Active) -> Outcome | None:
        """Call cancel (`cancelling.send`); returns its outcome to record with the burst's (an
        answer, or a failure to retry), or None after a 404 (recorded here)."""
        state = self.state
        outcome = await cancelling.send(
            state.clients[rec.account],
            rec.id,
            rec.status,
            state.clock(),
            on_error=functools.partial(state.api_error, rec),
            fence=state.cluster.fence if state.cluster is not None else None,
        )
        if isinstance(outcome.failed, NotFound):
            await self.polling.record_not_found(rec, outcome.asked_at)
            return None
        return outcome

    def _after_cancel(self, rec: Active, row: Response | None) -> None:
        rec.next_cancel_at = None
        if row is None:
            return
        self.state.note_spend_change(rec, row)
        rec.refresh(row)
        rec.interval = row.poll_interval
        rec.next_poll_at = row.next_poll_at
