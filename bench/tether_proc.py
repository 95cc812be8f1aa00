"""tether under test: its config, a store filled with tether's own code, and `tether run`.

The store is filled with tether's own code (`tracker.track`, and a verified bulk path built from
tracker's functions, origin "cli"); `spread` then rewrites only the scheduling columns
(`next_poll_at`, `poll_interval`) so that a benchmark starts from the steady state of
responses tracked at different times, not from N polls all due at once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, update

from bench.procs import cpu_seconds, memory_mb
from bench.stand import API_KEY

KEY_ENV = "TETHER_BENCH_KEY"

CONFIG = """\
[store]
url = "sqlite:///{db}"

[log]
format = "json"
level = "info"
stats_interval = "{stats_interval}s"

[accounts.default]
base_url = "{base_url}"
api_key_env = "{key_env}"
max_concurrency = {concurrency}

[polling]
first = "{first}s"
max_interval = "{max_interval}s"
backoff = {backoff}
jitter = {jitter}
{policies}
"""


@dataclass(frozen=True)
class Polling:
    first: float = 1.0
    max_interval: float = 60.0
    backoff: float = 1.5
    jitter: float = 0.1

    @classmethod
    def fixed(cls, interval: float, jitter: float = 0.0) -> Polling:
        return cls(first=interval, max_interval=interval, backoff=1.0, jitter=jitter)


@dataclass
class Tether:
    root: Path
    base_url: str
    polling: Polling = field(default_factory=Polling)
    policies: str = ""
    stats_interval: float = 10.0
    concurrency: int = 16
    proc: subprocess.Popen | None = None
    spawned_at: float | None = None
    started_at: float | None = None  # when daemon.started was seen in its log
    _log_offset: int = 0
    _log_lines: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)  # a fresh store every time (a retried scenario too)
        self.root.mkdir(parents=True)
        self.config_path.write_text(
            CONFIG.format(
                db=self.db_path,
                stats_interval=self.stats_interval,
                base_url=self.base_url,
                key_env=KEY_ENV,
                concurrency=self.concurrency,
                first=self.polling.first,
                max_interval=self.polling.max_interval,
                backoff=self.polling.backoff,
                jitter=self.polling.jitter,
                policies=self.policies,
            )
        )

    @property
    def config_path(self) -> Path:
        return self.root / "tether.toml"

    @property
    def db_path(self) -> Path:
        return self.root / "tether.db"

    @property
    def log_path(self) -> Path:
        return self.root / "daemon.log"

    def store_mb(self) -> float:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.db_path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total / 2**20

    # ---- filling the store ----------------------------------------------------

    def track(self, records: Sequence[Any], *, batch: int = 5000, now: float | None = None, verify: int = 50) -> float:
        """Track the stand-in's records as `tether track` would; returns the seconds it took.

        The first `verify` records go through `tracker.track` itself. The rest are bulk
        inserted as rows built by tether's own functions (`facts.fill_facts`, `facts.known_status`,
        `tracker.refresh_policy`), with no SQLModel object per row (constructing one costs ~0.5 ms);
        before that, the bulk rows built for the first records are compared column by
        column with what `tracker.track` stored, so the two paths provably agree.
        """
        from types import SimpleNamespace

        from sqlalchemy import insert, select
        from sqlalchemy import inspect as sa_inspect
        from sqlmodel import col

        from tether import logs, tracker
        from tether.config import load_config
        from tether.facts import fill_facts, known_status
        from tether.fakeapi.objects import response_object
        from tether.models import EVENTS, RESPONSES, EventKind, Response
        from tether.pricing import Pricing
        from tether.statuses import TERMINAL, Status, is_active
        from tether.store import Store

        logs.configure("json", "warning", stream=open(os.devnull, "w"))
        t0 = time.perf_counter()
        config = load_config(str(self.config_path), environ={KEY_ENV: API_KEY})
        pricing = Pricing.from_config(config)
        store = Store(config.store.url)
        store.ensure_schema()
        columns = [(attr.key, attr.columns[0].name) for attr in sa_inspect(Response).mapper.column_attrs]
        fresh = Response(id="", account="", tracked_at=0.0)
        defaults = {key: getattr(fresh, key) for key, _ in columns}

        def build(record: Any, at: float) -> tuple[dict[str, Any], dict[str, Any]]:
            observed = response_object(record, at)
            row: Any = SimpleNamespace(**{**defaults, "labels": {}, "meta": {}, "limits_hit": []})
            row.id, row.account, row.tracked_at, row.policy_requested = record.id, "default", at, None
            fill_facts(row, observed)
            row.status = known_status(observed)
            if row.status in TERMINAL:
                raise ValueError("the bulk path tracks active responses only")
            if row.status == Status.IN_PROGRESS.value:
                row.started_at = row.created_at
            tracker.refresh_policy(row, config)
            if is_active(row.status):
                row.next_poll_at = at + config.polling.first
            values = {name: getattr(row, key) for key, name in columns}
            event = {
                "at": at,
                "response_id": row.id,
                "budget": None,
                "kind": EventKind.TRACKED.value,
                "from_status": None,
                "to_status": row.status,
                "reason": None,
                "detail": {"account": "default", "policy": row.policy, "model": row.model, "labels": {}},
                "origin": "cli",
            }
            return values, event

        try:
            at = time.time() if now is None else now
            head = list(records[:verify])
            with tracker.recording(store, "cli", at) as rec:
                for record in head:
                    tracker.track(
                        rec,
                        config,
                        pricing,
                        response_id=record.id,
                        account="default",
                        observed=response_object(record, at),
                        policy_requested=None,
                        labels={},
                    )
            with store.reading() as session:
                stored = {
                    r.id: {name: getattr(r, key) for key, name in columns}
                    for r in session.execute(
                        select(Response).where(col(Response.id).in_([x.id for x in head]))
                    ).scalars()
                }
            for record in head:
                built, _ = build(record, at)
                if built != stored[record.id]:
                    diff = {k: (built[k], stored[record.id][k]) for k in built if built[k] != stored[record.id][k]}
                    raise AssertionError(f"bulk rows differ from tracker.track's: {diff}")
            for start in range(verify, len(records), batch):
                at = time.time() if now is None else now
                rows = [build(record, at) for record in records[start : start + batch]]
                with store.writing() as session:
                    conn = session.connection()
                    conn.execute(insert(RESPONSES), [values for values, _ in rows])
                    conn.execute(insert(EVENTS), [event for _, event in rows])
        finally:
            store.dispose()
        return time.perf_counter() - t0

    def spread(self, ids: Sequence[str], *, start: float, interval: float, seed: int = 1) -> None:
        """Steady state: each response's next poll uniformly within one `interval` from `start`."""
        from tether.models import RESPONSES
        from tether.store import Store

        rng = random.Random(seed)
        store = Store(f"sqlite:///{self.db_path}")
        table = RESPONSES
        statement = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values(next_poll_at=bindparam("b_next"), poll_interval=bindparam("b_interval"))
        )
        try:
            with store.writing() as session:
                session.connection().execute(
                    statement,
                    [{"b_id": i, "b_next": start + rng.uniform(0, interval), "b_interval": interval} for i in ids],
                )
        finally:
            store.dispose()

    # ---- the daemon -------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "OPENAI_", "JOURNAL_", "NOTIFY_"))}
        env.update({KEY_ENV: API_KEY, "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(self.root / "state")})
        return env

    def start(self, timeout: float = 120.0) -> float:
        """Spawn `tether run`; returns once it logged daemon.started (seconds from spawn)."""
        log = self.log_path.open("a")
        self.spawned_at = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tether", "--config", str(self.config_path), "run"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            for line in self.read_log():
                if line.get("event") == "daemon.started":
                    self.started_at = time.time()
                    return self.started_at - self.spawned_at
            if self.proc.poll() is not None:
                raise RuntimeError(f"tether run exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("tether run did not log daemon.started")
            time.sleep(0.01)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.read_log()
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def memory(self) -> dict[str, float]:
        return memory_mb(self.pid)

    def read_log(self) -> list[dict[str, Any]]:
        """New JSON lines of the daemon's log since the last call (all kept in `lines`)."""
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._log_offset += end
        new = []
        for raw in data[:end].splitlines():
            raw = raw.strip()
            if raw.startswith(b"{"):
                try:
                    new.append(json.loads(raw))
                except ValueError:
                    pass
        self._log_lines += new
        return new

    @property
    def lines(self) -> list[dict[str, Any]]:
        self.read_log()
        return self._log_lines

    def stats_lines(self, since: float = 0.0, until: float = float("inf")) -> list[dict[str, Any]]:
        """daemon.stats lines whose interval ended within [since, until] (unix seconds)."""
        from datetime import datetime

        out = []
        for line in self.lines:
            if line.get("event") != "daemon.stats":
                continue
            at = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
            if since <= at <= until:
                out.append({**line, "at": at})
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]
