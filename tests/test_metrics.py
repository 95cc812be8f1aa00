"""The daemon's metrics: a real daemon (in this process, so its Metrics can be read) against the
stand-in, its figures checked against the store's and the stand-in's; the series bounded."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
import pytest
import structlog
import structlog.testing
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from conftest import API_KEY, Tether, create, server_record
from tether import __version__
from tether.api import NotFound, TransientError
from tether.metrics import METRICS, Metrics, metrics_handler

# The deadlines of the stuck and the runaway response, counted from their creation: room to
# track them first on a busy 2-core machine (3.2 s with both cores taken by other work; 8 to 10 s
# when the daemon was still starting meanwhile, on the same event loop).
LIMIT = 12

CONFIG = f"""
[[policy]]
name = "stuck"
match = {{ metadata = {{ case = "stuck" }} }}
max_queued = "{LIMIT}s"

[[policy]]
name = "runaway"
match = {{ metadata = {{ case = "runaway" }} }}
max_runtime = "{LIMIT}s"

[[policy]]
name = "reserved"
match = {{ metadata = {{ case = "budgeted" }} }}
max_runtime = "1h"
reserve_usd = 0.4

[[policy]]
name = "roomy"
max_runtime = "60s"

[[budget]]
name = "team"
match = {{ metadata = {{ case = "budgeted" }} }}
limit_usd = 1.0
period = "day"
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: Metrics) -> Samples:
    """Every sample of the exposition, parsed as a scraper would, by (name, sorted labels)."""
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def series(found: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in found.items() if n == name}


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Wait, on the event loop (the daemon runs on it), until predicate() is truthy."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
    return result


