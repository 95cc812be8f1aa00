"""The stand-in API, served from a thread of the harness process.

Responses are created in-process (`FakeState.create`), which is how 100,000 of them exist in
a second. The harness's main thread only sleeps while a measurement runs, so the server's
thread has a core to itself; its CPU time is read per thread from /proc.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from bench.procs import cpu_seconds
from tether.fakeapi import FakeServer
from tether.fakeapi.state import Record

API_KEY = "sk-bench-not-a-real-key"
LONG_RUN = 86_400.0  # a response that outlives the benchmark


class Stand:
    def __init__(self) -> None:
        self.server = FakeServer(api_key=API_KEY)
        self.state = self.server.state
        self._thread: threading.Thread | None = None
        self.first_get: float | None = None
        self._watch_first = False
        original = self.state.get

        def get(response_id: str) -> Record:
            if self._watch_first and self.first_get is None:
                self.first_get = time.time()
            return original(response_id)

        self.state.get = get  # type: ignore[method-assign]  # this instance only

    def __enter__(self) -> Stand:
        self.server.start()
        self._thread = next(t for t in threading.enumerate() if t.name == f"fakeapi:{self.server.port}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def watch_first_get(self) -> None:
        """From now on, remember when the next GET arrives (the restart measurement)."""
        self.first_get = None
        self._watch_first = True

    def cpu(self) -> float:
        """CPU seconds used by the server's thread."""
        assert self._thread is not None and self._thread.native_id is not None
        return cpu_seconds("self", self._thread.native_id)

    def requests(self, route: str = "get") -> int:
        with self.state.lock:
            return self.state.requests[route]

    def create(
        self,
        count: int,
        *,
        created_at: Callable[[int], float] | None = None,
        metadata: Callable[[int], dict[str, str]] | None = None,
        model: str = "o3-pro",
    ) -> list[Record]:
        """`count` background responses, built in-process (as POST /_fake/responses would)."""
        records = [
            self.state.create(
                model,
                background=True,
                metadata=metadata(i) if metadata else {"fake_run": f"{LONG_RUN:g}"},
                created_at=created_at(i) if created_at else None,
            )
            for i in range(count)
        ]
        # The records live as long as the run: Python's cycle collector need not go over them
        # again. Without this, its full collections of 10,000 records and their request logs
        # stalled the stand-in's loop 0.1 to 0.3 s, which the deadline scenario measured as
        # tether's lateness.
        gc.freeze()
        return records

    def records(self, ids: Iterable[str]) -> list[Record]:
        return [self.state.record(i) for i in ids]

    def snapshot_counts(self) -> dict[str, Any]:
        with self.state.lock:
            return dict(self.state.requests)
