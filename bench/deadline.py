"""The deadline scenario: how precisely max_runtime deadlines are enforced when many fall
within a short window, while every response is also polled.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from bench.harness import log, strip
from bench.procs import Others, percentile, summary
from bench.stand import LONG_RUN, Stand
from bench.tether_proc import Polling, Tether

DEADLINE_POLICY = """
[[policy]]
name = "ten-minutes"
max_runtime = "10m"
"""
DEADLINE_AFTER = 600.0


def deadline(
    work: Path,
    active: int,
    spread: float,
    lead: float,
    config: str = "",
    during: Callable[[Stand, Tether, float], AbstractContextManager[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """`active` responses whose max_runtime deadlines fall within `spread` seconds, while all of
    them are polled (60 s steady-state interval) and cancelled ones are confirmed. `config` is
    added to the daemon's config; `during(stand, tether, until)` is entered once the daemon has
    started and left when the window is over (other traffic, e.g. bench.front_load): what it
    yields is the result's "during"."""
    rng = random.Random(3)
    window_start = time.time() + lead
    with Stand() as stand:
        # created_at is reported in whole seconds, as by the API: deadlines fall on whole seconds.
        records = stand.create(
            active,
            created_at=lambda i: window_start - DEADLINE_AFTER + rng.uniform(0, spread),
            metadata=lambda i: {"fake_run": f"{LONG_RUN:g}"},
        )
        t = Tether(
            work / "deadline", stand.base_url, polling=Polling(), policies=DEADLINE_POLICY + config, stats_interval=10
        )
        try:
            t.track(records)
            t.spread([r.id for r in records], start=time.time(), interval=60.0)
            log(
                f"deadline: {active} deadlines from {window_start - time.time():.0f}s to "
                f"{window_start + spread - time.time():.0f}s from now"
            )
            t.start()
            if time.time() > window_start - 5:
                raise RuntimeError("the daemon started too late for the deadline window; raise the lead")
            until = window_start + spread + 5
            with during(stand, t, until) if during else nullcontext({}) as alongside:
                cpu0, gets0, w0, others = (
                    t.cpu(),
                    stand.requests() + stand.requests("cancel"),
                    time.time(),
                    Others(t.pid),
                )
                time.sleep(max(0.0, until - time.time()))
            cpu1, gets1, elapsed = t.cpu(), stand.requests() + stand.requests("cancel"), time.time() - w0
            others_cores = others.cores()
            memory = t.memory()
            t.stop()
        finally:
            t.kill()
        lags = []
        by_burst: dict[float, list[float]] = {}
        early = missing = 0
        for record in records:
            due = int(record.created_at) + DEADLINE_AFTER
            if not record.cancels:
                missing += 1
                continue
            lag = record.cancels[0].at - due
            early += lag < 0
            lags.append(lag)
            by_burst.setdefault(due, []).append(lag)
        lines = [strip(line) for line in t.stats_lines() if line.get("deadline_cancels")]
    return {
        "active": active,
        "spread_seconds": spread,
        "deadlines": active,
        "cancels_seen_by_server": len(lags),
        "missing": missing,
        "early": early,
        "lag": summary(lags),
        "lags": sorted(lags),
        # Per deadline second (a burst): whether the tail is every burst's last cancels or a few slow bursts.
        "bursts": [
            {
                "due": due,
                "n": len(burst),
                "first": min(burst),
                "p50": percentile(sorted(burst), 0.5),
                "last": max(burst),
            }
            for due, burst in sorted(by_burst.items())
        ],
        "daemon_lag_worst_p99": max((line["deadline_lag_p99"] for line in lines), default=None),
        "daemon_lag_max": max((line["deadline_lag_max"] for line in lines), default=None),
        "stats_lines": lines,
        "cpu_share": (cpu1 - cpu0) / elapsed,
        "others_cores": others_cores,
        "gets_per_second": (gets1 - gets0) / elapsed,
        "peak_rss_mb": memory.get("VmHWM"),
        **({"during": alongside} if during else {}),
    }
