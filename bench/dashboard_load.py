"""The dashboard under load: deadline precision with and without people looking at it, and how
long its pages take with 10,000 responses active.

    uv run python -m bench.dashboard_load            # 10,000 active responses (about 5 minutes)
    uv run python -m bench.dashboard_load --quick    # smaller and shorter: checks the harness works

1. The deadline scenario of bench.deadline (10,000 deadlines within 60 s) with the TCP
   listener on (so the dashboard is served), nobody looking.
2. The same, while bench.dashboard_traffic (its own process) loads 4 pages a second (the
   responses table's first, 100th and an active-filtered page, the overview, the events page)
   and keeps 4 live tails open, from the daemon's start to the window's end: the page figures
   are those of a daemon with 10,000 responses active, during its busiest minute.

Results go to bench/results/dashboard.json (docs/benchmarks.md, "The dashboard", copies its
figures by hand). Every process started here is stopped here.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.dashboard_traffic import PAGES, browsing
from bench.deadline import deadline
from bench.front_load import ms
from bench.harness import ROOT, harness_parser, log, run_meta, save_results, stop_cleanly_on_signals
from bench.procs import free_port, loadavg

RESULTS = ROOT / "bench" / "results" / "dashboard.json"
SERVER = """
[server]
socket = "{socket}"
listen = "127.0.0.1:{port}"
"""
PAGE_RATE, TAILS = 4.0, 4


def deadline_run(work: Path, active: int, spread: float, lead: float, *, looking: bool) -> dict[str, Any]:
    port = free_port()
    config = SERVER.format(socket=work / "tether.sock", port=port)

    def during(stand: Any, t: Any, until: float) -> Any:
        seconds = max(1.0, until - time.time() - 1)
        return browsing(f"http://127.0.0.1:{port}", seconds, PAGE_RATE, TAILS)

    result = deadline(work, active, spread, lead, config=config, during=during if looking else None)
    result.pop("lags")
    return result


def table(results: dict[str, Any]) -> str:
    q, b = results["quiet"], results["browsed"]
    lines = [
        "| deadline run | p50 ms | p99 ms | max ms | missing | cancels |",
        "|---|---|---|---|---|---|",
        f"| nobody looking | {ms(q['lag']['p50'])} | {ms(q['lag']['p99'])} | {ms(q['lag']['max'])} | {q['missing']} "
        f"| {q['cancels_seen_by_server']} |",
        f"| {PAGE_RATE:g} pages/s + {TAILS} live tails | {ms(b['lag']['p50'])} | {ms(b['lag']['p99'])} "
        f"| {ms(b['lag']['max'])} | {b['missing']} | {b['cancels_seen_by_server']} |",
        f"| ratio | {b['lag']['p50'] / q['lag']['p50']:.2f}× | {results['p99_ratio']:.2f}× "
        f"| {b['lag']['max'] / q['lag']['max']:.2f}× | | |",
        "",
        f"| page ({results['meta']['active']:,} active) | n | p50 ms | p99 ms | max ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name in (*PAGES, "tail"):
        s = b["during"][name]
        lines.append(
            f"| {name} | {s['latency']['n']} | {ms(s['latency']['p50'])} | {ms(s['latency']['p99'])} "
            f"| {ms(s['latency']['max'])} | {sum(s['errors'].values()) if s['errors'] else 0} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = harness_parser("python -m bench.dashboard_load", __doc__, RESULTS).parse_args()
    stop_cleanly_on_signals()
    active, spread, lead = (2_000, 20.0, 20.0) if args.quick else (10_000, 60.0, 35.0)
    results: dict[str, Any] = {"meta": {**run_meta(args.quick), "active": active}}
    work = Path(tempfile.mkdtemp(prefix="tether-dashboard-"))
    try:
        log("dashboard: deadline run, nobody looking")
        results["quiet"] = deadline_run(work, active, spread, lead, looking=False)
        results["meta"]["load_between"] = loadavg()
        log(f"dashboard: deadline run with {PAGE_RATE:g} pages/s and {TAILS} live tails")
        results["browsed"] = deadline_run(work, active, spread, lead, looking=True)
        results["p99_ratio"] = results["browsed"]["lag"]["p99"] / results["quiet"]["lag"]["p99"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_results(results, args.results)
    print(table(results))


if __name__ == "__main__":
    main()
