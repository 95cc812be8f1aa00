"""The daemon's lifecycle: start-up, the periodic jobs, signals, reload and shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from tether import logs
from tether.api import ResponsesClient
from tether.cluster import Cluster
from tether.config import Config, ConfigError, load_config
from tether.daemon import queries
from tether.daemon.budget_watch import BudgetWatch
from tether.daemon.deadlines import Deadlines
from tether.daemon.pickup import PICKUP_EVERY, Pickup
from tether.daemon.polling import Polling
from tether.daemon.records import Active
from tether.daemon.sharing import Sharing
from tether.daemon.state import State
from tether.daemon.writer import StoreFailure
from tether.logs import log
from tether.notify import Notifier
from tether.pricing import Pricing
from tether.server.app import Server, ServerError
from tether.statuses import is_active
from tether.store import Store, WriterLock

FLUSH_EVERY = 1.0  # poll bookkeeping reaches the store at most this late
HEARTBEAT_EVERY = 5.0
SHUTDOWN_GRACE = 10.0  # in-flight requests may finish this long after SIGTERM


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
        cluster: Cluster | None = None,
    ) -> None:
        self.state = State(config, store, clock, cluster)
        self.cluster = cluster  # on a PostgreSQL store: this daemon's membership (tether/cluster.py)
        self.sharing = Sharing(self.state, cluster) if cluster is not None else None
        self.polling = Polling(self.state)
        self.deadlines = Deadlines(self.state, self.polling)
        self.pickup = Pickup(self.state)
        self.budgets = BudgetWatch(self.state)
        self.lock = lock  # the store's lock, held by the caller
        self.notify = notifier or Notifier()
        self.server = Server(self)
        self.config_path = config_path
        self._reload_note = "config loaded at start"
        self._reloading = asyncio.Lock()
        self._stats_since = time.monotonic()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        state = self.state
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, state.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: state.spawn(self.reload(), "reload"))
        state.clients = self._build_clients(state.config)
        if self.cluster is not None:
            self.cluster.start(lambda: loop.call_soon_threadsafe(self._lost))
        await self._load()
        try:
            await self.server.start()  # the doors open on a loaded daemon
        except ServerError as exc:
            log.critical("daemon.listen_failed", error=str(exc))
            await self._finish()
            return 1
        # What start-up loaded lives as long as the daemon: the cycle collector need not go
        # over it again (a full collection of 10,000 records stalled the loop 0.1 to 0.3 s).
        gc.freeze()
        await self._heartbeat()  # `tether check` is healthy from READY on
        scheduler = self._scheduler()
        scheduler.start()
        log.info(
            "daemon.started",
            pid=os.getpid(),
            **({"instance": self.cluster.instance, "shards": len(self.cluster.owned)} if self.cluster else {}),
            store=state.store.url,
            active=self._counts()[0],
            accounts=list(state.config.accounts),
            policies=[p.name for p in state.config.policies],
        )
        self.notify.ready(self._status())
        loops = [
            asyncio.create_task(self.polling.loop(), name="poll-loop"),
            asyncio.create_task(self.deadlines.loop(), name="timer-loop"),
            asyncio.create_task(self.budgets.loop(), name="budget-loop"),
        ]
        if self.sharing is not None:
            loops.append(asyncio.create_task(self.sharing.loop(), name="sharing-loop"))
        stopped = asyncio.create_task(state.stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
        log.info("daemon.stopping", active=self._counts()[0], in_flight=len(state.tasks))
        self.notify.stopping()
        await self.server.stop()  # nothing new comes in while the rest winds down
        scheduler.shutdown(wait=False)
        for task in [stopped, *loops]:
            task.cancel()
        for task in loops:
            if task in done and not task.cancelled() and task.exception() is not None:
                state.failure = state.failure or task.exception()
        await self._drain()
        await self._finish()
        code = 0
        if state.failure is not None:
            log.error("daemon.failed", error=str(state.failure))
            code = 1
        log.info("daemon.stopped", exit_code=code)  # the last line: everything is written by now
        return code

    def stop(self) -> None:
        self.state.stop.set()

    async def _load(self) -> None:
        """Schedule every open response in the store, a page at a time (bounded memory). With
        several daemons on the store, only those of the shards this one takes at first."""
        state = self.state
        if self.sharing is not None:
            # The CLI's events from now on are picked up; what it wrote before is in the rows loaded.
            self.pickup.event_cursor = await state.writer.run(state.queries.read_last_event)
            await self.sharing.run_once()
            return
        self.pickup.event_cursor = await state.writer.run(state.queries.read_event_cursor)
        after = ""
        while True:
            rows = await state.writer.run(state.queries.read_open_rows, after)
            for row in rows:
                state.add(Active.loaded(row))
            if len(rows) < queries.LOAD_PAGE:
                return
            after = rows[-1].id

    def _scheduler(self) -> AsyncIOScheduler:
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        scheduler = AsyncIOScheduler(timezone="UTC")
        jobs = [
            (self.pickup.run, "pickup", PICKUP_EVERY),
            (self.polling.flush, "flush", FLUSH_EVERY),
            (self._heartbeat, "heartbeat", HEARTBEAT_EVERY),
        ]
        if self.state.config.log.stats_interval > 0:
            jobs.append((self._log_stats, "log_stats", self.state.config.log.stats_interval))
        if self.notify.watchdog_interval:
            # Pinged from the event loop itself: a blocked loop stops the pings and
            # systemd's watchdog restarts the service.
            jobs.append((self._watchdog, "watchdog", self.notify.watchdog_interval))
        for job, name, every in jobs:
            scheduler.add_job(
                self._guarded(job, name),
                "interval",
                seconds=every,
                id=name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        return scheduler

    def _guarded(self, job: Callable[[], Any], name: str) -> Callable[[], Any]:
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
                log.error("daemon.error", job=name, error=repr(exc))

        run.__name__ = name
        return run

    async def _drain(self) -> None:
        """Let in-flight requests finish for a bounded time, then cancel the rest."""
        pending = {t for t in self.state.tasks if not t.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=SHUTDOWN_GRACE)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)

    async def _finish(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)  # its heartbeat first: the row goes below
        try:
            await self.polling.flush()
            if self.state.failure is None:  # a failed daemon says nothing more (its lock may be another's)
                stopped = self.cluster.leave if self.cluster is not None else self.state.queries.write_stopped
                await self.state.writer.run(stopped)
        except StoreFailure:
            pass
        for client in self.state.clients.values():
            await client.aclose()
        # Off the event loop: the last batches settle their callers (periodic jobs among
        # them) through it, so they end here rather than being cancelled at exit.
        await asyncio.to_thread(self.state.writer.shutdown)
        self.notify.close()

    def _build_clients(self, config: Config) -> dict[str, ResponsesClient]:
        return {name: ResponsesClient(account, account.read_api_key()) for name, account in config.accounts.items()}

    # ---- periodic jobs ---------------------------------------------------------

    def _lost(self) -> None:
        """The heartbeat found this daemon replaced: its session was ended (it froze, or the
        database restarted). It stops at once; its lease is over, so nothing more is sent."""
        state = self.state
        state.failure = state.failure or StoreFailure("the lock session was ended")
        log.critical(
            "daemon.lock_lost",
            instance=self.cluster.instance if self.cluster else None,
            hint="this daemon's database session was ended (it was frozen past [cluster] takeover, or the "
            "database restarted); others have taken its shards; stopping (systemd starts it afresh)",
        )
        state.stop.set()

    async def _heartbeat(self) -> None:
        state = self.state
        if self.cluster is not None:  # its heartbeat thread keeps its row (tether/cluster.py)
            if self.notify.enabled:
                self.notify.status(self._status())
            return
        if self.lock is not None and not await asyncio.to_thread(self.lock.held):
            state.failure = state.failure or StoreFailure("the single-writer lock was lost")
            log.critical(
                "daemon.lock_lost",
                hint="the store's database server ended this daemon's session and its lock (a restart?); "
                "stopping, so that two daemons never run on one store",
            )
            state.stop.set()
            return
        await state.writer.run(state.queries.write_heartbeat, self.pickup.event_cursor)
        if self.notify.enabled:  # the status line counts every record: only for systemd
            self.notify.status(self._status())

    async def _log_stats(self) -> None:
        now = time.monotonic()
        log.info("daemon.stats", **self.state.stats.take(now - self._stats_since, *self._counts()))
        self._stats_since = now

    def _counts(self) -> tuple[int, int]:
        """(active, confirming): what `tether ls --active` shows (queued, in_progress or not seen
        yet), and the finished ones still watched: a confirmation window after a cancel, or a
        cancel not yet answered."""
        active = sum(1 for rec in self.state.active.values() if is_active(rec.status))
        return active, len(self.state.active) - active

    async def _watchdog(self) -> None:
        self.notify.watchdog()

    def _status(self) -> str:
        active, confirming = self._counts()
        watched = f" ({confirming} finished, confirming)" if confirming else ""
        return f"tracking {active} active responses{watched}; {self._reload_note}"

    # ---- reload ----------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP: re-read the config; an invalid one is logged and the old one stays."""
        state = self.state
        async with self._reloading:
            self.notify.reloading()
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
                changed = {
                    name: ResponsesClient(account, account.read_api_key())
                    for name, account in config.accounts.items()
                    if state.config.accounts.get(name) != account
                }
                if config.webhooks is not None and config.webhooks != state.config.webhooks:
                    config.webhooks.read_secret()  # as a key: one that cannot be read fails the reload
            except ConfigError as exc:
                log.error("daemon.reload_failed", error=str(exc), hint="the previous config stays in force")
                self._reload_note = f"reload FAILED at {time.strftime('%H:%M:%S')}: {exc}; previous config in force"
                self.notify.ready(self._status())
                return
            retired = [c for name, c in state.clients.items() if name in changed or name not in config.accounts]
            state.clients = {name: changed.get(name) or state.clients[name] for name in config.accounts}
            state.config = config
            state.pricing = Pricing.from_config(config)
            logs.configure(config.log.format, config.log.level)
            rows = await state.writer.run(state.queries.reapply_policies, list(state.active))
            for row in rows:
                if row.id in state.active:
                    state.active[row.id].refresh(row)
                    state.schedule(state.active[row.id])
            state.spawn(self._close_later(retired), "close-retired-clients")
            log.info(
                "daemon.reloaded",
                config=str(config.path) if config.path else None,
                accounts=list(config.accounts),
                policies=[p.name for p in config.policies],
                active=self._counts()[0],
            )
            state.budget_wake.set()
            self._reload_note = f"config reloaded at {time.strftime('%H:%M:%S')}"
            self.notify.ready(self._status())

    async def _close_later(self, clients: list[ResponsesClient]) -> None:
        if not clients:
            return
        await asyncio.sleep(max(c.account.request_timeout for c in clients))
        for client in clients:
            await client.aclose()
