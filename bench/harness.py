"""The harness every benchmark shares: a quiet machine before each measurement (and a re-run
when other processes disturbed it), the record of a run (commit, machine, load) and its results
file, the common command line, and stopping cleanly on a signal. Used by bench/run.py,
bench/front_load.py and bench/dashboard_load.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import Others, loadavg

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def strip(line: dict[str, Any]) -> dict[str, Any]:
    """A daemon stats line without its level and event name."""
    return {k: v for k, v in line.items() if k not in ("level", "event")}


# ---- a quiet machine -----------------------------------------------------------------

NOISE_LIMIT = 0.3  # cores used by other processes during a window above which it is re-run
QUIET = 0.15  # ... and below which (over 5 s) the machine counts as quiet
QUIET_WAIT = 300.0


def wait_quiet() -> float:
    """Wait (at most QUIET_WAIT) until other processes use less than QUIET cores over 5 s."""
    start = time.monotonic()
    while True:
        others = Others()
        time.sleep(5)
        cores = others.cores()
        if cores < QUIET or time.monotonic() - start > QUIET_WAIT:
            if time.monotonic() - start > 6:
                log(f"waited {time.monotonic() - start:.0f}s for a quiet machine (others now {cores:.2f} cores)")
            return cores
        log(f"others use {cores:.2f} cores: waiting for a quiet machine")


def noise(result: Any) -> float:
    """The most CPU other processes used during any measured window of a scenario's result."""
    if isinstance(result, dict):
        values = [result.get("others_cores") or 0.0] + [
            noise(v) for v in result.values() if isinstance(v, (dict, list))
        ]
        return max(values)
    if isinstance(result, list):
        return max((noise(v) for v in result), default=0.0)
    return 0.0


def quietly(name: str, run: Any, attempts: int = 2) -> Any:
    """Run a scenario on a quiet machine; again (up to `attempts`) if others disturbed it."""
    for attempt in range(1, attempts + 1):
        wait_quiet()
        result = run()
        disturbed = noise(result)
        if isinstance(result, dict):
            result["attempt"] = attempt
        if disturbed <= NOISE_LIMIT or attempt == attempts:
            if disturbed > NOISE_LIMIT:
                log(f"{name}: others used {disturbed:.2f} cores during the measurement; kept after {attempt} attempts")
            return result
        log(f"{name}: others used {disturbed:.2f} cores during the measurement: running it again")


# ---- a run's record, its results file and its command line ----------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = Path("/proc/meminfo").read_text().split()[1]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def run_meta(quick: bool) -> dict[str, Any]:
    """What a results file records of the run it comes from, at its start."""
    return {
        "commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--", "daemon", "bench", "pyproject.toml", "uv.lock")),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": loadavg(),
        "machine": machine(),
        "quick": quick,
    }


def save_results(results: dict[str, Any], path: Path) -> None:
    """Note the run's end in its meta and write the results file."""
    results["meta"]["load_after"] = loadavg()
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=float))
    log(f"results: {path}")


def harness_parser(prog: str, doc: str | None, results: Path) -> argparse.ArgumentParser:
    """A benchmark's command line: `--quick` and `--results`, to which it adds its own."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small and short: checks that the harness works")
    parser.add_argument("--results", type=Path, default=results)
    return parser


def stop_cleanly_on_signals() -> None:
    """Stopped by a signal (even from a background job, where SIGINT starts ignored), the
    `finally` blocks still stop every process the benchmark started."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
