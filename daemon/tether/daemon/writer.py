"""The store thread: every store function the daemon calls runs there, in batched transactions,
so that an fsync never stalls the event loop."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from tether.store import Store

T = TypeVar("T")
# fn, args, its caller's future, and whether it is grouped (`run_grouped`)
StoreJob = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], bool]
# One call of fn for the jobs of these futures (one job's, or a group's)
Call = tuple[Callable[..., Any], tuple[Any, ...], list[asyncio.Future[Any]], bool]
Outcomes = list[tuple[asyncio.Future[Any], Any, BaseException | None]]  # (future, result, error) each


class StoreFailure(Exception):
    """The store refused a write: the daemon stops rather than drop transitions."""


class StoreWriter:
    """Runs store functions on one worker thread with group commit.

    The functions queued while the store thread is busy run together in one transaction (one
    fsync), each in its own savepoint; each caller resumes once that transaction has committed,
    so what it wrote is durable before it goes on. Urgent ones (a deadline's decisions) go
    first, in a transaction of their own: a cancel waits for the transaction already running,
    not for everything queued behind it. Grouped ones (`run_grouped`) queued together are one
    call of their function, for all their items: one statement for many, not one each.
    """

    def __init__(
        self,
        store: Store,
        on_failure: Callable[[OperationalError], None],
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self._on_failure = on_failure  # a store error: logged and the daemon stopped there
        self._on_commit = on_commit  # a batch committed (counted by the metrics)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tether-store")
        self._jobs: list[StoreJob] = []
        self._urgent: list[StoreJob] = []  # run before `_jobs`
        self._lock = threading.Lock()
        self._draining = False

    async def run(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> T:
        """Run `fn(*args)` on the store thread; a store error raises StoreFailure (after
        `on_failure`), any other error of `fn` is raised as is."""
        return await self._queue((fn, args, asyncio.get_running_loop().create_future(), False), urgent)

    async def run_grouped(self, fn: Callable[[list[Any]], list[T]], item: Any) -> T:
        """`fn(items)[i]` for this item: the items queued with the same `fn` while the store
        thread is busy are given to one call, which returns a result per item, in order
        (an error of that call is every item's)."""
        return await self._queue((fn, (item,), asyncio.get_running_loop().create_future(), True), False)

    async def _queue(self, job: StoreJob, urgent: bool) -> Any:
        loop = asyncio.get_running_loop()
        future = job[2]
        with self._lock:
            (self._urgent if urgent else self._jobs).append(job)
            start, self._draining = not self._draining, True
        if start:
            self._thread.submit(self._run_batches, loop)
        try:
            return await future
        except OperationalError as exc:  # disk full, read-only, I/O error: not one response's data
            self._on_failure(exc)
            raise StoreFailure(str(exc)) from exc

    def shutdown(self) -> None:
        """Wait for the last batches (blocking: call it off the event loop)."""
        self._thread.shutdown(wait=True)

    def _run_batches(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the store thread: run the queued store functions, a batch per transaction."""
        while True:
            with self._lock:
                if self._urgent:
                    jobs, self._urgent = self._urgent, []
                else:
                    jobs, self._jobs = self._jobs, []
                if not jobs:
                    self._draining = False
                    return
            outcomes: Outcomes = []
            try:
                with self.store.batch():
                    # The first callback once the batch has committed: its callers (cancels
                    # waiting for their decision) go on before the batch's log lines are written.
                    self.store.after_commit(functools.partial(loop.call_soon_threadsafe, _settle, outcomes))
                    self.store.after_commit(self._on_commit)
                    for fn, args, futures, grouped in _calls(jobs):
                        try:
                            result = fn(*args)
                            results = result if grouped else [result]
                            outcomes.extend((f, r, None) for f, r in zip(futures, results, strict=True))
                        except Exception as exc:  # its savepoint is rolled back; the others go on
                            outcomes.extend((f, None, exc) for f in futures)
            except Exception as exc:  # the commit failed: nothing of this batch is durable
                failed: Outcomes = [(job[2], None, exc) for job in jobs]
                loop.call_soon_threadsafe(_settle, failed)


def _calls(jobs: list[StoreJob]) -> list[Call]:
    """The calls to make for these jobs, in order: grouped jobs of one function are one call
    (where the first of them was), given the list of their items."""
    calls: list[Call] = []
    groups: dict[Callable[..., Any], Call] = {}
    for fn, args, future, grouped in jobs:
        if not grouped:
            calls.append((fn, args, [future], False))
        elif (call := groups.get(fn)) is not None:
            call[1][0].append(args[0])
            call[2].append(future)
        else:
            groups[fn] = call = (fn, ([args[0]],), [future], True)
            calls.append(call)
    return calls


def _settle(outcomes: Outcomes) -> None:
    """Resolve the futures of a batch's jobs."""
    for future, result, error in outcomes:
        if future.done():  # its caller was cancelled meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
