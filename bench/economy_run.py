"""The API economy scenario, measured: real responses of 10 s to 2 min tracked by tether and
by the documented 2 s SDK loop, next to what bench/economy.py computes for the same responses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import economy
from bench.harness import ROOT, log, mean
from bench.stand import Stand
from bench.tether_proc import Polling, Tether


def economy_run(work: Path, durations: list[float], per_duration: int, limit: float) -> dict[str, Any]:
    """Real responses of 10 s to 2 min: tether (default [polling]) and the documented 2 s SDK loop,
    each on its own copy of the same responses, in the same run."""
    from sqlmodel import col

    from tether.config import PollingConfig
    from tether.models import Response
    from tether.store import Store

    polling = PollingConfig()
    with Stand() as stand:
        t = Tether(work / "economy", stand.base_url, polling=Polling(), stats_interval=60)
        sdk_proc = None
        try:
            t.start()
            sdk_proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.sdk_loop",
                    "--base-url",
                    stand.base_url,
                    "--ids",
                    "-",
                    "--mode",
                    "every",
                    "--interval",
                    str(economy.LOOP_INTERVAL),
                    "--concurrency",
                    "64",
                    "--seconds",
                    str(max(durations) + 20),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert sdk_proc.stdout is not None and sdk_proc.stdin is not None
            sdk_proc.stdout.readline()  # "ready": imported, reading ids
            plan = [d for d in durations for _ in range(per_duration)]
            meta = lambda i: {"fake_run": f"{plan[i % len(plan)]:g}"}  # noqa: E731
            ours = stand.create(len(plan), metadata=meta)
            theirs = stand.create(len(plan), metadata=meta)
            sdk_proc.stdin.write("\n".join(r.id for r in theirs) + "\n")
            sdk_proc.stdin.close()
            t.track(ours, verify=len(ours))  # exactly `tether track`; the running daemon picks them up
            log(
                f"economy: {len(ours)} responses of {', '.join(f'{d:g}s' for d in durations)} for tether and "
                "as many for the 2 s SDK loop"
            )
            store = Store(f"sqlite:///{t.db_path}")
            deadline = time.time() + limit
            while time.time() < deadline:
                with store.reading() as session:
                    open_ = session.query(Response).filter(col(Response.finished_at).is_(None)).count()
                if open_ == 0:
                    break
                time.sleep(2)
            with store.reading() as session:
                rows = {r.id: r for r in session.query(Response).all()}
            store.dispose()
            sdk_out = sdk_proc.stdout.read()
            sdk_proc.wait(timeout=max(durations) + 60)
            sdk = json.loads(sdk_out.strip().splitlines()[-1])
            t.stop()
        finally:
            t.kill()
            if sdk_proc is not None and sdk_proc.poll() is None:
                sdk_proc.kill()
                sdk_proc.wait()
    per: dict[float, dict[str, list[float]]] = {
        d: {"t_polls": [], "t_lat": [], "l_polls": [], "l_lat": [], "offset": []} for d in durations
    }
    for record in ours:
        row = rows[record.id]
        d = record.simulation.run
        per[d]["t_polls"].append(len(record.gets))
        per[d]["t_lat"].append(row.finished_at - record.finishes_at if row.finished_at else float("nan"))
        per[d]["offset"].append(row.tracked_at - record.created_at)
    for record in theirs:
        seen = sdk["responses"].get(record.id, {})
        d = record.simulation.run
        per[d]["l_polls"].append(len(record.gets))
        at = seen.get("seen_terminal_at")
        per[d]["l_lat"].append(at - record.finishes_at if at else float("nan"))
    rows_out = []
    for d in durations:
        p = per[d]
        predicted = economy.expected([d] * len(p["offset"]), polling, p["offset"])
        rows_out.append(
            {
                "duration": d,
                "n": len(p["t_polls"]),
                "tether_polls_measured": mean(p["t_polls"]),
                "tether_polls_computed": mean([x for x, _ in predicted]),
                "tether_latency_measured": mean(p["t_lat"]),
                "tether_latency_measured_max": max(p["t_lat"]),
                "tether_latency_computed": mean([y for _, y in predicted]),
                "loop_polls_measured": mean(p["l_polls"]),
                "loop_polls_computed": economy.loop_polls(d)[0],
                "loop_latency_measured": mean(p["l_lat"]),
            }
        )
    return {"validation": rows_out, "sdk_loop_cpu_seconds": sdk["cpu_seconds"]}
