"""`tether demo`: the whole loop against the built-in stand-in of the API, no key needed.

It starts the stand-in on a free loopback port, writes a config with a few policies
into a temporary folder, starts the real daemon (`tether run`) as a subprocess on a
temporary store, submits eight background responses, shows them live, and ends
with the event history and a summary. It leaves nothing running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from sqlmodel import col

from tether import render, tracker
from tether.config import load_config
from tether.fakeapi import FakeServer
from tether.models import Event, Response
from tether.pricing import Pricing
from tether.statuses import is_active
from tether.store import Store

DEMO_KEY_ENV = "TETHER_DEMO_API_KEY"
DEMO_KEY = "sk-demo-not-a-real-key"
TIME_LIMIT = 50.0
STARTUP_LIMIT = 30.0  # seconds the daemon gets to start before the responses are made

CONFIG = """\
[store]
url = "sqlite:///{store}"

[log]
format = "json"
level = "info"

[accounts.default]
base_url = "{base_url}"
api_key_env = "{key_env}"

[polling]
first = "0.5s"
max_interval = "2s"
backoff = 1.5
jitter = 0.1
confirm_window = "3s"

[[policy]]
name = "stuck-in-queue"
match = {{ metadata = {{ demo = "stuck" }} }}
max_queued = "4s"

[[policy]]
name = "runaway"
match = {{ metadata = {{ demo = "runaway" }} }}
max_runtime = "8s"

[[policy]]
name = "watch-only"
match = {{ metadata = {{ demo = "watch" }} }}
max_runtime = "3s"
action = "warn"

