"""Run every benchmark scenario once and write the results, the table and the plots.

    uv run python -m bench                  # everything (about 15 minutes on 2 cores)
    uv run python -m bench --quick          # smaller and shorter: checks the harness works
    uv run python -m bench --only deadline  # one scenario (tracking, restart, throughput,
                                            # deadline, economy); others keep their last results

Results go to bench/results/latest.json; the table and plots to docs/ (between the markers of
docs/benchmarks.md, and docs/bench-*.png). Every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench import economy, report
from bench.procs import Others, loadavg, percentile, summary
from bench.stand import LONG_RUN, Stand
from bench.tether_proc import Polling, Tether

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
SCENARIOS = ("tracking", "throughput", "deadline", "economy")

# Every response in the load scenarios falls under this policy (a deadline far away): the
# deadline heap is populated as in production, without any deadline firing.
FAR_POLICY = """
[[policy]]
name = "everything"
max_runtime = "6h"
"""
DEADLINE_POLICY = """
[[policy]]
name = "ten-minutes"
max_runtime = "10m"
"""
DEADLINE_AFTER = 600.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def churning(rng: random.Random) -> dict[str, str]:
    """Stand-in metadata: queued for up to 10 min, then in progress for a day. Created up to
    5 min ago (see `recent`), about one response in ten moves queued -> in_progress during a
    one-minute window: a status change tether persists at once, as in production."""
    return {"fake_queue": f"{rng.uniform(0, 600):.3f}", "fake_run": f"{LONG_RUN:g}"}


# ---- tracking load ---------------------------------------------------------------


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
            time.sleep(warmup)
            gets0, cpu0, fake0, t0 = stand.requests(), t.cpu(), stand.cpu(), time.time()
            status0 = len(t.events("response.status"))
            others = Others(t.pid)
            time.sleep(window)
            gets1, cpu1, fake1, t1 = stand.requests(), t.cpu(), stand.cpu(), time.time()
            result["others_cores"] = others.cores()
            memory = t.memory()
            status1 = len(t.events("response.status"))
            lines = t.stats_lines(t0 + 1, t1 + 1)
            polls = gets1 - gets0
            result.update(
                seconds=t1 - t0,
                polls=polls,
                polls_per_second=polls / (t1 - t0),
                cpu_seconds=cpu1 - cpu0,
                cpu_per_1000_polls=(cpu1 - cpu0) / polls * 1000 if polls else None,
                polls_per_cpu_second=polls / (cpu1 - cpu0) if cpu1 > cpu0 else None,
                stand_cpu_share=(fake1 - fake0) / (t1 - t0),
                status_changes_persisted=status1 - status0,
                peak_rss_mb=memory.get("VmHWM"),
                rss_mb=memory.get("VmRSS"),
                store_mb=t.store_mb(),
                lag=lag_from_stats(lines),
                stats_lines=[strip(line) for line in lines],
                server_gap_excess=gap_excess(records, interval, t0, t1),
                api_errors=sum(line.get("api_errors", 0) for line in lines),
            )
            t.stop()
            if restart:
                result["restart"] = restart_after_stop(t, stand)
        finally:
            t.kill()
    return result


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


def strip(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k not in ("level", "event")}


# ---- throughput against the baselines ----------------------------------------------


def throughput(work: Path, active: int, warmup: float, window: float) -> dict[str, Any]:
    """tether saturated (a 1 s interval over `active` responses), then the SDK loop and the plain
    load generator on the same responses, one after the other in this one run."""
    rng = random.Random(7)
    now = time.time()
    out: dict[str, Any] = {"active": active}
    with Stand() as stand:
        records = stand.create(active, created_at=lambda i: now - rng.uniform(0, 300), metadata=lambda i: churning(rng))
        ids_file = work / "ids.txt"
        ids_file.write_text("\n".join(r.id for r in records))
        t = Tether(
            work / "throughput", stand.base_url, polling=Polling.fixed(1.0), policies=FAR_POLICY, stats_interval=window
        )
        try:
            t.track(records)
            t.spread([r.id for r in records], start=time.time() + 3, interval=1.0)
            log(f"throughput: tether run, {active} responses every 1 s")
            t.start()
            time.sleep(warmup)
            gets0, cpu0, fake0, t0 = stand.requests(), t.cpu(), stand.cpu(), time.time()
            status0 = len(t.events("response.status"))
            others = Others(t.pid)
            time.sleep(window)
            gets1, cpu1, fake1, t1 = stand.requests(), t.cpu(), stand.cpu(), time.time()
            others_cores = others.cores()
            status1 = len(t.events("response.status"))
            t.stop()
        finally:
            t.kill()
        polls = gets1 - gets0
        out["tether"] = {
            "polls": polls,
            "seconds": t1 - t0,
            "polls_per_second": polls / (t1 - t0),
            "cpu_seconds": cpu1 - cpu0,
            "polls_per_cpu_second": polls / (cpu1 - cpu0),
            "status_changes_persisted": status1 - status0,
            "stand_cpu_share": (fake1 - fake0) / (t1 - t0),
            "others_cores": others_cores,
        }
        log("throughput: SDK loop (AsyncOpenAI.responses.retrieve, 16 concurrent)")
        fake0, others = stand.cpu(), Others()
        sdk = run_json(
            [
                sys.executable,
                "-m",
                "bench.sdk_loop",
                "--base-url",
                stand.base_url,
                "--ids",
                str(ids_file),
                "--mode",
                "saturate",
                "--concurrency",
                "16",
                "--warmup",
                str(min(warmup, 5)),
                "--seconds",
                str(window),
            ]
        )
        sdk["stand_cpu_share"] = (stand.cpu() - fake0) / (window + min(warmup, 5))
        sdk["others_cores"] = others.cores()
        out["sdk"] = sdk
        log("throughput: plain load generator (the stand-in's ceiling)")
        fake0, w0, others = stand.cpu(), time.time(), Others()
        gen = run_json(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                "--port",
                str(stand.server.port),
                "--ids",
                str(ids_file),
                "--connections",
                "32",
                "--seconds",
                str(min(window, 15)),
            ]
        )
        gen["stand_cpu_share"] = (stand.cpu() - fake0) / (time.time() - w0)
        gen["others_cores"] = others.cores()
        out["ceiling"] = gen
    return out


def run_json(cmd: list[str], timeout: float = 600) -> dict[str, Any]:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2]} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- deadline precision --------------------------------------------------------------


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


# ---- API economy ---------------------------------------------------------------------


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


def mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


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


# ---- main ----------------------------------------------------------------------------


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
