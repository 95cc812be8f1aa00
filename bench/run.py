"""Run every benchmark scenario once and write the results, the table and the plots.

    uv run python -m bench                  # everything (about 15 minutes on 2 cores)
    uv run python -m bench --quick          # smaller and shorter: checks the harness works
    uv run python -m bench --only deadline  # one scenario (tracking, restart, throughput,
                                            # deadline, economy); others keep their last results

Results go to bench/results/latest.json; the table and plots to docs/ (between the markers of
docs/benchmarks.md, and docs/bench-*.png). Every process started here is stopped here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import economy, report
from bench.deadline import deadline
from bench.economy_run import economy_run
from bench.harness import ROOT, git, harness_parser, log, machine, quietly, save_results, stop_cleanly_on_signals
from bench.procs import loadavg
from bench.throughput import throughput
from bench.tracking import tracking

RESULTS = ROOT / "bench" / "results" / "latest.json"
SCENARIOS = ("tracking", "throughput", "deadline", "economy")


def main() -> None:
    parser = harness_parser("python -m bench", __doc__, RESULTS)
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only these scenarios")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/ (results JSON only)")
    parser.add_argument("--commit", help="what was measured, when not this checkout's HEAD (e.g. a scratch copy)")
    args = parser.parse_args()
    stop_cleanly_on_signals()
    only = set(args.only or SCENARIOS)
    q = args.quick

    previous = json.loads(args.results.read_text()) if args.results.exists() else {}
    results: dict[str, Any] = {k: v for k, v in previous.items() if k in SCENARIOS and k not in only}
    dirty = git("status", "--porcelain", "--", "daemon", "pyproject.toml", "uv.lock")
    results["meta"] = {
        "commit": args.commit or git("rev-parse", "HEAD") or "unknown",
        "commit_subject": "" if args.commit else git("log", "-1", "--format=%s"),
        "dirty": bool(dirty) and not args.commit,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": loadavg(),
        "machine": machine(),
        "quick": q,
        "scenarios_run": sorted(only),
    }
    log(f"load average before: {results['meta']['load_before']}")
    work = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    try:
        if "tracking" in only:
            results["tracking"] = [
                quietly(
                    "tracking 1,000",
                    lambda: tracking(work, 1_000, 5.0, warmup=10 if q else 20, window=15 if q else 60, restart=False),
                ),
                quietly(
                    "tracking 10,000",
                    lambda: tracking(
                        work,
                        10_000 if not q else 3_000,
                        5.0,
                        warmup=10 if q else 20,
                        window=15 if q else 60,
                        restart=False,
                    ),
                ),
                quietly(
                    "tracking 100,000",
                    lambda: tracking(
                        work,
                        100_000 if not q else 10_000,
                        60.0,
                        warmup=15 if q else 30,
                        window=15 if q else 60,
                        restart=True,
                    ),
                ),
            ]
        if "throughput" in only:
            results["throughput"] = quietly(
                "throughput",
                lambda: throughput(work, 10_000 if not q else 3_000, warmup=8 if q else 15, window=10 if q else 30),
            )
        if "deadline" in only:
            results["deadline"] = quietly(
                "deadline",
                lambda: deadline(
                    work, 10_000 if not q else 2_000, spread=60.0 if not q else 20.0, lead=35.0 if not q else 20.0
                ),
            )
        if "economy" in only:
            from tether.config import PollingConfig

            durations = [10.0, 20.0, 30.0, 60.0, 90.0, 120.0] if not q else [5.0, 10.0, 20.0]
            results["economy"] = {
                "computed": economy.table(PollingConfig()),
                **economy_run(work, durations, per_duration=30 if not q else 10, limit=max(durations) * 1.6 + 30),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_results(results, args.results)
    print(report.tables(results))
    if not args.no_docs:
        report.write_docs(results, ROOT / "docs")


if __name__ == "__main__":
    main()