[[policy]]
name = "standard"
max_runtime = "40s"
"""

# (what it shows, metadata that sets the stand-in's behaviour and picks the policy)
REQUESTS = [
    ("finishes quickly", {"fake_queue": "0.5", "fake_run": "2"}),
    ("finishes after a while", {"fake_queue": "1", "fake_run": "6"}),
    ("fails", {"fake_run": "3", "fake_outcome": "failed"}),
    ("runs out of output tokens", {"fake_run": "4", "fake_outcome": "incomplete"}),
    ("stuck in the queue", {"demo": "stuck", "fake_queue": "120"}),
    ("runs away", {"demo": "runaway", "fake_run": "120"}),
    ("slow, only warned", {"demo": "watch", "fake_run": "7"}),
    (
        "reasoning at length",
        {"fake_queue": "2", "fake_run": "8", "fake_output_tokens": "6000", "fake_reasoning_tokens": "4000"},
    ),
]


def run_demo(console: Console, *, keep: bool = False) -> int:
    folder = Path(tempfile.mkdtemp(prefix="tether-demo-"))
    try:
        with FakeServer(api_key=DEMO_KEY) as server:
            return _run(console, folder, server.base_url)
    finally:
        if keep:
            console.print(f"kept the demo's files in {folder}", style="dim")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _run(console: Console, folder: Path, base_url: str) -> int:
    config_path = folder / "tether.toml"
    config_path.write_text(CONFIG.format(store=folder / "tether.db", base_url=base_url, key_env=DEMO_KEY_ENV))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env[DEMO_KEY_ENV] = DEMO_KEY
    os.environ[DEMO_KEY_ENV] = DEMO_KEY
    config = load_config(str(config_path))
    store = Store(config.store.url)
    store.migrate()

    console.print(Text("tether demo", style="bold"), f"- a stand-in Responses API at {base_url}, store in {folder}")
    console.print(
        "Policies: stuck-in-queue (max_queued 4s), runaway (max_runtime 8s), "
        "watch-only (max_runtime 3s, warn), standard (max_runtime 40s).",
        style="dim",
    )
    daemon_log = (folder / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "tether", "--config", str(config_path), "run"],
        env=env,
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
    )
    try:
        if not _started(daemon, Path(daemon_log.name)):
            console.print(f"the daemon did not start; see {daemon_log.name}", style="red")
            return 1
        ids = _submit_all(config, store)
        finished = _watch(console, store, ids, daemon)
    finally:
        code = _stop(daemon)
        daemon_log.close()
    _history(console, store)
    _summary(console, store, config)
    console.print(f"daemon stopped with exit code {code}", style="dim")
    if not finished:
        console.print("the demo ran out of time before every response finished", style="red")
    return 0 if finished and code == 0 else 1


def _started(daemon: subprocess.Popen, log: Path) -> bool:
    """Wait for the daemon's `daemon.started` line: the deadlines run from the responses'
    creation, so they are made once the daemon is there to watch them (however slowly it
    starts on a busy machine)."""
    until = time.monotonic() + STARTUP_LIMIT
    while daemon.poll() is None and time.monotonic() < until:
        if '"daemon.started"' in log.read_text():
            return True
        time.sleep(0.1)
    return False


def _submit_all(config, store: Store) -> dict[str, str]:
    import asyncio

    from tether.api import ResponsesClient

    account = config.accounts[config.default_account]
    client = ResponsesClient(account, account.read_api_key())

    async def create_all() -> list[dict]:
        try:
            bodies = [
                {"model": "o3-pro", "input": f"demo: {what}", "background": True, "metadata": meta}
                for what, meta in REQUESTS
            ]
            return [await client.create(body) for body in bodies]
        finally:
            await client.aclose()

    created = asyncio.run(create_all())
    pricing = Pricing.from_config(config)
    with tracker.recording(store, "cli", time.time()) as rec:
        for obj in created:
            tracker.track(
                rec,
                config,
                pricing,
                response_id=obj["id"],
                account=account.name,
                observed=obj,
                policy_requested=None,
                labels={"demo": "yes"},
            )
    return {obj["id"]: what for obj, (what, _) in zip(created, REQUESTS, strict=True)}


def _rows(store: Store) -> list[Response]:
    with store.reading() as session:
        return list(session.execute(select(Response).order_by(col(Response.tracked_at), col(Response.id))).scalars())


def _watch(console: Console, store: Store, ids: dict[str, str], daemon: subprocess.Popen) -> bool:
    start = time.monotonic()
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            rows = _rows(store)
            live.update(_live_view(rows, ids, time.monotonic() - start))
            settled = all(not is_active(r.status) and (r.confirm_until or 0) < time.time() for r in rows)
            if settled or daemon.poll() is not None or time.monotonic() - start > TIME_LIMIT:
                return settled
            time.sleep(0.25)


def _live_view(rows: list[Response], ids: dict[str, str], elapsed: float) -> Group:
    now = time.time()
    table = Table(title=f"tracked responses ({elapsed:.0f}s)", header_style="bold")
    # Ids whole whatever the terminal's width: they are what `tether show` takes.
    table.add_column("response", no_wrap=True, min_width=max((len(row.id) for row in rows), default=8))
    for name in ("what it does", "status", "policy", "age", "deadline", "polls", "cancel"):
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(
            row.id,
            ids.get(row.id, ""),
            render.status_text(row.status),
            row.policy or "-",
            render.age(row.created_at or row.tracked_at, now),
            render.until(row.deadline_at, now),
            str(row.polls),
            row.cancel_reason or "",
        )
    active = sum(is_active(r.status) for r in rows)
    return Group(table, Text(f"{active} active; waiting for every response to finish…", style="dim"))


def _stop(daemon: subprocess.Popen) -> int:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            return daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            return daemon.wait()
    return daemon.returncode


def _history(console: Console, store: Store) -> None:
    console.print()
    console.print(Text("event history", style="bold"))
    with store.reading() as session:
        for ev in session.execute(select(Event).order_by(col(Event.at), col(Event.id))).scalars():
            console.print(render.event_line(render.event(ev)))


def _summary(console: Console, store: Store, config) -> None:
    rows = _rows(store)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status or "unseen"] = counts.get(row.status or "unseen", 0) + 1
    console.print()
    console.print(Text("summary", style="bold"), ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for row in rows:
        if row.cancel_requested_at is None:
            continue
        policy = config.policy_named(row.policy) if row.policy else None
        limit = getattr(policy, row.cancel_reason, None) if policy and row.cancel_reason else None
        if limit is not None and row.created_at is not None:
            late = row.cancel_requested_at - (row.created_at + limit)
            console.print(
                f"  {row.id}  cancelled by {row.cancel_reason} ({render.duration(limit)}), "
                f"{late:+.3f}s from its deadline; final status {row.status}",
                highlight=False,
            )
    with store.reading() as session:
        warned = list(session.execute(select(Event).where(col(Event.kind) == "warned")).scalars())
    for ev in warned:
        console.print(f"  {ev.response_id}  warned for {ev.reason}, not cancelled", highlight=False)
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    estimated = sum(1 for r in rows if r.cost_estimated)
    console.print(
        f"cost: {render.usd(sum(costs))} for {len(costs)} responses at o3-pro prices "
        f"({estimated} estimated: cancelled responses report no usage)",
        highlight=False,
    )
