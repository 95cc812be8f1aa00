"""The tracking scenario: `active` responses polled at a fixed interval in a steady state
(throughput, poll lag, CPU, memory, store size), and optionally a restart on the same store.
"""

from __future__ import annotations

import random
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.harness import log, strip
from bench.procs import Others, summary
from bench.stand import LONG_RUN, Stand
from bench.tether_proc import Polling, Tether

# Every response in the load scenarios falls under this policy (a deadline far away): the
# deadline heap is populated as in production, without any deadline firing.
FAR_POLICY = """
[[policy]]
name = "everything"
max_runtime = "6h"
"""


def churning(rng: random.Random) -> dict[str, str]:
    """Stand-in metadata: queued for up to 10 min, then in progress for a day. Created up to
    5 min ago (see `recent`), about one response in ten moves queued -> in_progress during a
    one-minute window: a status change tether persists at once, as in production."""
    return {"fake_queue": f"{rng.uniform(0, 600):.3f}", "fake_run": f"{LONG_RUN:g}"}


def tracking(work: Path, active: int, interval: float, warmup: float, window: float, restart: bool) -> dict[str, Any]:
    """`active` responses polled every `interval` seconds: throughput, lag, CPU, memory, store."""
    rng = random.Random(active)
    now = time.time()
    result: dict[str, Any] = {"active": active, "interval": interval, "offered_polls_per_second": active / interval}
    with Stand() as stand:
        records = stand.create(active, created_at=lambda i: now - rng.uniform(0, 300), metadata=lambda i: churning(rng))
        t = Tether(
            work / f"tracking-{active}",
            stand.base_url,
            polling=Polling.fixed(interval),
            policies=FAR_POLICY,
            stats_interval=window / 3,
        )
        try:
            result["populate_seconds"] = t.track(records)
            # Steady state: polls spread over one interval from about when the daemon is ready.
            ready_in = 3.0 if active <= 10_000 else 10.0
            t.spread([r.id for r in records], start=time.time() + ready_in, interval=interval)
            log(f"tracking {active}: store filled in {result['populate_seconds']:.1f}s; starting tether run")
            result["start_to_ready"] = t.start()
            result["rss_after_start_mb"] = t.memory()
            start, end, figures = steady_window(t, stand, warmup, window)
            memory = t.memory()
            lines = t.stats_lines(start + 1, end + 1)
            polls = figures["polls"]
            result.update(
                figures,
                cpu_per_1000_polls=figures["cpu_seconds"] / polls * 1000 if polls else None,
                peak_rss_mb=memory.get("VmHWM"),
                rss_mb=memory.get("VmRSS"),
                store_mb=t.store_mb(),
                lag=lag_from_stats(lines),
                stats_lines=[strip(line) for line in lines],
                server_gap_excess=gap_excess(records, interval, start, end),
                api_errors=sum(line.get("api_errors", 0) for line in lines),
            )
            t.stop()
            if restart:
                result["restart"] = restart_after_stop(t, stand)
        finally:
            t.kill()
    return result


def steady_window(t: Tether, stand: Stand, warmup: float, window: float) -> tuple[float, float, dict[str, Any]]:
    """A running tether in its steady state: after `warmup` seconds, what `window` seconds hold
    (the polls the stand-in answered, tether's and the stand-in's CPU, the status changes
    persisted, other processes' CPU). Returns the window's start, its end and those figures."""
    time.sleep(warmup)
    gets0, cpu0, fake0, t0 = stand.requests(), t.cpu(), stand.cpu(), time.time()
    status0 = len(t.events("response.status"))
    others = Others(t.pid)
    time.sleep(window)
    gets1, cpu1, fake1, t1 = stand.requests(), t.cpu(), stand.cpu(), time.time()
    others_cores = others.cores()
    status1 = len(t.events("response.status"))
    polls, cpu = gets1 - gets0, cpu1 - cpu0
    return (
        t0,
        t1,
        {
            "seconds": t1 - t0,
            "polls": polls,
            "polls_per_second": polls / (t1 - t0),
            "cpu_seconds": cpu,
            "polls_per_cpu_second": polls / cpu if cpu > 0 else None,
            "stand_cpu_share": (fake1 - fake0) / (t1 - t0),
            "status_changes_persisted": status1 - status0,
            "others_cores": others_cores,
        },
    )


def restart_after_stop(t: Tether, stand: Stand) -> dict[str, Any]:
    """Start again on the same store (responses overdue by the downtime): time to first poll."""
    stand.watch_first_get()
    started = t.start()
    deadline = time.time() + 60
    while stand.first_get is None and time.time() < deadline:
        time.sleep(0.005)
    first = stand.first_get - t.spawned_at if stand.first_get and t.spawned_at is not None else None
    time.sleep(3)
    memory = t.memory()
    t.stop()
    return {"spawn_to_started": started, "spawn_to_first_poll": first, "peak_rss_mb": memory.get("VmHWM")}


def lag_from_stats(lines: list[dict[str, Any]]) -> dict[str, float | None]:
    """The daemon's poll lag over the window: p50 = polls-weighted mean of the lines' p50s;
    p99 and max = the worst line's (each line covers a third of the window)."""
    lines = [line for line in lines if line.get("polls")]
    if not lines:
        return {"p50": None, "p99": None, "max": None}
    total = sum(line["polls"] for line in lines)
    return {
        "p50": sum(line["poll_lag_p50"] * line["polls"] for line in lines) / total,
        "p99": max(line["poll_lag_p99"] for line in lines),
        "max": max(line["poll_lag_max"] for line in lines),
    }


def gap_excess(records: list[Any], interval: float, t0: float, t1: float) -> dict[str, float]:
    """Server side cross-check (jitter 0): time between consecutive GETs of a response, minus
    the interval, for GETs within the window. In a steady state this is the poll lag."""
    excess = []
    for record in records:
        gets = [g for g in record.gets if t0 <= g <= t1]
        excess += [b - a - interval for a, b in pairwise(gets)]
    return summary(excess)
