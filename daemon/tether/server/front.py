"""`Front`: the operations every door of the daemon calls (the control API, the proxy, webhooks).

They run on the daemon's event loop and share its parts: the API clients of its accounts,
its store thread for writes (`State.writer`), its scheduler, which takes a response tracked
here at once. The store work is the CLI's own (tether.actions), so an answer is the same
whichever way a command went. The readers (`list`, `show`, `events`, `budgets`, `health`)
are plain functions that open their own read session: the routes run them off the loop, on
the few reading threads of `read`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar, cast

from tether import actions, render
from tether.actions import Refused
from tether.config import Config

if TYPE_CHECKING:
    from tether.api import APIError, ResponsesClient
    from tether.daemon import Daemon
    from tether.daemon.state import State
    from tether.models import Response

T = TypeVar("T")
# The readers of the doors run on this many threads at most: each thread reading and rendering
# records takes the interpreter from the event loop, whose deadlines and proxied creates wait.
READERS = 2
Record = dict[str, Any]  # a JSON shape of docs/cli.md
Records = list[Record]  # (named here: inside Front, `list` is the method)
Tracked = list[tuple[Record, bool]]  # (record, newly tracked) each
Observed = list[tuple[str, dict[str, Any] | None]]  # (id, what the API said of it, if looked up)

FrontError = (
    Refused  # status 400 bad input · 404 not found · 409 nothing to do · 502 the API failed · 503 the daemon cannot
)


class Front:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.state = daemon.state
        self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="tether-read")

    def close(self) -> None:
        self._readers.shutdown(wait=False, cancel_futures=True)

    @property
    def config(self) -> Config:
        return self.state.config

    # ---- acting (on the event loop) ------------------------------------------------

    async def track(
        self, ids: list[str], *, policy: str | None, account: str | None, labels: dict[str, str], verify: bool
    ) -> Records:
        return [
            record
            for record, _ in await self.track_records(ids, policy=policy, account=account, labels=labels, verify=verify)
        ]

    async def track_records(
        self, ids: list[str], *, policy: str | None, account: str | None, labels: dict[str, str], verify: bool
    ) -> Tracked:
        """(record, newly tracked) for each id, in the order given, duplicates dropped."""
        for rid in ids:
            actions.checked_id(rid)
        if not ids:
            raise Refused(400, "no response ids given", "invalid_ids")
        ids = list(dict.fromkeys(ids))
        config = self.config
        account = actions.check_names(config, policy, account)
        observed: list[dict[str, Any] | None] = [None] * len(ids)
        if verify:
            observed = [*await actions.look_up(self._client(account), ids, account)]
        return await self._store(list(zip(ids, observed, strict=True)), account=account, policy=policy, labels=labels)

    async def track_created(self, response: dict, *, account: str, policy: str | None, labels: dict[str, str]) -> dict:
        """Track a response created through the daemon; returns once it is committed, with
        the other creates of the store thread's batch (one insert for them all)."""
        from tether.daemon.queries import Created

        actions.checked_id(str(response.get("id")))
        state = self.state
        row, created = await state.writer.run_grouped(
            state.queries.write_created, Created(response, account, policy, labels)
        )
        if created:
            state.adopt(row)
        state.budget_wake.set()
        return render.record(row)

    async def submit(self, body: dict, *, policy: str | None, account: str | None, labels: dict[str, str]) -> dict:
        config = self.config
        account = actions.check_names(config, policy, account)
        created = await actions.create(self._client(account), actions.checked_body(body))
        return await self.track_created(created, account=account, policy=policy, labels=labels)

    async def cancel(self, rid: str, *, reason: str | None) -> dict:
        state = self.state
        row, failure = await actions.cancel(
            state.store,
            state.config,
            state.pricing,
            self._client,
            rid,
            reason,
            run=state.writer.run,
            origin="daemon",
        )
        state.metrics.cancel_requested("manual")  # the daemon's own writes: the pickup does not see them
        state.adopt(row)  # its confirmation polls, or the retries of a cancel that failed
        if failure is not None:
            raise failure
        return render.record(row)

    async def record_manual_cancel(self, rid: str, answer: dict | None) -> None:
        """A cancel sent upstream by someone else (through the proxy): recorded as manual, and its answer settled."""
        from tether import cancelling, tracker
        from tether.cancelling import Outcome
        from tether.models import CancelState, Response

        state = self.state

        def record() -> tuple[Response | None, bool]:
            with tracker.recording(state.store, "daemon", state.clock()) as rec:
                row = rec.session.get(Response, rid)
                if row is None:
                    return None, False
                requested = row.cancel_state != CancelState.PENDING.value
                if requested:
                    tracker.request_cancel(rec, row, "manual")
                if answer is not None:
                    cancelling.settle(rec, row, Outcome(rec.now, answer), state.config, state.pricing)
                return row, requested

        row, requested = await state.writer.run(record)
        if requested:
            state.metrics.cancel_requested("manual")
        if row is not None:
            state.adopt(row)

    def budget_refusal(
        self,
        *,
        account: str,
        model: str | None,
        metadata: dict[str, str],
        labels: dict[str, str],
        policy: str | None,
        max_output_tokens: int | None,
    ) -> str | None:
        """The first `cancel` budget in whose scope a new response would go and that cannot
        afford what it would reserve (or is exceeded already), else None. Reads the store."""
        from tether import accounting

        config, pricing = self.config, self.state.pricing
        budgets = [
            b
            for b in config.budgets
            if b.on_exceed == "cancel" and b.match.fits(model=model, metadata=metadata, account=account, labels=labels)
        ]
        if not budgets:
            return None
        chosen = config.select_policy(named=policy, model=model, metadata=metadata, account=account, labels=labels)
        cost = pricing.reservation(model, max_output_tokens, chosen.reserve_usd if chosen else None, None) or 0.0
        with self.state.store.reading() as session:
            measured = {m.budget.name: m.state for m in accounting.measure(session, config, pricing, time.time())}
        for budget in budgets:
            standing = measured[budget.name]
            if standing.state == "exceeded" or standing.remaining_usd < cost:
                return budget.name
        return None

    async def poll_now(self, rid: str) -> bool:
        rec = self.state.active.get(rid)
        if rec is None:
            return False
        rec.next_poll_at = self.state.clock()
        self.state.schedule(rec)
        return True

    # ---- reading (plain functions: run them off the loop) ------------------------------

    async def read(self, reader: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`reader(*args, **kwargs)` on one of the daemon's reading threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(reader, *args, **kwargs))

    def list(
        self, *, statuses: list[str], active: bool, policy: str | None, labels: dict[str, str], limit: int
    ) -> Records:
        return actions.list_records(
            self.state.store, self.config, statuses=statuses, active=active, policy=policy, labels=labels, limit=limit
        )

    def show(self, rid: str) -> dict:
        return actions.show_record(self.state.store, rid)

    def events(self, *, rid: str | None, since: float | None, after_id: int) -> Records:
        return actions.read_events(self.state.store, rid=rid, since=since, after_id=after_id)

    def budgets(self) -> Records:
        return actions.budget_records(self.state.store, self.config, self.state.pricing)

    def health(self) -> dict:
        store = self.state.store
        healthy, message = actions.health(store, self.holds_lock(), time.time())
        daemons = actions.daemons(store)
        return {"healthy": healthy, "message": message, **({"daemons": daemons} if daemons is not None else {})}

    def holds_lock(self) -> bool:
        """The daemon runs on its store's single-writer lock, not lost (its heartbeat checks it)."""
        return self.daemon.lock is not None and self.state.failure is None and not self.state.stop.is_set()

    def store_answers(self) -> bool:
        from sqlalchemy import text

        try:
            with self.state.store.reading() as session:
                session.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    # ---- the daemon's parts -------------------------------------------------------------

    def _client(self, account: str) -> ResponsesClient:
        client = self.state.clients.get(account)
        if client is None:
            raise Refused(503, f"account {account!r} is not configured in the running daemon", "unknown_account")
        return cast("ResponsesClient", LoggedClient(client, self.state))

    async def _store(self, items: Observed, *, account: str, policy: str | None, labels: dict[str, str]) -> Tracked:
        state = self.state
        store_them = functools.partial(
            actions.track_rows,
            state.config,
            state.store,
            items,
            account=account,
            policy=policy,
            labels=labels,
            origin="daemon",
        )
        tracked = await state.writer.run(store_them)
        for row, created in tracked:
            if created:
                state.adopt(row)  # scheduled now, not at the next pickup
        state.budget_wake.set()
        return [(render.record(row), created) for row, created in tracked]


class LoggedClient:
    """An account's client whose failed attempts are `api.error` lines in the daemon's log, as
    those of its own polls and cancels are: every API call the daemon makes that fails is
    logged, whichever door asked for it, retried attempts included."""

    def __init__(self, client: ResponsesClient, state: State) -> None:
        self._client = client
        self._state = state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def get(self, response_id: str, **options: Any) -> dict[str, Any]:
        return await self._client.get(response_id, on_failure=self._logger("get", response_id), **options)

    async def cancel(self, response_id: str, **options: Any) -> dict[str, Any]:
        return await self._client.cancel(response_id, on_failure=self._logger("cancel", response_id), **options)

    async def create(self, body: dict[str, Any], **options: Any) -> dict[str, Any]:
        return await self._client.create(body, on_failure=self._logger("create", None), **options)

    def _logger(self, op: str, response_id: str | None) -> Callable[[APIError], None]:
        account = self._client.account.name
        return lambda exc: self._state.log_api_error(account, response_id, op, exc)