async def until_async(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """`until` for a predicate that blocks (a CLI command): run in a thread each time."""
    deadline = time.monotonic() + timeout
    while not (result := await asyncio.to_thread(predicate)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)
    return result


def create_at(fake, created_at: float, **metadata: str) -> str:
    reply = httpx.post(
        f"{fake.url}/_fake/responses",
        json={"model": "gpt-5-nano", "created_at": created_at, "metadata": metadata, "background": True},
        timeout=30,
    )
    reply.raise_for_status()
    return reply.json()["id"]


@pytest.fixture
def logged(request) -> Iterator[list[dict[str, Any]]]:
    """The in-process daemon's log lines, as dicts; printed (but the debug ones) if the test failed."""
    stamped = structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp")
    with structlog.testing.capture_logs(processors=[stamped]) as lines:
        yield lines
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print("--- the daemon's log ---")
        print("\n".join(json.dumps(line, default=str)[:600] for line in lines if line.get("log_level") != "debug"))


def overrun_report(daemon, fake, records: dict, ids: dict[str, str], logged: list[dict[str, Any]]) -> str:
    """Each deadline cancel's times, relative to its deadline as the daemon knows it (the
    stand-in's whole-second created_at plus LIMIT), and the daemon's log lines about them: what
    a failed overrun assertion shows."""
    lines = [f"overruns the daemon measured: {[round(lag, 3) for lag in daemon.state.stats.deadline_lags]}"]
    for name, rid in ids.items():
        server = server_record(fake, rid)
        deadline = int(server["created_at"]) + LIMIT

        def rel(at: float, deadline: float = deadline) -> str:
            return f"{at - deadline:+.3f}"

        tracked = datetime.fromisoformat(records[rid]["tracked_at"]).timestamp()
        lines.append(
            f"{name} {rid}: created {rel(server['created_at'])}, tracked {rel(tracked)}, "
            f"GETs at {[rel(at) for at in server['gets']]}, cancels at {[rel(c['at']) for c in server['cancels']]}"
        )
    about = set(ids.values())
    lines += [
        json.dumps(line, default=str)[:600]
        for line in logged
        if line.get("response_id") in about
        or about & set(line.get("response_ids") or ())
        or line.get("log_level") in ("warning", "error", "critical")
        or line.get("event") in ("daemon.started", "daemon.stats")
    ]
    return "\n".join(lines)


async def test_a_running_daemons_metrics_match_the_store_and_the_stand_in(
    tether: Tether, fake, monkeypatch, logged: list[dict[str, Any]]
):
    from tether.config import load_config
    from tether.daemon import Daemon
    from tether.store import Store

    tether.write_config(CONFIG)
    monkeypatch.setenv("TETHER_TEST_KEY", API_KEY)
    config = load_config(str(tether.config_path))
    store = Store(config.store.url)
    store.ensure_schema()
    daemon = Daemon(config, store)
    metrics = daemon.state.metrics
    running = asyncio.create_task(daemon.run())
    try:
        # Up first: the deadlines run from the responses' creation, not from the daemon's start.
        await until(lambda: running.done() or any(x["event"] == "daemon.started" for x in logged), 60, "the start")
        assert not running.done(), running.result()
        now = time.time()
        # Three in the budget's scope reserve 0.4 each against its 1.0: the newest is cancelled.
        budgeted = [create_at(fake, now - 30 + i * 10, case="budgeted", fake_run="3600") for i in range(3)]
        stuck = create(fake, case="stuck", fake_queue="30")
        runaway = create(fake, case="runaway", fake_run="30")
        quick = create(fake, fake_run=str(LIMIT + 8))  # ends after it is tracked
        kept, dropped = create(fake, fake_run="60"), create(fake, fake_run="60")
        await asyncio.to_thread(tether.ok, "track", *budgeted, stuck, runaway, quick, kept, dropped)
        await asyncio.to_thread(tether.ok, "cancel", dropped)

        def settled() -> dict | None:
            records = tether.records()
            statuses = {rid: records[rid]["status"] for rid in [*budgeted, stuck, runaway, quick, dropped]}
            expected = [*["in_progress"] * 2, *["cancelled"] * 3, "completed", "cancelled"]
            return records if list(statuses.values()) == expected else None

        records = await until_async(settled, 60, "the cancels and the completion")
        assert records[budgeted[2]]["cancel_reason"] == "budget:team"
        expected_cancels = {"max_queued": 1, "max_runtime": 1, "budget:team": 1, "manual": 1}
        await until(
            lambda: (
                {dict(k)["reason"]: v for k, v in series(samples(metrics), "tether_cancels_total").items() if v}
                == expected_cancels
            ),
            30,
            "the cancels counted by reason",
        )

        found = samples(metrics)
        assert value(found, "tether_info", version=__version__) == 1
        # Each deadline cancel's overrun: two of them, each well within a second of its deadline
        # (which the daemon knew of ahead: it was up, and they were tracked in time). Both
        # deadlines usually fall in one whole second, so are decided in one transaction: one
        # stall counts twice in the sum. A failure prints each one's times and the daemon's lines.
        for rid in (stuck, runaway):
            deadline = server_record(fake, rid)["created_at"] + LIMIT
            assert datetime.fromisoformat(records[rid]["tracked_at"]).timestamp() < deadline - 1, "tracked too late"
        overruns = overrun_report(daemon, fake, records, {"stuck": stuck, "runaway": runaway}, logged)
        assert value(found, "tether_deadline_overrun_seconds_count") == 2, overruns
        assert 0 <= value(found, "tether_deadline_overrun_seconds_sum") < 2 * 1.0, overruns
        # One response completed: seen within a poll interval (1 s here) of the server's
        # completed_at, which is in whole seconds (up to 1 s more).
        assert value(found, "tether_detection_latency_seconds_count") == 1
        assert value(found, "tether_detection_latency_seconds_sum") < 2.5
        # Every poll is a GET the stand-in saw (deadline looks and confirmations are GETs too).
        gets = sum(len(server_record(fake, rid)["gets"]) for rid in records)
        assert len(records) <= value(found, "tether_polls_total") <= gets
        assert value(found, "tether_store_transactions_total") > 0
        assert not series(found, "tether_api_errors_total")  # the stand-in answered everything

        # The active gauge is what `ls --active` shows, by status, policy and account.
        def active_listed() -> Counter:
            return Counter(
                (r["status"] or "unseen", r["policy"] or "", r["account"]) for r in tether.json("ls", "--active")
            )

        listed = await asyncio.to_thread(active_listed)
        assert sum(listed.values()) == 3  # two budgeted, and `kept`
        gauge = {
            (d["status"], d["policy"], d["account"]): v
            for d, v in ((dict(k), v) for k, v in series(samples(metrics), "tether_responses_active").items())
        }
        assert gauge == dict(listed)

        # The budget gauges are the figures `tether budget` shows, once the watch has measured
        # the last change (the cancelled one's cost).
        def budget_figures() -> dict[str, float]:
            (team,) = tether.json("budget")
            return {k: team[k] for k in ("spent_usd", "committed_usd", "limit_usd")}

        def gauges() -> dict[str, float | None]:
            found = samples(metrics)
            return {
                k: value(found, f"tether_budget_{k}", budget="team")
                for k in ("spent_usd", "committed_usd", "limit_usd")
            }

        def agreeing() -> dict[str, float] | None:
            shown, exposed = budget_figures(), gauges()
            close = all(exposed[k] is not None and abs(exposed[k] - v) < 1e-6 for k, v in shown.items())
            return shown if close else None

        figures = await until_async(agreeing, 30, "the budget gauges to show what `tether budget` does")
        assert figures["committed_usd"] == pytest.approx(0.8) and figures["limit_usd"] == 1.0

        for (_, labels), _ in samples(metrics).items():
            assert not any(v.startswith("resp_") for _, v in labels), labels
    finally:
        daemon.stop()
        assert await asyncio.wait_for(running, 30) == 0


def test_the_number_of_series_does_not_grow_with_the_number_of_responses():
    """Ids never become labels: a thousand times more responses, the same series."""

    def exposed(n: int) -> Samples:
        records = [
            SimpleNamespace(id=f"resp_{i:08x}", status=("queued", "in_progress", None)[i % 3], policy="p", account="a")
            for i in range(n)
        ]
        metrics = Metrics(lambda: records)
        for i in range(n):
            metrics.polls.inc()
            metrics.cancel_requested(("max_queued", "budget:team", "manual")[i % 3])
            metrics.api_error("get", TransientError(f"resp_{i} timed out"))
            metrics.saw_status("in_progress", {"id": f"resp_{i}", "status": "completed", "completed_at": 0}, 1.0)
        return samples(metrics)

    small, large = exposed(3), exposed(3000)
    assert small.keys() == large.keys()
    assert value(large, "tether_polls_total") == 3000
    assert value(large, "tether_responses_active", status="unseen", policy="p", account="a") == 1000
    assert not [labels for _, labels in large if any(v.startswith("resp_") for _, v in labels)]


def test_labels_come_from_bounded_sets():
    metrics = Metrics(lambda: [])
    metrics.api_error("get", NotFound("gone", status=404, code="not_found"))
    metrics.api_error("cancel", TransientError("connection refused", delivered=False))
    metrics.cancel_requested("manual")
    metrics.cancel_requested("anything an operator typed")  # not a reason the daemon knows
    metrics.cancel_requested("budget:team")
    # No completed_at, a status already terminal before, or a server clock ahead of ours:
    # nothing or zero, never a negative latency.
    metrics.saw_status("in_progress", {"status": "cancelled", "completed_at": None}, 10.0)
    metrics.saw_status("cancelled", {"status": "completed", "completed_at": 5}, 10.0)
    metrics.saw_status("queued", {"status": "completed", "completed_at": 12}, 10.0)
    for odd in ({"status": "x"}, 7, ["completed"], None):  # a hostile reply's status: not an error here
        metrics.saw_status("queued", {"status": odd, "completed_at": 12}, 10.0)
    found = samples(metrics)
    assert series(found, "tether_api_errors_total") == {
        (("code", "404"), ("op", "get")): 1,
        (("code", "network"), ("op", "cancel")): 1,
    }
    assert {dict(k)["reason"]: v for k, v in series(found, "tether_cancels_total").items()} == {
        "max_queued": 0,
        "max_runtime": 0,
        "manual": 2,
        "budget:team": 1,
    }
    assert value(found, "tether_detection_latency_seconds_count") == 1
    assert value(found, "tether_detection_latency_seconds_sum") == 0


async def test_the_metrics_route_serves_the_text_format():
    metrics = Metrics(lambda: [SimpleNamespace(status="queued", policy=None, account="default")])
    metrics.polls.inc(7)
    app = web.Application()
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            text = await reply.text()
    finally:
        await runner.cleanup()
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert value(found, "tether_polls_total") == 7
    assert value(found, "tether_responses_active", status="queued", policy="", account="default") == 1
